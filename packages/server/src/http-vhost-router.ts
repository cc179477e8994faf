// Requests on the http vhost port (and on the TLS port once terminated): routed by Host and path to the
// http proxy that claimed them, forwarded over tunnel streams with X-Forwarded-* headers. WebSocket (and
// other) upgrades are passed through raw on a stream of their own.
import { timingSafeEqual } from 'node:crypto';
import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import {
  type ConnectionTracker,
  formatHostPort,
  type Logger,
  normalizeRequestHost,
  TurnGatheredWrites,
} from '@porthole/protocol';
import type { HostRoutes, RouteEntry } from './host-routes.js';
import { forwardableTrailers, HOP_BY_HOP } from './http-fields.js';
import { headerTokens, type ResponseHead } from './http-response-head.js';
import type { ResponseSink, UpstreamConnection } from './http-upstream-connection.js';
import type { UpstreamPool, Visitor } from './http-upstream-pool.js';
import { plainAddress, type TrustedProxies } from './trusted-proxies.js';

/** What an http proxy's routes lead to. */
export interface HttpTarget {
  client: string;
  proxy: string;
  /** Pooled tunnel streams for ordinary requests. */
  pool: UpstreamPool;
  /** A fresh tunnel stream (for an upgrade, which keeps its connection) and its connection id. */
  openStream(visitor: Visitor): { stream: Duplex; conn: number };
  /** Basic auth visitors must present. */
  auth: { user: Buffer; password: Buffer } | undefined;
  hostHeaderRewrite: string | undefined;
  /** Set on every forwarded request (names lowercased). */
  requestHeaders: ReadonlyArray<readonly [string, string]>;
}

export interface HttpVhostRouterOptions {
  routes: HostRoutes<HttpTarget>;
  /** Read per request: a reload may change trusted_proxies. */
  trusted(): TrustedProxies;
  logger: Logger;
  tracker: ConnectionTracker;
  /** Upgrades on this path go to the control endpoint (so clients can dial the vhost ports). */
  controlPath: string;
  onControlUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** [http] response_timeout: ms from a request's last byte to the response head, else 504; 0: none. */
  responseTimeout: number;
}

const FORWARDED = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']);
/** Methods safe to send again when a pooled stream turned out to be closed. */
const RETRYABLE = new Set(['GET', 'HEAD', 'OPTIONS']);

function plainPage(status: number, text: string): { head: Record<string, string>; body: string } {
  const body = `${status} ${STATUS_CODES[status] ?? ''}\n\n${text}\n`;
  return {
    head: {
      'Content-Type': 'text/plain; charset=utf-8',
      'Content-Length': String(Buffer.byteLength(body)),
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
    },
    body,
  };
}

const NOT_FOUND = 'No site is served under this name here.';
const OFFLINE = 'The tunnel serving this site is offline.';
const UNREACHABLE = 'The service behind this tunnel did not answer.';
const AUTH_REQUIRED = 'This site requires a user name and password.';

function pathOf(url: string | undefined): string {
  if (url === undefined) return '/';
  try {
    return new URL(url, 'http://x').pathname;
  } catch {
    return '/';
  }
}

function isEncrypted(socket: Socket): boolean {
  return (socket as TLSSocket).encrypted === true;
}

function sameSecret(given: Buffer, expected: Buffer): boolean {
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** True when the request carries the target's basic-auth credentials. */
function authorized(req: IncomingMessage, auth: NonNullable<HttpTarget['auth']>): boolean {
  const header = req.headers.authorization;
  const match = header === undefined ? null : /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
  if (!match) return false;
  const decoded = Buffer.from(match[1]!, 'base64');
  const colon = decoded.indexOf(0x3a);
  if (colon < 0) return false;
  // Both compared in full, so the time taken does not say which one was wrong.
  const userOk = sameSecret(decoded.subarray(0, colon), auth.user);
  const passwordOk = sameSecret(decoded.subarray(colon + 1), auth.password);
  return userOk && passwordOk;
}

/** Request line and fields as the local service receives them, blank line included. */
function requestHead(method: string, url: string, headers: readonly string[], version = '1.1'): string {
  let head = `${method} ${url} HTTP/${version}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${head}\r\n`;
}

/** The local service's response fields without the ones that describe its hop (or that it named so). */
function responseHeaders(head: ResponseHead): string[] {
  const raw = head.rawHeaders;
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (!HOP_BY_HOP.has(lower) && !head.connection.includes(lower)) out.push(raw[i]!, raw[i + 1]!);
  }
  return out;
}

