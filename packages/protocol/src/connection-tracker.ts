import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { pipeBidirectional } from './pipe-bidirectional.js';

export interface CarryOptions {
  /** Names of `a` and `b` in close reasons, e.g. ["visitor", "tunnel"]. */
  labels: readonly [string, string];
  logger: Logger;
  /** Fields for the "connection closed" line: proxy, conn, remote_addr, client... */
  fields: Record<string, unknown>;
}

/**
 * The tunnelled connections one process carries: ids for logs, a count for draining on SIGTERM, and one
 * "connection closed" log line per connection. `bytes_in` is what flowed from `a` to `b` (towards the
 * local service on both ends), `bytes_out` the reply direction.
 */
export class ConnectionTracker {
  private open = 0;
  private lastId = 0;
  private idleWaiters: (() => void)[] = [];

  get size(): number {
    return this.open;
  }

  nextId(): number {
    this.lastId += 1;
    return this.lastId;
  }

  carry(a: Duplex, b: Duplex, opts: CarryOptions): void {
    this.open += 1;
    pipeBidirectional(a, b, { labels: opts.labels }, (result) => {
      this.open -= 1;
      opts.logger.info(
        {
          ...opts.fields,
          bytes_in: result.bytesAtoB,
          bytes_out: result.bytesBtoA,
          ms: result.ms,
          reason: result.reason,
        },
        'connection closed',
      );
      if (this.open === 0) {
        const waiters = this.idleWaiters;
        this.idleWaiters = [];
        for (const waiter of waiters) waiter();
      }
    });
  }

  /** Resolves true once no connection is open, or false after `timeoutMs`. */
  waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.open === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = () => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.idleWaiters = this.idleWaiters.filter((w) => w !== waiter);
        resolve(false);
      }, timeoutMs);
      this.idleWaiters.push(waiter);
    });
  }
}
