// A UDP socket whose every sender (address:port) is a flow carried on a tunnel stream of its own: u16-framed
// datagrams both ways, replies from the stream sent back to that sender. The server's public udp port and a
// client's udp visitor are both one. Lossy like UDP: what cannot be carried is dropped and counted.
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import type { Stream } from '@porthole/mux';
import { formatPeerAddress } from './host-port.js';
import { LimitWarning } from './limit-warning.js';
import {
  type DatagramBudget,
  DatagramDecoder,
  DatagramWriter,
  proxyDatagramBudget,
} from './udp-datagram-codec.js';
import { udpLinkStopped } from './udp-link-stopped.js';

/** Largest UDP payload per family (what a datagram from the tunnel may be and still be sent). */
const MAX_UDP_PAYLOAD = { udp4: 65_507, udp6: 65_527 } as const;
/**
 * The socket's receive buffer (SO_RCVBUF, the kernel caps it at net.core.rmem_max). The default
 * (rmem_default, 208 KiB) holds some 250 small datagrams, a 20 ms pause of the event loop at 12k datagrams/s:
 * 256 game players starting at once lost 3-5 % of their first second to it (the kernel's RcvbufErrors).
 */
const RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024;
/** Datagrams are dropped while this many bytes wait in the socket's send queue. */
const MAX_SEND_QUEUE_BYTES = 1024 * 1024;
/** After an idle FIN, a stream the peer never finishes is reset this much later. */
const FLOW_CLOSE_GRACE_MS = 5_000;
/** At max_flows, a flow silent this long gives its place to a new sender. */
const EVICTABLE_IDLE_MS = 1_000;
/**
 * At max_flows, a flow that was one question and its answer (one datagram in, one or more out: a DNS or NTP
 * query) gives its place once silent this long. A resolver asks each query from a port of its own, and with
 * only the 1 s rule a DNS proxy answered about max_flows queries a second and dropped the rest (2,000 q/s
 * at the default 1024: 46% unanswered); a game or VPN sender talks more than once and keeps the 1 s rule.
 */
const ANSWERED_QUERY_IDLE_MS = 100;
/** Flows looked at (oldest first) for one to give way, per datagram from a new sender at max_flows. */
const EVICTION_PROBES = 8;

/** Datagram counts for /metrics and status; flows and bytes are counted by the table's owner. */
export interface UdpFlowStats {
  datagramsIn: number;
  datagramsOut: number;
  /** New flows refused because max_flows were open and none of them was silent enough to give way. */
  droppedFlowLimit: number;
  /** Flows ended at max_flows for a new sender (silent for 1 s, or for 100 ms after one answered query). */
  evictedIdle: number;
  /** Datagrams from the tunnel longer than a UDP payload can be. */
  droppedOversize: number;
  /** Datagrams towards the tunnel dropped because the stream's reader is behind. */
  droppedBackpressure: number;
  /** Datagrams towards the tunnel dropped while its link seemed stopped (they would have arrived stale). */
  droppedLinkStopped: number;
  /**
   * Datagrams that could not be sent (socket send queue full, send error, flow closing, no flow could start:
   * a visitor not connected), or that came from source port 0 (no one to answer).
   */
  droppedSend: number;
  /** Streams that ended inside a datagram. */
  droppedTruncated: number;
  /** Either way, refused by the owner's admit() (the server: over the client's bandwidth cap). */
  droppedOverLimit: number;
}

export function emptyUdpFlowStats(): UdpFlowStats {
  return {
    datagramsIn: 0,
    datagramsOut: 0,
    droppedFlowLimit: 0,
    evictedIdle: 0,
    droppedOversize: 0,
    droppedBackpressure: 0,
    droppedLinkStopped: 0,
    droppedSend: 0,
    droppedTruncated: 0,
    droppedOverLimit: 0,
  };
}

/** Payload bytes a flow moved each way. */
export interface UdpFlowCounts {
  bytesIn: number;
  bytesOut: number;
}

/**
 * One sender's flow; `target` is the owner's (the proxy, or group member, or visitor it belongs to), `counts`
 * an object of the owner's too (the server's admin API reads it live).
 */
