// The connections strangers can open for free: those that have not signed in (the control endpoint) or
// been routed (a vhost port's first request head, the TLS port's ClientHello). Each costs the server its
// buffers (~25 KiB with a request head under max_header_size) until a timeout cuts it, so they are capped
// per source and in all, as nginx's limit_conn would; a connection that signed in or was routed no longer
// counts, and nothing is counted per frame or per byte. A burst from one source past its cap (clients behind
// one NAT reconnecting, a page load, a load test) is let in up to BURST_PER_SOURCE_FACTOR times the cap, but
// each of those gets BURST_DEADLINE_MS to settle, not a whole timeout: a source that answers is served, one
// that stalls holds its cap's worth of connections for long, as before.
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { LimitWarning, type Logger } from '@porthole/protocol';
import { failureSource } from './auth.js';
import { connectionOf } from './peer-address.js';
import type { TrustedProxies } from './trusted-proxies.js';

export interface PendingLimits {
  /** Pending connections one source (an IPv4 address, an IPv6 /64) may have at once. */
  perSource: number;
  /** Pending connections from every source together. */
  total: number;
}

/** A source past its cap may have this many times the cap pending, the connections past it only briefly. */
export const BURST_PER_SOURCE_FACTOR = 4;
/** A connection past its source's cap is reset if it is still pending this long after it came. */
export const BURST_DEADLINE_MS = 3_000;

/** Counts the pending connections of every public port of a server, by source. */
export class PendingConnections {
  private readonly bySource = new Map<string, number>();
  /** Each pending connection's source; a connection that is not here does not count. */
  private readonly sourceOf = new WeakMap<object, string>();
  private pending = 0;
  private refusedTotal = 0;
  private lastRefusedSource = '';
  private readonly warning: LimitWarning;
  // One listener for every connection, not a closure each: an emitter calls it with itself as `this`.
  private readonly onClose: (this: Duplex) => void;
  private readonly expireBurst = (socket: Socket): void => {
    const source = this.sourceOf.get(socket);
    if (source !== undefined) this.refuse(source, socket);
  };

  /**
   * `limits` is read at each new connection, so that a reload's new caps apply at once. A source in
   * `trusted` (trusted_proxies: a load balancer or CDN in front, every visitor behind one address) is held to
   * the total cap only.
   */
  constructor(
    private readonly limits: () => PendingLimits,
    private readonly trusted: () => TrustedProxies,
    logger: Logger,
  ) {
    this.warning = new LimitWarning((refused) => {
      const { perSource, total } = this.limits();
      logger.warn(
        {
          refused,
          source: this.lastRefusedSource,
          max_pending_per_source: perSource,
          max_pending_connections: total,
          pending: this.pending,
        },
        'pending connection limit reached: new connections refused',
      );
    });
    const pending = this;
    this.onClose = function (this: Duplex) {
      pending.settle(this);
    };
  }

  /** Connections pending now. */
  get open(): number {
    return this.pending;
  }

  /** Connections refused since start. */
  get refused(): number {
    return this.refusedTotal;
  }

  /**
   * A new connection: counted until settle() or its close, and true; or, over a cap, reset at once (no TLS
   * handshake, nothing parsed), counted as refused, and false. One past its source's cap but within a burst's
   * allowance is admitted, and reset (and counted as refused) if it is still pending at BURST_DEADLINE_MS.
   */
  admit(socket: Socket): boolean {
    const source = failureSource(socket.remoteAddress ?? 'unknown');
    const { perSource, total } = this.limits();
    const count = this.bySource.get(source) ?? 0;
    const overSourceCap = count >= perSource && !this.trusted().contains(socket.remoteAddress);
    if ((overSourceCap && count >= perSource * BURST_PER_SOURCE_FACTOR) || this.pending >= total) {
      this.refuse(source, socket);
      return false;
    }
    this.bySource.set(source, count + 1);
    this.pending += 1;
    this.sourceOf.set(socket, source);
    socket.once('close', this.onClose);
    if (overSourceCap) setTimeout(this.expireBurst, BURST_DEADLINE_MS, socket).unref();
    return true;
  }

  private refuse(source: string, socket: Socket): void {
    this.refusedTotal += 1;
    this.lastRefusedSource = source;
    this.warning.count();
    socket.resetAndDestroy();
  }

  /**
   * The connection under `socket` (a TLS socket's too) signed in or was routed: it counts no longer. Nothing
   * for one that is not pending.
   */
  settle(socket: Duplex): void {
    const connection = connectionOf(socket);
    const source = this.sourceOf.get(connection);
    if (source === undefined) return;
    this.sourceOf.delete(connection);
    connection.off('close', this.onClose);
    this.pending -= 1;
    const count = (this.bySource.get(source) ?? 1) - 1;
    if (count === 0) this.bySource.delete(source);
    else this.bySource.set(source, count);
  }

  /** The server is stopping: reports the refusals not logged yet. */
  flush(): void {
    this.warning.flush();
  }
}
