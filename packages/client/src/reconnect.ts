/**
 * Exponential backoff with full jitter: attempt n waits a random time in [0, min(max, initial * 2^n)),
 * so many clients cut off together do not come back in lockstep. `reset()` after a stable session.
 */
export class Backoff {
  private attempt = 0;

  constructor(
    private initialMs: number,
    private maxMs: number,
    private readonly random: () => number = Math.random,
  ) {}

  /**
   * New bounds from a reload, for the next delay on; the attempt count stays, so that reloads while the
   * server is down (config management every few seconds) do not bring the delays back to the shortest.
   */
  setLimits(initialMs: number, maxMs: number): void {
    this.initialMs = initialMs;
    this.maxMs = maxMs;
  }

  /** The delay before the next attempt, in ms. */
  next(): number {
    const ceiling = Math.min(this.maxMs, this.initialMs * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    return Math.round(this.random() * ceiling);
  }

  reset(): void {
    this.attempt = 0;
  }
}
