import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Stream } from '@porthole/mux';
import {
  CONNECTED_BYTE,
  CompressedStream,
  type ConnectionTracker,
  encodeProxyHeader,
  formatPeerAddress,
  type Logger,
  type ProxyEndpoints,
  parseHostPort,
  readStreamHeader,
  type StreamHeader,
  towardsServiceLimits,
  withTimeout,
} from '@porthole/protocol';
import type { ProxyBandwidth } from './bandwidth-limit.js';
import type { ProxyConfig } from './config.js';
import type { DirectoryServer } from './directory-server.js';
import { PairEnd } from './duplex-pair.js';
import { HttpProxyRequestFailed, openHttpProxyDestination } from './http-proxy.js';
import { connectLocal, LOCAL_CONNECT_TIMEOUT_MS, StreamGone } from './local-connect.js';
import type { LocalFailureLog } from './local-failure-log.js';
import {
  describeProxyLocal,
  HTTP_PROXY_LOCAL,
  isDirectoryLocal,
  isForwardProxyLocal,
  SOCKS5_LOCAL,
} from './proxy-config.js';
import { boundElsewhere } from './remote-bind-check.js';
import { responseHeadersUnapplied } from './response-headers-check.js';
import { openSocksDestination, SocksRequestFailed } from './socks-connector.js';
import { endVisitorTls } from './terminate-tls.js';
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

/** Connects to one proxy's local service that may wait the whole connect timeout at once. */
export const MAX_PENDING_LOCAL_CONNECTS = 256;
/**
 * Past those, a burst of visitors (a page load, `wrk -c1000`, players rejoining) may add connects up to this
 * many in all, each given BURST_CONNECT_TIMEOUT_MS only; past it a stream is reset at once.
 */
export const MAX_BURST_LOCAL_CONNECTS = 1024;
/**
 * A service that answers accepts within milliseconds (or within the kernel's first SYN resend at 1 s, if its
 * accept queue overflowed in the burst); one that does not holds a burst's streams this long, not 10 s.
 */
export const BURST_CONNECT_TIMEOUT_MS = 2_000;

/**
 * Connects still waiting for a local service, per proxy. A service that drops SYNs (a full accept queue,
 * a firewall, a host that is down) holds each connect for LOCAL_CONNECT_TIMEOUT_MS, and meanwhile each of
 * those streams may hold a receive window of the visitor's bytes (256 KiB): without a bound, a flood of
 * visitors against such a service grows the client by that much per visitor. Only so many may wait that
 * long; a burst past them gets a short timeout, so it is served by a service that answers and costs little
 * against one that does not.
 */
export class PendingLocalConnects {
  private readonly byProxy = new Map<string, number>();

  /**
   * The time the connect may take, or undefined when `proxy` already has as many connects pending as it
   * may. `burst`: the connect may be one of a burst's, past MAX_PENDING_LOCAL_CONNECTS.
   */
  begin(proxy: string, burst: boolean): number | undefined {
    const pending = this.byProxy.get(proxy) ?? 0;
    if (pending >= (burst ? MAX_BURST_LOCAL_CONNECTS : MAX_PENDING_LOCAL_CONNECTS)) return undefined;
    this.byProxy.set(proxy, pending + 1);
    return pending < MAX_PENDING_LOCAL_CONNECTS ? LOCAL_CONNECT_TIMEOUT_MS : BURST_CONNECT_TIMEOUT_MS;
  }

  end(proxy: string): void {
    const pending = (this.byProxy.get(proxy) ?? 1) - 1;
    if (pending === 0) this.byProxy.delete(proxy);
    else this.byProxy.set(proxy, pending);
  }
}

/** How long a refused SOCKS or HTTP proxy visitor has to read its answer and close, before its stream is reset. */
const REFUSED_REQUEST_LINGER_MS = 5_000;

/**
 * Ends a stream whose SOCKS reply or HTTP answer (a refusal) is on its way, so the visitor reads it before the
 * close. What the visitor sent past its request is read and dropped: unread, it would hold the stream's end back.
 */
function endAfterReply(stream: Stream): void {
  stream.resume();
  stream.end();
  setTimeout(() => stream.destroy(), REFUSED_REQUEST_LINGER_MS).unref();
}

/** A stream whose header has not arrived by then is dropped. */
const HEADER_TIMEOUT_MS = 10_000;

/**
 * Serves one server-opened stream: reads its header, connects to the proxy's local service (or hands it to
 * the directory server) and carries bytes both ways. A failed local connect resets the stream at once, so the public connection closes.
 */
