/** The yamux wire format (hashicorp/yamux spec.md): a 12-byte header, then `length` bytes for Data frames. */

export const PROTOCOL_VERSION = 0;
export const HEADER_SIZE = 12;

export const FrameType = { Data: 0, WindowUpdate: 1, Ping: 2, GoAway: 3 } as const;
export type FrameType = (typeof FrameType)[keyof typeof FrameType];

export const Flag = { SYN: 1, ACK: 2, FIN: 4, RST: 8 } as const;

export enum GoAwayCode {
  Normal = 0,
  ProtocolError = 1,
  InternalError = 2,
}

/** Every stream starts with this send and receive window, whatever is announced later. */
export const INITIAL_WINDOW = 256 * 1024;
export const MAX_WINDOW = 0xffff_ffff;

export interface FrameHeader {
  version: number;
  type: number;
  flags: number;
  streamId: number;
  length: number;
}

/** Encodes a header into `target` at `offset` (HEADER_SIZE bytes). */
export function writeHeader(
  target: Buffer,
  offset: number,
  type: FrameType,
  flags: number,
  streamId: number,
  length: number,
): void {
  target[offset] = PROTOCOL_VERSION;
  target[offset + 1] = type;
  target.writeUInt16BE(flags, offset + 2);
  target.writeUInt32BE(streamId, offset + 4);
  target.writeUInt32BE(length, offset + 8);
}

export function decodeHeader(buf: Buffer, offset: number): FrameHeader {
  return {
    version: buf[offset]!,
    type: buf[offset + 1]!,
    flags: buf.readUInt16BE(offset + 2),
    streamId: buf.readUInt32BE(offset + 4),
    length: buf.readUInt32BE(offset + 8),
  };
}

const typeNames = ['Data', 'WindowUpdate', 'Ping', 'GoAway'];

export function describeHeader(h: FrameHeader): string {
  const flags = Object.entries(Flag)
    .filter(([, bit]) => (h.flags & bit) !== 0)
    .map(([name]) => name);
  return `${typeNames[h.type] ?? `type ${h.type}`} stream=${h.streamId} flags=${flags.join('|') || '0'} length=${h.length}`;
}
