import {
  CloseCode,
  MAX_CONTROL_PAYLOAD,
  MAX_HEADER_SIZE,
  MaskKey,
  Opcode,
  unmaskInPlace,
} from './websocket-frame.js';

export interface WebSocketFrameHandler {
  /** Bytes of a binary message, unmasked in place: views into the pushed chunk, never copied. */
  onPayload(piece: Buffer): void;
  /** A complete close, ping or pong frame. */
  onControl(opcode: number, payload: Buffer): void;
  /** The peer broke the protocol; `code` is the close code to answer with. Nothing is delivered after. */
  onProtocolError(code: number, message: string): void;
}

/** Lengths above 2^53 cannot be counted exactly in a JS number; no sane peer sends them. */
const MAX_LENGTH_HIGH_WORD = 0x1f_ffff;

/**
 * Turns an arbitrarily chunked byte stream into WebSocket frames without reassembling messages: the
 * payload of binary frames is handed on in pieces as it arrives, because what we carry is a byte stream
 * (yamux) and message boundaries mean nothing. That is what keeps a 1 MiB message from costing a 1 MiB
 * allocation and copy. Only control frames (at most 125 bytes) are assembled.
 */
export class WebSocketFrameParser {
  private readonly header = Buffer.allocUnsafe(MAX_HEADER_SIZE);
  private headerFill = 0;
  private opcode = 0;
  private masked = false;
  private readonly mask = new MaskKey();
  private payloadLeft = 0;
  /** Payload bytes of the current frame already handled: where the masking key stands. */
  private payloadDone = 0;
  private control: Buffer | undefined;
  /** A binary message whose final frame has not arrived: continuation frames belong to it. */
  private inMessage = false;
  private stopped = false;

  /**
   * @param expectMasked true on the server (clients must mask, RFC 6455 §5.1), false on the client
   *   (servers must not).
   */
  constructor(
    private readonly expectMasked: boolean,
    private readonly handler: WebSocketFrameHandler,
  ) {}

  stop(): void {
    this.stopped = true;
  }

  push(chunk: Buffer): void {
    let offset = 0;
    const end = chunk.length;
    while (offset < end && !this.stopped) {
      if (this.payloadLeft > 0) {
        const n = Math.min(this.payloadLeft, end - offset);
        this.onPayloadPiece(chunk.subarray(offset, offset + n));
        offset += n;
        continue;
      }
      offset = this.readHeader(chunk, offset);
    }
  }

  /** Collects header bytes (a header may be split across chunks); returns the new offset. */
  private readHeader(chunk: Buffer, offset: number): number {
    let at = offset;
    if (this.headerFill < 2) {
      at += this.fillHeader(chunk, at, 2);
      if (this.headerFill < 2) return at;
    }
    // The first two bytes say how long the rest of the header is.
    const size = headerSize(this.header);
    at += this.fillHeader(chunk, at, size);
    if (this.headerFill < size) return at;
    this.headerFill = 0;
    this.startFrame();
    return at;
  }

  private fillHeader(chunk: Buffer, offset: number, upTo: number): number {
    const n = Math.min(upTo - this.headerFill, chunk.length - offset);
    chunk.copy(this.header, this.headerFill, offset, offset + n);
    this.headerFill += n;
    return n;
  }

  private startFrame(): void {
    const h = this.header;
    const opcode = h[0]! & 0x0f;
    const masked = (h[1]! & 0x80) !== 0;
    let length = h[1]! & 0x7f;
    let at = 2;
    if (length === 126) {
      length = h.readUInt16BE(2);
      at = 4;
    } else if (length === 127) {
      const high = h.readUInt32BE(2);
      length = high > MAX_LENGTH_HIGH_WORD ? Number.NaN : high * 0x1_0000_0000 + h.readUInt32BE(6);
      at = 10;
    }
    const problem = this.frameProblem(opcode, (h[0]! & 0x80) !== 0, masked, length, (h[0]! & 0x70) !== 0);
    if (problem) {
      this.stopped = true;
      this.handler.onProtocolError(problem.code, problem.message);
      return;
    }
    if (masked) this.mask.set(h, at);
    this.control = isControl(opcode) ? Buffer.allocUnsafe(length) : undefined;
    this.opcode = opcode;
    this.masked = masked;
    this.payloadLeft = length;
    this.payloadDone = 0;
    if (length === 0) this.endFrame();
  }

  /** What is wrong with a frame header, if anything; tracks message fragmentation as a side effect. */
  private frameProblem(
    opcode: number,
    fin: boolean,
    masked: boolean,
    length: number,
    reservedBits: boolean,
  ): { code: number; message: string } | undefined {
    const protocolError = (message: string) => ({ code: CloseCode.ProtocolError, message });
    if (reservedBits) return protocolError('reserved bits set (no extension was negotiated)');
    if (masked !== this.expectMasked)
      return protocolError(this.expectMasked ? 'unmasked frame from a client' : 'masked frame from a server');
    if (Number.isNaN(length)) return protocolError('frame length beyond 2^53');
    if (opcode === Opcode.Text)
      return { code: CloseCode.UnsupportedData, message: 'text message on a binary WebSocket' };
    if (isControl(opcode)) {
      if (!fin || length > MAX_CONTROL_PAYLOAD)
        return protocolError('control frame fragmented or over 125 bytes');
      return undefined;
    }
    if (opcode !== Opcode.Binary && opcode !== Opcode.Continuation)
      return protocolError(`unknown opcode ${opcode}`);
    if ((opcode === Opcode.Continuation) !== this.inMessage)
      return protocolError(
        this.inMessage ? 'new message before the last one ended' : 'continuation frame outside a message',
      );
    this.inMessage = !fin;
    return undefined;
  }

  private onPayloadPiece(piece: Buffer): void {
    if (this.masked) unmaskInPlace(piece, this.mask.at(this.payloadDone));
    const control = this.control;
    if (control) piece.copy(control, this.payloadDone);
    this.payloadDone += piece.length;
    this.payloadLeft -= piece.length;
    if (!control) this.handler.onPayload(piece);
    if (this.payloadLeft === 0) this.endFrame();
  }

  private endFrame(): void {
    const control = this.control;
    this.control = undefined;
    if (control) this.handler.onControl(this.opcode, control);
  }
}

function isControl(opcode: number): boolean {
  return opcode === Opcode.Close || opcode === Opcode.Ping || opcode === Opcode.Pong;
}

/** Size of the header whose first two bytes are in `h`. */
function headerSize(h: Buffer): number {
  const length = h[1]! & 0x7f;
  const extended = length === 126 ? 2 : length === 127 ? 8 : 0;
  return 2 + extended + ((h[1]! & 0x80) !== 0 ? 4 : 0);
}
