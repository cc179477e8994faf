// Requests on the http vhost port (and on the TLS port once terminated): routed by Host and path to the
// http proxy that claimed them, forwarded over tunnel streams with X-Forwarded-* headers. WebSocket (and
// other) upgrades get a stream of their own, passed through raw once the service accepts them.
import { type IncomingMessage, type ServerResponse, STATUS_CODES } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { TLSSocket } from 'node:tls';
import {
  type BasicCredentials,
  basicCredentialsMatch,
  CloseHooks,
  type ConnectionTracker,
  formatPeerAddress,
  type Logger,
  plainAddress,
  resetConnection,
  TurnGatheredWrites,
} from '@porthole/protocol';
import { answerAndClose } from './answer-and-close.js';
import type { ClientBandwidth } from './client-bandwidth.js';
import type { ConnectionLimit } from './connection-limit.js';
import { type ErrorPages, errorPageFor } from './error-pages.js';
import type { HostRoutes, RouteEntry } from './host-routes.js';
import { forwardableTrailers, HOP_BY_HOP, type ResponseFieldSet } from './http-fields.js';
import { headerTokens, type ResponseHead } from './http-response-head.js';
import { type ConnectionOwner, type ResponseSink, UpstreamConnection } from './http-upstream-connection.js';
import { type UpstreamPool, type Visitor, WaitingRequestsFull } from './http-upstream-pool.js';
import { peerAddress } from './peer-address.js';
import type { PendingConnections } from './pending-connections.js';
import { PipelinedRequests } from './pipelined-requests.js';
import type { ProxyTraffic } from './proxy-traffic.js';
import { isControlPath, routingPath } from './request-path.js';
import { type RequestTarget, readRequestTarget } from './request-target.js';
import { type VisitorCheck, visitorTurnedAway } from './server-plugins.js';
import type { TrustedProxies } from './trusted-proxies.js';

/** What an http proxy's routes lead to. */
export interface HttpTarget {
  client: string;
  proxy: string;
  /** Pooled tunnel streams for ordinary requests. */
  pool: UpstreamPool;
  /** A fresh tunnel stream (for an upgrade, which keeps its connection) and its connection id. */
  openStream(visitor: Visitor): { stream: Duplex; conn: number };
  /** Upgraded connections (WebSockets) open at once, against max_connections. */
  upgrades: ConnectionLimit;
  /** Its client's cap, shared with the client's other connections. */
  bandwidth: ClientBandwidth;
  /** Basic auth visitors must present. */
  auth: BasicCredentials | undefined;
  /** The server's plugins' say on each request (NewUserConn). */
  visitorCheck?: VisitorCheck;
  hostHeaderRewrite: string | undefined;
  /** Set on every forwarded request (names lowercased). */
  requestHeaders: ReadonlyArray<readonly [string, string]>;
  /** Set on every response head of the service but a 101; undefined: none (the head is passed as it is). */
  responseHeaders: ResponseFieldSet | undefined;
}

export interface HttpVhostRouterOptions {
  routes: HostRoutes<HttpTarget>;
  /** Read per request: a reload may change trusted_proxies. */
  trusted(): TrustedProxies;
  logger: Logger;
  tracker: ConnectionTracker;
  /** Counts each request (upgraded connections are counted by the tracker). */
  traffic: ProxyTraffic;
  /** Upgrades on this path go to the control endpoint (so clients can dial the vhost ports). */
  controlPath: string;
  onControlUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void;
  /** A connection whose request is routed here no longer counts as pending (the control endpoint settles its own). */
  pending: PendingConnections;
  /** [http] response_timeout: ms from a request's last byte to the response head, else 504; 0: none. */
  responseTimeout: number;
  /** [http] idle_timeout: for an upgrade request answered without a 101, whose socket Node no longer watches. */
  idleTimeout: number;
  /** A request with more header fields gets 431 (the server keeps one more than this: maxHeaderFields). */
  maxHeaderFields: number;
  /** Largest response head taken from a service (maxResponseHead of max_header_size). */
  maxResponseHead: number;
  /** [http] not_found_page and unavailable_page, read at each answer of the server's own (a reload may change them). */
  errorPages(): ErrorPages;
}

