// The connections strangers can open for free: those that have not signed in (the control endpoint) or
// been routed (a vhost port's first request head, the TLS port's ClientHello). Each costs the server its
// buffers (~25 KiB with a request head under max_header_size) until a timeout cuts it, so they are capped
// per source and in all, as nginx's limit_conn would; a connection that signed in or was routed no longer
// counts, and nothing is counted per frame or per byte. A burst from one source past its cap (clients behind
// one NAT reconnecting, a page load, a load test) is let in up to BURST_PER_SOURCE_FACTOR times the cap, but
// each of those gets BURST_DEADLINE_MS to settle, not a whole timeout: a source that answers is served, one
// that stalls holds its cap's worth of connections for long, as before.
// A kept-alive visitor connection between requests counts too: Node parses its next head out of sight, so
// a slow second head looks like an idle connection, and one source could hold thousands of them (2,500
// took a server from 71 to 227 MiB) where its first heads were capped. Such connections are not refused
// but closed, the oldest first, to make room under the caps, as nginx reuses its keepalive connections.
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

/** How a counted connection counts: before its first request (sign-in, ClientHello), or between requests. */
interface Counted {
  source: string;
  resting: boolean;
}

/** Counts the pending connections of every public port of a server, by source. */
export class PendingConnections {
  /** Pending and resting connections of each source. */
  private readonly bySource = new Map<string, number>();
  /** Each counted connection; a connection that is not here does not count. */
  private readonly countedOf = new WeakMap<object, Counted>();
  /** Kept-alive connections between requests, the oldest first: all of them, and each source's. */
  private readonly resting = new Set<Duplex>();
  private readonly restingBySource = new Map<string, Set<Duplex>>();
  /** Connections whose close is listened for (once each, for its lifetime). */
  private readonly watched = new WeakSet<object>();
  private pending = 0;
  private refusedTotal = 0;
  private closedRestingTotal = 0;
  private lastRefusedSource = '';
  private lastClosedSource = '';
  private readonly warning: LimitWarning;
  private readonly restingWarning: LimitWarning;
  // One listener for every connection, not a closure each: an emitter calls it with itself as `this`.
  private readonly onClose: (this: Duplex) => void;
  private readonly expireBurst = (socket: Socket): void => {
    const counted = this.countedOf.get(socket);
    if (counted !== undefined && !counted.resting) this.refuse(counted.source, socket);
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
    this.restingWarning = new LimitWarning((closed) => {
      const { perSource, total } = this.limits();
      logger.info(
        {
          closed,
          source: this.lastClosedSource,
          max_pending_per_source: perSource,
          max_pending_connections: total,
          between_requests: this.resting.size,
        },
        'kept-alive http connections closed between requests to make room under the pending connection limits',
      );
    });
    const pending = this;
    this.onClose = function (this: Duplex) {
      pending.settle(this);
    };
  }

  /** Connections pending now (not counting those between requests). */
  get open(): number {
    return this.pending;
  }

  /** Kept-alive connections between requests now. */
  get betweenRequests(): number {
    return this.resting.size;
  }

  /** Connections refused since start. */
  get refused(): number {
    return this.refusedTotal;
  }

  /** Kept-alive connections closed between requests to make room, since start. */
  get closedBetweenRequests(): number {
    return this.closedRestingTotal;
  }

  /**
   * A new connection: counted until settle() or its close, and true; or, over a cap, reset at once (no TLS
   * handshake, nothing parsed), counted as refused, and false. A cap reached with connections between
   * requests closes the oldest of them instead (the source's own for its cap). One past its source's cap
   * but within a burst's allowance is admitted, and reset (and counted as refused) if it is still pending
   * at BURST_DEADLINE_MS.
   */
  admit(socket: Socket): boolean {
    const source = failureSource(socket.remoteAddress ?? 'unknown');
    const { perSource, total } = this.limits();
    const trusted = this.trusted().contains(socket.remoteAddress);
    if (!trusted && (this.bySource.get(source) ?? 0) >= perSource)
      this.closeOldest(this.restingBySource.get(source));
    if (this.pending + this.resting.size >= total) this.closeOldest(this.resting);
    const count = this.bySource.get(source) ?? 0;
    const overSourceCap = count >= perSource && !trusted;
    if (
      (overSourceCap && count >= perSource * BURST_PER_SOURCE_FACTOR) ||
      this.pending + this.resting.size >= total
    ) {
      this.refuse(source, socket);
      return false;
    }
    this.count(socket, { source, resting: false });
    this.pending += 1;
    if (overSourceCap) setTimeout(this.expireBurst, BURST_DEADLINE_MS, socket).unref();
    return true;
  }

  /**
   * The kept-alive connection under `socket` has answered every request it had and waits for the next: it
   * counts again, as one that can be closed to make room, until its next request (settle()) or its close.
   * Over its source's cap or the total, the oldest such connection is closed at once.
   */
  rest(socket: Duplex): void {
    const connection = connectionOf(socket);
    if (!socket.writable || connection.destroyed || this.countedOf.has(connection)) return;
    const source = failureSource((connection as Socket).remoteAddress ?? 'unknown');
    this.count(connection, { source, resting: true });
    this.resting.add(connection);
    let ofSource = this.restingBySource.get(source);
    if (!ofSource) {
      ofSource = new Set();
      this.restingBySource.set(source, ofSource);
    }
    ofSource.add(connection);
    const { perSource, total } = this.limits();
    if (
      (this.bySource.get(source) ?? 0) > perSource &&
      !this.trusted().contains((connection as Socket).remoteAddress)
    )
      this.closeOldest(ofSource);
    if (this.pending + this.resting.size > total) this.closeOldest(this.resting);
  }

  private count(connection: Duplex, counted: Counted): void {
    this.countedOf.set(connection, counted);
    this.bySource.set(counted.source, (this.bySource.get(counted.source) ?? 0) + 1);
    if (this.watched.has(connection)) return;
    this.watched.add(connection);
    connection.once('close', this.onClose);
  }

  /** Closes the oldest connection between requests in `resting`, if there is one. */
  private closeOldest(resting: ReadonlySet<Duplex> | undefined): void {
    const oldest = resting?.values().next().value;
    if (oldest === undefined) return;
    const source = this.countedOf.get(oldest)?.source ?? '';
    this.settle(oldest);
    this.closedRestingTotal += 1;
    this.lastClosedSource = source;
    this.restingWarning.count();
    oldest.destroy();
  }

  private refuse(source: string, socket: Socket): void {
    this.refusedTotal += 1;
    this.lastRefusedSource = source;
    this.warning.count();
    socket.resetAndDestroy();
  }

  /**
   * The connection under `socket` (a TLS socket's too) signed in, was routed or got its next request: it
   * counts no longer. Nothing for one that is not counted.
   */
  settle(socket: Duplex): void {
    const connection = connectionOf(socket);
    const counted = this.countedOf.get(connection);
    if (counted === undefined) return;
    this.countedOf.delete(connection);
    if (counted.resting) {
      this.resting.delete(connection);
      const ofSource = this.restingBySource.get(counted.source);
      ofSource?.delete(connection);
      if (ofSource?.size === 0) this.restingBySource.delete(counted.source);
    } else {
      this.pending -= 1;
    }
    const count = (this.bySource.get(counted.source) ?? 1) - 1;
    if (count === 0) this.bySource.delete(counted.source);
    else this.bySource.set(counted.source, count);
  }

  /** The server is stopping: reports the refusals not logged yet. */
  flush(): void {
    this.warning.flush();
    this.restingWarning.flush();
  }
}
