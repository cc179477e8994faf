// The client side of one UDP flow: a server-opened stream carrying u16-framed datagrams from one remote
// address:port, relayed to the local UDP service through a socket of its own (so the service's replies
// come back to this flow). The flow ends after the idle timeout (the server's, from the stream header),
// when the server ends it, when a reload moves its proxy's local, or when the stream breaks. Lossy like
// UDP: drops are counted, never fatal.
import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { Stream } from '@porthole/mux';
import {
  type BandwidthBudgets,
  type DatagramBudget,
  DatagramDecoder,
  DatagramWriter,
  formatHostPort,
  formatPeerAddress,
  isUnixSocketAddress,
  type Logger,
  proxyDatagramBudget,
  type StreamHeader,
  udpLinkStopped,
} from '@porthole/protocol';
import type { LocalFailureLog } from './local-failure-log.js';
import { isDirectoryLocal, isForwardProxyLocal, type ProxyConfig } from './proxy-config.js';

export const DEFAULT_UDP_IDLE_TIMEOUT_MS = 60_000;
/** Datagrams (and bytes of them) held while the local socket is still connecting (a DNS lookup). */
const MAX_PENDING_DATAGRAMS = 64;
const MAX_PENDING_BYTES = 256 * 1024;
/** Datagrams are dropped while this many bytes wait in the local socket's send queue. */
const MAX_SEND_QUEUE_BYTES = 1024 * 1024;
const MAX_UDP_PAYLOAD = { udp4: 65_507, udp6: 65_527 } as const;
const FLOW_CLOSE_GRACE_MS = 5_000;
/**
 * What a connected UDP socket reports, on a later send or as an error of its own, for a datagram an ICMP
 * error answered: the service (or its host, or the way there) cannot be reached for now. UDP carries on:
 * the flow stays, its datagrams are dropped until the service is back.
 */
const UNREACHABLE: ReadonlyMap<string | undefined, string> = new Map<string | undefined, string>([
  ['ECONNREFUSED', 'port unreachable'],
  // ICMP host unreachable, and what a firewall there answers for a port it has not opened (firewalld's
  // host-prohibited, admin-prohibited).
  ['EHOSTUNREACH', 'host unreachable or prohibited'],
  ['ENETUNREACH', 'network unreachable'],
  ['EHOSTDOWN', 'host down'],
]);

/** The open flows of one udp proxy: how to end each, and what they have queued for the tunnel together. */
interface ProxyFlows {
  ends: Set<(reason: string) => void>;
  budget: DatagramBudget;
}

/**
 * The udp flows open now, by proxy: a flow is a udp proxy's connection, so the status counts them with the
 * tcp ones (as the server's admin API does); a flow's socket stays connected to the local it started
 * with, so a reload that moves a proxy's local ends its flows for the next datagram to open one to the new;
 * and a proxy's flows share one bound on the datagrams they queue for a slow tunnel, as on the server.
 */
export class OpenUdpFlows {
  private readonly byProxy = new Map<string, ProxyFlows>();

  get size(): number {
    let total = 0;
    for (const flows of this.byProxy.values()) total += flows.ends.size;
    return total;
  }

  count(proxy: string): number {
    return this.byProxy.get(proxy)?.ends.size ?? 0;
  }

  /**
   * `end` ends the flow; `forget` forgets it (once its stream has closed); `budget` is shared by the
   * proxy's open flows.
   */
  add(proxy: string, end: (reason: string) => void): { forget: () => void; budget: DatagramBudget } {
    let flows = this.byProxy.get(proxy);
    if (!flows) {
      flows = { ends: new Set(), budget: proxyDatagramBudget() };
      this.byProxy.set(proxy, flows);
    }
    flows.ends.add(end);
    const forget = () => {
      const current = this.byProxy.get(proxy);
      if (current?.ends.delete(end) && current.ends.size === 0) this.byProxy.delete(proxy);
    };
    return { forget, budget: flows.budget };
  }

  /** Ends every open flow of `proxy` as the idle timeout does: FIN on its stream, answered by the server's. */
  endAll(proxy: string, reason: string): void {
    for (const end of [...(this.byProxy.get(proxy)?.ends ?? [])]) end(reason);
  }
}

