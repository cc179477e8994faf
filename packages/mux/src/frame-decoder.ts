import { decodeHeader, type FrameHeader, FrameType, HEADER_SIZE } from './frame.js';

export interface FrameHandler {
  /** A header arrived. For Data frames the body follows through onData; returning false skips the body. */
  onHeader(header: FrameHeader): void;
  /** A piece of the current Data frame's body: a view into the received chunk, never copied. */
  onData(piece: Buffer): void;
  /** The current Data frame's body is complete (flags such as FIN apply after the body). */
  onDataEnd(header: FrameHeader): void;
}

/**
 * Turns an arbitrarily chunked byte stream into frames. A header split across chunks is assembled in a
 * 12-byte scratch buffer; Data bodies are handed on as subarrays of the incoming chunks as they arrive,
 * so a frame spread over many WebSocket messages costs no reassembly copy.
 */
export class FrameDecoder {
  private readonly scratch = Buffer.allocUnsafe(HEADER_SIZE);
  private scratchFill = 0;
  private bodyLeft = 0;
  private current: FrameHeader | undefined;
  private stopped = false;

  constructor(private readonly handler: FrameHandler) {}

  /** Stops all further delivery, e.g. after a protocol error ended the session mid-chunk. */
  stop(): void {
    this.stopped = true;
  }

  push(chunk: Buffer): void {
    let offset = 0;
    const end = chunk.length;
    while (offset < end && !this.stopped) {
      if (this.bodyLeft > 0) {
        const n = Math.min(this.bodyLeft, end - offset);
        this.bodyLeft -= n;
        this.handler.onData(chunk.subarray(offset, offset + n));
        offset += n;
        if (this.bodyLeft === 0) this.finishBody();
        continue;
      }
      let header: FrameHeader;
      if (this.scratchFill === 0 && end - offset >= HEADER_SIZE) {
        header = decodeHeader(chunk, offset);
        offset += HEADER_SIZE;
      } else {
        const n = Math.min(HEADER_SIZE - this.scratchFill, end - offset);
        chunk.copy(this.scratch, this.scratchFill, offset, offset + n);
        this.scratchFill += n;
        offset += n;
        if (this.scratchFill < HEADER_SIZE) return;
        this.scratchFill = 0;
        header = decodeHeader(this.scratch, 0);
      }
      this.handler.onHeader(header);
      if (header.type === FrameType.Data && !this.stopped) {
        this.current = header;
        this.bodyLeft = header.length;
        if (header.length === 0) this.finishBody();
      }
    }
  }

  private finishBody(): void {
    const header = this.current!;
    this.current = undefined;
    this.handler.onDataEnd(header);
  }
}
