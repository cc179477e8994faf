// The [tcpmux] port (frp's tcpmuxHTTPConnectPort): each connection opens with an HTTP CONNECT request whose
// host picks a tcpmux proxy; once that proxy's client has connected its local service the visitor gets
// "200 Connection established", and from then on the bytes pass both ways as a tcp proxy's do.
import { createServer, type Server, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import {
  type BasicCredentials,
  basicCredentialsMatch,
  CONNECTED_BYTE,
  type ConnectionTracker,
  formatHostPort,
  type HostPort,
  type Logger,
  listenServer,
  readRequestHead,
} from '@porthole/protocol';
import { refuseAndClose } from './answer-and-close.js';
import { type ConnectRequest, MAX_CONNECT_HEAD_BYTES, parseConnectHead } from './connect-request.js';
import type { HostRoutes } from './host-routes.js';
import { peerAddress } from './peer-address.js';
import type { PendingConnections } from './pending-connections.js';
import type { ProxyTraffic } from './proxy-traffic.js';
import type { RoutedTarget } from './routed-target.js';
import { visitorTurnedAway } from './server-plugins.js';
import { compressionOf } from './tunnel-stream.js';
import { openVisitorStream } from './visitor-stream.js';

/**
 * How long the server waits for the client's word that its local service took the connection. The client
 * gives up its connect after 10 s (and resets the stream); past this the client is not answering at all.
 */
const CONNECT_CONFIRM_TIMEOUT_MS = 30_000;

export const CONNECTION_ESTABLISHED = 'HTTP/1.1 200 Connection established\r\n\r\n';

/** What a tcpmux proxy's routes lead to. */
export interface TcpmuxTarget extends RoutedTarget {
  /** http_user and http_password: the CONNECT must carry them in Proxy-Authorization. */
  auth: BasicCredentials | undefined;
}

export interface TcpmuxListenerOptions {
  listen: HostPort;
  routes: HostRoutes<TcpmuxTarget>;
  logger: Logger;
  tracker: ConnectionTracker;
  handshakeTimeoutMs: number;
  /** Caps the connections still sending their CONNECT request; one routed no longer counts. */
  pending: PendingConnections;
  /** Counts the visitors whose stream opened but whose tunnel did not (the tracker counts the others). */
  traffic: ProxyTraffic;
}

/** A visitor turned away before its tunnel opened: the answer, and the reason for the log. */
interface Refusal {
  status: number;
  reason: string;
  fields?: string[];
}

export class TcpmuxListener {
  private readonly server: Server;
  private address = '';

  constructor(private readonly opts: TcpmuxListenerOptions) {
    this.server = createServer({ allowHalfOpen: true }, (socket) => {
      this.onConnection(socket).catch((err: Error) => {
        opts.logger.error(
          { remote_addr: peerAddress(socket), reason: err.message },
          'tcpmux connection failed',
        );
        socket.destroy();
      });
    });
  }

  async listen(): Promise<string> {
    const { listen, logger } = this.opts;
    const address = await listenServer(this.server, listen, (err) =>
      logger.error({ reason: err.message }, 'tcpmux listener error'),
    );
    this.address = formatHostPort(address.address, address.port);
    return this.address;
  }

  stopAccepting(): void {
    if (this.server.listening) this.server.close();
  }

  /** The proxy a request goes to, or how it is refused. */
  route(request: ConnectRequest): { target: TcpmuxTarget; proxy: string } | Refusal {
    const { name } = request;
    // A group member whose max_connections is full is passed over while another has room.
    const route = this.opts.routes.lookupName(name, (target) => target.limit.hasRoom());
    if (!route) return { status: 404, reason: `no tcpmux proxy for ${name}` };
    if (!route.target) return { status: 502, reason: `the tunnel for ${name} is offline` };
    const { auth } = route.target;
    if (auth && !basicCredentialsMatch(request.proxyAuthorization, auth)) {
      const reason =
        request.proxyAuthorization === undefined
          ? 'no Proxy-Authorization'
          : 'wrong Proxy-Authorization credentials';
      return { status: 407, reason, fields: ['Proxy-Authenticate: Basic realm="porthole"'] };
    }
    return { target: route.target, proxy: route.proxy };
  }

  private async onConnection(socket: Socket): Promise<void> {
    const { pending, logger, tracker } = this.opts;
    if (!pending.admit(socket)) return;
    socket.on('error', () => {});
    const remoteAddr = peerAddress(socket);
    const refuse = (refusal: Refusal, fields: Record<string, unknown> = {}): void => {
      logger.debug(
        { remote_addr: remoteAddr, ...fields, reason: refusal.reason },
        'tcpmux connection refused',
      );
      refuseAndClose(socket, refusal.status, refusal.reason, refusal.fields);
    };
    const read = await readRequestHead(socket, {
      maxBytes: MAX_CONNECT_HEAD_BYTES,
      timeoutMs: this.opts.handshakeTimeoutMs,
      timeoutSetting: 'handshake_timeout',
    });
    if (read.state === 'gone') {
      logger.debug({ remote_addr: remoteAddr, reason: read.reason }, 'tcpmux connection refused');
      socket.destroy();
      return;
    }
    if (read.state === 'refused') return refuse(read.refused);
    const request = parseConnectHead(read.head);
    if ('status' in request) return refuse(request);
    const routed = this.route(request);
    if ('status' in routed) return refuse(routed, { host: request.name });
    const { target } = routed;
    pending.settle(socket);
    const fields = {
      client: target.client,
      proxy: target.proxy,
      remote_addr: remoteAddr,
      host: request.name,
    };
    if (!target.limit.take(socket)) {
      return refuse({ status: 503, reason: `proxy ${target.proxy} has max_connections open` }, fields);
    }
    const check = target.visitorCheck?.(remoteAddr);
    if (
      check !== undefined &&
      (await visitorTurnedAway(socket, check, (refusal) =>
        refuse({ status: 403, reason: refusal.reason }, fields),
      ))
    )
      return;
    const conn = tracker.nextId();
    socket.setNoDelay(true);
    const stream = openVisitorStream(target.session, socket, {
      proxy: target.proxy,
      conn,
      public_addr: this.address,
      confirm_connect: true,
      ...compressionOf(target),
    });
    stream.on('error', () => {});
    // Early data: what the visitor sent after its CONNECT head without waiting for the 200 goes first.
    const early = read.rest;
    if (early.length > 0) stream.write(early);
    const limits = target.bandwidth.limits();
    limits?.aToB?.spend(early.length);
    const failure = await connectConfirmed(stream, socket);
    if (failure !== undefined) {
      stream.destroy();
      this.opts.traffic.countUnopened(target.client, target.proxy, early.length);
      if (socket.destroyed) return;
      return refuse({ status: 502, reason: failure }, { ...fields, conn });
    }
    socket.write(CONNECTION_ESTABLISHED);
    tracker.carry(socket, stream, {
      labels: ['visitor', 'tunnel'],
      alreadyMoved: { bytesAtoB: early.length, bytesBtoA: 0 },
      ...(limits === undefined ? {} : { limits }),
      logger,
      fields: { ...fields, conn },
    });
  }
}

/**
 * Waits for the client's CONNECTED_BYTE on `stream` (and leaves what follows it unread); resolves with why
 * the tunnel did not open, or undefined once it did. The visitor leaving meanwhile ends the wait.
 */
function connectConfirmed(stream: Duplex, visitor: Socket): Promise<string | undefined> {
  return new Promise((resolve) => {
    const finish = (failure: string | undefined): void => {
      clearTimeout(timer);
      stream.off('readable', onReadable);
      stream.off('end', onClosed);
      stream.off('close', onClosed);
      visitor.off('close', onVisitorGone);
      resolve(failure);
    };
    const onReadable = (): void => {
      const chunk = stream.read() as Buffer | null;
      if (chunk === null) return;
      if (chunk[0] !== CONNECTED_BYTE) {
        finish('the client answered the tunnel with something else than its confirmation');
        return;
      }
      if (chunk.length > 1) stream.unshift(chunk.subarray(1));
      finish(undefined);
    };
    const onClosed = (): void => finish('the client could not connect to its local service');
    const onVisitorGone = (): void => finish('the visitor left before the tunnel opened');
    const timer = setTimeout(
      () => finish(`the client did not confirm its local connection within ${CONNECT_CONFIRM_TIMEOUT_MS} ms`),
      CONNECT_CONFIRM_TIMEOUT_MS,
    );
    stream.on('readable', onReadable);
    stream.once('end', onClosed);
    stream.once('close', onClosed);
    visitor.once('close', onVisitorGone);
  });
}