export class HttpVhostRouter {
  /** The 504 page's text, written once. */
  private readonly noAnswerText: string;

  constructor(private readonly opts: HttpVhostRouterOptions) {
    this.noAnswerText = `The service behind this tunnel did not answer within ${opts.responseTimeout / 1000} s.`;
  }

  /** The route for a request, or the error page to answer with. */
  private resolve(
    req: IncomingMessage,
    path: string,
  ):
    | { target: HttpTarget; entry: RouteEntry<HttpTarget>; host: string }
    | { status: number; text: string; extra?: Record<string, string> } {
    const host = normalizeRequestHost(req.headers.host);
    const entry = host === undefined ? undefined : this.opts.routes.lookup(host, path);
    if (!entry || host === undefined) return { status: 404, text: NOT_FOUND };
    if (!entry.target) return { status: 502, text: OFFLINE };
    if (entry.target.auth && !authorized(req, entry.target.auth)) {
      return {
        status: 401,
        text: AUTH_REQUIRED,
        extra: { 'WWW-Authenticate': 'Basic realm="porthole", charset="UTF-8"' },
      };
    }
    return { target: entry.target, entry, host };
  }

  /** The headers the local service receives, as a flat [name, value, ...] list. */
  private forwardHeaders(req: IncomingMessage, target: HttpTarget, upgrade: boolean): string[] {
    const raw = req.rawHeaders;
    const drop = new Set<string>(FORWARDED);
    for (const [name] of target.requestHeaders) drop.add(name);
    if (target.auth) drop.add('authorization');
    drop.add('expect'); // Node answered 100-continue to the visitor already
    if (!upgrade) {
      for (const name of HOP_BY_HOP) if (name !== 'transfer-encoding') drop.add(name);
      // Headers the visitor marked as hop-by-hop in Connection go too.
      for (const token of headerTokens(String(req.headers.connection ?? ''))) drop.add(token);
      drop.delete('transfer-encoding');
      // A body is framed one way only: it is re-chunked, so a length beside the chunks would lie.
      if (req.headers['transfer-encoding'] !== undefined) drop.add('content-length');
    }
    const out: string[] = [];
    let originalHost = '';
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i]!;
      const lower = name.toLowerCase();
      if (lower === 'host') {
        originalHost = raw[i + 1]!;
        continue;
      }
      if (drop.has(lower)) continue;
      out.push(name, raw[i + 1]!);
    }
    const peer = plainAddress(req.socket.remoteAddress);
    const trusted = this.opts.trusted().contains(req.socket.remoteAddress);
    const incomingFor = req.headers['x-forwarded-for'];
    const incomingProto = req.headers['x-forwarded-proto'];
    const incomingHost = req.headers['x-forwarded-host'];
    const forwardedFor =
      trusted && incomingFor
        ? `${Array.isArray(incomingFor) ? incomingFor.join(', ') : incomingFor}, ${peer}`
        : peer;
    const proto =
      trusted && typeof incomingProto === 'string'
        ? incomingProto
        : isEncrypted(req.socket)
          ? 'https'
          : 'http';
    const forwardedHost = trusted && typeof incomingHost === 'string' ? incomingHost : originalHost;
    out.unshift('Host', target.hostHeaderRewrite ?? originalHost);
    out.push('X-Forwarded-For', forwardedFor, 'X-Forwarded-Proto', proto);
    if (forwardedHost) out.push('X-Forwarded-Host', forwardedHost);
    for (const [name, value] of target.requestHeaders) out.push(name, value);
    return out;
  }

  /**
   * The service's trailer fields go to the visitor after the body (Node sends them when the answer is
   * chunked, i.e. to HTTP/1.1 visitors; HTTP/1.0 cannot carry them).
   */
  private passTrailers(
    res: ServerResponse,
    raw: readonly string[],
    target: HttpTarget,
    remoteAddr: string,
  ): void {
    const { fields, dropped } = forwardableTrailers(raw);
    if (fields.length > 0) res.addTrailers(fields);
    if (dropped > 0)
      this.opts.logger.warn(
        { client: target.client, proxy: target.proxy, remote_addr: remoteAddr, dropped },
        'http trailer fields not passed on (malformed, or framing fields)',
      );
  }

  private visitorOf(req: IncomingMessage): Visitor {
    return {
      address: req.socket.remoteAddress ?? '',
      port: req.socket.remotePort ?? 0,
      destAddress: req.socket.localAddress,
      destPort: req.socket.localPort,
    };
  }

  handleRequest(req: IncomingMessage, res: ServerResponse): void {
    const started = performance.now();
    const path = pathOf(req.url);
    const resolved = this.resolve(req, path);
    const remoteAddr = formatHostPort(plainAddress(req.socket.remoteAddress), req.socket.remotePort ?? 0);
    if (!('target' in resolved)) {
      this.answer(res, resolved.status, resolved.text, resolved.extra);
      this.opts.logger.debug(
        { remote_addr: remoteAddr, host: req.headers.host, status: resolved.status },
        'http request refused',
      );
      return;
    }
    const { target } = resolved;
    const method = req.method ?? 'GET';
    const chunkedBody = req.headers['transfer-encoding'] !== undefined;
    const hasBody =
      chunkedBody || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
    const head = requestHead(method, req.url ?? '/', this.forwardHeaders(req, target, false));
    const visitor = this.visitorOf(req);
    let responded = false;
    let current: UpstreamConnection | undefined;
    let cancelWait: (() => void) | undefined;
    let retriesLeft = 1;
    // response_timeout: one timer per request, armed once the request is in (not per attempt).
    let noAnswerTimer: NodeJS.Timeout | undefined;

    const failed = (reason: string, status = 502, text = UNREACHABLE): void => {
      clearTimeout(noAnswerTimer);
      this.opts.logger.warn(
        { client: target.client, proxy: target.proxy, remote_addr: remoteAddr, reason },
        'http forward failed',
      );
      if (!res.headersSent) this.answer(res, status, text);
      else res.destroy();
    };
    let awaitingDrain = false;
    const body = new TurnGatheredWrites(res);
    const resumeUpstream = (): void => {
      awaitingDrain = false;
      current?.resume();
    };
    const sink: ResponseSink = {
      onHead: (upstream: ResponseHead) => {
        responded = true;
        clearTimeout(noAnswerTimer);
        res.writeHead(upstream.statusCode, upstream.statusMessage, responseHeaders(upstream));
      },
      onBody: (data) => {
        if (body.write(data)) return true;
        if (!awaitingDrain) {
          awaitingDrain = true;
          res.once('drain', resumeUpstream);
        }
        return false;
      },
      onEnd: (trailers) => {
        current = undefined;
        if (trailers.length > 0) this.passTrailers(res, trailers, target, remoteAddr);
        res.end();
      },
      onError: (err, retryable) => {
        current = undefined;
        if (responded) {
          res.destroy();
          return;
        }
        if (retryable && retriesLeft > 0 && !hasBody && RETRYABLE.has(method)) {
          retriesLeft -= 1;
          attempt();
          return;
        }
        failed(
          (err as NodeJS.ErrnoException).code === 'ERR_STREAM_RESET'
            ? 'local service unreachable'
            : err.message,
        );
      },
    };
    const attempt = (): void => {
      cancelWait = target.pool.acquire(visitor, (err, conn) => {
        cancelWait = undefined;
        if (!conn) {
          failed(err?.message ?? 'no tunnel stream');
          return;
        }
        current = conn;
        conn.send(method, head, hasBody ? req : undefined, chunkedBody, sink);
      });
    };
    const timeout = this.opts.responseTimeout;
    if (timeout > 0) {
      // The service did not answer in time: give up on it, and on its stream, which would carry the
      // late answer into the next request if it were reused.
      const noAnswer = (): void => {
        cancelWait?.();
        cancelWait = undefined;
        const conn = current;
        current = undefined;
        conn?.abort();
        failed(`no response head within ${timeout} ms`, 504, this.noAnswerText);
      };
      // Counted from the request's last byte: now without a body (or with one already read in full).
      if (!hasBody || req.complete) noAnswerTimer = setTimeout(noAnswer, timeout);
      else
        req.once('end', () => {
          if (!responded && !res.headersSent && !res.destroyed) noAnswerTimer = setTimeout(noAnswer, timeout);
        });
    }
    attempt();
    // The visitor left before the answer was complete: stop the upstream request too.
    res.on('close', () => {
      clearTimeout(noAnswerTimer);
      if (!res.writableFinished) {
        cancelWait?.();
        current?.abort();
      }
      // Spelled out, not spread from a shared object: with `{ ...fields, ... }` here V8 kept ~0.7 MB of
      // each scavenge's young objects alive into the old generation (--trace-gc-nvp at 1k req/s: 700 KB
      // promoted per scavenge and 1.5-2 ms pauses, against 6 KB and 0.3-0.5 ms written like this).
      this.opts.logger.info(
        {
          client: target.client,
          proxy: target.proxy,
          remote_addr: remoteAddr,
          method,
          host: req.headers.host,
          path,
          status: res.statusCode,
          ms: Math.round(performance.now() - started),
          reason: res.writableFinished ? 'done' : 'visitor closed early',
        },
        'http request',
      );
    });
  }

  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const path = pathOf(req.url);
    if (path === this.opts.controlPath) {
      this.opts.onControlUpgrade(req, socket, head);
      return;
    }
    const resolved = this.resolve(req, path);
    if (!('target' in resolved)) {
      this.answerRaw(socket, resolved.status, resolved.text, resolved.extra);
      return;
    }
    const { target } = resolved;
    const headers = this.forwardHeaders(req, target, true);
    const visitor = this.visitorOf(req);
    const { stream, conn } = target.openStream(visitor);
    // Node read the fields as latin1: written back the same way, every byte is the visitor's own.
    stream.write(requestHead(req.method ?? 'GET', req.url ?? '/', headers, req.httpVersion), 'latin1');
    if (head.length > 0) stream.write(head);
    const netSocket = socket as Socket;
    netSocket.setTimeout?.(0);
    netSocket.setNoDelay?.(true);
    this.opts.tracker.carry(socket, stream, {
      labels: ['visitor', 'tunnel'],
      logger: this.opts.logger,
      fields: {
        client: target.client,
        proxy: target.proxy,
        conn,
        remote_addr: formatHostPort(plainAddress(visitor.address), visitor.port),
        upgrade: req.headers.upgrade,
      },
    });
  }

  private answer(
    res: ServerResponse,
    status: number,
    text: string,
    extra: Record<string, string> = {},
  ): void {
    const page = plainPage(status, text);
    res.writeHead(status, { ...page.head, ...extra });
    res.end(page.body);
  }

  private answerRaw(socket: Duplex, status: number, text: string, extra: Record<string, string> = {}): void {
    if (socket.destroyed) return;
    const page = plainPage(status, text);
    let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n`;
    for (const [name, value] of Object.entries({ ...page.head, ...extra, Connection: 'close' }))
      head += `${name}: ${value}\r\n`;
    socket.end(`${head}\r\n${page.body}`);
  }
}