export interface UdpFlowCounts {
  datagramsIn: number;
  datagramsOut: number;
  bytesIn: number;
  bytesOut: number;
  dropped: number;
  /** Of `dropped`: over the proxy's bandwidth_limit. */
  droppedOverLimit: number;
  /** Of `dropped`: towards the server while the tunnel's link seemed stopped (DatagramWriter's linkStopped). */
  droppedLinkStopped: number;
}

/**
 * Serves one UDP flow stream (its header already read). Resolves when the flow is over. With `budgets` (the
 * proxy's bandwidth_limit, shared by its flows), a datagram the budget cannot pay for is dropped, not
 * delayed: held back, it would come late to a game or a call, and a sender faster than the limit would only
 * queue more.
 */
export function serveUdpFlow(
  stream: Stream,
  header: StreamHeader,
  proxy: ProxyConfig,
  logger: Logger,
  failures: LocalFailureLog,
  openFlows: OpenUdpFlows,
  budgets?: BandwidthBudgets,
): Promise<UdpFlowCounts> {
  const target = proxy.local;
  // Refused by the config's checks: a udp proxy's local is host:port.
  if (isForwardProxyLocal(target) || isDirectoryLocal(target) || isUnixSocketAddress(target))
    throw new Error(`udp proxy ${proxy.name}: its local is not host:port`);
  const family = isIPv6(target.host) ? 'udp6' : 'udp4';
  const local = formatHostPort(target.host, target.port);
  const remoteAddr = formatPeerAddress(header.remote_addr, header.remote_port);
  const idleMs = header.udp_idle_timeout_ms ?? proxy.udpIdleTimeout ?? DEFAULT_UDP_IDLE_TIMEOUT_MS;
  const socket: UdpSocket = createSocket(family);
  const decoder = new DatagramDecoder({ maxDatagramBytes: MAX_UDP_PAYLOAD[family] });
  const counts: UdpFlowCounts = {
    datagramsIn: 0,
    datagramsOut: 0,
    bytesIn: 0,
    bytesOut: 0,
    dropped: 0,
    droppedOverLimit: 0,
    droppedLinkStopped: 0,
  };
  const overLimit = (budget: 'in' | 'out', datagram: Buffer): boolean => {
    if (budgets === undefined || budgets[budget].trySpend(datagram.length)) return false;
    counts.dropped++;
    counts.droppedOverLimit++;
    return true;
  };
  const started = performance.now();
  let lastActivity = started;
  let connected = false;
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let reason: string | undefined;
  let socketClosed = false;
  let timer: NodeJS.Timeout | undefined;
  let unreachableLogged = false;

  return new Promise((resolve) => {
    const closeSocket = () => {
      if (socketClosed) return;
      socketClosed = true;
      socket.close();
    };
    const end = (why: string) => {
      reason ??= why;
      clearTimeout(timer);
      closeSocket();
      if (!stream.destroyed && !stream.writableEnded) {
        stream.end();
        // The server answers our FIN with its own; a stream it never finishes is reset.
        const grace = setTimeout(() => stream.destroy(), FLOW_CLOSE_GRACE_MS);
        grace.unref();
        stream.once('close', () => clearTimeout(grace));
      }
    };
    const { forget, budget } = openFlows.add(proxy.name, end);
    // The proxy's flows share what they may queue for a slow tunnel (a writer gives its share back as its
    // stream closes).
    const writer = new DatagramWriter(stream, { budget, linkStopped: udpLinkStopped(stream.session) });
    const arm = (ms: number) => {
      timer = setTimeout(() => {
        const idle = performance.now() - lastActivity;
        if (idle >= idleMs) end('idle timeout');
        else arm(idleMs - idle);
      }, ms);
      timer.unref();
    };
    const sendLocal = (datagram: Buffer) => {
      if (socketClosed || socket.getSendQueueSize() > MAX_SEND_QUEUE_BYTES) {
        counts.dropped++;
        return;
      }
      if (overLimit('in', datagram)) return;
      counts.datagramsIn++;
      counts.bytesIn += datagram.length;
      socket.send(datagram, (err?: NodeJS.ErrnoException | null) => {
        if (!err) return;
        // This datagram was not sent (an earlier one's ICMP refusal fails the next send): dropped, not in.
        counts.datagramsIn--;
        counts.bytesIn -= datagram.length;
        if (!unreachable(err)) counts.dropped++;
      });
    };
    // An ICMP error for an earlier datagram (UNREACHABLE): counted as a drop, and said once per flow, like a
    // refused tcp connect once per visitor, or a dead DNS service would only be a count. Ending the flow
    // instead would open one, and write a line, per datagram of a sender that goes on. False for others.
    const unreachable = (err: NodeJS.ErrnoException): boolean => {
      const why = UNREACHABLE.get(err.code);
      if (why === undefined) return false;
      counts.dropped++;
      if (unreachableLogged) return true;
      unreachableLogged = true;
      const reason = `${err.code} (${why}: datagrams are dropped, the flow carries on)`;
      failures.failed({ proxy: proxy.name, conn: header.conn, remote_addr: remoteAddr, local, reason }, true);
      return true;
    };

    // The flow has no socket to the service: its datagrams are dropped, and it ends. One line per flow, and a
    // flow per sender, so within the proxy's budget: a name that does not resolve, or a client out of file
    // descriptors, would log a line per sender.
    const connectFailed = (err: NodeJS.ErrnoException) => {
      counts.dropped += pending.length;
      pending = [];
      pendingBytes = 0;
      failures.failed(
        { proxy: proxy.name, conn: header.conn, remote_addr: remoteAddr, local, reason: err.message },
        true,
      );
      end(`local connect: ${err.code ?? err.message}`);
    };

    socket.on('error', (err: NodeJS.ErrnoException) => {
      if (unreachable(err)) return;
      // Before the connect, the bind it starts with failed (EMFILE): the connect's callback is never called.
      if (!connected) {
        connectFailed(err);
        return;
      }
      logger.warn({ proxy: proxy.name, conn: header.conn, local, reason: err.message }, 'udp local error');
      end(`local socket: ${err.code ?? err.message}`);
    });
    socket.on('message', (msg) => {
      lastActivity = performance.now();
      if (overLimit('out', msg)) return;
      const result = writer.write(msg);
      if (result === 'sent') {
        counts.datagramsOut++;
        counts.bytesOut += msg.length;
        return;
      }
      counts.dropped++;
      if (result === 'dropped-link-stopped') counts.droppedLinkStopped++;
    });
    // With a callback, a failed connect (the name does not resolve, the address is refused) comes here,
    // not as 'error'.
    socket.connect(target.port, target.host, (err?: NodeJS.ErrnoException) => {
      if (err) {
        connectFailed(err);
        return;
      }
      const queued = pending;
      pending = [];
      pendingBytes = 0;
      connected = true;
      for (const datagram of queued) sendLocal(datagram);
    });

    stream.on('data', (chunk: Buffer) => {
      const before = decoder.stats.droppedOversize;
      const datagrams = decoder.push(chunk);
      counts.dropped += decoder.stats.droppedOversize - before;
      if (datagrams.length > 0) lastActivity = performance.now();
      for (const datagram of datagrams) {
        if (connected) sendLocal(datagram);
        else if (
          !socketClosed &&
          pending.length < MAX_PENDING_DATAGRAMS &&
          pendingBytes + datagram.length <= MAX_PENDING_BYTES
        ) {
          pending.push(Buffer.from(datagram));
          pendingBytes += datagram.length;
        } else counts.dropped++;
      }
    });
    stream.on('end', () => end('server ended the flow'));
    stream.on('error', (err: NodeJS.ErrnoException) => {
      reason ??= err.code === 'ERR_STREAM_RESET' ? 'reset' : err.message;
    });
    stream.on('close', () => {
      forget();
      clearTimeout(timer);
      closeSocket();
      if (!decoder.end()) counts.dropped++;
      logger.info(
        {
          proxy: proxy.name,
          conn: header.conn,
          remote_addr: remoteAddr,
          // A private proxy's flow: the client that visits it.
          ...(header.visitor === undefined ? {} : { visitor: header.visitor }),
          local,
          datagrams_in: counts.datagramsIn,
          datagrams_out: counts.datagramsOut,
          bytes_in: counts.bytesIn,
          bytes_out: counts.bytesOut,
          dropped: counts.dropped,
          ...(budgets === undefined ? {} : { dropped_over_limit: counts.droppedOverLimit }),
          dropped_link_stopped: counts.droppedLinkStopped,
          ms: Math.round(performance.now() - started),
          reason: reason ?? 'closed',
        },
        'udp flow closed',
      );
      resolve(counts);
    });
    arm(idleMs);
  });
}
