import { CloseCode, Session, type WebSocketStream } from '@porthole/mux';
import {
  CoalescedLines,
  ConfigError,
  ConnectionTracker,
  keepAliveOptions,
  type Logger,
  nextClose,
  type TokenClaims,
} from '@porthole/protocol';
import { AdminServer } from './admin-server.js';
import { UpgradeAuthenticator } from './auth.js';
import { ClientSession } from './client-session.js';
import type { ServerConfig } from './config.js';
import { ControlEndpoint } from './control-endpoint.js';
import { Histogram, timeStreamOpens } from './metrics.js';
import { PendingConnections } from './pending-connections.js';
import { createRoutingState } from './proxy-routing.js';
import { ProxyTraffic } from './proxy-traffic.js';
import { reloadServer } from './reload.js';
import type { ServerContext } from './server-context.js';
import { ServerPlugins } from './server-plugins.js';
import { type ServerCounters, ServerStatus } from './server-status.js';
import { currentTrustedProxies } from './trusted-proxies.js';
import { VhostPorts } from './vhost-ports.js';

/** How long to let final GoAway/close frames reach clients before the process exits. */
const CLOSE_FLUSH_MS = 1000;

/**
 * porthole-server: the control endpoint, authenticated client sessions and their public listeners.
 * Keepalive: pings every heartbeat_interval, each allowed (heartbeat_timeout - heartbeat_interval) for its
 * answer, so a dead client is noticed within heartbeat_timeout of its last sign of life.
 */
export class PortholeServer {
  readonly ctx: ServerContext;
  private readonly endpoint: ControlEndpoint;
  private readonly vhostPorts: VhostPorts;
  private readonly authenticator: UpgradeAuthenticator;
  private readonly pending: PendingConnections;
  private readonly sockets = new Set<WebSocketStream>();
  private stopping = false;
  readonly counters: ServerCounters;
  readonly status: ServerStatus;
  private admin: AdminServer | undefined;

  constructor(config: ServerConfig, logger: Logger, serverVersion: string) {
    const tracker = new ConnectionTracker();
    this.ctx = {
      config,
      logger,
      tracker,
      traffic: new ProxyTraffic(tracker),
      serverVersion,
      clients: new Map(),
      sessions: new Set(),
      ports: new Map(),
      routing: createRoutingState(),
      plugins: new ServerPlugins(() => this.ctx.config.plugins, logger),
      visitRefusals: new CoalescedLines((fields) => logger.warn(fields, 'visit refused')),
    };
    this.authenticator = new UpgradeAuthenticator(config.auth);
    const trusted = currentTrustedProxies(() => this.ctx.config.routing?.trustedProxies);
    this.pending = new PendingConnections(() => this.ctx.config.pending, trusted, logger);
    this.counters = {
      streamOpen: new Histogram(),
      authFailures: this.authenticator.failures,
      adminAuthFailures: 0,
      pending: this.pending,
      reloads: { ok: 0, failed: 0 },
      acmeCertificates: () => this.vhostPorts.acmeCertificates(),
    };
    this.status = new ServerStatus(this.ctx, this.counters);
    this.endpoint = new ControlEndpoint({
      listen: config.listen,
      path: config.path,
      ...(config.tls ? { tls: config.tls } : {}),
      authenticator: this.authenticator,
      pending: this.pending,
      logger,
      onClient: (ws, claims, remoteAddr) => this.onClient(ws, claims, remoteAddr),
    });
    this.vhostPorts = new VhostPorts(
      this.ctx,
      (req, socket, head) => this.endpoint.handleUpgrade(req, socket, head),
      this.pending,
      trusted,
    );
  }

  /** Starts the control endpoint (and the admin listener, if configured); resolves with its bound address. */
  async start(): Promise<string> {
    this.logConfigWarnings();
    const admin = this.ctx.config.admin;
    if (admin) {
      this.admin = new AdminServer({
        listen: admin.listen,
        token: () => this.ctx.config.admin?.token ?? admin.token,
        status: this.status,
        logger: this.ctx.logger,
        draining: () => this.stopping,
        onAuthFailure: () => {
          this.counters.adminAuthFailures += 1;
        },
      });
      const adminAddress = await this.admin.listen();
      this.ctx.logger.info({ addr: adminAddress }, 'admin listening');
    }
    let address: string;
    try {
      address = await this.endpoint.listen();
    } catch (err) {
      this.admin?.close();
      throw err;
    }
    try {
      await this.vhostPorts.start();
    } catch (err) {
      this.admin?.close();
      this.endpoint.stopAccepting();
      this.vhostPorts.stopAccepting();
      throw err;
    }
    this.ctx.logger.info(
      {
        addr: address,
        path: this.ctx.config.path,
        tls: !!this.ctx.config.tls,
        // Which policy services sign-ins, registrations and visitors wait for; left out when none.
        ...(this.ctx.config.plugins.length === 0
          ? {}
          : { plugins: this.ctx.config.plugins.map((plugin) => plugin.name) }),
      },
      'server listening',
    );
    return address;
  }

