import { createHash } from 'node:crypto';
import type { Readable, Writable } from 'node:stream';
import { Prng } from './prng.js';

/**
 * Writes `total` pseudo-random bytes (seeded) to `w` in `chunk`-sized writes, honouring backpressure;
 * resolves with the sha256 of what was written. Calls end() afterwards unless `end` is false.
 */
export async function sendPattern(
  w: Writable,
  total: number,
  seed: number,
  opts: { chunk?: number; end?: boolean } = {},
): Promise<string> {
  const chunk = opts.chunk ?? 64 * 1024;
  const rng = new Prng(seed);
  const hash = createHash('sha256');
  let sent = 0;
  while (sent < total) {
    if (w.destroyed || w.writableEnded) throw new Error(`writer closed after ${sent} of ${total} bytes`);
    const piece = rng.bytes(Math.min(chunk, total - sent));
    hash.update(piece);
    sent += piece.length;
    if (!w.write(piece)) await drained(w);
  }
  if (opts.end !== false) w.end();
  return hash.digest('hex');
}

function drained(w: Writable): Promise<void> {
  return new Promise((resolve, reject) => {
    const cleanup = () => {
      w.off('drain', onDrain);
      w.off('close', onClose);
      w.off('error', onError);
    };
    const onDrain = () => {
      cleanup();
      resolve();
    };
    const onClose = () => {
      cleanup();
      reject(new Error('writer closed while waiting for drain'));
    };
    const onError = (err: Error) => {
      cleanup();
      reject(err);
    };
    w.on('drain', onDrain);
    w.on('close', onClose);
    w.on('error', onError);
  });
}

export interface Received {
  bytes: number;
  sha256: string;
}

/** Reads `r` to its 'end' (the peer's FIN), hashing as it goes; rejects on error or close without end. */
export function receiveAll(r: Readable, onData?: (n: number) => void): Promise<Received> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    let ended = false;
    r.on('data', (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
      onData?.(bytes);
    });
    r.once('end', () => {
      ended = true;
      resolve({ bytes, sha256: hash.digest('hex') });
    });
    r.once('error', (err) =>
      reject(new Error(`reader failed after ${bytes} bytes: ${err.message}`, { cause: err })),
    );
    r.once('close', () => {
      if (!ended) reject(new Error(`reader closed without 'end' after ${bytes} bytes`));
    });
  });
}

/** Reads exactly `total` bytes from `r` (for peers that never send FIN). */
export function receiveCount(r: Readable, total: number): Promise<Received> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    const onData = (chunk: Buffer) => {
      hash.update(chunk);
      bytes += chunk.length;
      if (bytes > total) reject(new Error(`received ${bytes} bytes, more than the ${total} expected`));
      else if (bytes === total) {
        r.off('data', onData);
        resolve({ bytes, sha256: hash.digest('hex') });
      }
    };
    r.on('data', onData);
    r.once('error', (err) =>
      reject(new Error(`reader failed after ${bytes} bytes: ${err.message}`, { cause: err })),
    );
    r.once('close', () => {
      if (bytes < total) reject(new Error(`reader closed after ${bytes} of ${total} bytes`));
    });
  });
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}
