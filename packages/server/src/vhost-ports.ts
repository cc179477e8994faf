// The shared public ports of a server: [http] listen (virtual hosts), [https] listen (SNI passthrough
// or termination) and [tcpmux] listen (HTTP CONNECT). Wires the route tables, the HTTP router and the
// listeners together.
import type { IncomingMessage } from 'node:http';
import type { Duplex } from 'node:stream';
import { type AcmeCertificateView, AcmeManager } from './acme-manager.js';
import { NO_ERROR_PAGES } from './error-pages.js';
import { maxResponseHead } from './http-upstream-connection.js';
import { HttpVhostRouter } from './http-vhost-router.js';
import { HttpVhostServer, maxHeaderFields } from './http-vhost-server.js';
import type { PendingConnections } from './pending-connections.js';
import { defaultRoutingConfig } from './routing-config.js';
import type { ServerContext } from './server-context.js';
import { TcpmuxListener } from './tcpmux-listener.js';
import type { TlsCertStore } from './tls-cert-store.js';
import { TlsSniListener } from './tls-sni-listener.js';
import type { TrustedProxies } from './trusted-proxies.js';

export class VhostPorts {
  private readonly vhost: HttpVhostServer;
  private readonly sni: TlsSniListener | undefined;
  private readonly tcpmux: TcpmuxListener | undefined;
  /** [https.acme]; absent: the TLS port serves the explicit certificates as they are. */
  private readonly acme: AcmeManager | undefined;

  constructor(
    private readonly ctx: ServerContext,
    onControlUpgrade: (req: IncomingMessage, socket: Duplex, head: Buffer) => void,
    pending: PendingConnections,
    trusted: () => TrustedProxies,
  ) {
    const routing = ctx.config.routing ?? defaultRoutingConfig();
    ctx.routing.maxResponseHead = maxResponseHead(routing.httpLimits.maxHeaderSize);
    if (routing.https?.acme) {
      this.acme = new AcmeManager(routing.https.acme, {
        logger: ctx.logger,
        explicit: () => this.explicitCerts(),
        onChange: () => this.useRenewedCertificates(),
      });
    }
    const router = new HttpVhostRouter({
      routes: ctx.routing.httpRoutes,
      trusted,
      logger: ctx.logger,
      tracker: ctx.tracker,
      traffic: ctx.traffic,
      controlPath: ctx.config.path,
      onControlUpgrade,
      pending,
      // Like the other http limits, fixed at start: a reload names a change as needing a restart.
      responseTimeout: routing.httpLimits.responseTimeout,
      idleTimeout: routing.httpLimits.idleTimeout,
      maxHeaderFields: maxHeaderFields(routing.httpLimits.maxHeaderSize),
      maxResponseHead: ctx.routing.maxResponseHead,
      errorPages: () => ctx.config.routing?.errorPages ?? NO_ERROR_PAGES,
    });
    this.vhost = new HttpVhostServer({
      router,
      limits: routing.httpLimits,
      logger: ctx.logger,
      ...(routing.httpListen ? { httpListen: routing.httpListen } : {}),
      ...(routing.https ? { certs: () => this.certs() } : {}),
      ...(routing.https?.defaultHost ? { defaultHost: routing.https.defaultHost } : {}),
      handshakeTimeout: routing.https?.handshakeTimeout ?? 10_000,
      pending,
      ...(this.acme ? { acmeChallenges: this.acme.challenges } : {}),
    });
    if (routing.https) {
      this.sni = new TlsSniListener({
        listen: routing.https.listen,
        routes: ctx.routing.tlsRoutes,
        httpRoutes: ctx.routing.httpRoutes,
        certs: () => this.certs(),
        defaultHost: routing.https.defaultHost,
        vhost: this.vhost,
        logger: ctx.logger,
        tracker: ctx.tracker,
        helloTimeoutMs: routing.https.handshakeTimeout,
        helloMaxBytes: routing.https.maxClientHelloSize,
        pending,
      });
    }
    if (routing.tcpmux) {
      this.tcpmux = new TcpmuxListener({
        listen: routing.tcpmux.listen,
        routes: ctx.routing.tcpmuxRoutes,
        logger: ctx.logger,
        tracker: ctx.tracker,
        handshakeTimeoutMs: routing.tcpmux.handshakeTimeout,
        pending,
        traffic: ctx.traffic,
      });
    }
  }

  /** Opens the configured ports (logging "http listening", "https listening", "tcpmux listening" with the bound address). */
  async start(): Promise<void> {
    const { logger } = this.ctx;
    const httpAddress = await this.vhost.listenHttp();
    if (httpAddress !== undefined) {
      this.ctx.routing.httpAddress = httpAddress;
      logger.info({ addr: httpAddress }, 'http listening');
    }
    if (this.sni) {
      const httpsAddress = await this.sni.listen();
      this.ctx.routing.httpsAddress = httpsAddress;
      const certs = this.ctx.config.routing?.https?.certs.names ?? [];
      logger.info({ addr: httpsAddress, certs }, 'https listening');
    }
    this.acme?.start();
    if (this.tcpmux) {
      const tcpmuxAddress = await this.tcpmux.listen();
      this.ctx.routing.tcpmuxAddress = tcpmuxAddress;
      logger.info({ addr: tcpmuxAddress }, 'tcpmux listening');
    }
  }

  /** Read at use: a reload (SIGHUP) renews them in ctx.config, while the [https] table is fixed at start. */
  private explicitCerts(): TlsCertStore {
    return this.ctx.config.routing!.https!.certs;
  }

  /** What the TLS port serves: the explicit certificates, and ACME's beside them. */
  private certs(): TlsCertStore {
    const explicit = this.explicitCerts();
    return this.acme ? this.acme.storeWith(explicit) : explicit;
  }

  /** [https.acme]'s names and their certificates; none without the table. */
  acmeCertificates(): AcmeCertificateView[] {
    return this.acme?.certificates() ?? [];
  }

  /** A reload's [https.acme] (undefined: the table is gone); one not there at start needs a restart. */
  reconfigureAcme(): void {
    this.acme?.reconfigure(this.ctx.config.routing?.https?.acme);
  }

  /** After a reload renewed the certificates: new handshakes get them. */
  useRenewedCertificates(): void {
    this.vhost.useRenewedCertificates();
  }

  stopAccepting(): void {
    this.acme?.stop();
    this.sni?.stopAccepting();
    this.tcpmux?.stopAccepting();
    this.vhost.stopAccepting();
  }

  closeAll(): void {
    this.vhost.closeAll();
  }
}
