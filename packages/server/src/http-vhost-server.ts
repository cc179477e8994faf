// The Node HTTP servers behind the vhost ports: one listening on [http] listen, and one that never
// listens but is handed the connections the TLS port terminates. Both parse with Node's HTTP stack, under
// the same limits, and hand requests and upgrades to the HttpVhostRouter.
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
  STATUS_CODES,
} from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  formatHostPort,
  type HostPort,
  LimitWarning,
  type Logger,
  listenServer,
  resetConnection,
} from '@porthole/protocol';
import type { AcmeChallenges } from './acme-challenges.js';
import type { HttpVhostRouter } from './http-vhost-router.js';
import { peerAddress, peersOnArrival } from './peer-address.js';
import type { PendingConnections } from './pending-connections.js';
import type { TlsCertStore } from './tls-cert-store.js';

export interface HttpLimits {
  /** Time a visitor has to send a request's headers (slowloris ends here, with 408). */
  headersTimeout: number;
  /** Time for a whole request (headers and body); 0: no limit. */
  requestTimeout: number;
  /**
   * Time from a request's last byte (its head, when it has no body) to the local service's response
   * head; then the visitor gets 504 and the tunnel stream is reset. 0: no limit. Upgrades are exempt.
   */
  responseTimeout: number;
  /** Idle time between requests on a kept-alive connection. */
  keepAliveTimeout: number;
  /**
   * A connection with no traffic for this long is closed, unless a request (its body all in) awaits its
   * response head.
   */
  idleTimeout: number;
  /** Largest request head (request line + headers); beyond it: 431. */
  maxHeaderSize: number;
}

export interface HttpVhostServerOptions {
  router: HttpVhostRouter;
  limits: HttpLimits;
  logger: Logger;
  /** [http] listen; absent: no plain HTTP port. */
  httpListen?: HostPort;
  /**
   * Certificates for connections the TLS port terminates, read at each handshake (a reload may renew
   * them); absent: nothing is terminated.
   */
  certs?: () => TlsCertStore;
  /** Which certificate answers a handshake without SNI. */
  defaultHost?: string;
  /** Time for a terminated TLS handshake. */
  handshakeTimeout: number;
  /**
   * Caps the [http] port's connections until their first request is routed (the TLS port's are counted
   * from their ClientHello on, by the TLS port).
   */
  pending: PendingConnections;
  /**
   * [https.acme]'s http-01 answers, served on the [http] port before routing; with them the TLS port
   * terminates even before a first certificate is there. Absent: requests go straight to the router.
   */
  acmeChallenges?: AcmeChallenges;
}

type HttpSocket = Socket & { _httpMessage?: ServerResponse | null };

/** Past this many fields a request gets 431, however large max_header_size is (Node's own default is 2,000). */
const MAX_HEADER_FIELDS = 2048;

/**
 * The most header fields a request may have: one per 8 bytes of max_header_size, at most 2,048 (the most
 * from 16 KiB up). Node counts a field's name and value towards maxHeaderSize, not its ": " and CRLF, so
 * 16,000 empty fields fit in 16 KiB; each costs the parser's arrays ~24 bytes while the head is held, and
 * 1,000 such heads from a few addresses took the server from 75 to 459 MB. Past this many the request gets
 * 431. Big heads are a few big fields (a cookie, an SSO token), not many small ones.
 */
export function maxHeaderFields(maxHeaderSize: number): number {
  return Math.min(MAX_HEADER_FIELDS, Math.floor(maxHeaderSize / 8));
}

export class HttpVhostServer {
  private readonly httpServer: Server | undefined;
  private readonly httpsServer: HttpsServer | undefined;
  /**
   * Heads over max_header_size, answered 431: mostly real visitors with a big cookie or SSO token, whom
   * the operator helps by raising the key, so they are said at warn (a line per 10 s at most).
   */
  private readonly oversizeHeads: LimitWarning;
  private lastOversizeFrom: string | undefined;