export async function serveStream(
  stream: Stream,
  proxies: ReadonlyMap<string, ProxyConfig>,
  tracker: ConnectionTracker,
  logger: Logger,
  failures: LocalFailureLog,
  pending: PendingLocalConnects,
  udpFlows: OpenUdpFlows,
  bandwidth: ProxyBandwidth,
  directories: DirectoryServer,
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
  const fields = {
    proxy: header.proxy,
    conn: header.conn,
    remote_addr: remoteAddr,
    // A private proxy's connection: the client that visits it.
    ...(header.visitor === undefined ? {} : { visitor: header.visitor }),
  };
  const proxy = proxies.get(header.proxy);
  if (!proxy) {
    failures.failed({ ...fields, reason: 'no such proxy on this client' }, false);
    stream.destroy();
    return;
  }
  const notAsAsked =
    boundElsewhere(proxy, header.public_addr) ?? responseHeadersUnapplied(proxy, header.response_headers);
  if (notAsAsked) {
    failures.failed({ ...fields, reason: notAsAsked }, true, 'visitor refused');
    stream.destroy();
    return;
  }
  const local = describeProxyLocal(proxy);
  if (proxy.type === 'udp') {
    stream.off('error', swallow);
    await serveUdpFlow(stream, header, proxy, logger, failures, udpFlows, bandwidth.budgets(proxy));
    return;
  }
  // The server deflates what follows the header on this stream: it is inflated (and the reply deflated) here.
  const tunnel: Duplex = header.compression ? new CompressedStream(stream) : stream;
  if (tunnel !== stream) tunnel.on('error', swallow);
  if (isDirectoryLocal(proxy.local)) {
    stream.off('error', swallow);
    tunnel.off('error', swallow);
    // Carried as a local service's socket is (counted, drained, listed, held to bandwidth_limit), to the HTTP
    // server in this process.
    const [tunnelEnd, serverEnd] = PairEnd.pair();
    const budgets = bandwidth.budgets(proxy);
    tracker.carry(tunnel, tunnelEnd, {
      labels: ['tunnel', 'local'],
      logger,
      fields: { ...fields, local },
      ...(budgets ? { limits: towardsServiceLimits(budgets) } : {}),
    });
    directories.serve(serverEnd, {
      proxy: proxy.name,
      conn: header.conn,
      remoteAddr,
      ...(header.visitor === undefined ? {} : { visitor: header.visitor }),
    });
    return;
  }
  // What is carried to the local socket: the (inflated) stream, the plaintext of its TLS (terminate_tls), or
  // (an http-proxy's absolute-form request) its one request.
  let visitor: Duplex = tunnel;
  if (proxy.terminateTls) {
    try {
      visitor = await endVisitorTls(tunnel, proxy.terminateTls);
    } catch (err) {
      // A scanner, a visitor refusing the certificate, one gone mid-handshake: nothing the service did.
      logger.debug({ ...fields, local, reason: (err as Error).message }, 'visitor tls handshake failed');
      return;
    }
  }
  // A SOCKS or HTTP proxy visitor's request is its own to stall, under its own timeouts: no burst places.
  const forwardProxy = isForwardProxyLocal(proxy.local);
  const timeoutMs = pending.begin(proxy.name, !forwardProxy);
  if (timeoutMs === undefined) {
    const limit = forwardProxy ? MAX_PENDING_LOCAL_CONNECTS : MAX_BURST_LOCAL_CONNECTS;
    const reason = `${limit} connects to the local service already pending`;
    failures.failed({ ...fields, local, reason }, true);
    stream.destroy();
    return;
  }
  let socket: Socket;
  // A socks5 or http-proxy proxy's line names where each visitor went.
  let destination: Record<string, string> = {};
  try {
    if (isForwardProxyLocal(proxy.local)) {
      // Never without its settings: none would make an open proxy of it.
      if (!proxy.socks) throw new Error(`${proxy.local} proxy without its socks_* settings`);
      const opened =
        proxy.local === HTTP_PROXY_LOCAL
          ? await openHttpProxyDestination(stream, proxy.socks)
          : { visitor: stream, ...(await openSocksDestination(stream, proxy.socks)) };
      socket = opened.socket;
      visitor = opened.visitor;
      destination = { dest: opened.dest, ...(opened.destAddr ? { dest_addr: opened.destAddr } : {}) };
    } else {
      const why =
        timeoutMs === LOCAL_CONNECT_TIMEOUT_MS
          ? ''
          : ` (a connect past ${MAX_PENDING_LOCAL_CONNECTS} pending ones, as in a burst of visitors)`;
      // The visitor's real address, for services that read PROXY headers (nginx, HAProxy, Postfix...): in
      // clear, before local_tls's handshake, as they expect it.
      const preface =
        proxy.proxyProtocol !== undefined && proxy.type !== 'http'
          ? encodeProxyHeader(proxy.proxyProtocol, proxyEndpoints(header))
          : undefined;
      socket = await connectLocal(proxy.local, stream, timeoutMs, why, {
        ...(preface ? { preface } : {}),
        ...(proxy.localTls ? { tls: proxy.localTls } : {}),
      });
    }
  } catch (err) {
    if (err instanceof SocksRequestFailed || err instanceof HttpProxyRequestFailed) {
      const dest = err.dest === undefined ? {} : { dest: err.dest };
      const message = proxy.local === SOCKS5_LOCAL ? 'socks request failed' : 'http proxy request failed';
      failures.failed({ ...fields, local, ...dest, reason: err.message }, true, message);
      endAfterReply(stream);
      return;
    }
    if (!(err instanceof StreamGone))
      failures.failed({ ...fields, local, reason: (err as Error).message }, true);
    stream.destroy();
    return;
  } finally {
    pending.end(proxy.name);
  }
  stream.off('error', swallow);
  tunnel.off('error', swallow);
  if (stream.destroyed) {
    socket.destroy();
    return;
  }
  // A tcpmux visitor is waiting for the server's answer to its CONNECT: the service took the connection.
  if (header.confirm_connect) tunnel.write(Buffer.of(CONNECTED_BYTE));
  // Looked up now, not before the connect: a reload meanwhile may have changed the limit.
  const budgets = bandwidth.budgets(proxies.get(proxy.name) ?? proxy);
  tracker.carry(visitor, socket, {
    labels: ['tunnel', 'local'],
    logger,
    fields: { ...fields, local, ...destination },
    ...(budgets ? { limits: towardsServiceLimits(budgets) } : {}),
  });
}
