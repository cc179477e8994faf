import { type ConnectionTracker, IdleWaiters, type TrackedConnection } from '@porthole/protocol';

export interface ProxyTotals {
  client: string;
  proxy: string;
  /** Connections closed so far plus those open now. */
  connections: number;
  /** Open now. */
  open: number;
  /** Bytes from visitors towards the client's service (closed connections plus what open ones moved). */
  bytesIn: number;
  /** Bytes from the service back to visitors. */
  bytesOut: number;
  /** Visitors turned away because the proxy had max_connections open. */
  refused: number;
}

interface ClosedTotals {
  connections: number;
  bytesIn: number;
  bytesOut: number;
  refused: number;
  /** Date.now() when this proxy was last registered or carrying a connection. */
  lastActive: number;
}

/** Totals of a proxy that is gone (client left, proxy removed) are forgotten after this long. */
const RETAIN_INACTIVE_MS = 10 * 60_000;
/** Names whose totals are kept at most, when nothing reads them (snapshot() forgets the gone ones). */
const MAX_REMEMBERED_PROXIES = 10_000;

/**
 * One http request or udp flow while it lasts, counted like a tcp connection: the http proxy and the udp
 * listener add to its bytes as they move, the admin API reads them live.
 */
export interface Exchange {
  readonly client: string;
  readonly proxy: string;
  /** The udp flow's id in the log lines; null for a pooled http request, which has none of its own. */
  readonly conn: number | null;
  readonly remoteAddr: string;
  /** Date.now() at its start. */
  readonly startedAt: number;
  /** Towards the client's service: an http request's head and body, a udp flow's datagram payloads. */
  bytesIn: number;
  /** Back to the visitor: an http response as the service sent it, a udp flow's reply payloads. */
  bytesOut: number;
}

function keyOf(client: string, proxy: string): string {
  return `${client}\u0000${proxy}`;
}

function countsOf(closed: ClosedTotals): Omit<ProxyTotals, 'client' | 'proxy' | 'open'> {
  return {
    connections: closed.connections,
    bytesIn: closed.bytesIn,
    bytesOut: closed.bytesOut,
    refused: closed.refused,
  };
}

function namesOf(connection: TrackedConnection): { client: string; proxy: string } {
  return { client: String(connection.fields.client ?? ''), proxy: String(connection.fields.proxy ?? '') };
}

/**
 * Per-proxy traffic counters for the admin API and /metrics. Closed connections (tcp and tls connections,
 * http upgrades, and the http requests and udp flows counted as Exchanges) are folded into totals as they
 * end, open ones are added live, so every number only grows while its proxy exists (a Prometheus counter).
 * A proxy removed on purpose (remove()) is forgotten at once; one whose client went away keeps its totals
 * for a reconnect, and is forgotten after 10 minutes inactive, so memory and the /metrics series stay
 * bounded however many names come and go.
 */
export class ProxyTraffic {
  private readonly closed = new Map<string, ClosedTotals>();
  /**
   * Proxies removed on purpose whose connections may still be open: those are counted in the server-wide
   * figures only, so that the proxy's series do not come back when they close. Emptied by snapshot().
   */
  private readonly removed = new Set<string>();
  private readonly exchanges = new Set<Exchange>();
  /** Open http requests (the exchanges without a conn id): a draining server waits for them. */
  private httpRequests = 0;
  private readonly httpIdle = new IdleWaiters();

  constructor(private readonly tracker: ConnectionTracker) {
    tracker.onClosed((connection, result) => {
      const { client, proxy } = namesOf(connection);
      this.fold(client, proxy, result.bytesAtoB, result.bytesBtoA);
    });
  }

  /** Starts counting an http request or a udp flow; `end()` it when it is over. */
  begin(client: string, proxy: string, conn: number | null, remoteAddr: string): Exchange {
    const exchange: Exchange = {
      client,
      proxy,
      conn,
      remoteAddr,
      startedAt: Date.now(),
      bytesIn: 0,
      bytesOut: 0,
    };
    this.exchanges.add(exchange);
    if (conn === null) this.httpRequests += 1;
    return exchange;
  }

  /** Folds a finished exchange into its proxy's totals (once; later calls do nothing). */
  end(exchange: Exchange): void {
    if (this.release(exchange))
      this.fold(exchange.client, exchange.proxy, exchange.bytesIn, exchange.bytesOut);
  }

  /**
   * Stops counting an exchange that goes on as a tracked connection (an http upgrade answered 101), without
   * folding it: the tracker counts that connection, its handshake included, when it closes.
   */
  handOver(exchange: Exchange): void {
    this.release(exchange);
  }

  private release(exchange: Exchange): boolean {
    if (!this.exchanges.delete(exchange)) return false;
    if (exchange.conn === null && --this.httpRequests === 0) this.httpIdle.idle();
    return true;
  }

  get openHttpRequests(): number {
    return this.httpRequests;
  }

  /** Resolves true once no http request is open, false if `timeoutMs` passes first. */
  waitHttpIdle(timeoutMs: number): Promise<boolean> {
    return this.httpIdle.wait(this.httpRequests === 0, timeoutMs);
  }

  /**
   * `proxy` is no longer registered because its client removed it (a reload, or the client stopping) or the
   * server's rules no longer admit it: its totals and /metrics series go now, and a registration of the
   * name again counts from 0. Its connections still open are counted in the server-wide figures
   * (porthole_open_connections, /api/connections) until they close, no longer per proxy.
   */
  remove(client: string, proxy: string): void {
    const key = keyOf(client, proxy);
    this.closed.delete(key);
    this.removed.add(key);
    // Without an admin API nobody calls snapshot(), which empties the set.
    if (this.removed.size > MAX_REMEMBERED_PROXIES) this.forgetClosedRemovals();
  }