  constructor(private readonly opts: HttpVhostServerOptions) {
    const { limits } = opts;
    this.oversizeHeads = new LimitWarning((refused) =>
      opts.logger.warn(
        { refused, remote_addr: this.lastOversizeFrom, max_header_size: limits.maxHeaderSize },
        'http request heads over max_header_size refused (431)',
      ),
    );
    const common = {
      maxHeaderSize: limits.maxHeaderSize,
      headersTimeout: limits.headersTimeout,
      requestTimeout: limits.requestTimeout,
      keepAliveTimeout: limits.keepAliveTimeout,
      // How often Node checks the header/request timeouts; the default 30 s would let slowloris
      // connections live up to 30 s past their timeout.
      connectionsCheckingInterval: Math.max(100, Math.min(1000, Math.floor(limits.headersTimeout / 4))),
    };
    if (opts.httpListen) {
      this.httpServer = createHttpServer(common);
      // Before Node's own listener: one refused costs no parser.
      this.httpServer.prependListener('connection', (socket: Socket) => opts.pending.admit(socket));
      this.setUp(this.httpServer, opts.acmeChallenges);
    }
    const certs = opts.certs;
    if (certs && (certs().size > 0 || opts.acmeChallenges)) {
      // None yet when ACME has still to bring the first: a handshake without SNI then fails.
      const fallback = certs().defaultPair(opts.defaultHost);
      this.httpsServer = createHttpsServer({
        ...common,
        ...(fallback ? { cert: fallback.cert, key: fallback.key } : {}),
        SNICallback: (servername, callback) => certs().sniCallback(servername, callback),
        // HTTP/1.0 too: a client offering only "http/1.0" (curl --http1.0) would get a fatal
        // no_application_protocol alert.
        ALPNProtocols: ['http/1.1', 'http/1.0'],
        handshakeTimeout: opts.handshakeTimeout,
      });
      this.setUp(this.httpsServer);
      // This server never listens (the TLS port hands it its connections), and Node starts the checks
      // behind headers_timeout and request_timeout, and the list closeIdleConnections() reads, only on
      // 'listening': without this, a slowloris over https would never be cut.
      this.httpsServer.emit('listening');
      const peerOf = peersOnArrival(this.httpsServer);
      this.httpsServer.on('tlsClientError', (err, socket) =>
        opts.logger.debug({ remote_addr: peerOf(socket), reason: err.message }, 'tls handshake failed'),
      );
    }
  }