const FORWARDED = new Set(['x-forwarded-for', 'x-forwarded-proto', 'x-forwarded-host']);
/** Set by proxies in front (RFC 7239, nginx's convention): dropped unless the peer is trusted. */
const CLIENT_ADDRESS_FIELDS = new Set(['forwarded', 'x-real-ip']);
/** Fields a visitor's Connection header cannot take away from the forwarded request. */
const BODY_FRAMING = new Set(['content-length', 'transfer-encoding']);
/** Methods safe to send again when a pooled stream turned out to be closed. */
const RETRYABLE = new Set(['GET', 'HEAD', 'OPTIONS']);

/**
 * An answer of the server's own: the operator's page for its status when one is set (only its body and
 * Content-Type differ), else `text` as plain text.
 */
function ownPage(
  status: number,
  text: string,
  pages: ErrorPages,
): { head: Record<string, string>; body: string | Buffer } {
  const custom = errorPageFor(pages, status);
  const body = custom ?? `${status} ${STATUS_CODES[status] ?? ''}\n\n${text}\n`;
  return {
    head: {
      'Content-Type': custom ? 'text/html; charset=utf-8' : 'text/plain; charset=utf-8',
      'Content-Length': String(Buffer.byteLength(body)),
      'Cache-Control': 'no-store',
      'X-Content-Type-Options': 'nosniff',
    },
    body,
  };
}

const NOT_FOUND = 'No site is served under this name here.';
const BAD_TARGET = 'This request does not name one host and path in a form this server accepts.';
const OFFLINE = 'The tunnel serving this site is offline.';
const UNREACHABLE = 'The service behind this tunnel did not answer.';
const AUTH_REQUIRED = 'This site requires a user name and password.';
const UPGRADE_WITH_BODY = 'An upgrade request cannot carry a body here.';
const TOO_MANY_UPGRADES = 'This site has as many open connections as it accepts; try again later.';
const REFUSED_BY_POLICY = "This server's policy does not let this visitor in.";
const TOO_MANY_WAITING = 'This site has as many requests waiting as it accepts; try again later.';
const REQUEST_TOO_SLOW =
  'The request did not arrive whole within the time this server allows (request_timeout).';
const BAD_FRAMING =
  'This request body is not framed in a way this server can read (Transfer-Encoding must end in chunked).';
const NO_TUNNELS = 'This server serves sites by name; it does not open connections to host:port (CONNECT).';

/** Why a forward failed, for the log: the client resets the stream when it cannot reach the service. */
function forwardFailure(err: Error): string {
  return (err as NodeJS.ErrnoException).code === 'ERR_STREAM_RESET'
    ? 'local service unreachable'
    : err.message;
}

/** An upgrade's stream carries one exchange: whatever its end, it is not kept for another request. */
const ONE_EXCHANGE: ConnectionOwner = {
  exchangeDone: (conn) => conn.retire(),
  gone: () => {},
};

/**
 * Fields that say who the visitor is or how it came, which a service may believe as it believes
 * X-Forwarded-For: every X-Forwarded-* (-Port, -Prefix, -Server, -Ssl...), Forwarded and X-Real-IP.
 */
function describesVisitor(lower: string): boolean {
  return lower.startsWith('x-forwarded-') || CLIENT_ADDRESS_FIELDS.has(lower);
}

/**
 * True when a visitor's field (`lower`, its name lowercased) is not passed on: a field in `drop`, one that
 * describes the visitor unless the peer is a trusted proxy, and, from anyone, one whose name with "_" for
 * "-" would be either of those: CGI, WSGI, Rack and PHP read "X_Forwarded_For" and "X-Forwarded-For" as the
 * same variable (HTTP_X_FORWARDED_FOR), so it would stand in for the one the server set or scrubbed.
 */
function droppedField(lower: string, drop: ReadonlySet<string>, trusted: boolean): boolean {
  if (lower === 'host' || drop.has(lower) || (!trusted && describesVisitor(lower))) return true;
  if (!lower.includes('_')) return false;
  const dashed = lower.replaceAll('_', '-');
  return drop.has(dashed) || describesVisitor(dashed);
}

/**
 * The fields the peer named in Connection, but the ones that frame the body: they were meant for its hop
 * only, so they are neither passed on (a request that is not an upgrade) nor believed from a trusted proxy.
 */
