// Registering udp, http, tls and tcpmux proxies: what a client may claim (ports, hostnames, locations) and the
// listeners and routes each one gets. tcp proxies are bound by ClientSession itself.
import type { Session } from '@porthole/mux';
import {
  basicCredentialsOf,
  formatHostPort,
  hostGrantRefusal,
  isWildcardHost,
  LimitWarning,
  type PortRanges,
  type ProxySpec,
  parseHostPattern,
  parseSubdomain,
  portGrantRefusal,
  tlsNameRefusal,
} from '@porthole/protocol';
import type { ClientBandwidth } from './client-bandwidth.js';
import type { ConnectionLimit, ConnectionLimits } from './connection-limit.js';
import { groupRefusal } from './group-refusal.js';
import { type HostClaim, HostRoutes } from './host-routes.js';
import { responseFieldSetOf } from './http-fields.js';
import { MAX_RESPONSE_HEAD } from './http-upstream-connection.js';
import { UpstreamPool, type Visitor } from './http-upstream-pool.js';
import type { HttpTarget } from './http-vhost-router.js';
import type { PrivateTarget } from './private-service.js';
import { bindAddressOf } from './proxy-bind.js';
import { bindUdpGroupMember, type PortHolder, portHolderRefusal } from './proxy-groups.js';
import { routingPath } from './request-path.js';
import type { RoutedTarget } from './routed-target.js';
import { defaultRoutingConfig, type RoutingConfig } from './routing-config.js';
import type { ServerContext } from './server-context.js';
import type { VisitorCheck } from './server-plugins.js';
import type { TcpmuxTarget } from './tcpmux-listener.js';
import type { TlsTarget } from './tls-sni-listener.js';
import { compressionOf, openTunnelStream, responseHeadersMarkOf } from './tunnel-stream.js';
import { UdpProxyListener, type UdpProxyStats, type UdpTarget } from './udp-proxy-listener.js';

const FORWARDED_HEADERS = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']);
/** Routes (name x location pairs) one proxy may add: the route table is server memory a client grows. */
const MAX_CLAIMS_PER_PROXY = 256;

/** Shared state of the routed proxies: UDP ports, the host tables, where the vhost ports listen. */
export interface RoutingState {
  /** UDP port -> the client and proxy (or the group) that hold it (TCP ports are in ServerContext.ports). */
  readonly udpPorts: Map<number, PortHolder>;
  readonly httpRoutes: HostRoutes<HttpTarget>;
  readonly tlsRoutes: HostRoutes<TlsTarget>;
  /** tcpmux names are a space of their own (as in frp): one name may be an http proxy's and a tcpmux one's. */
  readonly tcpmuxRoutes: HostRoutes<TcpmuxTarget>;
  /** Bound addresses, once listening ("0.0.0.0:80"); undefined when the port is not configured. */
  httpAddress: string | undefined;
  httpsAddress: string | undefined;
  tcpmuxAddress: string | undefined;
  /**
   * Largest response head taken from a service: set from max_header_size by the vhost ports when they
   * start (like the other [http] limits, a reload's new value waits for a restart).
   */
  maxResponseHead: number;
}

export function createRoutingState(): RoutingState {
  return {
    udpPorts: new Map(),
    httpRoutes: new HostRoutes(),
    tlsRoutes: new HostRoutes(),
    tcpmuxRoutes: new HostRoutes(),
    httpAddress: undefined,
    httpsAddress: undefined,
    tcpmuxAddress: undefined,
    maxResponseHead: MAX_RESPONSE_HEAD,
  };
}

/** The registering client, as far as routing needs it. */
export interface ProxyOwner {
  /** Identity for port holding (the ClientSession). */
  readonly self: object;
  readonly name: string;
  /** The token (jti) it signed in with; its routes are forgotten when a reload revokes it. */
  readonly tokenId: string;
  readonly session: Session;
  readonly portGrant: PortRanges | undefined;
  readonly hostGrant: readonly string[] | undefined;
  /** Its proxies' connection limits, kept across a proxy's registrations. */
  readonly limits: ConnectionLimits;
  /** The operator's cap its public connections share. */
  readonly bandwidth: ClientBandwidth;
  /** Asks the server's plugins about each visitor of `spec` (NewUserConn). */
  visitorCheck(spec: ProxySpec): VisitorCheck;
}