  /** `proxy` registered (again): counted as any other from now on. */
  registered(client: string, proxy: string): void {
    this.removed.delete(keyOf(client, proxy));
  }

  /**
   * `proxy`'s client went away without removing it (a dropped connection, a takeover): its totals are kept
   * for it to come back, RETAIN_INACTIVE_MS from now.
   */
  left(client: string, proxy: string): void {
    if (!this.removed.has(keyOf(client, proxy))) this.active(client, proxy);
  }

  /** Removed proxies with no connection open any more: nothing can count for them again. */
  private forgetClosedRemovals(): void {
    const open = new Set<string>();
    for (const connection of this.tracker.connections()) {
      const { client, proxy } = namesOf(connection);
      open.add(keyOf(client, proxy));
    }
    for (const x of this.exchanges) open.add(keyOf(x.client, x.proxy));
    for (const key of this.removed) if (!open.has(key)) this.removed.delete(key);
  }

  private fold(client: string, proxy: string, bytesIn: number, bytesOut: number): void {
    if (this.removed.has(keyOf(client, proxy))) return;
    const totals = this.active(client, proxy);
    totals.connections += 1;
    totals.bytesIn += bytesIn;
    totals.bytesOut += bytesOut;
  }

  /** The http requests and udp flows open right now. */
  openExchanges(): IterableIterator<Exchange> {
    return this.exchanges.values();
  }

  get openExchangeCount(): number {
    return this.exchanges.size;
  }

  /**
   * A tcpmux visitor whose stream reached the client but whose tunnel never opened (the local connect failed,
   * or the visitor left first). Counted as a connection because a tcp proxy's visitor in the same case is:
   * its stream opens at its accept, so the failed connect closes a connection the tracker already counts.
   * `bytesIn`: what it sent towards the service meanwhile (its early data).
   */
  countUnopened(client: string, proxy: string, bytesIn: number): void {
    this.fold(client, proxy, bytesIn, 0);
  }

  /** One visitor of `proxy` turned away by its connection limit. */
  countRefused(client: string, proxy: string): void {
    if (this.removed.has(keyOf(client, proxy))) return;
    this.active(client, proxy).refused += 1;
  }

  /** The totals of a proxy that just did something: moved to the end, so the map runs quietest first. */
  private active(client: string, proxy: string): ClosedTotals {
    const key = keyOf(client, proxy);
    const totals = this.entry(client, proxy);
    this.closed.delete(key);
    this.closed.set(key, totals);
    totals.lastActive = Date.now();
    return totals;
  }

  private entry(client: string, proxy: string): ClosedTotals {
    const key = keyOf(client, proxy);
    let totals = this.closed.get(key);
    if (!totals) {
      const now = Date.now();
      // Without an admin API nobody calls snapshot(), which forgets old names; past a cap, new names do.
      // (Only past it: a registered proxy's totals must not start over because nobody looked for a while.)
      if (this.closed.size >= MAX_REMEMBERED_PROXIES) this.forgetInactive(now);
      totals = { connections: 0, bytesIn: 0, bytesOut: 0, refused: 0, lastActive: now };
      this.closed.set(key, totals);
    }
    return totals;
  }

  /** Names quiet for RETAIN_INACTIVE_MS go; if that frees too little, the quietest tenth as well. */
  private forgetInactive(now: number): void {
    for (const [key, closed] of this.closed)
      if (now - closed.lastActive > RETAIN_INACTIVE_MS) this.closed.delete(key);
    let excess = this.closed.size - MAX_REMEMBERED_PROXIES + Math.ceil(MAX_REMEMBERED_PROXIES / 10);
    for (const key of this.closed.keys()) {
      if (excess-- <= 0) break;
      this.closed.delete(key);
    }
  }

  /**
   * Totals for every registered proxy (listed in `registered`, zeros if it has carried nothing) and every
   * proxy with open connections or recent history, but for those removed (remove()).
   */
  snapshot(registered: Iterable<{ client: string; proxy: string }>): Map<string, ProxyTotals> {
    this.forgetClosedRemovals();
    const now = Date.now();
    const out = new Map<string, ProxyTotals>();
    const row = (client: string, proxy: string): ProxyTotals => {
      const key = keyOf(client, proxy);
      let totals = out.get(key);
      if (!totals) {
        const closed = this.entry(client, proxy);
        totals = { client, proxy, ...countsOf(closed), open: 0 };
        out.set(key, totals);
      }
      return totals;
    };
    for (const { client, proxy } of registered) {
      row(client, proxy);
      this.entry(client, proxy).lastActive = now;
    }
    const addOpen = (client: string, proxy: string, bytesIn: number, bytesOut: number): void => {
      if (this.removed.has(keyOf(client, proxy))) return;
      const totals = row(client, proxy);
      totals.open += 1;
      totals.connections += 1;
      totals.bytesIn += bytesIn;
      totals.bytesOut += bytesOut;
      this.entry(client, proxy).lastActive = now;
    };
    for (const connection of this.tracker.connections()) {
      const { client, proxy } = namesOf(connection);
      addOpen(client, proxy, connection.progress.bytesAtoB, connection.progress.bytesBtoA);
    }
    for (const x of this.exchanges) addOpen(x.client, x.proxy, x.bytesIn, x.bytesOut);
    for (const [key, closed] of this.closed) {
      if (out.has(key)) continue;
      if (now - closed.lastActive > RETAIN_INACTIVE_MS) {
        this.closed.delete(key);
        continue;
      }
      const [client, proxy] = key.split('\u0000') as [string, string];
      out.set(key, { client, proxy, ...countsOf(closed), open: 0 });
    }
    return out;
  }
}

export { keyOf as proxyKey };
