import { PROTOCOL_VERSION } from '@porthole/protocol';
import type { AcmeCertificateView } from './acme-manager.js';
import type { ClientBandwidth } from './client-bandwidth.js';
import { Exposition, type Histogram, writeProcessMetrics } from './metrics.js';
import { type ProxyTotals, proxyKey } from './proxy-traffic.js';
import type { ServerContext } from './server-context.js';
import type { UdpProxyStats } from './udp-proxy-listener.js';

export interface ProxyView {
  client: string;
  name: string;
  type: string;
  /** tcp/udp: the public port; null for proxies reached by hostname. */
  remote_port: number | null;
  /** tcp/udp: the address its client asked to bind (remote_bind), when it is not proxy_bind. */
  remote_bind?: string;
  /** Where visitors connect, e.g. "0.0.0.0:2222"; "private owner/proxy" for a private proxy. */
  public_addr: string;
  /** http, tls and tcpmux proxies: the names visitors ask for on public_addr; [] for the others. */
  hosts: string[];
  /** A private proxy's name for visiting clients ("homelab/ssh"); absent for a public one. */
  service?: string;
  /** Open now: connections, and for http proxies requests in flight, for udp proxies flows. */
  open_connections: number;
  /** Since the proxy first registered (kept across reconnects), counted as open_connections are. */
  connections_total: number;
  /** Visitors -> the client's service. */
  bytes_in: number;
  /** The service -> visitors. */
  bytes_out: number;
  /** Visitors turned away because max_connections were open (tcp and tls proxies). */
  refused_connections: number;
  /** Its load-balancing group, or null. */
  group: string | null;
  /** The group's members now, this proxy included, each as "client/proxy" ([] for no group). */
  group_members: string[];
  /** Its tunnel streams are deflated: its client asked for compression and this server runs it so. */
  compression: boolean;
}

export interface ClientView {
  name: string;
  session_id: string;
  instance_id: string;
  client_version: string;
  remote_addr: string;
  connected_at: string;
  /** When the client's token expires and its session ends; null for a token that never expires. */
  token_expires_at: string | null;
  /**
   * The operator's cap on all its public proxies together, each direction, as written ("10MB", bytes per
   * second) and where it comes from (its token's, else the server's client_bandwidth_limit); null: none.
   */
  bandwidth_limit: { rate: string; bytes_per_second: number; source: 'token' | 'server' } | null;
  proxies: ProxyView[];
}

/** An open tcp or tls connection, http upgrade, http request in flight, or udp flow. */
export interface ConnectionView {
  client: string;
  proxy: string;
  /** null for an http request: pooled tunnel streams carry many. */
  conn: number | null;
  remote_addr: string;
  /** A visit to a private service: the visiting client. */
  visitor?: string;
  started_at: string;
  age_ms: number;
  bytes_in: number;
  bytes_out: number;
}

function bandwidthLimitView(limit: ClientBandwidth['limit']): ClientView['bandwidth_limit'] {
  return limit === undefined
    ? null
    : { rate: limit.text, bytes_per_second: limit.bytesPerSecond, source: limit.source };
}

/** Counters the server keeps for /metrics beside what the sessions and the tracker know. */
export interface ServerCounters {
  /** SYN -> ACK time of every stream the server opened, in seconds. */
  readonly streamOpen: Histogram;
  /** Refused client authentications by reason. */
  readonly authFailures: ReadonlyMap<string, number>;
  /** Refused admin API requests (missing or wrong token). */
  adminAuthFailures: number;
  /** Connections not signed in or routed yet, and those refused over their caps. */
  readonly pending: { readonly open: number; readonly refused: number };
  reloads: { ok: number; failed: number };
  /** [https.acme]'s names and their certificates (empty without the table). */
  acmeCertificates: () => AcmeCertificateView[];
}

/** What the admin API and /metrics report, computed from the live server state on each request. */
export class ServerStatus {
  constructor(
    private readonly ctx: ServerContext,
    private readonly counters: ServerCounters,
  ) {}

  private registered(): { client: string; proxy: string }[] {
    const out: { client: string; proxy: string }[] = [];
    for (const session of this.ctx.clients.values()) {
      for (const p of session.listProxies()) out.push({ client: session.name, proxy: p.name });
    }
    return out;
  }

  private totals(): Map<string, ProxyTotals> {
    return this.ctx.traffic.snapshot(this.registered());
  }