  private logConfigWarnings(): void {
    for (const reason of this.ctx.config.warnings) this.ctx.logger.warn({ reason }, 'config warning');
  }

  /**
   * SIGHUP: re-read the config file and apply what can change in place (see reload.ts). An invalid
   * file is logged with its reason and changes nothing.
   */
  reload(): void {
    const { logger } = this.ctx;
    if (this.stopping) return;
    try {
      const summary = reloadServer(this.ctx, this.authenticator);
      this.counters.reloads.ok += 1;
      this.logConfigWarnings();
      if (summary.renewed.length > 0) {
        if (this.ctx.config.tls) this.endpoint.useCertificate(this.ctx.config.tls);
        this.vhostPorts.useRenewedCertificates();
        logger.info({ certs: summary.renewed }, 'reload: certificates renewed');
      }
      this.vhostPorts.reconfigureAcme();
      if (summary.needRestart.length > 0)
        logger.warn({ keys: summary.needRestart }, 'reload: these settings take effect after a restart');
      logger.info(
        {
          allow_ports: this.ctx.config.allowPorts.toString(),
          revoked_tokens: this.ctx.config.auth.revoked.size,
          clients_revoked: summary.revoked,
          proxies_closed: summary.closed,
          proxies_moved: summary.moved,
          plugins: this.ctx.config.plugins.map((plugin) => plugin.name),
        },
        'config reloaded',
      );
    } catch (err) {
      this.counters.reloads.failed += 1;
      const reason = err instanceof ConfigError ? err.message : (err as Error).message;
      logger.error({ reason }, 'reload failed: keeping the running configuration');
    }
  }

  private onClient(ws: WebSocketStream, claims: TokenClaims, remoteAddr: string): void {
    if (this.stopping) {
      ws.close(CloseCode.ServiceRestart, 'server shutting down');
      return;
    }
    this.sockets.add(ws);
    ws.once('close', () => this.sockets.delete(ws));
    const { heartbeatInterval, heartbeatTimeout } = this.ctx.config;
    const session = new Session(ws, {
      client: false,
      ...keepAliveOptions(heartbeatInterval, heartbeatTimeout),
    });
    timeStreamOpens(session, this.counters.streamOpen);
    new ClientSession(this.ctx, session, claims, remoteAddr);
  }

  /** What a drain waits for, as log fields. */
  openWork(): { open_connections: number; open_http_requests: number; open_udp_flows: number } {
    const { tracker, traffic } = this.ctx;
    return {
      open_connections: tracker.size,
      open_http_requests: traffic.openHttpRequests,
      // The traffic's open exchanges are its http requests and its udp flows.
      open_udp_flows: traffic.openExchangeCount - traffic.openHttpRequests,
    };
  }

  /**
   * SIGTERM: stop accepting clients and public connections, tell every client (GoAway + notice), wait up
   * to shutdown_timeout for open connections to finish, then close what is left.
   */
  async shutdown(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const { logger, tracker, traffic, config } = this.ctx;
    logger.info({ ...this.openWork(), timeout_ms: config.shutdownTimeout }, 'shutting down');
    this.endpoint.stopAccepting();
    this.vhostPorts.stopAccepting();
    this.pending.flush();
    this.ctx.visitRefusals.forgetAll();
    for (const session of this.ctx.sessions) session.drain('server shutting down');
    const deadline = performance.now() + config.shutdownTimeout;
    const drained =
      (await tracker.waitIdle(config.shutdownTimeout)) &&
      (await traffic.waitHttpIdle(Math.max(0, deadline - performance.now())));
    if (!drained) logger.warn(this.openWork(), 'shutdown timeout: closing open connections');
    for (const session of [...this.ctx.sessions]) session.close('server shutting down');
    const closing = [...this.sockets].map((ws) => nextClose(ws));
    await Promise.race([Promise.all(closing), new Promise((r) => setTimeout(r, CLOSE_FLUSH_MS).unref())]);
    this.endpoint.closeAll();
    this.vhostPorts.closeAll();
    // Connections cut by the close still get their "connection closed" line.
    await tracker.waitIdle(CLOSE_FLUSH_MS);
    this.admin?.close();
    await this.ctx.plugins.settle(CLOSE_FLUSH_MS);
    this.ctx.plugins.close();
    logger.info({}, 'server stopped');
  }
}