function namedInConnection(req: IncomingMessage): Set<string> {
  const named = new Set<string>();
  for (const token of headerTokens(String(req.headers.connection ?? '')))
    if (!BODY_FRAMING.has(token)) named.add(token);
  return named;
}

/**
 * What a trusted proxy said in X-Forwarded-For, -Proto and -Host (each undefined when not to be taken from
 * it: the peer is not trusted, did not send it, or named it in Connection).
 */
function forwardedByTrustedPeer(
  req: IncomingMessage,
  trusted: boolean,
  hopOnly: ReadonlySet<string>,
): { for: string | undefined; proto: string | undefined; host: string | undefined } {
  const taken = (name: string) => (trusted && !hopOnly.has(name) ? req.headers[name] : undefined);
  const incomingFor = taken('x-forwarded-for');
  const proto = taken('x-forwarded-proto');
  const host = taken('x-forwarded-host');
  return {
    for: Array.isArray(incomingFor) ? incomingFor.join(', ') : incomingFor || undefined,
    proto: typeof proto === 'string' ? proto : undefined,
    host: typeof host === 'string' ? host : undefined,
  };
}

/**
 * Ends the visitor's connection of a response cut short once its head went out: reset, not finished with a
 * FIN, which would end a body delimited by the connection's close (what an HTTP/1.0 visitor is sent for a
 * chunked answer) as if it were whole.
 */
function cutShort(res: ServerResponse): void {
  if (res.socket) resetConnection(res.socket);
  res.destroy();
}

function isEncrypted(socket: Socket): boolean {
  return (socket as TLSSocket).encrypted === true;
}

/** Request line and fields as the local service receives them, blank line included. */
function requestHead(method: string, url: string, headers: readonly string[], version = '1.1'): string {
  let head = `${method} ${url} HTTP/${version}\r\n`;
  for (let i = 0; i + 1 < headers.length; i += 2) head += `${headers[i]}: ${headers[i + 1]}\r\n`;
  return `${head}\r\n`;
}

/**
 * The local service's response fields without the ones that describe its hop (or that it named so). A
 * Content-Length beside chunks (or before a body read until close) is dropped too: the body is passed on
 * decoded, and a length the visitor trusted would leave the rest to be read as the next response. The
 * proxy's response_headers (`set`) replace the service's fields of their names, all their values.
 */
function responseHeaders(head: ResponseHead, set: ResponseFieldSet | undefined): string[] {
  const raw = head.rawHeaders;
  const lengthLies = head.body.kind === 'chunked' || head.body.kind === 'close';
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const lower = raw[i]!.toLowerCase();
    if (HOP_BY_HOP.has(lower) || head.connection.includes(lower)) continue;
    if (lengthLies && lower === 'content-length') continue;
    if (set?.names.has(lower)) continue;
    out.push(raw[i]!, raw[i + 1]!);
  }
  if (set) for (const field of set.fields) out.push(field);
  return out;
}

/**
 * A service's answer to an upgrade it did not accept, for the visitor's raw socket: its fields (with the
 * proxy's response_headers, as any answer but a 101), and the body (passed on decoded) ending with the
 * connection.
 */
function rawResponseHead(head: ResponseHead, set: ResponseFieldSet | undefined): string {
  let text = `HTTP/1.1 ${head.statusCode} ${head.statusMessage}\r\n`;
  const fields = responseHeaders(head, set);
  for (let i = 0; i + 1 < fields.length; i += 2) text += `${fields[i]}: ${fields[i + 1]}\r\n`;
  return `${text}Connection: close\r\n\r\n`;
}

export class HttpVhostRouter {
  /** The 504 page's text, written once. */
  private readonly noAnswerText: string;
  /**
   * A request's cleanup when its visitor's connection closes, for the requests whose responses never hear of
   * it: Node 20 emits no 'close' on a pipelined request's response still queued behind another when the socket
   * goes (nodejs/node#62534), so without this such a request would keep its tunnel stream and its place among
   * the open connections for good.
   */
  private readonly socketClose = new CloseHooks();
  /** Visitors that half-close (FIN) while their requests are under way. */
  private readonly socketEnd = new CloseHooks('end');
  /** Requests that request_timeout ended, for their log line. */
  private readonly timedOut = new WeakSet<ServerResponse>();
  private readonly pipelined: PipelinedRequests;

