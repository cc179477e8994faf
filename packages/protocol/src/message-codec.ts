import type { Readable, Writable } from 'node:stream';

/** Largest control message accepted (the length prefix is checked before any body is buffered). */
export const MAX_MESSAGE_BYTES = 1024 * 1024;
const LENGTH_BYTES = 4;

/** A message stream broke the framing rules: oversize, truncated, empty or not JSON. */
export class MessageFramingError extends Error {
  override readonly name = 'MessageFramingError';
}

/** Encodes one message as a u32-BE length prefix followed by its JSON text, in a single buffer. */
export function encodeMessage(message: unknown, maxBytes = MAX_MESSAGE_BYTES): Buffer {
  const json = JSON.stringify(message);
  const bodyBytes = Buffer.byteLength(json);
  if (bodyBytes > maxBytes)
    throw new MessageFramingError(`message of ${bodyBytes} bytes exceeds ${maxBytes}`);
  const frame = Buffer.allocUnsafe(LENGTH_BYTES + bodyBytes);
  frame.writeUInt32BE(bodyBytes, 0);
  frame.write(json, LENGTH_BYTES, 'utf8');
  return frame;
}

/** Writes one message; returns what `write()` returned, so callers may wait for 'drain'. */
export function writeMessage(stream: Writable, message: unknown, maxBytes = MAX_MESSAGE_BYTES): boolean {
  return stream.write(encodeMessage(message, maxBytes));
}

/**
 * Reads length-prefixed JSON messages from a Readable in paused mode, taking exactly the bytes of each
 * message and leaving anything after it in the stream (so a data stream can be piped after its header).
 * Handles any chunking; never buffers more than `maxBytes` of one message.
 */
export class MessageReader {
  constructor(
    private readonly stream: Readable,
    private readonly maxBytes = MAX_MESSAGE_BYTES,
  ) {}

  /** The next message, or `null` on a clean end of stream between messages. */
  async read(): Promise<unknown> {
    const prefix = await readExactly(this.stream, LENGTH_BYTES);
    if (prefix === null) return null;
    const length = prefix.readUInt32BE(0);
    if (length === 0) throw new MessageFramingError('empty message');
    if (length > this.maxBytes) {
      throw new MessageFramingError(`message of ${length} bytes exceeds the limit of ${this.maxBytes}`);
    }
    const body = await readExactly(this.stream, length);
    if (body === null) throw new MessageFramingError(`stream ended inside a message of ${length} bytes`);
    try {
      return JSON.parse(body.toString('utf8'));
    } catch {
      throw new MessageFramingError('message is not valid JSON');
    }
  }
}

/**
 * Exactly `n` bytes of a Readable in paused mode, leaving what follows in it (a message's body, a SOCKS
 * handshake's fields); `null` if the stream ended before the first byte; throws if it ended midway.
 */
export function readExactly(stream: Readable, n: number): Promise<Buffer | null> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      stream.off('readable', attempt);
      stream.off('end', onEnd);
      stream.off('error', onError);
      stream.off('close', onClose);
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onEnd = () => {
      cleanup();
      const buffered = stream.readableLength;
      if (buffered === 0) resolve(null);
      else reject(new MessageFramingError(`stream ended after ${buffered} of ${n} expected bytes`));
    };
    const onClose = () => {
      // 'close' without 'end' means the stream was destroyed (reset or aborted) mid-read.
      if (stream.readableEnded) return onEnd();
      cleanup();
      reject(stream.errored ?? new MessageFramingError('stream closed before a complete message'));
    };
    function attempt(): void {
      // read(n) returns null until n bytes are buffered; once the stream has ended it returns what is left.
      const chunk = stream.read(n) as Buffer | null;
      if (chunk === null) return;
      if (chunk.length < n) {
        cleanup();
        reject(new MessageFramingError(`stream ended after ${chunk.length} of ${n} expected bytes`));
        return;
      }
      cleanup();
      resolve(chunk);
    }
    if (stream.errored) return reject(stream.errored);
    if (stream.readableEnded) return resolve(null);
    if (stream.destroyed) return reject(new MessageFramingError('stream closed before a complete message'));
    stream.on('readable', attempt);
    stream.on('end', onEnd);
    stream.on('error', onError);
    stream.on('close', onClose);
    attempt();
  });
}
