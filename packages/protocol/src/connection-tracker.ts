import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { IdleWaiters } from './idle-waiters.js';
import {
  type PipeLimits,
  type PipeOptions,
  type PipeProgress,
  type PipeResult,
  pipeBidirectional,
} from './pipe-bidirectional.js';

export interface CarryOptions {
  /** Names of `a` and `b` in close reasons, e.g. ["visitor", "tunnel"]. */
  labels: readonly [string, string];
  logger: Logger;
  /** Fields for the "connection closed" line: proxy, conn, remote_addr, client... */
  fields: Record<string, unknown>;
  /** Bytes the caller passed between `a` and `b` itself before carrying began (see PipeOptions). */
  alreadyMoved?: PipeProgress;
  /** Budgets per direction (see PipeOptions). */
  limits?: PipeLimits;
}

/** A connection being carried: what the admin API lists and the metrics count while it is open. */
export interface TrackedConnection {
  /** The fields of its "connection closed" line (client, proxy, conn, remote_addr...). */
  readonly fields: Readonly<Record<string, unknown>>;
  /** Date.now() when carrying began. */
  readonly startedAt: number;
  /** Live byte counts: `bytesAtoB` towards the local service (bytes_in), `bytesBtoA` the reply. */
  readonly progress: PipeProgress;
}

export type ConnectionClosedListener = (connection: TrackedConnection, result: PipeResult) => void;

/**
 * The tunnelled connections one process carries: ids for logs, the open ones (for draining on SIGTERM
 * and for the admin API), and one "connection closed" log line per connection. `bytes_in` is what flowed
 * from `a` to `b` (towards the local service on both ends), `bytes_out` the reply direction.
 */
export class ConnectionTracker {
  private readonly live = new Set<TrackedConnection>();
  private lastId = 0;
  private readonly idleWaiters = new IdleWaiters();
  private closedListeners: ConnectionClosedListener[] = [];

  get size(): number {
    return this.live.size;
  }

  nextId(): number {
    this.lastId += 1;
    return this.lastId;
  }

  /** The connections open right now. */
  connections(): IterableIterator<TrackedConnection> {
    return this.live.values();
  }

  /** Calls `listener` after each connection closed (after its log line); returns an unsubscribe function. */
  onClosed(listener: ConnectionClosedListener): () => void {
    this.closedListeners.push(listener);
    return () => {
      this.closedListeners = this.closedListeners.filter((l) => l !== listener);
    };
  }

  carry(a: Duplex, b: Duplex, opts: CarryOptions): TrackedConnection {
    const startedAt = Date.now();
    let connection: TrackedConnection | undefined;
    const pipeOptions: PipeOptions = { labels: opts.labels };
    if (opts.alreadyMoved) pipeOptions.alreadyMoved = opts.alreadyMoved;
    if (opts.limits) pipeOptions.limits = opts.limits;
    const progress = pipeBidirectional(a, b, pipeOptions, (result) => {
      // The pipe may finish in a later tick only, so `connection` is always set here.
      if (connection) this.live.delete(connection);
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
      if (connection) for (const listener of this.closedListeners) listener(connection, result);
      if (this.live.size === 0) this.idleWaiters.idle();
    });
    connection = { fields: opts.fields, startedAt, progress };
    this.live.add(connection);
    return connection;
  }

  /** Resolves true once no connection is open, or false after `timeoutMs`. */
  waitIdle(timeoutMs: number): Promise<boolean> {
    return this.idleWaiters.wait(this.live.size === 0, timeoutMs);
  }
}