  constructor(private readonly opts: HttpVhostRouterOptions) {
    this.pipelined = new PipelinedRequests(opts.logger);
    this.noAnswerText = `The service behind this tunnel did not answer within ${opts.responseTimeout / 1000} s.`;
  }

  /** The route for a request (and the host, target and path it was routed by), or the error page to answer with. */
  private resolve(
    req: IncomingMessage,
  ):
    | { target: HttpTarget; entry: RouteEntry<HttpTarget>; asked: RequestTarget; path: string }
    | { status: number; text: string; extra?: Record<string, string>; reason?: string } {
    if (req.rawHeaders.length > 2 * this.opts.maxHeaderFields)
      return {
        status: 431,
        text: `A request may have at most ${this.opts.maxHeaderFields} header fields.`,
        // Node kept only the first ones: the request cannot be passed on whole.
        extra: { Connection: 'close' },
        reason: `more than ${this.opts.maxHeaderFields} header fields`,
      };
    const asked = readRequestTarget(req.url, req.rawHeaders);
    if ('refused' in asked) return { status: 400, text: BAD_TARGET, reason: asked.refused };
    // A request body whose last coding is not chunked has no length (RFC 9112 6.3: 400). Node's parser
    // fails on it only after handing the request over: it would reach the service cut off, unanswered.
    const codings = req.headers['transfer-encoding'];
    if (codings !== undefined && headerTokens(codings).at(-1) !== 'chunked')
      return {
        status: 400,
        text: BAD_FRAMING,
        // The parser stops here: nothing more is read on this connection.
        extra: { Connection: 'close' },
        reason: 'Transfer-Encoding does not end in chunked',
      };
    const path = routingPath(asked.target);
    const entry = asked.name === undefined ? undefined : this.opts.routes.lookup(asked.name, path);
    if (!entry) return { status: 404, text: NOT_FOUND };
    if (!entry.target) return { status: 502, text: OFFLINE };
    if (entry.target.auth && !basicCredentialsMatch(req.headers.authorization, entry.target.auth)) {
      return {
        status: 401,
        text: AUTH_REQUIRED,
        extra: { 'WWW-Authenticate': 'Basic realm="porthole", charset="UTF-8"' },
      };
    }
    return { target: entry.target, entry, asked, path };
  }

