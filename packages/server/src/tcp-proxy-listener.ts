import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import type { Session } from '@porthole/mux';
import {
  type ConnectionTracker,
  formatHostPort,
  type Logger,
  type ProxySpec,
  writeStreamHeader,
} from '@porthole/protocol';
import type { ConnectionLimit } from './connection-limit.js';
import { peerAddress } from './peer-address.js';

export interface TcpProxyListenerOptions {
  client: string;
  proxy: ProxySpec & { remote_port: number };
  bindHost: string;
  session: Session;
  logger: Logger;
  tracker: ConnectionTracker;
  /** This proxy's max_connections: a visitor over it is reset before a stream is opened. */
  limit: ConnectionLimit;
}

/** Why a listen failed, in words a client user can act on. */
function describeListenError(err: NodeJS.ErrnoException, address: string): string {
  if (err.code === 'EADDRINUSE') return `address ${address} is already in use on the server`;
  if (err.code === 'EACCES') return `the server may not bind ${address} (permission denied)`;
  if (err.code === 'EADDRNOTAVAIL') return `address ${address} is not available on the server`;
  return `cannot listen on ${address}: ${err.message}`;
}

/**
 * The public side of one tcp proxy: a listener on proxy_bind:remote_port (or the client's remote_bind) whose
 * every accepted connection becomes a server-opened stream (header first, then raw bytes both ways).
 */
export class TcpProxyListener {
  readonly address: string;
  private readonly server: Server;

  constructor(private opts: TcpProxyListenerOptions) {
    this.address = formatHostPort(opts.bindHost, opts.proxy.remote_port);
    this.server = createServer({ allowHalfOpen: true }, (socket) => this.onConnection(socket));
  }

  /** Binds the port; rejects with an Error whose message is the reason to send to the client (and the errno `code`). */
  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      // The code stays for a caller that tries another port (port-picker.ts).
      const onError = (err: NodeJS.ErrnoException) =>
        reject(Object.assign(new Error(describeListenError(err, this.address)), { code: err.code }));
      this.server.once('error', onError);
      this.server.listen({ port: this.opts.proxy.remote_port, host: this.opts.bindHost }, () => {
        this.server.off('error', onError);
        this.server.on('error', (err) =>
          this.opts.logger.error(
            { proxy: this.opts.proxy.name, reason: err.message },
            'proxy listener error',
          ),
        );
        resolve();
      });
    });
  }

  /** The address the port is bound on. */
  get bindHost(): string {
    return this.opts.bindHost;
  }

  /** The port actually bound (differs from the spec only in tests that bind port 0). */
  get boundPort(): number {
    return (this.server.address() as AddressInfo | null)?.port ?? this.opts.proxy.remote_port;
  }

  /**
   * The proxy registered again with a changed spec on this same port: connections from now on get the new
   * spec and limit, on the listener already bound (open ones carry on, counted by the limit they took).
   */
  respec(proxy: ProxySpec, limit: ConnectionLimit): void {
    // The refusals the old limit has not logged yet (a kept limit is the same object).
    if (limit !== this.opts.limit) this.opts.limit.close();
    this.opts = { ...this.opts, proxy: { ...proxy, remote_port: this.opts.proxy.remote_port }, limit };
  }

  /** Stops accepting at once (the port is free when this returns); open connections carry on. */
  close(): void {
    if (this.server.listening) this.server.close();
    this.opts.limit.close();
  }

  private onConnection(socket: Socket): void {
    const { client, proxy, session, tracker, logger, limit } = this.opts;
    if (!limit.admit(socket)) return;
    const conn = tracker.nextId();
    const remoteHost = socket.remoteAddress ?? '';
    const remotePort = socket.remotePort ?? 0;
    socket.setNoDelay(true);
    const stream = session.open();
    writeStreamHeader(stream, {
      proxy: proxy.name,
      conn,
      remote_addr: remoteHost,
      remote_port: remotePort,
      public_addr: this.address,
      ...(socket.localAddress === undefined
        ? {}
        : { dest_addr: socket.localAddress, dest_port: socket.localPort ?? 0 }),
    });
    tracker.carry(socket, stream, {
      labels: ['visitor', 'tunnel'],
      logger,
      fields: { client, proxy: proxy.name, conn, remote_addr: peerAddress(socket) },
    });
  }
}
