/** The WebSocket wire format (RFC 6455 §5): what both the parser and the sender need. */
import { createRequire } from 'node:module';

export const Opcode = {
  Continuation: 0x0,
  Text: 0x1,
  Binary: 0x2,
  Close: 0x8,
  Ping: 0x9,
  Pong: 0xa,
} as const;

export const CloseCode = {
  Normal: 1000,
  GoingAway: 1001,
  ProtocolError: 1002,
  UnsupportedData: 1003,
  NoStatus: 1005,
  InvalidPayload: 1007,
  ServiceRestart: 1012,
} as const;

/** Largest frame header: 2 bytes, a 64-bit length, a 4-byte masking key. */
export const MAX_HEADER_SIZE = 14;
/** Control frames (close, ping, pong) carry at most this much (§5.5). */
export const MAX_CONTROL_PAYLOAD = 125;

/** Writes a final (FIN) frame header for `length` payload bytes at `offset`; returns its size. */
export function writeFrameHeader(
  target: Buffer,
  offset: number,
  opcode: number,
  length: number,
  maskKey?: Buffer,
): number {
  let at = offset;
  target[at++] = 0x80 | opcode;
  const maskBit = maskKey ? 0x80 : 0;
  if (length < 126) {
    target[at++] = maskBit | length;
  } else if (length < 0x10000) {
    target[at++] = maskBit | 126;
    target.writeUInt16BE(length, at);
    at += 2;
  } else {
    target[at++] = maskBit | 127;
    target.writeUInt32BE(Math.floor(length / 0x1_0000_0000), at);
    target.writeUInt32BE(length >>> 0, at + 4);
    at += 8;
  }
  if (maskKey) {
    maskKey.copy(target, at, 0, 4);
    at += 4;
  }
  return at - offset;
}

/**
 * A masking key in its four rotations, so a payload handled in pieces can be (un)masked from any offset:
 * `at(n)` is the key as it stands `n` bytes into the frame's payload (`at(0)` is the key itself).
 */
export class MaskKey {
  private readonly rotations = Buffer.allocUnsafe(16);
  private readonly views = [0, 1, 2, 3].map((r) => this.rotations.subarray(r * 4, r * 4 + 4));

  /** Takes the 4 key bytes at `offset` of `source`. */
  set(source: Buffer, offset: number): void {
    for (let rotation = 0; rotation < 4; rotation++)
      for (let i = 0; i < 4; i++) this.rotations[rotation * 4 + i] = source[offset + ((rotation + i) & 3)]!;
  }

  at(payloadOffset: number): Buffer {
    return this.views[payloadOffset & 3]!;
  }
}

interface BufferUtil {
  mask(source: Buffer, mask: Buffer, output: Buffer, offset: number, length: number): void;
  unmask(buffer: Buffer, mask: Buffer): void;
}

/**
 * bufferutil's native (un)masking, several times faster than a JS loop at bulk rates. Loaded at run time and
 * optional, like ws does it: a bundled program finds it next to the bundle or runs on the JS loops.
 */
const native = loadBufferUtil();

function loadBufferUtil(): BufferUtil | undefined {
  try {
    return createRequire(import.meta.url)('bufferutil') as BufferUtil;
  } catch {
    return undefined;
  }
}

/** Below this, a JS loop beats the call into the native helper. */
const NATIVE_MASK_MIN = 32;

/** XORs `data` in place with `mask` (a MaskKey's `at()` for where the piece starts). */
export function unmaskInPlace(data: Buffer, mask: Buffer): void {
  if (native && data.length >= NATIVE_MASK_MIN) {
    native.unmask(data, mask);
    return;
  }
  for (let i = 0; i < data.length; i++) data[i]! ^= mask[i & 3]!;
}

/** Writes `source` XOR `mask` (a MaskKey's `at()` for where the piece starts) into `target` at `targetOffset`. */
export function maskInto(source: Buffer, mask: Buffer, target: Buffer, targetOffset: number): void {
  if (native && source.length >= NATIVE_MASK_MIN) {
    native.mask(source, mask, target, targetOffset, source.length);
    return;
  }
  for (let i = 0; i < source.length; i++) target[targetOffset + i] = source[i]! ^ mask[i & 3]!;
}
