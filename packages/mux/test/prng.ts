/**
 * A small seeded PRNG (sfc32) for reproducible tests: the same seed gives the same bytes, frames and
 * chunkings, so a failure message that prints the seed is a reproducer. The other packages' tests use it
 * too, as `@porthole/mux/test/prng`.
 */
export class Prng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 12; i++) this.nextU32();
  }

  nextU32(): number {
    const t = (((this.a + this.b) | 0) + this.d) | 0;
    this.d = (this.d + 1) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform integer in [min, max] (inclusive). */
  int(min: number, max: number): number {
    return min + Math.floor((this.nextU32() / 0x1_0000_0000) * (max - min + 1));
  }

  chance(p: number): boolean {
    return this.nextU32() / 0x1_0000_0000 < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)]!;
  }

  /** Fills `buf` with pseudo-random bytes (4 at a time; the tail byte-wise). */
  fill(buf: Buffer): Buffer {
    const words = buf.length >>> 2;
    for (let i = 0; i < words; i++) buf.writeUInt32LE(this.nextU32(), i << 2);
    for (let i = words << 2; i < buf.length; i++) buf[i] = this.nextU32() & 0xff;
    return buf;
  }

  bytes(n: number): Buffer {
    return this.fill(Buffer.allocUnsafe(n));
  }
}

/** A seed for this run: FUZZ_SEED from the environment when set (to replay a failure), else random. */
export function runSeed(): number {
  const fromEnv = process.env.FUZZ_SEED;
  if (fromEnv !== undefined && fromEnv !== '') return Number.parseInt(fromEnv, 10) >>> 0;
  return (Math.random() * 0x1_0000_0000) >>> 0;
}
