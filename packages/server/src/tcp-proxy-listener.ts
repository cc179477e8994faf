import { type AddressInfo, createServer, type Server, type Socket } from 'node:net';
import type { Session } from '@porthole/mux';
import {
  type ConnectionTracker,
  formatHostPort,
  type Logger,
  listenServer,
  type ProxySpec,
} from '@porthole/protocol';
import type { ClientBandwidth } from './client-bandwidth.js';
import type { ConnectionLimit } from './connection-limit.js';
import { peerAddress } from './peer-address.js';
import { RoundRobin } from './round-robin.js';
import { type PluginRefusal, type VisitorCheck, visitorTurnedAway } from './server-plugins.js';
import { compressionOf } from './tunnel-stream.js';
import { openVisitorStream } from './visitor-stream.js';

/** Where a tcp proxy's visitors go: one proxy of one client (a member, when the port is a group's). */
export interface TcpTarget {
  client: string;
  proxy: ProxySpec;
  session: Session;
  /** This proxy's max_connections: a visitor over it is reset before a stream is opened. */
  limit: ConnectionLimit;
  /** Its client's cap, shared with the client's other connections. */
  bandwidth: ClientBandwidth;
  /** The server's plugins' say on each visitor (NewUserConn). */
  visitorCheck?: VisitorCheck;
}

export interface TcpProxyListenerOptions {
  client: string;
  proxy: ProxySpec & { remote_port: number };
  bindHost: string;
  session: Session;
  logger: Logger;
  tracker: ConnectionTracker;
  /** This proxy's max_connections: a visitor over it is reset before a stream is opened. */
  limit: ConnectionLimit;
  bandwidth: ClientBandwidth;
  visitorCheck?: VisitorCheck;
  /** The first target as an object of the caller's (a group member leaves by it); else made of the above. */
  target?: TcpTarget;
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
 * every accepted connection becomes a server-opened stream (header first, then raw bytes both ways). A group's port has
 * several proxies (targets), which take the connections in turn.
 */
export class TcpProxyListener {
  readonly address: string;
  private readonly server: Server;
  private readonly targets = new RoundRobin<TcpTarget>();
  /** The target made of the options, the one respec() changes (a group's members change their own). */
  private readonly own: TcpTarget;

  constructor(private readonly opts: TcpProxyListenerOptions) {
    this.address = formatHostPort(opts.bindHost, opts.proxy.remote_port);
    this.server = createServer({ allowHalfOpen: true }, (socket) => this.onConnection(socket));
    this.own = opts.target ?? {
      client: opts.client,
      proxy: opts.proxy,
      session: opts.session,
      limit: opts.limit,
      bandwidth: opts.bandwidth,
      ...(opts.visitorCheck === undefined ? {} : { visitorCheck: opts.visitorCheck }),
    };
    this.targets.add(this.own);
  }

  /** Another proxy of the group takes its turns from now on. */
  join(target: TcpTarget): void {
    this.targets.add(target);
  }

  /** A proxy leaves the group (its open connections carry on); true when none is left. */
  leave(target: TcpTarget): boolean {
    target.limit.close();
    return this.targets.remove(target);
  }

  /** The targets taking turns, for status. */
  get members(): readonly TcpTarget[] {
    return this.targets.list();
  }

  /** Binds the port; rejects with an Error whose message is the reason to send to the client (and the errno `code`). */
  async listen(): Promise<void> {
    const { proxy, bindHost, logger } = this.opts;
    try {
      await listenServer(this.server, { port: proxy.remote_port, host: bindHost }, (err) =>
        logger.error({ proxy: proxy.name, reason: err.message }, 'proxy listener error'),
      );
    } catch (err) {
      // The code stays for a caller that tries another port (port-picker.ts).
      const failed = err as NodeJS.ErrnoException;
      throw Object.assign(new Error(describeListenError(failed, this.address)), { code: failed.code });
    }
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
    respecTarget(this.own, proxy, limit);
  }

  /** Stops accepting at once (the port is free when this returns); open connections carry on. */
  close(): void {
    if (this.server.listening) this.server.close();
    for (const target of this.targets.list()) target.limit.close();
  }

  private onConnection(socket: Socket): void {
    // A member whose max_connections is full is passed over while another has room; when none has, the
    // next in turn refuses (and counts) the visitor.
    const target = this.targets.pick((t) => t.limit.hasRoom()) ?? this.targets.pick();
    if (!target) {
      socket.resetAndDestroy();
      return;
    }
    if (!target.limit.admit(socket)) return;
    // Taken once: the connection's log line needs it whether or not a plugin is asked.
    const remoteAddr = peerAddress(socket);
    const check = target.visitorCheck?.(remoteAddr);
    if (check === undefined) this.tunnel(socket, target, remoteAddr);
    else void this.tunnelIfAllowed(socket, target, remoteAddr, check);
  }

  /** Counted against max_connections while the plugins decide. */
  private async tunnelIfAllowed(
    socket: Socket,
    target: TcpTarget,
    remoteAddr: string,
    check: Promise<PluginRefusal | undefined>,
  ): Promise<void> {
    if (!(await visitorTurnedAway(socket, check))) this.tunnel(socket, target, remoteAddr);
  }

  private tunnel(socket: Socket, target: TcpTarget, remoteAddr: string): void {
    const { tracker, logger } = this.opts;
    const { client, proxy, session, bandwidth } = target;
    const conn = tracker.nextId();
    socket.setNoDelay(true);
    const stream = openVisitorStream(session, socket, {
      proxy: proxy.name,
      conn,
      public_addr: this.address,
      ...compressionOf(proxy),
    });
    const limits = bandwidth.limits();
    tracker.carry(socket, stream, {
      labels: ['visitor', 'tunnel'],
      logger,
      fields: { client, proxy: proxy.name, conn, remote_addr: remoteAddr },
      ...(limits === undefined ? {} : { limits }),
    });
  }
}

/** A target registered again with a changed spec on the same port: its next connections get these. */
export function respecTarget(target: TcpTarget, proxy: ProxySpec, limit: ConnectionLimit): void {
  // The refusals the old limit has not logged yet (a kept limit is the same object).
  if (limit !== target.limit) target.limit.close();
  target.proxy = { ...proxy, remote_port: target.proxy.remote_port };
  target.limit = limit;
}
