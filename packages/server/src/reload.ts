import { X509Certificate } from 'node:crypto';
import { formatHostPort } from '@porthole/protocol';
import type { UpgradeAuthenticator } from './auth.js';
import { sameBuffer } from './buffers-equal.js';
import { loadServerConfig, type ServerConfig } from './config.js';
import type { RouteEntry } from './host-routes.js';
import type { ServerContext } from './server-context.js';
import type { TlsCertStore } from './tls-cert-store.js';

export interface ServerReloadSummary {
  /** Clients disconnected because their token is now revoked. */
  revoked: string[];
  /** Proxies closed because the new rules refuse them (or their new names are taken), "client/proxy". */
  closed: string[];
  /** http and tls proxies routed by new names (subdomain_host changed), "client/proxy". */
  moved: string[];
  /** Keys that changed in the file but only take effect after a restart. */
  needRestart: string[];
  /** Certificates renewed in place ("tls", "https.certs[0]"), with the new one's notAfter. */
  renewed: { key: string; notAfter: string }[];
}

/**
 * The settings a running server cannot change in place (they belong to listeners and keys bound at
 * start); a reload keeps the running values for these and names them in its log line.
 */
function restartOnlyChanges(running: ServerConfig, next: ServerConfig): string[] {
  const changed: string[] = [];
  const addr = (hp: { host: string; port: number }) => formatHostPort(hp.host, hp.port);
  if (addr(running.listen) !== addr(next.listen)) changed.push('listen');
  if (running.path !== next.path) changed.push('path');
  if (running.proxyBind !== next.proxyBind) changed.push('proxy_bind');
  if (running.auth.secret !== next.auth.secret) changed.push('auth.secret');
  const runningAdmin = running.admin ? addr(running.admin.listen) : '';
  const nextAdmin = next.admin ? addr(next.admin.listen) : '';
  if (runningAdmin !== nextAdmin) changed.push('admin.listen');
  if (running.heartbeatInterval !== next.heartbeatInterval) changed.push('heartbeat_interval');
  if (running.heartbeatTimeout !== next.heartbeatTimeout) changed.push('heartbeat_timeout');
  const r = running.routing;
  const n = next.routing;
  const listenOf = (hp: { host: string; port: number } | undefined) => (hp ? addr(hp) : '');
  if (listenOf(r?.httpListen) !== listenOf(n?.httpListen)) changed.push('http.listen');
  if (JSON.stringify(r?.httpLimits) !== JSON.stringify(n?.httpLimits)) changed.push('http limits');
  const httpsOf = (h: NonNullable<ServerConfig['routing']>['https']) =>
    h ? JSON.stringify([listenOf(h.listen), h.defaultHost, h.handshakeTimeout, h.maxClientHelloSize]) : '';
  if (httpsOf(r?.https) !== httpsOf(n?.https)) changed.push('https');
  const tcpmuxOf = (t: NonNullable<ServerConfig['routing']>['tcpmux']) =>
    t ? JSON.stringify([listenOf(t.listen), t.handshakeTimeout]) : '';
  if (tcpmuxOf(r?.tcpmux) !== tcpmuxOf(n?.tcpmux)) changed.push('tcpmux');
  // The [http] port answers the CA's challenges only when it was started with ACME.
  if (!r?.https?.acme && n?.https?.acme) changed.push('https.acme');
  return changed;
}

/**
 * `kept` (the running [https] table, or its renewed certificates) with the new file's [https.acme], which
 * applies in place (names added are ordered, removed ones no longer served) where ACME ran from the start.
 */
function withAcmeOf(loaded: HttpsConfig, kept: HttpsConfig): HttpsConfig {
  if (!kept?.acme) return kept;
  return { ...kept, acme: loaded?.acme };
}

type HttpsConfig = NonNullable<ServerConfig['routing']>['https'];

/** Each certificate's names, in order: the routes and refusals of the TLS port were decided by them. */
function namesOf(store: TlsCertStore | undefined): string {
  return JSON.stringify(store?.namesByPair ?? []);
}

/**
 * The [tls] and [[https.certs]] pairs whose files changed, compared by their bytes: a renewal (certbot's)
 * rewrites them in place under the same names. They are taken in place when every certificate still
 * names what it named (and none came or went); otherwise the routes decided by those names would be
 * wrong, and they are named as needing a restart.
 */
function certificateChanges(
  running: ServerConfig,
  next: ServerConfig,
): { renewed: ServerReloadSummary['renewed']; needRestart: string[] } {
  const changed: { key: string; cert: Buffer }[] = [];
  if (!sameBuffer(running.tls?.cert, next.tls?.cert) || !sameBuffer(running.tls?.key, next.tls?.key))
    changed.push({ key: 'tls', cert: next.tls?.cert ?? Buffer.alloc(0) });
  // The [tls] pair the https port uses too is named by 'tls' above.
  const certsOf = (h: HttpsConfig) => (h?.certs.pairs ?? []).filter((pair) => pair.source !== 'tls');
  const [runningCerts, nextCerts] = [certsOf(running.routing?.https), certsOf(next.routing?.https)];
  nextCerts.forEach((pair, i) => {
    const was = runningCerts[i];
    if (!was || !sameBuffer(was.cert, pair.cert) || !sameBuffer(was.key, pair.key))
      changed.push({ key: pair.source, cert: pair.cert });
  });
  const sameNames =
    (running.tls === undefined) === (next.tls === undefined) &&
    (running.routing?.https === undefined) === (next.routing?.https === undefined) &&
    runningCerts.length === nextCerts.length &&
    namesOf(running.routing?.https?.certs) === namesOf(next.routing?.https?.certs);
  if (sameNames) {
    return {
      renewed: changed.map(({ key, cert }) => ({ key, notAfter: new X509Certificate(cert).validTo })),
      needRestart: [],
    };
  }
  const keys = changed.map(({ key }) => (key === 'tls' ? 'tls' : 'https.certs'));
  if (runningCerts.length !== nextCerts.length) keys.push('https.certs');
  return { renewed: [], needRestart: [...new Set(keys)] };
}

