// The connections strangers can open for free: those that have not signed in (the control endpoint) or
// been routed (a vhost port's first request head, the TLS port's ClientHello). Each costs the server its
// buffers (~25 KiB with a request head under max_header_size) until a timeout cuts it, so they are capped
// per source and in all, as nginx's limit_conn would; a connection that signed in or was routed no longer
// counts, and nothing is counted per frame or per byte. A burst from one source past its cap (clients behind
// one NAT reconnecting, a page load, a load test) is let in up to BURST_PER_SOURCE_FACTOR times the cap, but
// each of those gets BURST_DEADLINE_MS to settle, not a whole timeout: a source that answers is served, one
// that stalls holds its cap's worth of connections for long, as before.
// A kept-alive http connection's next head counts too, from its first bytes to its end: Node parses it
// out of sight, so a slow second head looked like an idle connection, and one source held 2,500 of them
// (70 -> 221 MiB) where its first heads were capped at 256. An idle connection between requests does not
// count, nor does a next request that arrives whole (a load test's busy connections).
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { LimitWarning, type Logger, resetConnection } from '@porthole/protocol';
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

/** One time a connection counts as pending: its source, and the socket to reset if it is refused. */
interface Counting {
  source: string;
  socket: Duplex;
}

/** Counts the pending connections of every public port of a server, by source. */
export class PendingConnections {
  private readonly bySource = new Map<string, number>();
  /** Each pending connection's counting. */
  private readonly countedOf = new WeakMap<object, Counting>();
  /**
   * Kept-alive connections between requests: the sockets (a TLS one's, not its TCP socket's) whose 'data'
   * listener waits for the bytes of a next head.
   */
  private readonly watchedForNextHead = new WeakSet<object>();
  /** Connections whose close is listened for (once each, for its lifetime). */
  private readonly watched = new WeakSet<object>();
  private pending = 0;
  private refusedTotal = 0;
  private lastRefusedSource = '';
  private readonly warning: LimitWarning;
  // One listener for every connection, not a closure each: an emitter calls it with itself as `this`.
  private readonly onClose: (this: Duplex) => void;
  /**
   * A connection let in past its source's cap is still pending: reset. Only the counting that set the timer:
   * a connection settled since and counted again (its next head) has a timer of its own, or none.
   */
  private readonly expireBurst = (connection: Duplex, counting: Counting): void => {
    if (this.countedOf.get(connection) !== counting) return;
    this.settle(connection);
    this.refuse(counting.source, counting.socket);
  };
  private readonly onNextHeadBytes: (this: Duplex) => void;

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
    this.onNextHeadBytes = function (this: Duplex) {
      // Still called for the chunk that held a whole request, which settle() has taken off the watch.
      if (!pending.watchedForNextHead.delete(this)) return;
      this.off('data', pending.onNextHeadBytes);
      pending.enter(connectionOf(this), this);
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
    return this.enter(socket, socket);
  }

  /**
   * The kept-alive connection under `socket` (a TLS socket's too) has answered every request it had and
   * waits for the next. Bytes that arrive and are not a whole request are the start of a next head: from
   * then it is pending again, as a new connection would be (counted, or reset over the caps), until that
   * request comes.
   */
  rest(socket: Duplex): void {
    const connection = connectionOf(socket);
    if (!socket.writable || connection.destroyed || this.countedOf.has(connection)) return;
    if (this.watchedForNextHead.has(socket)) return;
    this.watchedForNextHead.add(socket);
    this.watch(connection);
    // After Node's own 'data' listener, which parses each chunk first: a chunk that holds the whole next
    // request has settled it by the time this one runs. (A 'data' listener makes Node parse a plain socket's
    // bytes in JavaScript from then on, as it does a TLS socket's: ~2 us per request.)
    socket.on('data', this.onNextHeadBytes);
  }

  /** Counts `connection` as pending (resetting `socket` over the caps); false when it was refused. */
  private enter(connection: Duplex, socket: Duplex): boolean {
    const address = (connection as Socket).remoteAddress;
    const source = failureSource(address ?? 'unknown');
    const { perSource, total } = this.limits();
    const count = this.bySource.get(source) ?? 0;
    const overSourceCap = count >= perSource && !this.trusted().contains(address);
    if ((overSourceCap && count >= perSource * BURST_PER_SOURCE_FACTOR) || this.pending >= total) {
      this.refuse(source, socket);
      return false;
    }
    this.bySource.set(source, count + 1);
    this.pending += 1;
    const counting: Counting = { source, socket };
    this.countedOf.set(connection, counting);
    this.watch(connection);
    if (overSourceCap) setTimeout(this.expireBurst, BURST_DEADLINE_MS, connection, counting).unref();
    return true;
  }

  private watch(connection: Duplex): void {
    if (this.watched.has(connection)) return;
    this.watched.add(connection);
    connection.once('close', this.onClose);
  }

  private refuse(source: string, socket: Duplex): void {
    this.refusedTotal += 1;
    this.lastRefusedSource = source;
    this.warning.count();
    resetConnection(socket);
  }

  /**
   * The connection under `socket` (a TLS socket's too) signed in, was routed or got its next request: it
   * counts no longer. Nothing for one that is not counted.
   */
  settle(socket: Duplex): void {
    const connection = connectionOf(socket);
    if (this.watchedForNextHead.delete(socket)) socket.off('data', this.onNextHeadBytes);
    const counted = this.countedOf.get(connection);
    if (counted === undefined) return;
    this.countedOf.delete(connection);
    this.pending -= 1;
    const count = (this.bySource.get(counted.source) ?? 1) - 1;
    if (count === 0) this.bySource.delete(counted.source);
    else this.bySource.set(counted.source, count);
  }

  /** The server is stopping: reports the refusals not logged yet. */
  flush(): void {
    this.warning.flush();
  }
}
