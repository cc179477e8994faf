// The TLS port: peek each connection's ClientHello and decide by SNI. A tls proxy's name: every byte is
// passed through to its client untouched (the visitor talks TLS with the local service). A name the
// server holds a certificate for: terminated here and served like the http port (http proxies over https,
// and the control endpoint for wss:// clients). Anything else is closed.
import { createServer, type Server, type Socket } from 'node:net';
import {
  type ConnectionTracker,
  formatHostPort,
  type HostPort,
  isIpAddressSni,
  type Logger,
  listenServer,
  normalizeRequestHost,
} from '@porthole/protocol';
import type { HostRoutes, RouteEntry } from './host-routes.js';
import type { HttpVhostServer } from './http-vhost-server.js';
import { peerAddress } from './peer-address.js';
import type { PendingConnections } from './pending-connections.js';
import type { RoutedTarget } from './routed-target.js';
import { visitorTurnedAway } from './server-plugins.js';
import type { TlsCertStore } from './tls-cert-store.js';
import { readClientHello } from './tls-client-hello.js';
import { compressionOf } from './tunnel-stream.js';
import { openVisitorStream } from './visitor-stream.js';

/** What a tls proxy's routes lead to. */
export type TlsTarget = RoutedTarget;

export interface TlsSniListenerOptions {
  listen: HostPort;
  routes: HostRoutes<TlsTarget>;
  /** The http proxies' names: one more specific than a wildcard tls proxy is terminated, not passed. */
  httpRoutes: HostRoutes<unknown>;
  /** Read at each connection: a reload may renew them. */
  certs: () => TlsCertStore | undefined;
  /** The name used for a ClientHello without SNI; absent: such connections are closed. */
  defaultHost: string | undefined;
  vhost: HttpVhostServer;
  logger: Logger;
  tracker: ConnectionTracker;
  helloTimeoutMs: number;
  helloMaxBytes: number;
  /**
   * Caps the connections still sending their ClientHello; one passed through no longer counts, one
   * terminated counts on until its first request is routed.
   */
  pending: PendingConnections;
}

export type SniDecision =
  | { action: 'passthrough'; target: TlsTarget }
  | { action: 'terminate' }
  | { action: 'close'; reason: string };

/** How specific a route's name is: an exact name (or subdomain) above any wildcard, longer wildcards higher. */
function specificity(route: RouteEntry<unknown>): number {
  return route.tier === 'wildcard' ? route.host.split('.').length : Number.POSITIVE_INFINITY;
}

/** The http route is more specific than the tls one, or as specific and online while the tls one is not. */
function httpGoesFirst(http: RouteEntry<unknown>, tls: RouteEntry<unknown>): boolean {
  const [h, t] = [specificity(http), specificity(tls)];
  return h > t || (h === t && tls.target === undefined && http.target !== undefined);
}

export class TlsSniListener {
  private readonly server: Server;
  private address = '';

  constructor(private readonly opts: TlsSniListenerOptions) {
    this.server = createServer({ allowHalfOpen: true }, (socket) => this.onConnection(socket));
  }

  async listen(): Promise<string> {
    const { listen, logger } = this.opts;
    const address = await listenServer(this.server, listen, (err) =>
      logger.error({ reason: err.message }, 'https listener error'),
    );
    this.address = formatHostPort(address.address, address.port);
    return this.address;
  }

  stopAccepting(): void {
    if (this.server.listening) this.server.close();
  }

