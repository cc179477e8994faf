import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { acceptWebSocket, checkUpgradeRequest, type WebSocketStream } from '@porthole/mux';
import {
  formatHostPort,
  type HostPort,
  type Logger,
  listenServer,
  type TokenClaims,
} from '@porthole/protocol';
import { refuseAndClose } from './answer-and-close.js';
import { bearerToken, type UpgradeAuthenticator } from './auth.js';
import { AuthFailureLines } from './auth-failure-lines.js';
import { peerAddress, peersOnArrival } from './peer-address.js';
import type { PendingConnections } from './pending-connections.js';
import { isControlPath } from './request-path.js';

export interface ControlEndpointOptions {
  listen: HostPort;
  path: string;
  tls?: { cert: Buffer; key: Buffer };
  authenticator: UpgradeAuthenticator;
  /** Caps the connections that have not signed in yet (the vhost ports' too); one signed in counts no longer. */
  pending: PendingConnections;
  logger: Logger;
  /** Called with each authenticated WebSocket. */
  onClient(ws: WebSocketStream, claims: TokenClaims, remoteAddr: string): void;
}

/**
 * The challenge a 401 must carry (RFC 9110 15.5.2). RFC 6750 3.1: a request that sent no credentials is
 * told only the scheme; one whose token failed gets error="invalid_token", and the body says which way.
 */
function bearerChallenge(req: IncomingMessage): string {
  const challenge = `WWW-Authenticate: Bearer realm="porthole"`;
  return bearerToken(req) === undefined ? challenge : `${challenge}, error="invalid_token"`;
}

/**
 * The fields a refused sign-in carries: a 401 its challenge; a 429 Retry-After (RFC 6585 4, RFC 9110
 * 10.2.3), the seconds until the source's failure window ends, so a client waits that long rather than
 * hitting the limit again with each backoff step.
 */
function refusalFields(req: IncomingMessage, outcome: { status: 401 | 429; retryAfterSeconds?: number }) {
  if (outcome.status === 401) return [bearerChallenge(req)];
  return outcome.retryAfterSeconds === undefined ? [] : [`Retry-After: ${outcome.retryAfterSeconds}`];
}

/**
 * The server's control endpoint: an HTTP(S) server whose only job is the WebSocket upgrade on `path`.
 * The Bearer token is verified before the upgrade is accepted; a failure is a 401 with the reason.
 */
export class ControlEndpoint {
  private readonly server: Server;
  private readonly authFailureLines: AuthFailureLines;

  constructor(private readonly opts: ControlEndpointOptions) {
    this.authFailureLines = new AuthFailureLines(opts.logger);
    // Nothing is owed to a peer before it has signed in: a TLS handshake or a request head that dawdles
    // is cut after seconds (the checking interval makes headersTimeout hold to within 2 s, not 30).
    const httpOptions = { connectionsCheckingInterval: 2_000 };
    this.server = opts.tls
      ? createHttpsServer({
          ...httpOptions,
          cert: opts.tls.cert,
          key: opts.tls.key,
          handshakeTimeout: 10_000,
        })
      : createHttpServer(httpOptions);
    // Before Node's own listener: one refused costs no TLS handshake and no parser.
    this.server.prependListener('connection', (socket: Socket) => opts.pending.admit(socket));
    this.server.headersTimeout = 10_000;
    this.server.requestTimeout = 15_000;
    this.server.on('request', (req, res) => {
      if (!isControlPath(req.url, opts.path)) {
        res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8', Connection: 'close' });
        res.end('not found\n');
        return;
      }
      // RFC 9110 15.5.22: a 426 names the protocol to switch to, in Upgrade (which Connection must list).
      res.writeHead(426, {
        'Content-Type': 'text/plain; charset=utf-8',
        Upgrade: 'websocket',
        Connection: 'Upgrade, close',
      });
      res.end('porthole control endpoint: WebSocket upgrade required\n');
    });
    this.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) =>
      this.handleUpgrade(req, socket, head),
    );
    if (opts.tls) {
      const peerOf = peersOnArrival(this.server as HttpsServer);
      this.server.on('tlsClientError', (err, socket) => {
        opts.logger.debug({ remote_addr: peerOf(socket), reason: err.message }, 'tls handshake failed');
      });
    }
  }

  /** Starts listening; resolves with the bound address ("127.0.0.1:40123"). */
  async listen(): Promise<string> {
    const address = await listenServer(this.server, this.opts.listen, (err) =>
      this.opts.logger.error({ reason: err.message }, 'control listener error'),
    );
    return formatHostPort(address.address, address.port);
  }

  /** A renewed [tls] pair: new handshakes get it, connections already open keep theirs. */
  useCertificate(pair: { cert: Buffer; key: Buffer }): void {
    if (this.opts.tls) (this.server as HttpsServer).setSecureContext({ cert: pair.cert, key: pair.key });
  }

  /** Stops accepting new connections (established sessions are closed by their owners). */
  stopAccepting(): void {
    this.server.close();
    this.server.closeIdleConnections();
    this.authFailureLines.flush();
  }

  /** Drops every connection still open on the endpoint. */
  closeAll(): void {
    this.server.closeAllConnections();
  }

  /** An upgrade request on the control path (also called by the vhost ports for their upgrades). */
  handleUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    socket.on('error', () => socket.destroy());
    const remoteAddr = peerAddress(socket);
    if (!isControlPath(req.url, this.opts.path)) {
      refuseAndClose(socket, 404, 'not found');
      return;
    }
    const handshake = checkUpgradeRequest(req);
    if (!handshake.ok) {
      refuseAndClose(socket, handshake.status, handshake.reason);
      return;
    }
    this.opts.authenticator.authenticate(req).then(
      (outcome) => {
        if (!outcome.ok) {
          this.authFailureLines.record({
            remoteAddr,
            source: outcome.source,
            reason: outcome.reason,
            ownLine: outcome.log,
            whose: outcome.whose,
          });
          refuseAndClose(socket, outcome.status, outcome.reason, refusalFields(req, outcome));
          return;
        }
        if (socket.destroyed) return;
        this.opts.pending.settle(socket);
        this.opts.onClient(acceptWebSocket(socket, head, handshake.key), outcome.claims, remoteAddr);
      },
      (err: Error) => {
        this.opts.logger.error({ remote_addr: remoteAddr, reason: err.message }, 'auth error');
        refuseAndClose(socket, 500, 'internal error');
      },
    );
  }
}
