import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { LimitWarning, type Logger } from '@porthole/protocol';

/** The config key a limit comes from, as its warning names it: a private udp service's visits count flows. */
export type LimitKey = 'max_connections' | 'max_flows';

export interface ConnectionLimitOptions {
  client: string;
  proxy: string;
  /** Read at each new connection, so that a reload's new cap applies at once. */
  max: () => number;
  key: LimitKey;
  logger: Logger;
  /** Counts one refusal where the admin API and /metrics read it. */
  onRefused: () => void;
}

/**
 * The visitor connections one tcp or tls proxy (or an http proxy's upgraded connections) has open, against
 * its max_connections. A connection over the limit is refused (reset, or answered 503) before a tunnel
 * stream is opened for it: it costs the server a socket for an instant and the client nothing, so a flood on
 * one public port cannot take the streams (or the server memory) that its client's other proxies need.
 */
export class ConnectionLimit {
  private open = 0;
  private maxNow: () => number;
  private key: LimitKey;
  private readonly warning: LimitWarning;

  constructor(private readonly opts: ConnectionLimitOptions) {
    this.maxNow = opts.max;
    this.key = opts.key;
    this.warning = new LimitWarning((refused) =>
      opts.logger.warn(
        {
          client: opts.client,
          proxy: opts.proxy,
          [this.key]: this.maxNow(),
          open: this.open,
          refused,
        },
        'connection limit reached: new visitors refused',
      ),
    );
  }

  /** The limit now (a reload may change it). */
  readonly max = (): number => this.maxNow();

  /** The config key it comes from, for messages that name it. */
  get limitKey(): LimitKey {
    return this.key;
  }

  /** Connections open now. */
  get openConnections(): number {
    return this.open;
  }

  /** True while one more connection would be admitted. */
  hasRoom(): boolean {
    return this.open < this.maxNow();
  }

  /** The proxy registered again with a new spec: its cap from now on, over the connections still open. */
  capAt(max: () => number, key: LimitKey): void {
    this.maxNow = max;
    this.key = key;
  }

  /** Counts `socket` until it closes and returns true; or resets it (RST) and returns false. */
  admit(socket: Socket): boolean {
    if (this.take(socket)) return true;
    socket.resetAndDestroy();
    return false;
  }

  /** Counts `socket` until it closes and returns true; or counts a refusal and returns false. */
  take(socket: Duplex): boolean {
    if (this.open >= this.maxNow()) {
      this.opts.onRefused();
      this.warning.count();
      return false;
    }
    this.open += 1;
    socket.once('close', this.release);
    return true;
  }

  // One function for every connection, not a closure each.
  private readonly release = (): void => {
    this.open -= 1;
  };

  /** The proxy is closing: reports the refusals not logged yet. */
  close(): void {
    this.warning.flush();
  }
}

/**
 * One client session's connection limits, by proxy name. A proxy registered again under its name (a
 * client's reload unregisters and registers a changed one) takes over its old limit, with the connections
 * still open on it: counting from 0 again let a lowered max_connections admit as many more as were open.
 */
export class ConnectionLimits {
  private readonly byProxy = new Map<string, ConnectionLimit>();

  constructor(
    private readonly create: (proxy: string, max: () => number, key: LimitKey) => ConnectionLimit,
  ) {}

  /** The limit of `proxy`, capped at `max` (its config `key`) from now on. */
  for(proxy: string, max: () => number, key: LimitKey = 'max_connections'): ConnectionLimit {
    // A limit with nothing open holds nothing worth carrying over: the map keeps only those that do.
    for (const [name, limit] of this.byProxy) if (limit.openConnections === 0) this.byProxy.delete(name);
    const kept = this.byProxy.get(proxy);
    if (kept) {
      kept.capAt(max, key);
      return kept;
    }
    const limit = this.create(proxy, max, key);
    this.byProxy.set(proxy, limit);
    return limit;
  }
}
