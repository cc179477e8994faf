import { connect, type Socket } from 'node:net';
import type { Stream } from '@porthole/mux';
import {
  CloseHooks,
  type ConnectionTracker,
  encodeProxyHeader,
  formatLocalAddress,
  formatPeerAddress,
  isUnixSocketAddress,
  type Logger,
  type ProxyEndpoints,
  parseHostPort,
  readStreamHeader,
  type StreamHeader,
} from '@porthole/protocol';
import type { ProxyConfig } from './config.js';
import { describeLocalConnectError } from './connect-error.js';
import type { LocalFailureLog } from './local-failure-log.js';
import { type OpenUdpFlows, serveUdpFlow } from './udp-forwarder.js';

/** The PROXY header's endpoints: the visitor, and the server address it connected to. */
export function proxyEndpoints(header: StreamHeader): ProxyEndpoints {
  let destinationAddress = header.dest_addr;
  let destinationPort = header.dest_port;
  if (destinationAddress === undefined) {
    // Older servers: the public listener's address (its bind address may be a wildcard, then unknown).
    try {
      const parsed = parseHostPort(header.public_addr);
      destinationAddress = parsed.host;
      destinationPort = parsed.port;
    } catch {}
  }
  return {
    sourceAddress: header.remote_addr,
    sourcePort: header.remote_port,
    destinationAddress,
    destinationPort,
  };
}

/** Connects to one proxy's local service that may be waiting for an answer at once; past it a stream is reset. */
export const MAX_PENDING_LOCAL_CONNECTS = 256;

/**
 * Connects still waiting for a local service, per proxy. A service that drops SYNs (a full accept queue,
 * a firewall, a host that is down) holds each connect for LOCAL_CONNECT_TIMEOUT_MS, and meanwhile each of
 * those streams may hold a receive window of the visitor's bytes: without a bound, a flood of visitors
 * against such a service grows the client by 256 KiB per visitor.
 */
export class PendingLocalConnects {
  private readonly byProxy = new Map<string, number>();

  /** False when `proxy` already has MAX_PENDING_LOCAL_CONNECTS connects pending. */
  begin(proxy: string): boolean {
    const pending = this.byProxy.get(proxy) ?? 0;
    if (pending >= MAX_PENDING_LOCAL_CONNECTS) return false;
    this.byProxy.set(proxy, pending + 1);
    return true;
  }

  end(proxy: string): void {
    const pending = (this.byProxy.get(proxy) ?? 1) - 1;
    if (pending === 0) this.byProxy.delete(proxy);
    else this.byProxy.set(proxy, pending);
  }
}

/** A stream whose header has not arrived by then is dropped. */
const HEADER_TIMEOUT_MS = 10_000;
/** A local service that does not accept within this time counts as a failed connect. */
const LOCAL_CONNECT_TIMEOUT_MS = 10_000;

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The stream went away (visitor left, session lost) before the local service answered. */
class StreamGone extends Error {}

/**
 * The sessions that streams waiting on a local connect came on. A lost session leaves a stream whose visitor
 * had sent its end (a request, then FIN, waiting for the answer) open for its reader, so that stream's own
 * 'close' does not come, while its visitor is already cut off.
 */
const sessionClose = new CloseHooks();

/**
 * Connects to the local service; given up when `stream` or its session closes first, so its pending place is
 * freed and the service never gets a request whose answer cannot reach the visitor.
 */
function connectLocal(local: ProxyConfig['local'], stream: Stream): Promise<Socket> {
  return new Promise((resolve, reject) => {
    if (stream.destroyed) {
      reject(new StreamGone());
      return;
    }
    const socket = connect({
      ...(isUnixSocketAddress(local) ? { path: local.path } : { host: local.host, port: local.port }),
      allowHalfOpen: true,
    });
    const settle = () => {
      clearTimeout(timer);
      stream.off('close', gone);
      forgetSession();
    };
    const gone = () => {
      settle();
      socket.destroy();
      reject(new StreamGone());
    };
    const timer = setTimeout(() => {
      settle();
      socket.destroy();
      reject(new Error(`connect to ${formatLocalAddress(local)} timed out`));
    }, LOCAL_CONNECT_TIMEOUT_MS);
    stream.once('close', gone);
    const forgetSession = sessionClose.add(stream.session, gone);
    socket.once('connect', () => {
      settle();
      socket.removeAllListeners('error');
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      settle();
      reject(new Error(describeLocalConnectError(local, err)));
    });
  });
}

/**
 * Serves one server-opened stream: reads its header, connects to the proxy's local service and carries
 * bytes both ways. A failed local connect resets the stream at once, so the public connection closes.
 */
export async function serveStream(
  stream: Stream,
  proxies: ReadonlyMap<string, ProxyConfig>,
  tracker: ConnectionTracker,
  logger: Logger,
  failures: LocalFailureLog,
  pending: PendingLocalConnects,
  udpFlows: OpenUdpFlows,
): Promise<void> {
  // Until the pipe owns the stream, an RST or session loss must not become an uncaught error.
  const swallow = () => {};
  stream.on('error', swallow);
  let header: StreamHeader;
  try {
    header = await withTimeout(readStreamHeader(stream), HEADER_TIMEOUT_MS, 'stream header');
  } catch (err) {
    logger.warn({ reason: (err as Error).message }, 'bad stream from server');
    stream.destroy();
    return;
  }
  // As the server's lines write this visitor (an IPv4 one of a dual-stack listener as IPv4, not ::ffff:).
  const remoteAddr = formatPeerAddress(header.remote_addr, header.remote_port);
  const fields = { proxy: header.proxy, conn: header.conn, remote_addr: remoteAddr };
  const proxy = proxies.get(header.proxy);
  if (!proxy) {
    failures.failed({ ...fields, reason: 'no such proxy on this client' }, false);
    stream.destroy();
    return;
  }
  const local = formatLocalAddress(proxy.local);
  if (proxy.type === 'udp') {
    stream.off('error', swallow);
    await serveUdpFlow(stream, header, proxy, logger, failures, udpFlows);
    return;
  }
  if (!pending.begin(proxy.name)) {
    const reason = `${MAX_PENDING_LOCAL_CONNECTS} connects to the local service already pending`;
    failures.failed({ ...fields, local, reason }, true);
    stream.destroy();
    return;
  }
  let socket: Socket;
  try {
    socket = await connectLocal(proxy.local, stream);
  } catch (err) {
    if (!(err instanceof StreamGone))
      failures.failed({ ...fields, local, reason: (err as Error).message }, true);
    stream.destroy();
    return;
  } finally {
    pending.end(proxy.name);
  }
  stream.off('error', swallow);
  if (stream.destroyed) {
    socket.destroy();
    return;
  }
  if (proxy.proxyProtocol !== undefined && proxy.type !== 'http') {
    // The visitor's real address, for services that read PROXY headers (nginx, HAProxy, Postfix...).
    socket.write(encodeProxyHeader(proxy.proxyProtocol, proxyEndpoints(header)));
  }
  tracker.carry(stream, socket, { labels: ['tunnel', 'local'], logger, fields: { ...fields, local } });
}
