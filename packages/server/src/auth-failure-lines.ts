// The control endpoint's 'auth failed' lines: one per refused attempt while the budget lasts, and every
// attempt without a line of its own counted in an 'auth failures not logged one by one' line (at most one
// per 10 s) that says why they went unlogged and from how many sources.
import { LineBudget, type Logger } from '@porthole/protocol';

/**
 * 'auth failed' lines per 10 s from all sources together. Each source is limited on its own
 * (FailureLimiter), but one with a routed /48 holds 65,536 sources: past this, failures are counted and
 * reported in one line per 10 s.
 */
export const AUTH_FAILURE_LINES = 20;
/** Distinct sources a summary counts at most: a /48 failing at once must not fill memory with names. */
const MAX_COUNTED_SOURCES = 1000;

/** A refused upgrade, as the endpoint reports it. */
export interface RefusedAttempt {
  remoteAddr: string;
  /** Whose failures count together (failureSource): an IPv4 address or an IPv6 /64. */
  source: string;
  reason: string;
  /** False for a source already over its failure_limit, whose first 429 had the line that says so. */
  ownLine: boolean;
  /** A token whose signature checked out: its client name and id. */
  whose?: { client: string; jti: string } | undefined;
}

/** Why the attempts of one summary went unlogged. */
interface UnloggedTally {
  /** Attempts that would have had a line, past the budget of AUTH_FAILURE_LINES per 10 s. */
  overLineBudget: number;
  /** Attempts from sources over their own failure_limit. */
  overFailureLimit: number;
  sources: Set<string>;
}

function emptyTally(): UnloggedTally {
  return { overLineBudget: 0, overFailureLimit: 0, sources: new Set() };
}

export class AuthFailureLines {
  private readonly budget: LineBudget;
  private tally = emptyTally();

  constructor(private readonly logger: Logger) {
    this.budget = new LineBudget(AUTH_FAILURE_LINES, (unlogged) => this.summarize(unlogged));
  }

  record(attempt: RefusedAttempt): void {
    if (attempt.ownLine && this.budget.useLine()) {
      // Spelled out (undefined fields are left out of the JSON): which client, when the token says so truly.
      this.logger.warn(
        {
          remote_addr: attempt.remoteAddr,
          client: attempt.whose?.client,
          jti: attempt.whose?.jti,
          reason: attempt.reason,
        },
        'auth failed',
      );
      return;
    }
    if (attempt.ownLine) this.tally.overLineBudget += 1;
    else this.tally.overFailureLimit += 1;
    if (this.tally.sources.size < MAX_COUNTED_SOURCES) this.tally.sources.add(attempt.source);
    // Last: the summary may be written at once, and must count this attempt.
    this.budget.countUnlogged();
  }

  /** Writes the summary still pending (the endpoint is closing). */
  flush(): void {
    this.budget.flush();
  }

  private summarize(unlogged: number): void {
    const { overLineBudget, overFailureLimit, sources } = this.tally;
    this.tally = emptyTally();
    const [only] = sources.size === 1 ? sources : [];
    this.logger.warn(
      {
        unlogged,
        over_line_budget: overLineBudget,
        over_failure_limit: overFailureLimit,
        // Counted up to MAX_COUNTED_SOURCES.
        sources: sources.size,
        ...(only === undefined ? {} : { source: only }),
      },
      'auth failures not logged one by one',
    );
  }
}
