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

/** A Retry-After beyond this is taken for a mistake (or a clock far off) and ignored: backoff alone decides. */
export const MAX_RETRY_AFTER_MS = 60 * 60 * 1000;

/**
 * The wait a refused upgrade's Retry-After asks for, in ms (RFC 9110 10.2.3: delay-seconds or an HTTP-date);
 * undefined when there is none, it cannot be read, or it is over MAX_RETRY_AFTER_MS. The next attempt waits
 * at least this long: one sooner would only be refused again (a 429 from the server's failure limit).
 */
export function retryAfterMs(field: string | undefined, now = Date.now()): number | undefined {
  if (field === undefined) return undefined;
  const text = field.trim();
  // An HTTP-date starts with the day's name ("Wed, 25 Nov 2026 10:00:30 GMT"); Date.parse takes "-5" too.
  const ms = /^\d+$/.test(text)
    ? Number(text) * 1000
    : /^[a-z]/i.test(text)
      ? Date.parse(text) - now
      : Number.NaN;
  if (!Number.isFinite(ms) || ms > MAX_RETRY_AFTER_MS) return undefined;
  return Math.max(0, ms);
}
