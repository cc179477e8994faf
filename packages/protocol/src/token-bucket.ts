/**
 * A byte budget refilled at `rate` bytes per second, up to `burst` bytes (one second's worth unless said
 * otherwise, as frp's limiter). Shared by every connection of one proxy in one direction, so together they
 * keep to the rate.
 *
 * Streams spend what they have already read (spend() may run into debt: a read is never split or held back)
 * and pause their source until the debt is paid: the bytes then wait in the source (the kernel's socket
 * buffer, a mux stream's window), not here. Datagrams are sent whole or dropped (trySpend()). The refill is
 * computed from the clock when asked, so an idle bucket costs nothing; the one timer runs only while a
 * source waits.
 */
export class TokenBucket {
  private tokens: number;
  private refilledAt = performance.now();
  private timer: NodeJS.Timeout | undefined;
  private readonly waiters = new Set<() => void>();

  constructor(
    private rate: number,
    private burst = rate,
  ) {
    this.tokens = burst;
  }

  /** Bytes per second; Infinity once unlimited. */
  get bytesPerSecond(): number {
    return this.rate;
  }

  /**
   * A new rate (a reload): what was already spent is kept, the bucket is only cut down to the new burst.
   * Infinity lifts the limit: waiting sources go on at once and spending never pauses them again.
   */
  setRate(rate: number, burst = rate): void {
    this.refill();
    this.rate = rate;
    this.burst = burst;
    this.tokens = Math.min(this.tokens, burst);
    if (this.timer === undefined) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.wake();
  }

  /** Spends `bytes` already read. False when the budget is overdrawn: the source should pause (whenRefilled). */
  spend(bytes: number): boolean {
    this.refill();
    this.tokens -= bytes;
    return this.tokens >= 0;
  }

  /**
   * Spends `bytes` if the budget holds them; false (nothing spent) if not: a datagram to drop. A full bucket
   * pays for a datagram larger than the burst (into debt, paid before the next passes): else one larger than
   * a second's worth (1400 bytes under "1KB") could never pass.
   */
  trySpend(bytes: number): boolean {
    this.refill();
    if (this.tokens < bytes && this.tokens < this.burst) return false;
    this.tokens -= bytes;
    return true;
  }

  /** Calls `resume` once, when the debt is paid. */
  whenRefilled(resume: () => void): void {
    this.waiters.add(resume);
    if (this.timer === undefined) this.schedule();
  }

  /** Forgets a waiter (its connection closed); the timer stops with the last. */
  cancel(resume: () => void): void {
    this.waiters.delete(resume);
    if (this.waiters.size === 0 && this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
  }

  private refill(): void {
    const now = performance.now();
    if (this.rate === Number.POSITIVE_INFINITY) this.tokens = Number.POSITIVE_INFINITY;
    else this.tokens = Math.min(this.burst, this.tokens + ((now - this.refilledAt) * this.rate) / 1000);
    this.refilledAt = now;
  }

  private schedule(): void {
    const ms = Math.max(1, Math.ceil((-this.tokens * 1000) / this.rate));
    this.timer = setTimeout(wakeBucket, ms, this);
    this.timer.unref();
  }

  /** @internal The timer: the waiters go on if the debt is paid, or wait for the rest of it. */
  wake(): void {
    this.timer = undefined;
    this.refill();
    if (this.tokens < 0) {
      if (this.waiters.size > 0) this.schedule();
      return;
    }
    const waiters = [...this.waiters];
    this.waiters.clear();
    for (const resume of waiters) resume();
  }
}

function wakeBucket(bucket: TokenBucket): void {
  bucket.wake();
}