export interface UdpFlow<T, C extends UdpFlowCounts = UdpFlowCounts> {
  /** The sender, "203.0.113.5:41234" (an IPv4 sender as IPv4): the flow's remote_addr in logs. */
  readonly key: string;
  readonly target: T;
  /** Its id in log lines; a visitor's flow has the owner's, once the server has answered. */
  conn: number | undefined;
  readonly address: string;
  readonly port: number;
  readonly stream: Stream;
  readonly writer: DatagramWriter;
  readonly decoder: DatagramDecoder;
  readonly startedAt: number;
  /** This flow's idle timeout (the one its peer was told). */
  idleMs: number;
  lastActivity: number;
  timer: NodeJS.Timeout | undefined;
  datagramsIn: number;
  datagramsOut: number;
  readonly counts: C;
  dropped: number;
  reason: string | undefined;
}

/** What a flow's `udp flow closed` line says of it, alike on both ends of a tunnel. */
export function udpFlowClosedFields(flow: UdpFlow<unknown>): Record<string, unknown> {
  return {
    conn: flow.conn,
    remote_addr: flow.key,
    datagrams_in: flow.datagramsIn,
    datagrams_out: flow.datagramsOut,
    bytes_in: flow.counts.bytesIn,
    bytes_out: flow.counts.bytesOut,
    dropped: flow.dropped,
    ms: Math.round(performance.now() - flow.startedAt),
    reason: flow.reason ?? 'closed',
  };
}

/** How a new sender's flow starts: its stream (its header or request already written) and what it counts. */
export interface UdpFlowStart<C extends UdpFlowCounts = UdpFlowCounts> {
  stream: Stream;
  conn?: number;
  idleMs: number;
  counts: C;
  /**
   * Resolves once the stream carries datagrams back (a visit's answer read), with the flow's idle timeout and
   * id if that told them; with false when it never will (the visit was refused: the flow ends). Absent: at
   * once.
   */
  ready?: Promise<{ idleMs?: number; conn?: number } | false>;
}

export interface UdpFlowTableOptions<T, C extends UdpFlowCounts> {
  family: 'udp4' | 'udp6';
  /** The reason a flow has when its peer ended the stream ("client ended the flow"). */
  peerEnded: string;
  /** A target with room for one more flow, or undefined (the table then tries to make room once). */
  place(): T | undefined;
  /** Undefined: no flow can start now (a visitor's session is down); the datagram is dropped. */
  start(target: T, sender: RemoteInfo, key: string): UdpFlowStart<C> | undefined;
  /** A flow left the table (its place is free again). */
  released(flow: UdpFlow<T, C>): void;
  /** A flow's stream closed: the flow is over; log it. */
  closed(flow: UdpFlow<T, C>): void;
  /** New senders turned away at max_flows, at most one call per 10 s. */
  flowLimitReached(dropped: number): void;
  socketError(err: Error): void;
  /**
   * Whether a datagram of `bytes` may go `direction` ('in': towards the tunnel) on `flow`; one it refuses is
   * dropped, not delayed (it would come late), and counted in droppedOverLimit. Absent: every one may.
   */
  admit?(flow: UdpFlow<T, C>, direction: 'in' | 'out', bytes: number): boolean;
}

/** Why `flow` may give its place to a new sender at max_flows `now`; undefined while it may not. */
function evictionReason(flow: UdpFlow<unknown>, now: number): string | undefined {
  const silentMs = now - flow.lastActivity;
  if (silentMs >= EVICTABLE_IDLE_MS) return 'silent for a second';
  if (silentMs >= ANSWERED_QUERY_IDLE_MS && flow.datagramsIn === 1 && flow.datagramsOut > 0)
    return 'one query answered';
  return undefined;
}

export class UdpFlowTable<T, C extends UdpFlowCounts = UdpFlowCounts> {
  readonly stats: UdpFlowStats = emptyUdpFlowStats();
  private readonly socket: UdpSocket;
  private readonly flows = new Map<string, UdpFlow<T, C>>();
  /** What the flows have queued towards a slow tunnel, together. */
  private readonly queueBudget: DatagramBudget = proxyDatagramBudget();
  private readonly flowLimitWarning: LimitWarning;
  private closed = false;

  constructor(private readonly opts: UdpFlowTableOptions<T, C>) {
    this.socket = createSocket({ type: opts.family, reuseAddr: false, recvBufferSize: RECEIVE_BUFFER_BYTES });
    this.flowLimitWarning = new LimitWarning((dropped) => opts.flowLimitReached(dropped));
  }

  get size(): number {
    return this.flows.size;
  }

