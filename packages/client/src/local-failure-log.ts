import { LineBudget, type Logger } from '@porthole/protocol';

/** 'local connect failed' lines per proxy per 10 s; past it the failures are summed up. */
const LOCAL_FAILURE_LINES = 20;

/**
 * The 'local connect failed' lines of every proxy. A line per visitor is worth having (its conn matches the
 * server's line), but a scan of a port whose local service is down would write one per probe: past
 * LOCAL_FAILURE_LINES in 10 s a proxy's failures are counted and reported in one line per 10 s.
 */
export class LocalFailureLog {
  private readonly budgets = new Map<string, LineBudget>();

  constructor(private readonly logger: Logger) {}

  /**
   * `known`: the proxy is configured here (any other name shares one budget, so the map stays small). A socks5
   * proxy's refusals (wrong password, a destination not allowed) share its budget, under their own `msg`.
   */
  failed(
    fields: { proxy: string; reason: string } & Record<string, unknown>,
    known: boolean,
    msg = 'local connect failed',
  ): void {
    const key = known ? fields.proxy : '';
    let budget = this.budgets.get(key);
    if (!budget) {
      budget = new LineBudget(LOCAL_FAILURE_LINES, (unlogged) =>
        this.logger.warn({ proxy: fields.proxy, unlogged }, 'local connect failures not logged one by one'),
      );
      this.budgets.set(key, budget);
    }
    if (budget.take()) this.logger.warn(fields, msg);
  }
}
