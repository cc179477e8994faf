import { createServer, type Server } from 'node:http';
import {
  formatHostPort,
  type HostPort,
  type Logger,
  listenServer,
  screenAdminRequest,
} from '@porthole/protocol';
import type { ReloadSummary } from './reload.js';
import type { ClientStatus } from './session-status.js';

/**
 * A reload asked for over the admin endpoint: what changed, or why the running config is kept; `notNow`: the
 * client is starting or shutting down (503, ask again), not a config that is wrong (422).
 */
export type ReloadOutcome =
  | { reloaded: true; summary: ReloadSummary; warnings: readonly string[] }
  | { reloaded: false; reason: string; notNow?: true };

/** What the endpoint serves, read at each request (a reload replaces the config they answer from). */
export interface ClientAdminHandlers {
  status(): ClientStatus;
  reload(): ReloadOutcome;
}

/** The paths that take POST (and only POST): they change something. */
const POST_PATHS = ['/api/reload'];

/**
 * The client's own admin endpoint (loopback only, enforced by the config): GET /api/status with the session
 * state and proxies, what `porthole-client status` prints; POST /api/reload, what SIGHUP does, answered with
 * what changed (`porthole-client reload`); GET /healthz. Methods and Host are screened as on the server's
 * admin listener. No token: whoever may connect to the loopback port may read the status and ask for a
 * reload, which reads the same config file as SIGHUP and changes nothing else.
 */
export class ClientAdmin {
  private readonly server: Server;

  constructor(
    private readonly listenOn: HostPort,
    handlers: ClientAdminHandlers,
    private readonly logger: Logger,
  ) {
    this.server = createServer((req, res) => {
      const reply = (code: number, value: unknown, headers: Record<string, string> = {}) => {
        const body = `${JSON.stringify(value)}\n`;
        res.writeHead(code, {
          'Content-Type': 'application/json; charset=utf-8',
          'Content-Length': Buffer.byteLength(body),
          'Cache-Control': 'no-store',
          'X-Content-Type-Options': 'nosniff',
          ...headers,
        });
        res.end(body);
      };
      // The listener is loopback (the config allows nothing else): the server's admin rules for one apply.
      const screened = screenAdminRequest(req, true, POST_PATHS);
      if ('refusal' in screened) {
        const { refusal } = screened;
        return reply(refusal.status, { error: refusal.error }, refusal.headers);
      }
      const { path } = screened;
      if (path === '/api/status') return reply(200, handlers.status());
      if (path === '/api/reload') {
        // The request's body says nothing: the config file is the one the client runs from.
        req.resume();
        const outcome = handlers.reload();
        if (outcome.reloaded)
          return reply(200, { reloaded: true, ...outcome.summary, warnings: outcome.warnings });
        return reply(outcome.notNow ? 503 : 422, { reloaded: false, reason: outcome.reason });
      }
      if (path === '/healthz') {
        const state = handlers.status().state;
        return reply(state === 'established' ? 200 : 503, { status: state });
      }
      reply(404, { error: 'not found' });
    });
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 15_000;
  }

  async listen(): Promise<string> {
    const address = await listenServer(this.server, this.listenOn, (err) =>
      this.logger.error({ reason: err.message }, 'admin listener error'),
    );
    return formatHostPort(address.address, address.port);
  }

  close(): void {
    this.server.close();
    this.server.closeAllConnections();
  }
}
