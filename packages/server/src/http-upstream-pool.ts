// The tunnel streams one http proxy forwards requests on: a stream carries request after request (HTTP
// keep-alive to the local service), the most recently used idle one is handed out first, at most
// `maxStreams` carry requests at once (more wait their turn) and idle ones are closed after a while.
// A stream that comes back clean is always kept: the busy cap already bounds how many exist, and a cap
// on idle ones below it would close streams that the very next requests reopen (with more visitors than
// that cap, a stream and a local connection per request).
// A request whose stream has been busy for HELD_AFTER_MS stops counting against `maxStreams` once another
// request would have to wait: Server-Sent Events and long-polls hold their stream for minutes, and with
// `maxStreams` of them every other visitor of the site waited (256 held event streams: ordinary requests
// waited 8.5 s, until one ended, where direct they took 0.4 ms). Held streams are bounded on their own, by
// `maxHeld` (the proxy's connection limit, as its WebSockets are), so the cap still meters bursts of short
// requests onto few local connections, and a proxy still holds a bounded number of streams.
import type { Duplex } from 'node:stream';
import { type ConnectionOwner, UpstreamConnection } from './http-upstream-connection.js';

/** A stream busy this long with one request is held (SSE, a long-poll, a slow upload or download). */
export const HELD_AFTER_MS = 1000;
/** A pooled stream unused for this long is closed (the local service's keep-alive is often 5 s). */
const FREE_STREAM_IDLE_MS = 15_000;
/**
 * Requests that wait for a stream at most, per proxy: this many, or four per stream if more. Past it a
 * request is answered at once (503) rather than held with its visitor's connection and its timer.
 */
export const MIN_WAITING_REQUESTS = 1024;

/** The proxy's streams are all busy and as many requests as it may hold wait for them already. */
export class WaitingRequestsFull extends Error {
  constructor(readonly limit: number) {
    super(`${limit} requests already wait for one of the proxy's tunnel streams`);
  }
}

/** Who opened a connection, as the stream header tells the client. */
export interface Visitor {
  address: string;
  port: number;
  /** The server's side of the visitor's connection. */
  destAddress: string | undefined;
  destPort: number | undefined;
}

export interface UpstreamPoolOptions {
  /** Opens a new tunnel stream to the owning client (its header already written). */
  openStream(visitor: Visitor): Duplex;
  /** Streams carrying requests at once for this proxy; more requests wait for one to be free. Read each
   * time, so that a reload applies at once. */
  maxStreams: () => number;
  /** Streams held by long requests, past `maxStreams`, at most; read each time too. */
  maxHeld: () => number;
  /** A request has to wait for a stream (every one busy, and held ones at `maxHeld` or too young). */
  onWait?: () => void;
  /** Largest response head taken from the service (maxResponseHead); default 64 KiB. */
  maxResponseHead?: number;
}

/** Called with a connection to send one request on, or with why there will be none. */
export type Acquired = (err: Error | undefined, conn: UpstreamConnection | undefined) => void;

interface Waiter {
  visitor: Visitor;
  then: Acquired;
}

export class UpstreamPool implements ConnectionOwner {
  /** Idle connections, oldest first: handed out from the end. */
  private readonly free: UpstreamConnection[] = [];
  private readonly all = new Set<UpstreamConnection>();
  /** Streams counted against `maxStreams`, each with when its request began, oldest first. */
  private readonly busySince = new Map<UpstreamConnection, number>();
  /** Streams busy for HELD_AFTER_MS that no longer count against `maxStreams`. */
  private readonly held = new Set<UpstreamConnection>();
  private heldTimer: NodeJS.Timeout | undefined;
  /** In arrival order; a Set, so that a visitor leaving its place is not a scan of the queue. */
  private readonly waiting = new Set<Waiter>();
  private sweepTimer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(private readonly opts: UpstreamPoolOptions) {}

  /** Streams open now (busy and idle), for tests and status. */
  get size(): number {
    return this.all.size;
  }

  /**
   * A connection for one request: an idle one, a new one, or (with `maxStreams` busy) the next to come
   * free. Returns a cancel function for a visitor that leaves while waiting.
   */
  acquire(visitor: Visitor, then: Acquired): () => void {
    if (this.closed) {
      then(new Error('the proxy is closed'), undefined);
      return noop;
    }
    if (this.busy < this.opts.maxStreams() || this.moveHeld()) {
      then(undefined, this.take(this.free.pop() ?? this.open(visitor)));
      return noop;
    }
    const limit = Math.max(MIN_WAITING_REQUESTS, 4 * this.opts.maxStreams());
    if (this.waiting.size >= limit) {
      then(new WaitingRequestsFull(limit), undefined);
      return noop;
    }
    const waiter = { visitor, then };
    this.waiting.add(waiter);
    this.opts.onWait?.();
    this.armHeldTimer();
    return () => {
      this.waiting.delete(waiter);
    };
  }

