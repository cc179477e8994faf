import { Session, webSocketDuplex } from '@porthole/mux';
import { ConnectionTracker, type Logger, nextClose, type TokenClaims } from '@porthole/protocol';
import type { WebSocket } from 'ws';
import { UpgradeAuthenticator } from './auth.js';
import { ClientSession } from './client-session.js';
import type { ServerConfig } from './config.js';
import { ControlEndpoint } from './control-endpoint.js';
import type { ServerContext } from './server-context.js';

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
  private readonly sockets = new Set<WebSocket>();
  private stopping = false;

  constructor(config: ServerConfig, logger: Logger, serverVersion: string) {
    this.ctx = {
      config,
      logger,
      tracker: new ConnectionTracker(),
      serverVersion,
      clients: new Map(),
      sessions: new Set(),
      ports: new Map(),
    };
    this.endpoint = new ControlEndpoint({
      listen: config.listen,
      path: config.path,
      ...(config.tls ? { tls: config.tls } : {}),
      authenticator: new UpgradeAuthenticator(config.auth),
      logger,
      onClient: (ws, claims, remoteAddr) => this.onClient(ws, claims, remoteAddr),
    });
  }

  /** Starts the control endpoint; resolves with its bound address. */
  async start(): Promise<string> {
    const address = await this.endpoint.listen();
    this.ctx.logger.info(
      { addr: address, path: this.ctx.config.path, tls: !!this.ctx.config.tls },
      'server listening',
    );
    return address;
  }

  private onClient(ws: WebSocket, claims: TokenClaims, remoteAddr: string): void {
    if (this.stopping) {
      ws.close(1012, 'server shutting down');
      return;
    }
    this.sockets.add(ws);
    ws.once('close', () => this.sockets.delete(ws));
    const { heartbeatInterval, heartbeatTimeout } = this.ctx.config;
    const session = new Session(webSocketDuplex(ws), {
      client: false,
      keepAliveInterval: heartbeatInterval,
      keepAliveTimeout: heartbeatTimeout - heartbeatInterval,
    });
    new ClientSession(this.ctx, session, claims, remoteAddr);
  }

  /**
   * SIGTERM: stop accepting clients and public connections, tell every client (GoAway + notice), wait up
   * to shutdown_timeout for open connections to finish, then close what is left.
   */
  async shutdown(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const { logger, tracker, config } = this.ctx;
    logger.info({ open_connections: tracker.size, timeout_ms: config.shutdownTimeout }, 'shutting down');
    this.endpoint.stopAccepting();
    for (const session of this.ctx.sessions) session.drain('server shutting down');
    const drained = await tracker.waitIdle(config.shutdownTimeout);
    if (!drained)
      logger.warn({ open_connections: tracker.size }, 'shutdown timeout: closing open connections');
    for (const session of [...this.ctx.sessions]) session.close('server shutting down');
    const closing = [...this.sockets].map((ws) => nextClose(ws));
    await Promise.race([Promise.all(closing), new Promise((r) => setTimeout(r, CLOSE_FLUSH_MS).unref())]);
    this.endpoint.closeAll();
    // Connections cut by the close still get their "connection closed" line.
    await tracker.waitIdle(CLOSE_FLUSH_MS);
    logger.info({}, 'server stopped');
  }
}
