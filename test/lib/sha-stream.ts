// Deterministic pseudo-random bytes with a running sha256, and a sink that hashes what it receives:
// the two ends of a transfer compute digests independently, so any lost, duplicated, reordered or
// corrupted byte shows as a mismatch.
import { createCipheriv, createHash, type Hash } from 'node:crypto';
import { Readable, Writable } from 'node:stream';

const ZEROS = Buffer.alloc(1024 * 1024);

/** AES-128-CTR keystream keyed by the seed: fast (AES-NI), deterministic, incompressible. */
function keystream(seed: string) {
  const key = createHash('sha256').update(`porthole-e2e:${seed}`).digest();
  return createCipheriv('aes-128-ctr', key.subarray(0, 16), key.subarray(16, 32));
}

/** The first n bytes of the pattern for `seed` (small payloads). */
export function patternBytes(n: number, seed: string): Buffer {
  const cipher = keystream(seed);
  const out = Buffer.allocUnsafe(n);
  for (let off = 0; off < n; off += ZEROS.length) {
    const len = Math.min(ZEROS.length, n - off);
    cipher.update(ZEROS.subarray(0, len)).copy(out, off);
  }
  return out;
}

export function sha256Hex(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

/** A Readable of exactly `total` pattern bytes; digest() is the sha256 of everything pushed so far. */
export class PatternSource extends Readable {
  bytes = 0;
  private readonly cipher;
  private readonly hash: Hash = createHash('sha256');
  private hex: string | undefined;

  constructor(
    readonly total: number,
    seed: string,
    private readonly chunkSize = 256 * 1024,
  ) {
    super({ highWaterMark: chunkSize });
    this.cipher = keystream(seed);
  }

  override _read(): void {
    const len = Math.min(this.chunkSize, this.total - this.bytes, ZEROS.length);
    if (len <= 0) {
      this.push(null);
      return;
    }
    const chunk = this.cipher.update(ZEROS.subarray(0, len));
    this.hash.update(chunk);
    this.bytes += len;
    this.push(chunk);
  }

  /** sha256 hex of all bytes produced; call after the stream ended. */
  digest(): string {
    if (this.bytes !== this.total)
      throw new Error(`PatternSource: digest() before the end (${this.bytes}/${this.total})`);
    this.hex ??= this.hash.digest('hex');
    return this.hex;
  }
}

/**
 * A Writable that hashes what it receives. With `prefixBytes`, the first bytes are kept aside in
 * `prefix` (not hashed), e.g. a digest the peer sends ahead of its payload.
 */
export class HashSink extends Writable {
  bytes = 0;
  prefix: Buffer = Buffer.alloc(0);
  private readonly hash: Hash = createHash('sha256');
  private hex: string | undefined;

  constructor(private readonly prefixBytes = 0) {
    super({ highWaterMark: 1024 * 1024 });
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, done: (err?: Error | null) => void): void {
    let data = chunk;
    if (this.prefix.length < this.prefixBytes) {
      const take = Math.min(this.prefixBytes - this.prefix.length, data.length);
      this.prefix = Buffer.concat([this.prefix, data.subarray(0, take)]);
      data = data.subarray(take);
    }
    this.bytes += data.length;
    this.hash.update(data);
    done();
  }

  digest(): string {
    this.hex ??= this.hash.digest('hex');
    return this.hex;
  }
}

export function mib(bytes: number): number {
  return bytes / (1024 * 1024);
}

/** "123.4 MiB/s" for bytes moved in ms. */
export function rate(bytes: number, ms: number): string {
  return `${(mib(bytes) / (Math.max(ms, 1) / 1000)).toFixed(1)} MiB/s`;
}