/**
 * SIGHUP on the server: re-read the config file. Revocations, allow_ports, allow_bind, auth limits, udp limits,
 * client_bandwidth_limit (for the connected clients whose token has no limit of its own, open connections included; each is told the new cap),
 * proxy_max_connections, max_streams_per_proxy, max_pending_per_source, max_pending_connections, subdomain_host, trusted_proxies, shutdown_timeout,
 * log_level, [http] not_found_page and unavailable_page (re-read with the file), [[plugins]] (read at each ask, ServerPlugins) and the admin token apply at once: a client whose token is now revoked is told so and
 * disconnected, and its routes, offline ones of earlier sessions too, forgotten; a proxy the new rules refuse is closed and its client told which and why; an http or tls
 * proxy whose names come from a changed subdomain_host is routed by the new names, as if it registered
 * now (closed, if another client holds them), and its client told, while the offline subdomain routes of
 * clients that are away are forgotten (they register the new names when they come back); certificates
 * renewed in place (summary.renewed) replace the running ones in ctx.config, for the caller to hand to
 * its TLS servers; everything else is untouched. An invalid file changes nothing (the reason is logged). Throws the ConfigError.
 */
export function reloadServer(
  ctx: ServerContext,
  authenticator: UpgradeAuthenticator,
  load: (file: string) => ServerConfig = loadServerConfig,
): ServerReloadSummary {
  const running = ctx.config;
  const loaded = load(running.file);
  const certificates = certificateChanges(running, loaded);
  const needRestart = [...restartOnlyChanges(running, loaded), ...certificates.needRestart];
  const renewing = certificates.renewed.length > 0;
  const next: ServerConfig = {
    ...loaded,
    listen: running.listen,
    path: running.path,
    proxyBind: running.proxyBind,
    heartbeatInterval: running.heartbeatInterval,
    heartbeatTimeout: running.heartbeatTimeout,
    auth: { ...loaded.auth, secret: running.auth.secret },
  };
  // The vhost ports were bound (and certificates loaded) at start; their names and limits, the udp limits
  // and trusted_proxies apply from the new file.
  if (loaded.routing && running.routing) {
    next.routing = {
      ...loaded.routing,
      httpListen: running.routing.httpListen,
      httpLimits: running.routing.httpLimits,
      tcpmux: running.routing.tcpmux,
      https: withAcmeOf(
        loaded.routing.https,
        renewing && running.routing.https && loaded.routing.https
          ? { ...running.routing.https, certs: loaded.routing.https.certs }
          : running.routing.https,
      ),
    };
  } else if (running.routing) next.routing = running.routing;
  const tlsPair = renewing ? loaded.tls : running.tls;
  if (tlsPair) next.tls = tlsPair;
  else delete next.tls;
  if (running.admin)
    next.admin = { listen: running.admin.listen, token: loaded.admin?.token ?? running.admin.token };
  else delete next.admin;
  ctx.config = next;
  authenticator.update(next.auth);
  ctx.logger.level = next.logLevel;

  const summary: ServerReloadSummary = {
    revoked: [],
    closed: [],
    moved: [],
    needRestart,
    renewed: certificates.renewed,
  };
  for (const session of [...ctx.sessions]) {
    if (next.auth.revoked.has(session.tokenId)) {
      summary.revoked.push(session.name);
      ctx.logger.warn(
        { client: session.name, session_id: session.sessionId, reason: 'token revoked' },
        'client revoked',
      );
      session.disconnect('token revoked by the server operator', 'revoked');
      continue;
    }
    // A changed client_bandwidth_limit holds the open connections of the clients it caps at once.
    session.applyBandwidthLimit();
    const { closed, moved } = session.enforceRules();
    for (const { proxy } of closed) summary.closed.push(`${session.name}/${proxy}`);
    for (const proxy of moved) summary.moved.push(`${session.name}/${proxy}`);
  }
  // After the sessions, whose routes have just gone offline. A revoked token's client cannot come back
  // with it, so its routes are forgotten as if unregistered, whether its session ended now or before (names
  // belong to clients, not tokens: another token of the same name keeps the routes it registered). A
  // changed subdomain_host leaves the subdomain routes of clients that are away under the old name.
  const subdomainMoved = running.routing?.subdomainHost !== next.routing?.subdomainHost;
  const unclaimable = (e: Pick<RouteEntry<unknown>, 'token' | 'tier'>) =>
    (e.token !== undefined && next.auth.revoked.has(e.token)) || (subdomainMoved && e.tier === 'subdomain');
  ctx.routing.httpRoutes.forgetOffline(unclaimable);
  ctx.routing.tlsRoutes.forgetOffline(unclaimable);
  ctx.routing.tcpmuxRoutes.forgetOffline(unclaimable);
  return summary;
}