  /** Binds host:port; rejects with the socket's error (its errno `code`), the socket then closed. */
  bind(host: string, port: number): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        this.closed = true;
        this.socket.close();
        reject(err);
      };
      this.socket.once('error', onError);
      this.socket.bind({ port, address: host }, () => {
        this.socket.off('error', onError);
        this.socket.on('error', (err) => this.opts.socketError(err));
        this.socket.on('message', (msg, rinfo) => this.onDatagram(msg, rinfo));
        resolve();
      });
    });
  }

  /** The port bound, or undefined before bind (or after a failed one). */
  boundPort(): number | undefined {
    try {
      return this.socket.address().port;
    } catch {
      return undefined;
    }
  }

  /** The open flows, oldest first. */
  list(): UdpFlow<T, C>[] {
    return [...this.flows.values()];
  }

  /** Frees the port at once and ends every flow. */
  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.close();
    for (const flow of this.list()) this.end(flow, reason);
    this.flowLimitWarning.flush();
  }

  /** Ends a flow: FIN on its stream (the peer closes its side), a reset if the peer lingers. */
  end(flow: UdpFlow<T, C>, reason: string): void {
    if (!this.forget(flow)) return;
    flow.reason ??= reason;
    if (!flow.stream.destroyed) {
      flow.stream.end();
      const grace = setTimeout(() => flow.stream.destroy(), FLOW_CLOSE_GRACE_MS);
      grace.unref();
      flow.stream.once('close', () => clearTimeout(grace));
    }
  }

  private onDatagram(msg: Buffer, rinfo: RemoteInfo): void {
    if (this.closed) return;
    // Source port 0 is not a sender anyone can answer (send() to port 0 throws): a spoofed packet.
    if (rinfo.port === 0) {
      this.stats.droppedSend++;
      return;
    }
    // Also the flow's remote_addr in logs and the admin API: an IPv4 sender is written as IPv4 there.
    const key = formatPeerAddress(rinfo.address, rinfo.port);
    let flow = this.flows.get(key);
    if (!flow) {
      // At the limit, one flow silent enough gives way (see evictIdleFlow).
      const target = this.opts.place() ?? (this.evictIdleFlow() ? this.opts.place() : undefined);
      if (target === undefined) {
        this.stats.droppedFlowLimit++;
        this.flowLimitWarning.count();
        return;
      }
      const opened = this.open(key, rinfo, target);
      if (!opened) {
        this.stats.droppedSend++;
        return;
      }
      flow = opened;
    }
    flow.lastActivity = performance.now();
    if (!this.admitted(flow, 'in', msg.length)) return;
    const result = flow.writer.write(msg);
    if (result === 'sent') {
      flow.datagramsIn++;
      flow.counts.bytesIn += msg.length;
      this.stats.datagramsIn++;
    } else {
      flow.dropped++;
      if (result === 'dropped-backpressure') this.stats.droppedBackpressure++;
      else if (result === 'dropped-link-stopped') this.stats.droppedLinkStopped++;
      else this.stats.droppedSend++;
    }
  }

  /**
   * At max_flows a new sender takes the place of a flow silent for EVICTABLE_IDLE_MS, or of one that was a
   * single answered query silent for ANSWERED_QUERY_IDLE_MS: a resolver asks each query from a port of its
   * own, and without this a DNS proxy would answer max_flows queries per udp_idle_timeout and drop the rest
   * (with the 1 s rule alone, about max_flows a second). Flows still talking are kept (a burst of new
   * senders does not push out a game's players). A second-chance sweep from the oldest flow: a busy one
   * moves to the back, at most EVICTION_PROBES looked at per new sender, so a full table of busy flows costs
   * little per datagram.
   */
  private evictIdleFlow(): boolean {
    const now = performance.now();
    let probes = 0;
    for (const flow of this.flows.values()) {
      const why = evictionReason(flow, now);
      if (why) {
        this.stats.evictedIdle++;
        this.end(flow, `max_flows reached: ${why}, it made room for a new sender`);
        return true;
      }
      if (++probes >= EVICTION_PROBES) return false;
      this.flows.delete(flow.key);
      this.flows.set(flow.key, flow);
    }
    return false;
  }

  private open(key: string, rinfo: RemoteInfo, target: T): UdpFlow<T, C> | undefined {
    const start = this.opts.start(target, rinfo, key);
    if (!start) return undefined;
    const { stream } = start;
    const now = performance.now();
    const flow: UdpFlow<T, C> = {
      key,
      target,
      conn: start.conn,
      address: rinfo.address,
      port: rinfo.port,
      stream,
      writer: new DatagramWriter(stream, {
        budget: this.queueBudget,
        linkStopped: udpLinkStopped(stream.session),
      }),
      decoder: new DatagramDecoder({ maxDatagramBytes: MAX_UDP_PAYLOAD[this.opts.family] }),
      startedAt: now,
      idleMs: start.idleMs,
      lastActivity: now,
      timer: undefined,
      datagramsIn: 0,
      datagramsOut: 0,
      counts: start.counts,
      dropped: 0,
      reason: undefined,
    };
    this.flows.set(key, flow);
    const carry = () => {
      stream.on('data', (chunk: Buffer) => this.onTunnelData(flow, chunk));
      stream.on('end', () => this.end(flow, this.opts.peerEnded));
    };
    if (start.ready === undefined) carry();
    else
      void start.ready.then((ready) => {
        if (ready === false) return this.end(flow, 'refused');
        if (ready.conn !== undefined) flow.conn = ready.conn;
        if (ready.idleMs !== undefined && this.flows.get(key) === flow) {
          flow.idleMs = ready.idleMs;
          clearTimeout(flow.timer);
          this.armIdleTimer(flow, Math.max(0, flow.idleMs - (performance.now() - flow.lastActivity)));
        }
        carry();
      });
    stream.on('error', (err: NodeJS.ErrnoException) => {
      flow.reason ??= err.code === 'ERR_STREAM_RESET' ? 'reset' : err.message;
    });
    stream.on('close', () => this.onFlowClosed(flow));
    this.armIdleTimer(flow, flow.idleMs);
    return flow;
  }

  private onTunnelData(flow: UdpFlow<T, C>, chunk: Buffer): void {
    const before = flow.decoder.stats.droppedOversize;
    const datagrams = flow.decoder.push(chunk);
    const oversize = flow.decoder.stats.droppedOversize - before;
    if (oversize > 0) {
      flow.dropped += oversize;
      this.stats.droppedOversize += oversize;
    }
    if (datagrams.length === 0) return;
    flow.lastActivity = performance.now();
    for (const datagram of datagrams) {
      if (this.closed || this.socket.getSendQueueSize() > MAX_SEND_QUEUE_BYTES) {
        flow.dropped++;
        this.stats.droppedSend++;
        continue;
      }
      if (!this.admitted(flow, 'out', datagram.length)) continue;
      flow.datagramsOut++;
      flow.counts.bytesOut += datagram.length;
      this.stats.datagramsOut++;
      try {
        this.socket.send(datagram, flow.port, flow.address, (err) => {
          if (!err) return;
          // Not sent after all: dropped, not out.
          this.uncountOut(flow, datagram.length);
          flow.dropped++;
          this.stats.droppedSend++;
        });
      } catch {
        // Argument errors throw instead of reaching the callback; one datagram is lost, not the process.
        this.uncountOut(flow, datagram.length);
        flow.dropped++;
        this.stats.droppedSend++;
      }
    }
  }

  /** False (and counted as dropped) when the owner's admit() refuses a datagram going `direction`. */
  private admitted(flow: UdpFlow<T, C>, direction: 'in' | 'out', bytes: number): boolean {
    if (this.opts.admit === undefined || this.opts.admit(flow, direction, bytes)) return true;
    flow.dropped++;
    this.stats.droppedOverLimit++;
    return false;
  }

  private uncountOut(flow: UdpFlow<T, C>, bytes: number): void {
    flow.datagramsOut--;
    flow.counts.bytesOut -= bytes;
    this.stats.datagramsOut--;
  }

  private armIdleTimer(flow: UdpFlow<T, C>, ms: number): void {
    flow.timer = setTimeout(() => {
      const idle = performance.now() - flow.lastActivity;
      if (idle >= flow.idleMs) this.end(flow, 'idle timeout');
      else this.armIdleTimer(flow, flow.idleMs - idle);
    }, ms);
    flow.timer.unref();
  }

  /** Takes `flow` out of the table (its place is free for a new sender); false if it was not there. */
  private forget(flow: UdpFlow<T, C>): boolean {
    if (this.flows.get(flow.key) !== flow) return false;
    this.flows.delete(flow.key);
    clearTimeout(flow.timer);
    this.opts.released(flow);
    return true;
  }

  private onFlowClosed(flow: UdpFlow<T, C>): void {
    this.forget(flow);
    if (!flow.decoder.end()) {
      flow.dropped++;
      this.stats.droppedTruncated++;
    }
    this.opts.closed(flow);
  }
}