  clients(totals = this.totals()): ClientView[] {
    return [...this.ctx.clients.values()]
      .filter((session) => session.established)
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((session) => ({
        name: session.name,
        session_id: session.sessionId,
        instance_id: session.peer.instanceId,
        client_version: session.peer.clientVersion,
        remote_addr: session.remoteAddr,
        connected_at: new Date(session.connectedAt).toISOString(),
        token_expires_at:
          session.tokenExpiresAt === undefined ? null : new Date(session.tokenExpiresAt).toISOString(),
        bandwidth_limit: bandwidthLimitView(session.bandwidth.limit),
        proxies: session
          .listProxies()
          .sort((a, b) => a.name.localeCompare(b.name))
          .map((p) => {
            const t = totals.get(proxyKey(session.name, p.name));
            return {
              client: session.name,
              name: p.name,
              type: p.type,
              remote_port: p.remotePort ?? null,
              ...(p.remoteBind === undefined ? {} : { remote_bind: p.remoteBind }),
              public_addr: p.publicAddr,
              hosts: p.hosts,
              ...(p.service === undefined ? {} : { service: p.service }),
              open_connections: t?.open ?? 0,
              connections_total: t?.connections ?? 0,
              bytes_in: t?.bytesIn ?? 0,
              bytes_out: t?.bytesOut ?? 0,
              refused_connections: t?.refused ?? 0,
              group: p.group ?? null,
              group_members: p.groupMembers.map((m) => `${m.client}/${m.proxy}`).sort(),
              compression: p.compression,
            };
          }),
      }));
  }

  /** [https.acme]'s names, each with its certificate's end and failed orders in a row. */
  acmeCertificates(): AcmeCertificateView[] {
    return this.counters.acmeCertificates();
  }

  proxies(): ProxyView[] {
    return this.clients().flatMap((client) => client.proxies);
  }

  connections(): ConnectionView[] {
    const now = Date.now();
    const out: ConnectionView[] = [];
    for (const c of this.ctx.tracker.connections()) {
      out.push({
        client: String(c.fields.client ?? ''),
        proxy: String(c.fields.proxy ?? ''),
        conn: typeof c.fields.conn === 'number' ? c.fields.conn : null,
        remote_addr: String(c.fields.remote_addr ?? ''),
        ...(typeof c.fields.visitor === 'string' ? { visitor: c.fields.visitor } : {}),
        started_at: new Date(c.startedAt).toISOString(),
        age_ms: now - c.startedAt,
        bytes_in: c.progress.bytesAtoB,
        bytes_out: c.progress.bytesBtoA,
      });
    }
    for (const x of this.ctx.traffic.openExchanges()) {
      out.push({
        client: x.client,
        proxy: x.proxy,
        conn: x.conn,
        remote_addr: x.remoteAddr,
        started_at: new Date(x.startedAt).toISOString(),
        age_ms: now - x.startedAt,
        bytes_in: x.bytesIn,
        bytes_out: x.bytesOut,
      });
    }
    return out.sort((a, b) => (a.conn ?? 0) - (b.conn ?? 0));
  }

  /** Datagrams each way and those dropped by cause, per udp proxy (from its registration: a reconnect resets them). */
  private writeUdpMetrics(out: Exposition): void {
    const rows: { client: string; proxy: string; stats: Readonly<UdpProxyStats> }[] = [];
    for (const session of this.ctx.clients.values())
      for (const p of session.listProxies())
        if (p.udpStats) rows.push({ client: session.name, proxy: p.name, stats: p.udpStats });
    rows.sort((a, b) => a.client.localeCompare(b.client) || a.proxy.localeCompare(b.proxy));
    out.family('porthole_udp_datagrams_total', 'counter', 'Datagrams carried, per udp proxy and direction.');
    for (const { client, proxy, stats } of rows) {
      out.sample('porthole_udp_datagrams_total', stats.datagramsIn, { client, proxy, direction: 'in' });
      out.sample('porthole_udp_datagrams_total', stats.datagramsOut, { client, proxy, direction: 'out' });
    }
    out.family(
      'porthole_udp_datagrams_dropped_total',
      'counter',
      'Datagrams dropped, per udp proxy and cause (see the README).',
    );
    for (const { client, proxy, stats } of rows)
      for (const [cause, count] of [
        ['flow_limit', stats.droppedFlowLimit],
        ['oversize', stats.droppedOversize],
        ['backpressure', stats.droppedBackpressure],
        ['link_stopped', stats.droppedLinkStopped],
        ['send', stats.droppedSend],
        ['truncated', stats.droppedTruncated],
        ['over_limit', stats.droppedOverLimit],
      ] as const)
        out.sample('porthole_udp_datagrams_dropped_total', count, { client, proxy, cause });
    out.family(
      'porthole_udp_flows_evicted_total',
      'counter',
      'Flows ended at max_flows to make room for a new sender (silent for 1 s or more, or 100 ms after a single answered query), per udp proxy.',
    );
    for (const { client, proxy, stats } of rows)
      out.sample('porthole_udp_flows_evicted_total', stats.evictedIdle, { client, proxy });
  }