  /**
   * The headers the local service receives, as a flat [name, value, ...] list; its Host is `host`, the one
   * the request was routed by.
   */
  private forwardHeaders(req: IncomingMessage, target: HttpTarget, host: string, upgrade: boolean): string[] {
    const raw = req.rawHeaders;
    const trusted = this.opts.trusted().contains(req.socket.remoteAddress);
    const hopOnly = namedInConnection(req);
    // Set here, never passed on as sent: X-Forwarded-For/-Proto/-Host (a trusted proxy's are appended to or
    // kept below) and the proxy's request_headers.
    const drop = new Set<string>(FORWARDED);
    for (const [name] of target.requestHeaders) drop.add(name);
    if (target.auth) drop.add('authorization');
    drop.add('expect'); // Node answered 100-continue to the visitor already
    if (!upgrade) {
      for (const name of HOP_BY_HOP) if (name !== 'transfer-encoding') drop.add(name);
      // Headers the visitor marked as hop-by-hop in Connection go too, except the ones that frame the
      // body: "Connection: content-length" would otherwise send a body with no length, which the
      // service would read as the next request (smuggled past routing and auth).
      for (const name of hopOnly) drop.add(name);
      // A body is framed one way only: it is re-chunked, so a length beside the chunks would lie.
      if (req.headers['transfer-encoding'] !== undefined) drop.add('content-length');
    }
    const out: string[] = [];
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i]!;
      const lower = name.toLowerCase();
      if (droppedField(lower, drop, trusted)) continue;
      out.push(name, raw[i + 1]!);
    }
    const peer = plainAddress(req.socket.remoteAddress);
    const incoming = forwardedByTrustedPeer(req, trusted, hopOnly);
    const forwardedFor = incoming.for ? `${incoming.for}, ${peer}` : peer;
    const proto = incoming.proto ?? (isEncrypted(req.socket) ? 'https' : 'http');
    const forwardedHost = incoming.host ?? host;
    out.unshift('Host', target.hostHeaderRewrite ?? host);
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
    const socket = req.socket;
    this.opts.pending.settle(socket);
    this.pipelined.admit(socket, () => this.serve(req, res));
  }

  /**
   * request_timeout passed before the request `res` answers was all in (Node says so with a 'clientError'):
   * the visitor gets 408 and the connection closes, and the service's stream is given up with the upload;
   * an answer already begun is cut short.
   */
  requestTimedOut(res: ServerResponse): void {
    this.timedOut.add(res);
    if (res.headersSent) {
      cutShort(res);
      return;
    }
    res.shouldKeepAlive = false;
    this.answer(res, 408, REQUEST_TOO_SLOW);
  }

  /**
   * A request on `socket` is over: the next pipelined one may be served, and a kept-alive connection left
   * with none is watched for its next head, which Node parses out of our sight and which counts as pending.
   */
  private requestDone(socket: Socket): void {
    if (this.pipelined.done(socket)) this.opts.pending.rest(socket);
  }

  private serve(req: IncomingMessage, res: ServerResponse): void {
    const socket = req.socket;
    const started = performance.now();
    const resolved = this.resolve(req);
    const remoteAddr = peerAddress(socket);
    if (!('target' in resolved)) {
      res.once('close', () => this.requestDone(socket));
      this.answer(res, resolved.status, resolved.text, resolved.extra);
      this.opts.logger.debug(
        { remote_addr: remoteAddr, host: req.headers.host, status: resolved.status, reason: resolved.reason },
        'http request refused',
      );
      return;
    }
    const check = resolved.target.visitorCheck?.(remoteAddr);
    if (check === undefined) {
      this.forward(req, res, resolved, started, remoteAddr);
      return;
    }
    void check.then((refusal) => {
      if (res.destroyed) {
        this.requestDone(socket);
      } else if (refusal) {
        res.once('close', () => this.requestDone(socket));
        this.answer(res, 403, REFUSED_BY_POLICY);
      } else this.forward(req, res, resolved, started, remoteAddr);
    });
  }

  /** A routed request goes to its proxy's service, and the answer back. */
  private forward(
    req: IncomingMessage,
    res: ServerResponse,
    { target, asked, path }: { target: HttpTarget; asked: RequestTarget; path: string },
    started: number,
    remoteAddr: string,
  ): void {
    const socket = req.socket;
    const method = req.method ?? 'GET';
    const chunkedBody = req.headers['transfer-encoding'] !== undefined;
    const hasBody =
      chunkedBody || (req.headers['content-length'] !== undefined && req.headers['content-length'] !== '0');
    const head = requestHead(method, asked.target, this.forwardHeaders(req, target, asked.host, false));
    const visitor = this.visitorOf(req);
    let responded = false;
    let current: UpstreamConnection | undefined;
    let cancelWait: (() => void) | undefined;
    let retriesLeft = 1;
    let bodyPending = hasBody && !req.complete;
    let visitorHalfClosed = false;
    const counts = this.opts.traffic.begin(target.client, target.proxy, null, remoteAddr);
    // response_timeout: one timer per request, armed once the request is in (not per attempt).
    let noAnswerTimer: NodeJS.Timeout | undefined;

    const failed = (reason: string, status = 502, text = UNREACHABLE): void => {
      clearTimeout(noAnswerTimer);
      this.opts.logger.warn(
        { client: target.client, proxy: target.proxy, remote_addr: remoteAddr, reason },
        'http forward failed',
      );
      if (!res.headersSent) this.answer(res, status, text);
      else cutShort(res);
    };
    let awaitingDrain = false;
    const body = new TurnGatheredWrites(res);
    // The client's cap: the answer waits in the stream (the mux window holds the client back) while it is
    // overdrawn, as it waits there while the visitor is slow; the upload waits in the visitor's socket.
    const budgets = target.bandwidth.budgets();
    let overdrawn = false;
    const resumeUpstream = (): void => {
      awaitingDrain = false;
      if (!overdrawn) current?.resume();
    };
    const refilled = (): void => {
      overdrawn = false;
      if (!awaitingDrain) current?.resume();
    };
    const sink: ResponseSink = {
      onHead: (upstream: ResponseHead) => {
        responded = true;
        clearTimeout(noAnswerTimer);
        res.writeHead(
          upstream.statusCode,
          upstream.statusMessage,
          responseHeaders(upstream, target.responseHeaders),
        );
      },
      onBody: (data) => {
        const written = body.write(data);
        if (!written && !awaitingDrain) {
          awaitingDrain = true;
          res.once('drain', resumeUpstream);
        }
        if (budgets && !budgets.out.spend(data.length) && !overdrawn) {
          overdrawn = true;
          budgets.out.whenRefilled(refilled);
        }
        return written && !overdrawn;
      },
      onEnd: (trailers) => {
        current = undefined;
        if (trailers.length > 0) this.passTrailers(res, trailers, target, remoteAddr);
        res.end();
      },
      onError: (err, retryable) => {
        current = undefined;
        if (responded) {
          cutShort(res);
          return;
        }
        // The visitor half-closed, and the service, told so, gave up: nobody waits for an answer.
        if (visitorHalfClosed) {
          clearTimeout(noAnswerTimer);
          res.destroy();
          return;
        }
        if (retryable && retriesLeft > 0 && !hasBody && RETRYABLE.has(method)) {
          retriesLeft -= 1;
          attempt();
          return;
        }
        failed(forwardFailure(err));
      },
    };
    const attempt = (): void => {
      cancelWait = target.pool.acquire(visitor, (err, conn) => {
        cancelWait = undefined;
        if (!conn) {
          if (err instanceof WaitingRequestsFull) failed(err.message, 503, TOO_MANY_WAITING);
          else failed(err?.message ?? 'no tunnel stream');
          return;
        }
        current = conn;
        // The upload's own time does not count towards response_timeout: the timer restarts at its end.
        if (bodyPending) clearTimeout(noAnswerTimer);
        conn.send(method, head, hasBody ? req : undefined, chunkedBody, sink, counts, budgets?.in);
        if (visitorHalfClosed) conn.visitorEnded();
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
      // Counted while the request waits for a stream (a body is read only once it has one), then from the
      // request's last byte.
      noAnswerTimer = setTimeout(noAnswer, timeout);
      if (bodyPending)
        req.once('end', () => {
          bodyPending = false;
          clearTimeout(noAnswerTimer);
          if (!responded && !res.headersSent && !res.destroyed) noAnswerTimer = setTimeout(noAnswer, timeout);
        });
    }
    attempt();
    // The visitor left before the answer was complete: stop the upstream request too.
    let over = false;
    const finish = (): void => {
      if (over) return;
      over = true;
      budgets?.out.cancel(refilled);
      this.requestDone(socket);
      forgetSocketClose();
      forgetSocketEnd();
      clearTimeout(noAnswerTimer);
      // A visitor that left, or an answer of our own (408 for request_timeout) while the service still had it.
      if (!res.writableFinished || !responded) {
        cancelWait?.();
        current?.abort();
      }
      this.opts.traffic.end(counts);
      // Spelled out, not spread from a shared object: with `{ ...fields, ... }` here V8 kept ~0.7 MB of
      // each scavenge's young objects alive into the old generation (--trace-gc-nvp at 1k req/s: 700 KB
      // promoted per scavenge and 1.5-2 ms pauses, against 6 KB and 0.3-0.5 ms written like this).
      this.opts.logger.info(
        {
          client: target.client,
          proxy: target.proxy,
          remote_addr: remoteAddr,
          method,
          host: asked.host,
          path,
          // None when no answer began (JSON leaves an undefined field out): Node's default 200 was never sent.
          status: res.headersSent ? res.statusCode : undefined,
          bytes_in: counts.bytesIn,
          bytes_out: counts.bytesOut,
          ms: Math.round(performance.now() - started),
          reason: this.timedOut.has(res)
            ? 'request_timeout'
            : res.writableFinished
              ? 'done'
              : 'visitor closed early',
        },
        'http request',
      );
    };
    res.on('close', finish);
    const forgetSocketClose = this.socketClose.add(socket, finish);
    // A FIN from the visitor goes on to the service (which a tcp proxy, or the service reached directly,
    // would show it too); before, the service never learnt that a visitor gave up.
    const forgetSocketEnd = this.socketEnd.add(socket, () => {
      visitorHalfClosed = true;
      current?.visitorEnded();
    });
  }

  /**
   * An upgrade (WebSocket or other) gets a tunnel stream of its own. The request goes on as it came (with
   * the X-Forwarded-* fields) and the connection turns raw only once the service answers 101; any other
   * answer is passed on and the connection closed after it, so that a service that ignores Upgrade never
   * sees the visitor's later requests unrouted and unchecked.
   */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const started = performance.now();
    if (isControlPath(req.url, this.opts.controlPath)) {
      this.opts.onControlUpgrade(req, socket, head);
      return;
    }
    this.opts.pending.settle(socket);
    const resolved = this.resolve(req);
    if (!('target' in resolved)) {
      this.answerRaw(req, socket, resolved.status, resolved.text, resolved.extra);
      return;
    }
    const { target, asked, path } = resolved;
    // A body would have to reach the service before its 101 while the visitor's later bytes must not:
    // Node hands both over unparsed, so such requests (h2c with a body, nothing a browser sends) are refused.
    if (req.headers['transfer-encoding'] !== undefined || Number(req.headers['content-length'] ?? 0) > 0) {
      this.answerRaw(req, socket, 400, UPGRADE_WITH_BODY);
      return;
    }
    if (!target.upgrades.take(socket)) {
      this.answerRaw(req, socket, 503, TOO_MANY_UPGRADES);
      return;
    }
    const visitor = this.visitorOf(req);
    const remoteAddr = formatPeerAddress(visitor.address, visitor.port);
    const check = target.visitorCheck?.(remoteAddr);
    if (check === undefined) {
      this.upgrade(req, socket, head, { target, asked, path }, started, visitor);
      return;
    }
    void visitorTurnedAway(socket, check, () => this.answerRaw(req, socket, 403, REFUSED_BY_POLICY)).then(
      (away) => {
        if (!away) this.upgrade(req, socket, head, { target, asked, path }, started, visitor);
      },
    );
  }

  /** An upgrade request the route and the plugins let through: a tunnel stream of its own. */
  private upgrade(
    req: IncomingMessage,
    socket: Duplex,
    head: Buffer,
    { target, asked, path }: { target: HttpTarget; asked: RequestTarget; path: string },
    started: number,
    visitor: Visitor,
  ): void {
    const method = req.method ?? 'GET';
    const remoteAddr = formatPeerAddress(visitor.address, visitor.port);
    const { stream, conn } = target.openStream(visitor);
    const upstream = new UpstreamConnection(stream, ONE_EXCHANGE, this.opts.maxResponseHead);
    // Until a 101 the upgrade is an http request like any other: counted, waited for by a draining server,
    // and given an access line when it ends. Upgraded, it is a connection, which the tracker counts and logs.
    const counts = this.opts.traffic.begin(target.client, target.proxy, null, remoteAddr);
    let answered: { status: number; reason: string } | undefined;
    let awaitingDrain = false;
    let noAnswerTimer: NodeJS.Timeout | undefined;
    const failed = (reason: string, status: number, text: string): void => {
      clearTimeout(noAnswerTimer);
      this.opts.logger.warn(
        { client: target.client, proxy: target.proxy, conn, remote_addr: remoteAddr, reason },
        'http upgrade failed',
      );
      if (answered) {
        answered.reason = reason;
        // Its body goes on until the connection closes: a FIN would end it as if it were whole.
        resetConnection(socket);
      } else {
        answered = { status, reason };
        this.answerRaw(req, socket, status, text);
      }
    };
    const visitorGone = (): void => {
      clearTimeout(noAnswerTimer);
      upstream.abort();
      this.opts.traffic.end(counts);
      this.opts.logger.info(
        {
          client: target.client,
          proxy: target.proxy,
          conn,
          remote_addr: remoteAddr,
          method,
          host: asked.host,
          path,
          status: answered?.status,
          bytes_in: counts.bytesIn,
          bytes_out: counts.bytesOut,
          ms: Math.round(performance.now() - started),
          reason: answered?.reason ?? 'visitor closed early',
        },
        'http request',
      );
    };
    socket.once('close', visitorGone);
    const sink: ResponseSink = {
      onUpgrade: (responseHead, rest) => {
        clearTimeout(noAnswerTimer);
        socket.off('close', visitorGone);
        this.opts.traffic.handOver(counts);
        socket.write(responseHead);
        if (rest.length > 0) socket.write(rest);
        // What the visitor sent after its request belongs to the new protocol: it goes on only now.
        if (head.length > 0) stream.write(head);
        const netSocket = socket as Socket;
        netSocket.setTimeout?.(0);
        netSocket.setNoDelay?.(true);
        const limits = target.bandwidth.limits();
        this.opts.tracker.carry(socket, stream, {
          labels: ['visitor', 'tunnel'],
          ...(limits === undefined ? {} : { limits }),
          // The handshake (request and 101) and what followed it on either side, passed on above.
          alreadyMoved: {
            bytesAtoB: requestLine.length + head.length,
            bytesBtoA: responseHead.length + rest.length,
          },
          logger: this.opts.logger,
          fields: {
            client: target.client,
            proxy: target.proxy,
            conn,
            remote_addr: remoteAddr,
            upgrade: req.headers.upgrade,
          },
        });
      },
      onHead: (responseHead) => {
        answered = { status: responseHead.statusCode, reason: 'upgrade not accepted' };
        clearTimeout(noAnswerTimer);
        // An ordinary answer after all: a visitor that stops reading it must not hold the socket and its
        // stream (no HTTP timeout watches a socket handed over for an upgrade).
        (socket as Socket).setTimeout?.(this.opts.idleTimeout, () => resetConnection(socket));
        socket.write(rawResponseHead(responseHead, target.responseHeaders), 'latin1');
      },
      onBody: (data) => {
        if (socket.write(data)) return true;
        if (!awaitingDrain) {
          awaitingDrain = true;
          socket.once('drain', () => {
            awaitingDrain = false;
            upstream.resume();
          });
        }
        return false;
      },
      onEnd: () => answerAndClose(socket),
      onError: (err) => failed(forwardFailure(err), 502, UNREACHABLE),
    };
    // Node read the fields as latin1: written back the same way, every byte is the visitor's own.
    const requestLine = requestHead(
      method,
      asked.target,
      this.forwardHeaders(req, target, asked.host, true),
      req.httpVersion,
    );
    upstream.send(method, requestLine, undefined, false, sink, counts);
    const timeout = this.opts.responseTimeout;
    if (timeout > 0)
      noAnswerTimer = setTimeout(() => {
        upstream.abort();
        failed(`no response head within ${timeout} ms`, 504, this.noAnswerText);
      }, timeout);
  }

  /**
   * CONNECT asks for a connection to host:port, which a reverse proxy does not open: refused with 400, as
   * nginx does. Node hands the socket over unanswered when nobody takes 'connect' (the visitor saw a bare
   * close), and parses nothing more on it, so the connection closes after the answer.
   */
  refuseConnect(req: IncomingMessage, socket: Duplex): void {
    socket.on('error', () => socket.destroy());
    this.opts.logger.debug(
      { remote_addr: peerAddress(socket), target: req.url, status: 400, reason: 'CONNECT' },
      'http request refused',
    );
    this.answerRaw(req, socket, 400, NO_TUNNELS);
  }

  private answer(
    res: ServerResponse,
    status: number,
    text: string,
    extra: Record<string, string> = {},
  ): void {
    const page = ownPage(status, text, this.opts.errorPages());
    res.writeHead(status, { ...page.head, ...extra });
    res.end(page.body);
  }

  /** The server's own answer on a connection Node handed over raw (an upgrade, CONNECT); no body for a HEAD. */
  private answerRaw(
    req: IncomingMessage,
    socket: Duplex,
    status: number,
    text: string,
    extra: Record<string, string> = {},
  ): void {
    if (socket.destroyed) return;
    const page = ownPage(status, text, this.opts.errorPages());
    let head = `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ''}\r\n`;
    for (const [name, value] of Object.entries({ ...page.head, ...extra, Connection: 'close' }))
      head += `${name}: ${value}\r\n`;
    if (req.method === 'HEAD') answerAndClose(socket, `${head}\r\n`);
    else if (typeof page.body === 'string') answerAndClose(socket, `${head}\r\n${page.body}`);
    else answerAndClose(socket, Buffer.concat([Buffer.from(`${head}\r\n`, 'latin1'), page.body]));
  }
}
