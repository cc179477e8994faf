import { createServer, type Server } from 'node:http';
import {
  formatHostPort,
  type HostPort,
  type Logger,
  listenServer,
  screenAdminRequest,
} from '@porthole/protocol';
import type { ClientStatus } from './session-status.js';

/**
 * The client's own admin endpoint (loopback only, enforced by the config): GET /api/status with the session
 * state and proxies, what `porthole-client status` prints; GET /healthz. Methods and Host are screened as on
 * the server's admin listener.
 */
export class ClientAdmin {
  private readonly server: Server;

  constructor(
    private readonly listenOn: HostPort,
    status: () => ClientStatus,
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
      const screened = screenAdminRequest(req, true);
      if ('refusal' in screened) {
        const { refusal } = screened;
        return reply(refusal.status, { error: refusal.error }, refusal.headers);
      }
      const { path } = screened;
      if (path === '/api/status') return reply(200, status());
      if (path === '/healthz') {
        const state = status().state;
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
