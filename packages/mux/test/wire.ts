/**
 * An independent encoder/parser of the yamux wire format (hashicorp/yamux spec.md), written for the tests
 * so that they check the implementation against the spec rather than against itself.
 */
export const HEADER = 12;
export const T = { Data: 0, WindowUpdate: 1, Ping: 2, GoAway: 3 } as const;
export const F = { SYN: 1, ACK: 2, FIN: 4, RST: 8 } as const;
export const INITIAL_WINDOW = 256 * 1024;

export interface Frame {
  version: number;
  type: number;
  flags: number;
  streamId: number;
  length: number;
  /** Data frames only: the body. */
  body?: Buffer;
}

export function encodeFrame(
  type: number,
  flags: number,
  streamId: number,
  length: number,
  body?: Buffer,
): Buffer {
  const buf = Buffer.alloc(HEADER + (body?.length ?? 0));
  buf[0] = 0;
  buf[1] = type;
  buf.writeUInt16BE(flags, 2);
  buf.writeUInt32BE(streamId >>> 0, 4);
  buf.writeUInt32BE(length >>> 0, 8);
  body?.copy(buf, HEADER);
  return buf;
}

export function dataFrame(flags: number, streamId: number, body: Buffer): Buffer {
  return encodeFrame(T.Data, flags, streamId, body.length, body);
}

export function windowUpdate(flags: number, streamId: number, delta: number): Buffer {
  return encodeFrame(T.WindowUpdate, flags, streamId, delta);
}

export function ping(flags: number, opaque: number): Buffer {
  return encodeFrame(T.Ping, flags, 0, opaque);
}

export function goAway(code: number): Buffer {
  return encodeFrame(T.GoAway, 0, 0, code);
}

/** Reassembles frames from an arbitrarily chunked byte stream. */
export class FrameParser {
  private buffered: Buffer[] = [];
  private bufferedBytes = 0;
  readonly frames: Frame[] = [];

  push(chunk: Buffer): Frame[] {
    this.buffered.push(chunk);
    this.bufferedBytes += chunk.length;
    const out: Frame[] = [];
    for (;;) {
      if (this.bufferedBytes < HEADER) break;
      const head = this.peek(HEADER);
      const type = head[1]!;
      const length = head.readUInt32BE(8);
      const bodyLength = type === T.Data ? length : 0;
      if (this.bufferedBytes < HEADER + bodyLength) break;
      const whole = this.take(HEADER + bodyLength);
      const frame: Frame = {
        version: whole[0]!,
        type,
        flags: whole.readUInt16BE(2),
        streamId: whole.readUInt32BE(4),
        length,
      };
      if (type === T.Data) frame.body = whole.subarray(HEADER);
      out.push(frame);
    }
    this.frames.push(...out);
    return out;
  }

  private peek(n: number): Buffer {
    if (this.buffered[0]!.length < n) this.buffered = [Buffer.concat(this.buffered)];
    return this.buffered[0]!.subarray(0, n);
  }

  private take(n: number): Buffer {
    const all = this.buffered.length === 1 ? this.buffered[0]! : Buffer.concat(this.buffered);
    const taken = Buffer.from(all.subarray(0, n));
    const rest = all.subarray(n);
    this.buffered = rest.length > 0 ? [rest] : [];
    this.bufferedBytes = rest.length;
    return taken;
  }
}

export function describeFrame(f: Frame): string {
  const types = ['Data', 'WindowUpdate', 'Ping', 'GoAway'];
  const flags = Object.entries(F)
    .filter(([, bit]) => (f.flags & bit) !== 0)
    .map(([name]) => name);
  return `${types[f.type] ?? `type${f.type}`}(id=${f.streamId} flags=${flags.join('|') || '0'} len=${f.length})`;
}