/** A registered proxy's public side. */
export interface BoundProxy {
  /** Where visitors reach it: "0.0.0.0:5353", or the vhost port's address. */
  readonly address: string;
  readonly urls?: string[];
  /** udp proxies: live counters (flows, datagrams, drops by cause) for the admin API and metrics. */
  readonly udpStats?: Readonly<UdpProxyStats>;
  /** A load-balancing group's member: its group, and every member now (this one included). */
  readonly group?: string;
  groupMembers?(): { client: string; proxy: string }[];
  /** A private proxy: what visits to it need (the owner's session, its spec and connection limit). */
  readonly service?: PrivateTarget;
  /** http and tls proxies: the names (and locations) it is routed by, as claimsOf gave them. */
  readonly claims?: readonly HostClaim[];
  /**
   * http and tls proxies: routes `claims` instead (check routedRefusal first), keeping its target, so
   * requests under way go on. A reload that changes subdomain_host changes what a spec claims; the old
   * names are no longer this proxy's, so they are forgotten (404), not left offline (502).
   */
  reroute?(claims: readonly HostClaim[]): void;
  /**
   * udp proxies: takes a new spec of the same proxy on the socket it has, if it keeps the port (true), so
   * the flows under way carry on; false: it must be closed and bound again.
   */
  takeSpec?(spec: ProxySpec): boolean;
  /**
   * Stops serving. An http or tls proxy's routes stay behind as offline routes (502, TLS closed) for a
   * client that is gone and may come back; with `forgetRoutes` (its client removed it on purpose, or the
   * server's rules no longer admit it) they go at once, so the name answers 404 or falls through to what
   * else covers it (a wildcard proxy, the server's own certificate), as before the proxy existed.
   */
  close(opts?: { forgetRoutes?: boolean }): void;
}

/**
 * A tcp or tls proxy's limit on open visitor connections (an http proxy's, on its upgraded ones): its own
 * max_connections, capped by the server's proxy_max_connections as the running config has it (a reload
 * applies at once).
 */
export function connectionLimitFor(ctx: ServerContext, owner: ProxyOwner, spec: ProxySpec): ConnectionLimit {
  return owner.limits.for(spec.name, () =>
    Math.min(spec.max_connections ?? Number.POSITIVE_INFINITY, ctx.config.proxyMaxConnections),
  );
}

/** The part of a tls or tcpmux proxy's route target that both share: its owner's session, caps and plugins. */
function routedTarget(ctx: ServerContext, owner: ProxyOwner, spec: ProxySpec): RoutedTarget {
  return {
    client: owner.name,
    proxy: spec.name,
    session: owner.session,
    limit: connectionLimitFor(ctx, owner, spec),
    bandwidth: owner.bandwidth,
    visitorCheck: owner.visitorCheck(spec),
    ...compressionOf(spec),
  };
}

/**
 * A udp proxy's flow limits: its udp_idle_timeout and max_flows, or the server's (the server's max_flows
 * caps its own). Read from the running config each time, so that a reload applies to proxies registered.
 */
export function udpFlowLimitsOf(
  ctx: ServerContext,
  spec: ProxySpec,
): { idleTimeoutMs: () => number; maxFlows: () => number } {
  return {
    idleTimeoutMs: () => spec.udp_idle_timeout_ms ?? routingOf(ctx).udpIdleTimeout,
    maxFlows: () => {
      const serverMax = routingOf(ctx).udpMaxFlows;
      return Math.min(spec.max_flows ?? serverMax, serverMax);
    },
  };
}

export function routingOf(ctx: ServerContext): RoutingConfig {
  return ctx.config.routing ?? defaultRoutingConfig();
}

function portOf(address: string | undefined): number | undefined {
  if (address === undefined) return undefined;
  return Number(address.slice(address.lastIndexOf(':') + 1));
}

