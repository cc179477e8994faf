import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { LimitWarning, type Logger } from '@porthole/protocol';

export interface ConnectionLimitOptions {
  client: string;
  proxy: string;
  /** Read at each new connection, so that a reload's new cap applies at once. */
  max: () => number;
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
  private readonly warning: LimitWarning;

  constructor(private readonly opts: ConnectionLimitOptions) {
    this.warning = new LimitWarning((refused) =>
      opts.logger.warn(
        {
          client: opts.client,
          proxy: opts.proxy,
          max_connections: opts.max(),
          open: this.open,
          refused,
        },
        'connection limit reached: new visitors refused',
      ),
    );
  }

  /** The limit now (a reload may change it). */
  readonly max = (): number => this.opts.max();

  /** Counts `socket` until it closes and returns true; or resets it (RST) and returns false. */
  admit(socket: Socket): boolean {
    if (this.take(socket)) return true;
    socket.resetAndDestroy();
    return false;
  }

  /** Counts `socket` until it closes and returns true; or counts a refusal and returns false. */
  take(socket: Duplex): boolean {
    if (this.open >= this.opts.max()) {
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
