/** At most one warning per limit per this many ms: a flood must not flood the log. */
export const LIMIT_WARNING_INTERVAL_MS = 10_000;

/**
 * Counts what a limit turned away and reports it through `warn` at most once per interval: the first at
 * once, the rest of a burst when the interval is over (or at `flush()`). A flood costs one log line per
 * interval, and the tail of a burst that stopped is still reported.
 */
export class LimitWarning {
  private pending = 0;
  private lastWarned = Number.NEGATIVE_INFINITY;
  private timer: NodeJS.Timeout | undefined;

  constructor(
    private readonly warn: (count: number) => void,
    private readonly intervalMs = LIMIT_WARNING_INTERVAL_MS,
  ) {}

  count(): void {
    this.pending += 1;
    if (this.timer) return;
    const wait = this.lastWarned + this.intervalMs - performance.now();
    if (wait <= 0) {
      this.flush();
      return;
    }
    this.timer = setTimeout(() => this.flush(), wait);
    this.timer.unref();
  }

  /** Reports what is pending now (the limit's owner is closing). */
  flush(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.pending === 0) return;
    const count = this.pending;
    this.pending = 0;
    this.lastWarned = performance.now();
    this.warn(count);
  }
}

/**
 * Log lines of one kind, one per event up to `limit` per interval; past it the events are only counted and
 * reported by `summary` (through a LimitWarning: at most once per interval). A flood of failures that each
 * deserve a line (a refused sign-in, a local service that is down) costs `limit` lines per interval.
 */
export class LineBudget {
  private windowStart = Number.NEGATIVE_INFINITY;
  private used = 0;
  private readonly unlogged: LimitWarning;

  constructor(
    private readonly limit: number,
    summary: (unlogged: number) => void,
    private readonly intervalMs = LIMIT_WARNING_INTERVAL_MS,
  ) {
    this.unlogged = new LimitWarning(summary, intervalMs);
  }

  /** True: write this event's line. False: it was counted for the summary instead. */
  take(): boolean {
    if (this.useLine()) return true;
    this.unlogged.count();
    return false;
  }

  /**
   * True: one of this interval's lines is left, and now used. False: none is left, and nothing is counted
   * (the caller says what it counts, with countUnlogged, once its own tally for the summary is up to date).
   */
  useLine(): boolean {
    const now = performance.now();
    if (now - this.windowStart >= this.intervalMs) {
      this.windowStart = now;
      this.used = 0;
    }
    if (this.used >= this.limit) return false;
    this.used += 1;
    return true;
  }

  /** Counts an event without a line of its own for the summary, whether or not lines are left. */
  countUnlogged(): void {
    this.unlogged.count();
  }

  /** Reports what is counted but not yet said (the owner is closing). */
  flush(): void {
    this.unlogged.flush();
  }
}

/**
 * The reason last said for each key (a proxy's refusal), so that the same reason again can be logged at a
 * quieter level: a client asks again for refused proxies every proxy_retry_interval, and both ends would
 * otherwise warn each time. Past `maxKeys` keys the memory starts over (the keys come from a peer).
 */
export class RepeatedReasons {
  private readonly last = new Map<string, string>();

  constructor(private readonly maxKeys = 1024) {}

  /** True when `reason` is what `key` last had; remembers it either way. */
  repeats(key: string, reason: string): boolean {
    if (this.last.get(key) === reason) return true;
    if (this.last.size >= this.maxKeys) this.last.clear();
    this.last.set(key, reason);
    return false;
  }

  forget(key: string): void {
    this.last.delete(key);
  }

  clear(): void {
    this.last.clear();
  }
}

/**
 * Keys to be said once each, e.g. the message types a peer sent that this version does not know: `first`
 * is true the first time a key comes, for at most `maxKeys` keys; past them it is false for new keys too
 * (the keys come from a peer, which must not buy a log line per message by varying them).
 */
export class FirstSightings {
  private readonly seen = new Set<string>();

  constructor(private readonly maxKeys = 16) {}

  first(key: string): boolean {
    if (this.seen.has(key) || this.seen.size >= this.maxKeys) return false;
    this.seen.add(key);
    return true;
  }
}

/**
 * Lines that repeat (a visitor in a retry loop refused for the same reason each time): the first of a key is
 * written at once, the same key again within the interval is only counted, and once the interval is over
 * one line says the last of them with `suppressed`, how many were left out (a line without it stands
 * for itself alone). A flood of one key costs one
 * line per interval; keys are independent. Past `maxKeys` keys (they come from peers) the quiet ones are
 * forgotten, their counts said first.
 */
export class CoalescedLines {
  private readonly lines = new Map<string, { warning: LimitWarning; fields: Record<string, unknown> }>();

  constructor(
    private readonly write: (fields: Record<string, unknown>) => void,
    private readonly intervalMs = LIMIT_WARNING_INTERVAL_MS,
    private readonly maxKeys = 1024,
  ) {}

  /** Writes `fields` as a line, or counts it towards the next line of `key`. */
  say(key: string, fields: Record<string, unknown>): void {
    let line = this.lines.get(key);
    if (!line) {
      if (this.lines.size >= this.maxKeys) this.forgetAll();
      const entry = {
        fields,
        warning: new LimitWarning(
          (count) => this.write(count > 1 ? { ...entry.fields, suppressed: count - 1 } : entry.fields),
          this.intervalMs,
        ),
      };
      line = entry;
      this.lines.set(key, line);
    }
    line.fields = fields;
    line.warning.count();
  }

  /** Says what is counted and not yet written, and forgets every key (the owner is closing, or full). */
  forgetAll(): void {
    for (const { warning } of this.lines.values()) warning.flush();
    this.lines.clear();
  }
}