  /**
   * Where a connection for `serverName` goes. A name a tls proxy claims exactly (or by subdomain) wins,
   * then a certificate naming it exactly, then a wildcard tls proxy, then a wildcard certificate. An http
   * proxy's name that a certificate covers goes before a tls proxy that is less specific, or as specific
   * and offline (the most specific name wins, as on the http port): else another client's `*.example.com`
   * tls proxy would take the HTTPS visitors of `app.example.com`, and leave them closed once it went
   * offline; and a tls proxy gone offline would keep an http proxy that took its name closed for a day.
   */
  decide(serverName: string | undefined): SniDecision {
    // An IP address names no proxy or certificate here: read as no SNI (see isIpAddressSni).
    const asked = serverName !== undefined && isIpAddressSni(serverName) ? undefined : serverName;
    const name = normalizeRequestHost(asked ?? this.opts.defaultHost);
    if (name === undefined) {
      if (asked !== undefined) return { action: 'close', reason: 'bad SNI' };
      const sni = serverName === undefined ? 'no SNI' : 'an IP address as SNI';
      return { action: 'close', reason: `${sni} and no default_host` };
    }
    // A group member whose max_connections is full is passed over while another has room.
    const route = this.opts.routes.lookupName(name, (target) => target.limit.hasRoom());
    const certs = this.opts.certs();
    const terminates = this.opts.vhost.terminates && certs !== undefined;
    if (route && terminates && certs.covers(name)) {
      const http = this.opts.httpRoutes.peekName(name);
      if (http && httpGoesFirst(http, route)) return { action: 'terminate' };
    }
    const pass = (): SniDecision =>
      route?.target
        ? { action: 'passthrough', target: route.target }
        : { action: 'close', reason: `the tunnel for ${name} is offline` };
    if (route && route.tier !== 'wildcard') return pass();
    if (terminates && certs.hasExact(name)) return { action: 'terminate' };
    if (route) return pass();
    if (terminates && certs.covers(name)) return { action: 'terminate' };
    return { action: 'close', reason: 'no tls proxy or certificate for this name' };
  }

  private async onConnection(socket: Socket): Promise<void> {
    if (!this.opts.pending.admit(socket)) return;
    socket.on('error', () => {});
    const remoteAddr = peerAddress(socket);
    const { hello, buffered } = await readClientHello(socket, {
      maxBytes: this.opts.helloMaxBytes,
      timeoutMs: this.opts.helloTimeoutMs,
    });
    if (hello.state !== 'ok') {
      this.opts.logger.debug({ remote_addr: remoteAddr, reason: hello.reason }, 'tls connection refused');
      socket.destroy();
      return;
    }
    const decision = this.decide(hello.serverName);
    if (decision.action === 'close') {
      this.opts.logger.debug(
        { remote_addr: remoteAddr, sni: hello.serverName, reason: decision.reason },
        'tls connection refused',
      );
      socket.destroy();
      return;
    }
    if (decision.action === 'terminate') {
      socket.unshift(Buffer.concat(buffered));
      this.opts.vhost.terminate(socket);
      return;
    }
    const { target } = decision;
    this.opts.pending.settle(socket);
    if (!target.limit.admit(socket)) return;
    const check = target.visitorCheck?.(remoteAddr);
    if (check !== undefined && (await visitorTurnedAway(socket, check))) return;
    const { tracker, logger } = this.opts;
    const conn = tracker.nextId();
    socket.setNoDelay(true);
    const stream = openVisitorStream(target.session, socket, {
      proxy: target.proxy,
      conn,
      public_addr: this.address,
      ...compressionOf(target),
    });
    // The ClientHello goes first, exactly as it came; then the rest of the connection.
    let helloBytes = 0;
    for (const chunk of buffered) {
      stream.write(chunk);
      helloBytes += chunk.length;
    }
    const limits = target.bandwidth.limits();
    // The ClientHello is paid for too, so that a stream of short connections keeps to the cap.
    limits?.aToB?.spend(helloBytes);
    tracker.carry(socket, stream, {
      labels: ['visitor', 'tunnel'],
      alreadyMoved: { bytesAtoB: helloBytes, bytesBtoA: 0 },
      ...(limits === undefined ? {} : { limits }),
      logger,
      fields: {
        client: target.client,
        proxy: target.proxy,
        conn,
        remote_addr: remoteAddr,
        sni: hello.serverName,
      },
    });
  }
}