  /** The Prometheus text exposition. */
  metrics(): string {
    const totals = this.totals();
    const clients = this.clients(totals);
    const out = new Exposition();
    out
      .family('porthole_build_info', 'gauge', 'Version of this server and of the control protocol it speaks.')
      .sample('porthole_build_info', 1, {
        version: this.ctx.serverVersion,
        protocol: String(PROTOCOL_VERSION),
      });
    out.single('porthole_clients', 'gauge', 'Connected clients (sessions past hello).', clients.length);
    const byType = new Map<string, number>();
    for (const client of clients)
      for (const p of client.proxies) byType.set(p.type, (byType.get(p.type) ?? 0) + 1);
    out.family('porthole_proxies', 'gauge', 'Registered proxies, by type.');
    for (const [type, count] of [...byType].sort()) out.sample('porthole_proxies', count, { type });
    out.single(
      'porthole_open_connections',
      'gauge',
      'Tunnelled connections open right now, all proxies (http requests and udp flows count as connections).',
      this.ctx.tracker.size + this.ctx.traffic.openExchangeCount,
    );
    out.family(
      'porthole_client_bandwidth_limit_bytes',
      'gauge',
      "The cap on a client's public proxies together, bytes per second each direction (token's or client_bandwidth_limit); clients without one are left out.",
    );
    for (const client of clients)
      if (client.bandwidth_limit)
        out.sample('porthole_client_bandwidth_limit_bytes', client.bandwidth_limit.bytes_per_second, {
          client: client.name,
        });
    let streams = 0;
    for (const session of this.ctx.sessions) streams += session.streamCount;
    out.single('porthole_session_streams', 'gauge', 'Mux streams open across all client sessions.', streams);
    const rows = [...totals.values()].sort(
      (a, b) => a.client.localeCompare(b.client) || a.proxy.localeCompare(b.proxy),
    );
    const perProxy = (
      name: string,
      type: 'counter' | 'gauge',
      help: string,
      pick: (t: ProxyTotals) => number,
    ) => {
      out.family(name, type, help);
      for (const t of rows) out.sample(name, pick(t), { client: t.client, proxy: t.proxy });
    };
    perProxy('porthole_proxy_open_connections', 'gauge', 'Connections open, per proxy.', (t) => t.open);
    perProxy(
      'porthole_proxy_connections_total',
      'counter',
      'Connections accepted, per proxy (http: requests and upgraded connections; udp: flows).',
      (t) => t.connections,
    );
    perProxy(
      'porthole_proxy_connections_refused_total',
      'counter',
      'Visitors refused because the proxy had max_connections open, per proxy.',
      (t) => t.refused,
    );
    perProxy(
      'porthole_proxy_bytes_in_total',
      'counter',
      "Bytes from visitors towards the client's service, per proxy.",
      (t) => t.bytesIn,
    );
    perProxy(
      'porthole_proxy_bytes_out_total',
      'counter',
      'Bytes from the service back to visitors, per proxy.',
      (t) => t.bytesOut,
    );
    this.writeUdpMetrics(out);
    out.family('porthole_auth_failures_total', 'counter', 'Refused client authentications, by reason.');
    for (const [reason, count] of [...this.counters.authFailures].sort()) {
      out.sample('porthole_auth_failures_total', count, { reason });
    }
    out.single(
      'porthole_admin_auth_failures_total',
      'counter',
      'Admin API requests refused for a missing or wrong token.',
      this.counters.adminAuthFailures,
    );
    out.single(
      'porthole_pending_connections',
      'gauge',
      'Connections open that have not signed in (control) or been routed (http, https ports) yet.',
      this.counters.pending.open,
    );
    out.single(
      'porthole_pending_connections_refused_total',
      'counter',
      'Connections reset for max_pending_per_source or max_pending_connections: at once, or past the cap after 3 s still pending.',
      this.counters.pending.refused,
    );
    out.histogram(
      'porthole_stream_open_seconds',
      "Time from opening a tunnel stream to the client's acknowledgement.",
      this.counters.streamOpen,
    );
    out
      .family('porthole_reloads_total', 'counter', 'Configuration reloads (SIGHUP), by result.')
      .sample('porthole_reloads_total', this.counters.reloads.ok, { result: 'ok' })
      .sample('porthole_reloads_total', this.counters.reloads.failed, { result: 'failed' });
    const acme = this.counters.acmeCertificates();
    if (acme.length > 0) {
      out.family(
        'porthole_acme_certificate_expiry_timestamp_seconds',
        'gauge',
        'When the certificate [https.acme] serves for a name ends (Unix time); a name without one is left out.',
      );
      for (const cert of acme)
        if (cert.expires_at !== null)
          out.sample(
            'porthole_acme_certificate_expiry_timestamp_seconds',
            Date.parse(cert.expires_at) / 1000,
            {
              domain: cert.domain,
            },
          );
      out.family(
        'porthole_acme_order_failures',
        'gauge',
        'Failed ACME orders in a row, per name (0 after a success).',
      );
      for (const cert of acme)
        out.sample('porthole_acme_order_failures', cert.failures, { domain: cert.domain });
    }
    writeProcessMetrics(out);
    return out.toString();
  }
}