  private setUp(server: Server | HttpsServer, challenges?: AcmeChallenges): void {
    const { router, limits, logger } = this.opts;
    server.keepAliveTimeout = limits.keepAliveTimeout;
    // Node keeps the first maxHeadersCount fields and drops the rest without a word (so a request reached
    // the service with some of its fields missing): one more than a request may have is kept, and the
    // router answers a request with that many 431. Node's own default (2,000) is above what the default
    // max_header_size lets through, and 0 would keep every field a head holds.
    server.maxHeadersCount = maxHeaderFields(limits.maxHeaderSize) + 1;
    // A visitor may half-close once its request is sent (`nc`, `socat`, HTTP/1.0 tools): Node's default
    // then aborts the requests under way and ends the socket, so an answer that has to come through the
    // tunnel would be lost after the service acted on the request. With this, the answers are written and
    // the connection ends after the last one; the router passes the FIN on to the service, which decides,
    // as it would reached directly. (Node's own switch since 0.x, set by its tests; not typed.)
    (server as { httpAllowHalfOpen?: boolean }).httpAllowHalfOpen = true;
    // Closed after idle_timeout without a byte moved: a connection with no request in progress, one
    // whose response has begun (a visitor that stopped reading, or a service stalled mid-body, would
    // otherwise hold a tunnel stream of the proxy's pool for good), or one whose body stopped coming while
    // it was being forwarded (a stalled upload holds its stream too; one paused by backpressure, or still
    // waiting for a stream, is not the visitor's doing). A request waiting for its response head is
    // response_timeout's to end. A response cut here is reset, not ended with a FIN that would end a body
    // delimited by the close (an HTTP/1.0 visitor's) as if it were whole.
    server.setTimeout(limits.idleTimeout, (socket: HttpSocket) => {
      const response = socket._httpMessage;
      const request = response?.req;
      const uploadStalled = request !== undefined && !request.complete && request.readableFlowing === true;
      if (response?.headersSent) resetConnection(socket);
      else if (!response || uploadStalled) socket.destroy();
    });
    if (challenges) {
      server.on('request', (req, res) => {
        if (!challenges.answer(req, res)) router.handleRequest(req, res);
        else this.opts.pending.settle(req.socket);
      });
    } else server.on('request', (req, res) => router.handleRequest(req, res));
    server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      router.handleUpgrade(req, socket, head),
    );
    server.on('connect', (req: IncomingMessage, socket: Duplex) => router.refuseConnect(req, socket));
    server.on('clientError', (err: NodeJS.ErrnoException, socket: HttpSocket) => {
      const status =
        err.code === 'HPE_HEADER_OVERFLOW'
          ? 431
          : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? 408
            : err.code === 'ECONNRESET'
              ? 0
              : 400;
      logger.debug(
        { remote_addr: peerAddress(socket), reason: err.code ?? err.message, status },
        'http client error',
      );
      if (status === 431) {
        this.lastOversizeFrom = peerAddress(socket);
        this.oversizeHeads.count();
      }
      const pendingAnswer = socket._httpMessage;
      if (err.code === 'ERR_HTTP_REQUEST_TIMEOUT' && pendingAnswer && socket.writable) {
        router.requestTimedOut(pendingAnswer);
        setTimeout(() => socket.destroy(), 1000).unref();
        return;
      }
      if (status === 0 || !socket.writable || pendingAnswer) {
        socket.destroy();
        return;
      }
      const body = `${status} ${STATUS_CODES[status]}\n`;
      socket.end(
        `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: text/plain; charset=utf-8\r\n` +
          `Content-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`,
      );
      // A peer that does not read its answer must not hold the socket.
      setTimeout(() => socket.destroy(), 1000).unref();
    });
  }

  /** Starts the plain HTTP port (if configured); resolves with its bound address. */
  async listenHttp(): Promise<string | undefined> {
    const server = this.httpServer;
    const listen = this.opts.httpListen;
    if (!server || !listen) return undefined;
    const address = await listenServer(server, listen, (err) =>
      this.opts.logger.error({ reason: err.message }, 'http listener error'),
    );
    return formatHostPort(address.address, address.port);
  }

  /**
   * Certificates renewed by a reload or by ACME: the fallback (no SNI) follows them; the SNI callback reads
   * them itself.
   */
  useRenewedCertificates(): void {
    const fallback = this.opts.certs?.().defaultPair(this.opts.defaultHost);
    if (fallback) this.httpsServer?.setSecureContext({ cert: fallback.cert, key: fallback.key });
  }

  /** True when the TLS port can terminate connections here. */
  get terminates(): boolean {
    return this.httpsServer !== undefined;
  }

  /** A connection from the TLS port whose ClientHello was already put back (socket.unshift). */
  terminate(socket: Socket): void {
    if (!this.httpsServer) {
      socket.destroy();
      return;
    }
    this.httpsServer.emit('connection', socket);
  }

  /** Stops accepting and closes idle connections. */
  stopAccepting(): void {
    for (const server of [this.httpServer, this.httpsServer]) {
      if (!server) continue;
      if (server.listening) server.close();
      server.closeIdleConnections();
    }
  }

  closeAll(): void {
    this.httpServer?.closeAllConnections();
    this.httpsServer?.closeAllConnections();
  }
}