/** The names (and locations) an http, tls or tcpmux spec claims, or the reason it cannot claim them. */
export function claimsOf(
  spec: ProxySpec,
  routing: RoutingConfig,
  hostGrant: readonly string[] | undefined,
): HostClaim[] | string {
  const names: { host: string; tier: HostClaim['tier'] }[] = [];
  for (const raw of spec.hosts ?? []) {
    let host: string;
    try {
      host = parseHostPattern(raw);
    } catch (err) {
      return (err as Error).message;
    }
    const notTls = spec.type === 'tls' ? tlsNameRefusal(host) : undefined;
    if (notTls) return notTls;
    names.push({ host, tier: isWildcardHost(host) ? 'wildcard' : 'exact' });
  }
  if (spec.subdomain !== undefined) {
    if (routing.subdomainHost === undefined) {
      return `subdomain "${spec.subdomain}" needs subdomain_host in the server's config, which is not set`;
    }
    let sub: string;
    try {
      sub = parseSubdomain(spec.subdomain);
    } catch (err) {
      return (err as Error).message;
    }
    names.push({ host: `${sub}.${routing.subdomainHost}`, tier: 'subdomain' });
  }
  if (names.length === 0) return `a ${spec.type} proxy needs hosts or subdomain`;
  for (const { host } of names) {
    const refused = hostGrantRefusal(hostGrant, host);
    if (refused) return refused;
  }
  if (spec.type !== 'http' && spec.locations !== undefined) return 'locations apply to http proxies only';
  const locations = spec.type === 'http' ? (spec.locations ?? ['/']) : ['/'];
  for (const location of locations) {
    if (!/^\/[^\s?#]*$/.test(location)) {
      return `location "${location}" must start with "/" and contain no spaces, "?" or "#"`;
    }
    // Requests are routed by their normalized path, which a location in any other form would never match.
    const normal = routingPath(location);
    if (normal !== location) return `location "${location}" is not in normal form: write it "${normal}"`;
  }
  const unique = [...new Set(locations)];
  if (names.length * unique.length > MAX_CLAIMS_PER_PROXY) {
    return `${names.length} names x ${unique.length} locations is more than ${MAX_CLAIMS_PER_PROXY} routes for one proxy`;
  }
  return names.flatMap(({ host, tier }) => unique.map((location) => ({ host, tier, location })));
}

/** Why this udp, http, tls or tcpmux proxy cannot be registered for `owner`, or undefined. */
export function routedRefusal(ctx: ServerContext, owner: ProxyOwner, spec: ProxySpec): string | undefined {
  const routing = routingOf(ctx);
  const state = ctx.routing;
  if (spec.type === 'udp') {
    const port = spec.remote_port;
    if (port === undefined) return 'a udp proxy needs remote_port';
    const refused = portGrantRefusal(owner.portGrant, port);
    if (refused) return refused;
    if (!ctx.config.allowPorts.contains(port))
      return `port ${port} is outside the server's allow_ports (${ctx.config.allowPorts})`;
    return portHolderRefusal(`udp port ${port}`, state.udpPorts.get(port), owner, spec);
  }
  if (spec.type === 'tcpmux') return tcpmuxRefusal(ctx, owner, spec);
  if (spec.type !== 'http' && spec.type !== 'tls') return `proxy type "${spec.type}" is not routed here`;
  if (spec.type === 'http' && routing.httpListen === undefined && routing.https === undefined) {
    return 'this server has no [http] or [https] listener for http proxies';
  }
  if (spec.type === 'tls' && routing.https === undefined) {
    return 'this server has no [https] listener for tls proxies';
  }
  if (spec.type === 'http' && (spec.http_user === undefined) !== (spec.http_password === undefined)) {
    return 'http_user and http_password go together';
  }
  const claims = claimsOf(spec, routing, owner.hostGrant);
  if (typeof claims === 'string') return claims;
  const own = spec.type === 'http' ? state.httpRoutes : state.tlsRoutes;
  const other = spec.type === 'http' ? state.tlsRoutes : state.httpRoutes;
  const conflict = own.conflict(owner.name, spec.name, claims, spec.group, spec.type);
  if (conflict) return conflict;
  if (spec.type === 'http' && spec.group !== undefined) {
    const auth = groupAuthRefusal(state.httpRoutes, owner.name, spec, claims);
    if (auth) return auth;
  }
  for (const claim of claims) {
    const shadow = own.subdomainShadow(owner.name, claim);
    if (shadow) return shadow;
  }
  for (const { host } of claims) {
    const holder = other.holderOther(owner.name, host);
    if (holder) {
      const otherType = spec.type === 'http' ? 'tls' : 'http';
      const group = groupRefusal(`hostname ${host}`, { group: holder.group, type: otherType }, spec);
      return group ?? `hostname ${host} is in use by another client`;
    }
    if (spec.type === 'tls' && routing.https?.certs.hasExact(host)) {
      return `hostname ${host} is served by the server itself (https.certs)`;
    }
    if (spec.type === 'tls' && routing.https?.acme?.domains.includes(host)) {
      return `hostname ${host} is served by the server itself (https.acme)`;
    }
  }
  return undefined;
}

/**
 * Why a tcpmux proxy cannot be registered. Its names are claimed as an http proxy's are (the token's hosts
 * grant, wildcards, subdomains, other clients' names), in a table of their own.
 */
function tcpmuxRefusal(ctx: ServerContext, owner: ProxyOwner, spec: ProxySpec): string | undefined {
  const routing = routingOf(ctx);
  if (routing.tcpmux === undefined) return 'this server has no [tcpmux] port for tcpmux proxies';
  if ((spec.http_user === undefined) !== (spec.http_password === undefined)) {
    return 'http_user and http_password go together';
  }
  const claims = claimsOf(spec, routing, owner.hostGrant);
  if (typeof claims === 'string') return claims;
  const table = ctx.routing.tcpmuxRoutes;
  const conflict = table.conflict(owner.name, spec.name, claims, spec.group, spec.type);
  if (conflict) return conflict;
  if (spec.group !== undefined) {
    const auth = groupAuthRefusal(table, owner.name, spec, claims);
    if (auth) return auth;
  }
  for (const claim of claims) {
    const shadow = table.subdomainShadow(owner.name, claim);
    if (shadow) return shadow;
  }
  return undefined;
}

/**
 * Why an http group member may not join the members already on its names: they take the requests in turn,
 * so one without the others' http_user/http_password would let every other request in without a password.
 * Said without the user or password; undefined when they match, or it is the first.
 */
function groupAuthRefusal(
  routes: HostRoutes<{ auth: HttpTarget['auth'] }>,
  client: string,
  spec: ProxySpec,
  claims: readonly HostClaim[],
): string | undefined {
  const hosts = new Set(claims.map((c) => c.host));
  const asks = spec.http_user !== undefined;
  for (const entry of routes.entries()) {
    if (entry.target === undefined || entry.group !== spec.group || !hosts.has(entry.host)) continue;
    if (entry.client === client && entry.proxy === spec.name) continue;
    const theirs = entry.target.auth;
    const same =
      theirs === undefined
        ? !asks
        : asks &&
          theirs.user.equals(Buffer.from(spec.http_user ?? '')) &&
          theirs.password.equals(Buffer.from(spec.http_password ?? ''));
    if (same) continue;
    const them = theirs === undefined ? 'let visitors in without a password' : 'ask visitors for a password';
    const mine = asks
      ? theirs === undefined
        ? 'asks for one'
        : 'asks for another http_user or http_password'
      : 'asks for none';
    return `group "${spec.group}" at ${entry.host} takes requests in turn, and its members ${them} (http_user, http_password): every member must ask for the same; this proxy ${mine}`;
  }
  return undefined;
}

/** Binds a udp, http, tls or tcpmux proxy (check routedRefusal first); rejects with the reason for the client. */
export async function bindRoutedProxy(
  ctx: ServerContext,
  owner: ProxyOwner,
  spec: ProxySpec,
): Promise<BoundProxy> {
  const routing = routingOf(ctx);
  const state = ctx.routing;
  if (spec.type === 'udp') {
    const port = spec.remote_port!;
    const bindHost = bindAddressOf(ctx.config, spec);
    const limitsOf = (udp: ProxySpec) => udpFlowLimitsOf(ctx, udp);
    const listenerFor = (target?: UdpTarget) =>
      new UdpProxyListener({
        client: owner.name,
        proxy: { ...spec, remote_port: port },
        bindHost,
        session: owner.session,
        logger: ctx.logger,
        ...limitsOf(spec),
        nextId: () => ctx.tracker.nextId(),
        traffic: ctx.traffic,
        bandwidth: owner.bandwidth,
        ...(target === undefined ? {} : { target }),
      });
    if (spec.group !== undefined) {
      const grouped = { ...spec, group: spec.group, remote_port: port };
      return bindUdpGroupMember(ctx, owner, grouped, limitsOf, bindHost, listenerFor);
    }
    const listener = listenerFor();
    // Hold the port before the asynchronous bind, so two registrations cannot race for it.
    state.udpPorts.set(port, { owner: owner.self, proxy: spec.name });
    const free = () => {
      if (state.udpPorts.get(port)?.owner === owner.self) state.udpPorts.delete(port);
    };
    try {
      await listener.listen();
    } catch (err) {
      free();
      throw err;
    }
    return {
      address: listener.address,
      udpStats: listener.stats,
      takeSpec: (next: ProxySpec) => {
        // Another address (a reload changed remote_bind) needs another socket: the port moves there; into a
        // group, it joins the group's listener instead.
        if (
          next.type !== 'udp' ||
          next.remote_port !== port ||
          next.group !== undefined ||
          bindAddressOf(ctx.config, next) !== bindHost
        )
          return false;
        listener.respec({ ...next, remote_port: port }, limitsOf(next));
        return true;
      },
      close: () => {
        listener.close();
        free();
      },
    };
  }

  const claims = claimsOf(spec, routing, owner.hostGrant) as HostClaim[];
  // Only http proxies may have response_headers (refused on others at registration).
  const responseHeadersMark = responseHeadersMarkOf(spec);
  const header = (visitor: Visitor | undefined, publicAddr: string | undefined) => {
    const conn = ctx.tracker.nextId();
    const stream = openTunnelStream(owner.session, {
      proxy: spec.name,
      conn,
      remote_addr: visitor?.address ?? '',
      remote_port: visitor?.port ?? 0,
      public_addr: publicAddr ?? '',
      ...(visitor?.destAddress === undefined
        ? {}
        : { dest_addr: visitor.destAddress, dest_port: visitor.destPort ?? 0 }),
      ...compressionOf(spec),
      ...responseHeadersMark,
    });
    return { stream, conn };
  };

  if (spec.type === 'tls') {
    const target: TlsTarget = routedTarget(ctx, owner, spec);
    const httpsPort = portOf(state.httpsAddress);
    return bindHostRoutes({
      table: state.tlsRoutes,
      owner,
      spec,
      target,
      claims,
      address: state.httpsAddress ?? '',
      urlsOf: (routed) =>
        routed.map((c) => `tls://${c.host}${httpsPort === 443 || !httpsPort ? '' : `:${httpsPort}`}`),
      free: () => target.limit.close(),
    });
  }

  if (spec.type === 'tcpmux') {
    const target: TcpmuxTarget = { ...routedTarget(ctx, owner, spec), auth: basicCredentialsOf(spec) };
    const tcpmuxPort = portOf(state.tcpmuxAddress);
    return bindHostRoutes({
      table: state.tcpmuxRoutes,
      owner,
      spec,
      target,
      claims,
      address: state.tcpmuxAddress ?? '',
      // Not a URL a browser opens: the name to CONNECT to, and the port of the server that takes it.
      urlsOf: (routed) => routed.map((c) => `tcpmux://${c.host}${tcpmuxPort ? `:${tcpmuxPort}` : ''}`),
      free: () => target.limit.close(),
    });
  }

  const publicAddr = state.httpAddress ?? state.httpsAddress;
  const upgrades = connectionLimitFor(ctx, owner, spec);
  // Requests that had to wait are worth an operator's look (raise max_streams_per_proxy, or the proxy's
  // max_connections if held requests took their place): a line per 10 s at most.
  const waits = new LimitWarning((waited) =>
    ctx.logger.warn(
      {
        client: owner.name,
        proxy: spec.name,
        max_streams_per_proxy: routingOf(ctx).maxStreamsPerProxy,
        max_connections: upgrades.max(),
        waited,
      },
      'http requests wait for a free tunnel stream',
    ),
  );
  const pool = new UpstreamPool({
    openStream: (visitor) => header(visitor, publicAddr).stream,
    maxStreams: () => routingOf(ctx).maxStreamsPerProxy,
    maxHeld: upgrades.max,
    onWait: () => waits.count(),
    maxResponseHead: state.maxResponseHead,
  });
  const target: HttpTarget = {
    client: owner.name,
    proxy: spec.name,
    pool,
    openStream: (visitor) => header(visitor, publicAddr),
    upgrades,
    bandwidth: owner.bandwidth,
    auth: basicCredentialsOf(spec),
    visitorCheck: owner.visitorCheck(spec),
    hostHeaderRewrite: spec.host_header_rewrite,
    // The X-Forwarded-* headers are the server's to set: a client cannot forge them for its visitors.
    requestHeaders: Object.entries(spec.request_headers ?? {})
      .map(([k, v]) => [k.toLowerCase(), v] as const)
      .filter(([k]) => !FORWARDED_HEADERS.has(k) && k !== 'host'),
    responseHeaders: responseFieldSetOf(spec.response_headers),
  };
  return bindHostRoutes({
    table: state.httpRoutes,
    owner,
    spec,
    target,
    claims,
    address: publicAddr ?? '',
    urlsOf: (routed) => httpUrls(routed, state, routingOf(ctx)),
    free: () => {
      pool.close();
      waits.flush();
      target.upgrades.close();
    },
  });
}

/** An http or tls proxy's routes in its table, and what else it holds (`free`). */
function bindHostRoutes<T>(opts: {
  table: HostRoutes<T>;
  owner: ProxyOwner;
  spec: ProxySpec;
  target: T;
  claims: readonly HostClaim[];
  address: string;
  /** Where visitors reach these claims, for the client. */
  urlsOf: (claims: readonly HostClaim[]) => string[];
  free: () => void;
}): BoundProxy {
  const { table, owner, spec, target } = opts;
  // A name given twice (in hosts, and again as subdomain) is one URL.
  const urlsOf = (claims: readonly HostClaim[]) => [...new Set(opts.urlsOf(claims))];
  table.add(owner.name, spec.name, opts.claims, target, owner.tokenId, spec.group);
  const groupMembers = () => {
    const hosts = new Set(bound.claims.map((c) => c.host));
    const members = new Map<string, { client: string; proxy: string }>();
    for (const e of table.entries())
      if (e.group === spec.group && e.target !== undefined && hosts.has(e.host))
        members.set(`${e.client}\u0000${e.proxy}`, { client: e.client, proxy: e.proxy });
    return [...members.values()];
  };
  const bound = {
    address: opts.address,
    ...(spec.group === undefined ? {} : { group: spec.group, groupMembers }),
    claims: opts.claims,
    urls: urlsOf(opts.claims),
    reroute: (claims: readonly HostClaim[]) => {
      table.release(target, { forget: true });
      table.add(owner.name, spec.name, claims, target, owner.tokenId, spec.group);
      bound.claims = claims;
      bound.urls = urlsOf(claims);
    },
    close: ({ forgetRoutes = false } = {}) => {
      table.release(target, { forget: forgetRoutes });
      opts.free();
    },
  };
  return bound;
}

function httpUrls(claims: readonly HostClaim[], state: RoutingState, routing: RoutingConfig): string[] {
  const urls: string[] = [];
  const httpPort = portOf(state.httpAddress);
  const httpsPort = portOf(state.httpsAddress);
  for (const { host, location } of claims) {
    if (httpPort !== undefined) urls.push(`http://${urlAuthority(host, httpPort, 80)}${location}`);
    const name = host.startsWith('*.') ? `x${host.slice(1)}` : host;
    const terminated = routing.https?.certs.covers(name) || routing.https?.acme?.domains.includes(name);
    if (httpsPort !== undefined && terminated) {
      urls.push(`https://${urlAuthority(host, httpsPort, 443)}${location}`);
    }
  }
  return urls;
}

/** host[:port] in a URL: the port left out when it is the scheme's `defaultPort`, an IPv6 address in brackets. */
function urlAuthority(host: string, port: number, defaultPort: number): string {
  const authority = formatHostPort(host, port);
  return port === defaultPort ? authority.slice(0, authority.lastIndexOf(':')) : authority;
}