  private get busy(): number {
    return this.busySince.size;
  }

  private take(conn: UpstreamConnection): UpstreamConnection {
    this.busySince.set(conn, performance.now());
    return conn;
  }

  /**
   * Moves the streams busy for HELD_AFTER_MS out of the count against `maxStreams`, as many as `maxHeld`
   * allows; true if that freed a place.
   */
  private moveHeld(): boolean {
    const cutoff = performance.now() - HELD_AFTER_MS;
    const before = this.busy;
    for (const [conn, since] of this.busySince) {
      if (since > cutoff || this.held.size >= this.opts.maxHeld()) break;
      this.busySince.delete(conn);
      this.held.add(conn);
    }
    return this.busy < before;
  }

  /** While requests wait, one timer for when the oldest busy stream turns held. */
  private armHeldTimer(): void {
    if (this.heldTimer || this.waiting.size === 0 || this.closed) return;
    const oldest = this.busySince.values().next().value;
    if (oldest === undefined || this.held.size >= this.opts.maxHeld()) return;
    const delay = Math.max(0, oldest + HELD_AFTER_MS - performance.now());
    this.heldTimer = setTimeout(() => {
      this.heldTimer = undefined;
      this.moveHeld();
      while (this.waiting.size > 0 && this.busy < this.opts.maxStreams()) this.serveWaiter();
      this.armHeldTimer();
    }, delay + 1);
  }

  private nextWaiter(): Waiter | undefined {
    for (const waiter of this.waiting) {
      this.waiting.delete(waiter);
      return waiter;
    }
    return undefined;
  }

  /**
   * The proxy is gone (unregistered, or the server drains): no more requests are taken and waiting ones
   * fail, idle streams close now, and busy ones once their exchange is over, as a tcp proxy's open
   * connections outlive its listener.
   */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.sweepTimer);
    clearTimeout(this.heldTimer);
    for (const conn of this.free.splice(0)) {
      this.all.delete(conn);
      conn.retire();
    }
    const waiters = [...this.waiting];
    this.waiting.clear();
    for (const waiter of waiters) waiter.then(new Error('the proxy is closed'), undefined);
  }

  /** Closes every stream, busy or idle; waiting requests fail. */
  destroy(): void {
    this.close();
    for (const conn of this.all) conn.destroy();
  }

  exchangeDone(conn: UpstreamConnection, reusable: boolean): void {
    if (!this.held.delete(conn)) this.busySince.delete(conn);
    if (reusable && !this.closed) {
      const waiter = this.nextWaiter();
      if (waiter) {
        waiter.then(undefined, this.take(conn));
        return;
      }
      // Past the cap only after a reload lowered it: the surplus closes as it comes free.
      if (this.free.length < this.opts.maxStreams()) {
        conn.idleSince = performance.now();
        this.free.push(conn);
        this.startSweeping();
        return;
      }
    }
    conn.retire();
    this.serveWaiter();
  }

  gone(conn: UpstreamConnection): void {
    if (!this.all.delete(conn)) return;
    const at = this.free.indexOf(conn);
    if (at >= 0) this.free.splice(at, 1);
  }

  private open(visitor: Visitor): UpstreamConnection {
    const conn = new UpstreamConnection(this.opts.openStream(visitor), this, this.opts.maxResponseHead);
    this.all.add(conn);
    return conn;
  }

  private serveWaiter(): void {
    if (this.closed || this.busy >= this.opts.maxStreams()) return;
    const waiter = this.nextWaiter();
    if (!waiter) return;
    waiter.then(undefined, this.take(this.free.pop() ?? this.open(waiter.visitor)));
  }

  /** One timer per pool, not one per request: idle streams are closed within 1.5x FREE_STREAM_IDLE_MS. */
  private startSweeping(): void {
    if (this.sweepTimer) return;
    this.sweepTimer = setInterval(() => {
      const cutoff = performance.now() - FREE_STREAM_IDLE_MS;
      while (this.free.length > 0 && this.free[0]!.idleSince <= cutoff) {
        const conn = this.free.shift()!;
        this.all.delete(conn);
        conn.retire();
      }
      if (this.free.length === 0) {
        clearInterval(this.sweepTimer);
        this.sweepTimer = undefined;
      }
    }, FREE_STREAM_IDLE_MS / 2);
    this.sweepTimer.unref();
  }
}

function noop(): void {}
