import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import {
  formatHostPort,
  type HostPort,
  isLoopback,
  type Logger,
  listenServer,
  plainAddress,
  screenAdminRequest,
} from '@porthole/protocol';
import type { ServerStatus } from './server-status.js';
import { STATUS_PAGE_CSS, STATUS_PAGE_HTML, STATUS_PAGE_ICON, STATUS_PAGE_JS } from './status-page.js';

export interface AdminServerOptions {
  listen: HostPort;
  /** The current admin token (a reload may change it). */
  token: () => string;
  status: ServerStatus;
  logger: Logger;
  /** True once SIGTERM began: /healthz answers 503 so load balancers stop sending. */
  draining: () => boolean;
  onAuthFailure: () => void;
}

/** The page and its assets carry no data; everything under /api and /metrics needs the Bearer token. */
const SECURITY_HEADERS = {
  'Content-Security-Policy':
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
  'X-Content-Type-Options': 'nosniff',
  'Referrer-Policy': 'no-referrer',
  'X-Frame-Options': 'DENY',
  'Cache-Control': 'no-store',
};

const ASSETS: Record<string, { type: string; body: string }> = {
  '/': { type: 'text/html; charset=utf-8', body: STATUS_PAGE_HTML },
  '/status.js': { type: 'text/javascript; charset=utf-8', body: STATUS_PAGE_JS },
  '/status.css': { type: 'text/css; charset=utf-8', body: STATUS_PAGE_CSS },
  '/favicon.svg': { type: 'image/svg+xml', body: STATUS_PAGE_ICON },
};

function digest(text: string): Buffer {
  return createHash('sha256').update(text).digest();
}

/** Compares digests, so neither the token's length nor its prefix leaks through timing. */
export function tokenMatches(header: string | undefined, token: string): boolean {
  const match = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header);
  if (!match) return false;
  return timingSafeEqual(digest(match[1]!), digest(token));
}

function send(res: ServerResponse, status: number, type: string, body: string, extra = {}): void {
  res.writeHead(status, {
    ...SECURITY_HEADERS,
    'Content-Type': type,
    'Content-Length': Buffer.byteLength(body),
    ...extra,
  });
  res.end(body);
}

function sendJson(res: ServerResponse, status: number, value: unknown, extra = {}): void {
  send(res, status, 'application/json; charset=utf-8', `${JSON.stringify(value)}\n`, extra);
}

/**
 * The server's admin listener: a JSON API (/api/clients, /api/proxies, /api/connections), Prometheus
 * /metrics, /healthz and the status page at /. Loopback by default; API and metrics need
 * `Authorization: Bearer <admin token>`.
 */
export class AdminServer {
  private readonly server: Server;
  /** Whether the bound address is loopback (decided once bound: "LOCALHOST", "[0:0:0:0:0:0:0:1]" are). */
  private loopbackOnly = true;

  constructor(private readonly opts: AdminServerOptions) {
    this.server = createServer((req, res) => this.handle(req, res));
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 15_000;
    this.server.keepAliveTimeout = 5_000;
  }

  /** Starts listening; resolves with the bound address. */
  async listen(): Promise<string> {
    const address = await listenServer(this.server, this.opts.listen, (err) =>
      this.opts.logger.error({ reason: err.message }, 'admin listener error'),
    );
    this.loopbackOnly = isLoopback(plainAddress(address.address));
    return formatHostPort(address.address, address.port);
  }

  close(): void {
    this.server.close();
    this.server.closeAllConnections();
  }

  private handle(req: IncomingMessage, res: ServerResponse): void {
    const screened = screenAdminRequest(req, this.loopbackOnly);
    if ('refusal' in screened) {
      const { refusal } = screened;
      sendJson(res, refusal.status, { error: refusal.error }, refusal.headers);
      return;
    }
    const { path } = screened;
    if (path === '/healthz') {
      const draining = this.opts.draining();
      sendJson(res, draining ? 503 : 200, { status: draining ? 'draining' : 'ok' });
      return;
    }
    const asset = ASSETS[path];
    if (asset) {
      send(res, 200, asset.type, asset.body);
      return;
    }
    const api = this.api(path);
    if (!api) {
      sendJson(res, 404, { error: 'not found' });
      return;
    }
    if (!tokenMatches(req.headers.authorization, this.opts.token())) {
      this.opts.onAuthFailure();
      sendJson(
        res,
        401,
        { error: 'missing or wrong admin token (send Authorization: Bearer <token>)' },
        { 'WWW-Authenticate': 'Bearer realm="porthole-admin"' },
      );
      return;
    }
    try {
      api(res);
    } catch (err) {
      this.opts.logger.error({ reason: (err as Error).message, path }, 'admin request failed');
      sendJson(res, 500, { error: 'internal error' });
    }
  }

  private api(path: string): ((res: ServerResponse) => void) | undefined {
    const status = this.opts.status;
    switch (path) {
      case '/api/clients':
        return (res) => sendJson(res, 200, { clients: status.clients() });
      case '/api/proxies':
        return (res) => sendJson(res, 200, { proxies: status.proxies() });
      case '/api/connections':
        return (res) => sendJson(res, 200, { connections: status.connections() });
      case '/api/certificates':
        return (res) => sendJson(res, 200, { acme: status.acmeCertificates() });
      case '/metrics':
        return (res) => send(res, 200, 'text/plain; version=0.0.4; charset=utf-8', status.metrics());
      default:
        return undefined;
    }
  }
}
