// The public side of a udp proxy: one UDP socket on proxy_bind:remote_port (or the client's remote_bind).
// Each remote address:port is a flow carried on its own tunnel stream (header first, then u16-framed
// datagrams both ways); replies from the stream go back to that flow's sender. Lossy like UDP: what cannot be carried is dropped and counted.
import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { Session, Stream } from '@porthole/mux';
import {
  type DatagramBudget,
  DatagramDecoder,
  DatagramWriter,
  formatHostPort,
  formatPeerAddress,
  LimitWarning,
  type Logger,
  type ProxySpec,
  proxyDatagramBudget,
  udpLinkStopped,
  writeStreamHeader,
} from '@porthole/protocol';
import type { ClientBandwidth } from './client-bandwidth.js';
import type { Exchange, ProxyTraffic } from './proxy-traffic.js';
import { RoundRobin } from './round-robin.js';

/** Largest UDP payload per family (what a datagram from the tunnel may be and still be sent). */
const MAX_UDP_PAYLOAD = { udp4: 65_507, udp6: 65_527 } as const;
/**
 * The proxy socket's receive buffer (SO_RCVBUF, the kernel caps it at net.core.rmem_max). The default
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

/** Datagram counts for /metrics; flows and bytes are counted with the proxy's traffic (ProxyTraffic). */
export interface UdpProxyStats {
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
  /** Datagrams that could not be sent (socket send queue full, send error, flow closing), or that came from source port 0 (no one to answer). */
  droppedSend: number;
  /** Streams that ended inside a datagram. */
  droppedTruncated: number;
  /** Either way, over the client's bandwidth limit (its token's, or the server's client_bandwidth_limit). */
  droppedOverLimit: number;
}

export interface UdpProxyListenerOptions {
  client: string;
  proxy: ProxySpec & { remote_port: number };
  bindHost: string;
  session: Session;
  logger: Logger;
  /** Read when a flow starts (and told to the client in its header), so a reload applies to new flows. */
  idleTimeoutMs: () => number;
  /** Read per new sender, so a reload applies at once. */
  maxFlows: () => number;
  /** Ids for log lines, shared with the tcp connections (the ConnectionTracker's counter). */
  nextId: () => number;
  /** Counts each flow with the proxy's traffic, as a connection. */
  traffic: ProxyTraffic;
  /** The client's cap, which its flows share with its other connections. */
  bandwidth?: ClientBandwidth;
  /** The first target as an object of the caller's (a group member leaves by it); else made of the above. */
  target?: UdpTarget;
}

/** Where a udp proxy's flows go: one proxy of one client (a member, when the port is a group's). */
export interface UdpTarget {
  client: string;
  proxy: ProxySpec & { remote_port: number };
  session: Session;
  idleTimeoutMs: () => number;
  maxFlows: () => number;
  /** Its flows open now, against maxFlows. */
  flows: number;
  /** Its client's cap: a datagram it cannot pay for is dropped, not delayed (it would come late). */
  bandwidth?: ClientBandwidth;
}

interface Flow {
  key: string;
  /** The proxy (of a group, the member) whose stream carries it. */
  target: UdpTarget;
  conn: number;
  address: string;
  port: number;
  stream: Stream;
  writer: DatagramWriter;
  decoder: DatagramDecoder;
  startedAt: number;
  /** This flow's idle timeout, as its stream header told the client. */
  idleMs: number;
  lastActivity: number;
  timer: NodeJS.Timeout | undefined;
  datagramsIn: number;
  datagramsOut: number;
  /** Payload bytes each way, read live by the admin API. */
  counts: Exchange;
  dropped: number;
  reason: string | undefined;
}

function describeBindError(err: NodeJS.ErrnoException, address: string): string {
  if (err.code === 'EADDRINUSE') return `udp address ${address} is already in use on the server`;
  if (err.code === 'EACCES') return `the server may not bind udp ${address} (permission denied)`;
  if (err.code === 'EADDRNOTAVAIL') return `udp address ${address} is not available on the server`;
  return `cannot bind udp ${address}: ${err.message}`;
}

/** Why `flow` may give its place to a new sender at max_flows `now`; undefined while it may not. */
function evictionReason(flow: Flow, now: number): string | undefined {
  const silentMs = now - flow.lastActivity;
  if (silentMs >= EVICTABLE_IDLE_MS) return 'silent for a second';
  if (silentMs >= ANSWERED_QUERY_IDLE_MS && flow.datagramsIn === 1 && flow.datagramsOut > 0)
    return 'one query answered';
  return undefined;
}

export class UdpProxyListener {
  readonly address: string;
  readonly stats: UdpProxyStats = {
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
  private readonly socket: UdpSocket;
  private readonly family: 'udp4' | 'udp6';
  private readonly flows = new Map<string, Flow>();
  /** What this proxy's flows have queued towards a slow client, together. */
  private readonly queueBudget: DatagramBudget = proxyDatagramBudget();
  private closed = false;
  private readonly flowLimitWarning: LimitWarning;
  private readonly targets = new RoundRobin<UdpTarget>();
  /** The target made of the options, the one respec() changes (a group's members change their own). */
  private readonly own: UdpTarget;

  constructor(private readonly opts: UdpProxyListenerOptions) {
    this.own = opts.target ?? {
      client: opts.client,
      proxy: opts.proxy,
      session: opts.session,
      idleTimeoutMs: opts.idleTimeoutMs,
      maxFlows: opts.maxFlows,
      flows: 0,
      ...(opts.bandwidth === undefined ? {} : { bandwidth: opts.bandwidth }),
    };
    this.targets.add(this.own);
    this.address = formatHostPort(opts.bindHost, opts.proxy.remote_port);
    this.family = isIPv6(opts.bindHost) ? 'udp6' : 'udp4';
    this.socket = createSocket({ type: this.family, reuseAddr: false, recvBufferSize: RECEIVE_BUFFER_BYTES });
    this.flowLimitWarning = new LimitWarning((dropped) =>
      opts.logger.warn(
        {
          client: opts.client,
          proxy: opts.proxy.name,
          max_flows: this.targets.list().reduce((sum, t) => sum + t.maxFlows(), 0),
          dropped,
          dropped_total: this.stats.droppedFlowLimit,
        },
        'udp flow limit reached: datagrams from new senders dropped',
      ),
    );
  }

  get activeFlows(): number {
    return this.flows.size;
  }

  /** Binds the port; rejects with an Error whose message is the reason to send to the client (and the errno `code`). */
  listen(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        this.closed = true;
        this.socket.close();
        // The code stays for a caller that tries another port (port-picker.ts).
        reject(Object.assign(new Error(describeBindError(err, this.address)), { code: err.code }));
      };
      this.socket.once('error', onError);
      this.socket.bind({ port: this.opts.proxy.remote_port, address: this.opts.bindHost }, () => {
        this.socket.off('error', onError);
        this.socket.on('error', (err) =>
          this.opts.logger.warn(
            { client: this.opts.client, proxy: this.opts.proxy.name, reason: err.message },
            'udp socket error',
          ),
        );
        this.socket.on('message', (msg, rinfo) => this.onDatagram(msg, rinfo));
        resolve();
      });
    });
  }

  /** The port actually bound. */
  get boundPort(): number {
    try {
      return this.socket.address().port;
    } catch {
      return this.opts.proxy.remote_port;
    }
  }

  /**
   * The proxy registered again with a changed spec on this same port (max_flows, udp_idle_timeout...): the
   * socket stays bound and the flows carry on. New flows get the new idle timeout (an open flow keeps the one
   * its header told the client); a lowered max_flows ends the flows past it at once, the least recently
   * active first: those are the ones most likely done, and a sender that speaks again gets a new flow if
   * there is room then.
   */
  respec(
    proxy: ProxySpec & { remote_port: number },
    limits: Pick<UdpProxyListenerOptions, 'idleTimeoutMs' | 'maxFlows'>,
    target: UdpTarget = this.own,
  ): void {
    target.proxy = proxy;
    target.idleTimeoutMs = limits.idleTimeoutMs;
    target.maxFlows = limits.maxFlows;
    const excess = target.flows - target.maxFlows();
    if (excess <= 0) return;
    const quietest = [...this.flows.values()]
      .filter((flow) => flow.target === target)
      .sort((a, b) => a.lastActivity - b.lastActivity)
      .slice(0, excess);
    for (const flow of quietest)
      this.endFlow(flow, `max_flows lowered to ${target.maxFlows()} by a new registration`);
  }

  /** Another proxy of the group takes its turns from now on. */
  join(target: UdpTarget): void {
    this.targets.add(target);
  }

  /** A proxy leaves the group (its open flows carry on); true when none is left. */
  leave(target: UdpTarget): boolean {
    return this.targets.remove(target);
  }

  /** The targets taking turns, for status. */
  get members(): readonly UdpTarget[] {
    return this.targets.list();
  }

  /** Frees the port at once and ends every flow. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.socket.close();
    for (const flow of [...this.flows.values()]) this.endFlow(flow, 'proxy closed');
    this.flowLimitWarning.flush();
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
      // The next member in turn with room under its max_flows; at the limit, one flow silent enough gives
      // way (see evictIdleFlow), and its member takes the new sender.
      const hasRoom = (t: UdpTarget) => t.flows < t.maxFlows();
      const target =
        this.targets.pick(hasRoom) ?? (this.evictIdleFlow() ? this.targets.pick(hasRoom) : undefined);
      if (!target) {
        this.stats.droppedFlowLimit++;
        this.flowLimitWarning.count();
        return;
      }
      flow = this.openFlow(key, rinfo, target);
    }
    flow.lastActivity = performance.now();
    if (this.overLimit(flow, 'in', msg.length)) return;
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
        this.endFlow(flow, `max_flows reached: ${why}, it made room for a new sender`);
        return true;
      }
      if (++probes >= EVICTION_PROBES) return false;
      this.flows.delete(flow.key);
      this.flows.set(flow.key, flow);
    }
    return false;
  }

  private openFlow(key: string, rinfo: RemoteInfo, target: UdpTarget): Flow {
    const { session, proxy } = target;
    const conn = this.opts.nextId();
    const stream = session.open();
    const now = performance.now();
    const idleMs = target.idleTimeoutMs();
    const flow: Flow = {
      key,
      target,
      conn,
      address: rinfo.address,
      port: rinfo.port,
      stream,
      writer: new DatagramWriter(stream, { budget: this.queueBudget, linkStopped: udpLinkStopped(session) }),
      decoder: new DatagramDecoder({ maxDatagramBytes: MAX_UDP_PAYLOAD[this.family] }),
      startedAt: now,
      idleMs,
      lastActivity: now,
      timer: undefined,
      datagramsIn: 0,
      datagramsOut: 0,
      counts: this.opts.traffic.begin(target.client, proxy.name, conn, key),
      dropped: 0,
      reason: undefined,
    };
    this.flows.set(key, flow);
    target.flows++;
    writeStreamHeader(stream, {
      proxy: proxy.name,
      conn,
      remote_addr: rinfo.address,
      remote_port: rinfo.port,
      public_addr: this.address,
      udp_idle_timeout_ms: idleMs,
    });
    stream.on('data', (chunk: Buffer) => this.onTunnelData(flow, chunk));
    stream.on('end', () => this.endFlow(flow, 'client ended the flow'));
    stream.on('error', (err: NodeJS.ErrnoException) => {
      flow.reason ??= err.code === 'ERR_STREAM_RESET' ? 'reset' : err.message;
    });
    stream.on('close', () => this.onFlowClosed(flow));
    this.armIdleTimer(flow, idleMs);
    return flow;
  }

  private onTunnelData(flow: Flow, chunk: Buffer): void {
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
      if (this.overLimit(flow, 'out', datagram.length)) continue;
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
        // Argument errors throw instead of reaching the callback; one datagram is lost, not the server.
        this.uncountOut(flow, datagram.length);
        flow.dropped++;
        this.stats.droppedSend++;
      }
    }
  }

  /** True (and counted as dropped) when the client's cap cannot pay for a datagram going `direction`. */
  private overLimit(flow: Flow, direction: 'in' | 'out', bytes: number): boolean {
    const budgets = flow.target.bandwidth?.budgets();
    if (budgets === undefined || budgets[direction].trySpend(bytes)) return false;
    flow.dropped++;
    this.stats.droppedOverLimit++;
    return true;
  }

  private uncountOut(flow: Flow, bytes: number): void {
    flow.datagramsOut--;
    flow.counts.bytesOut -= bytes;
    this.stats.datagramsOut--;
  }

  private armIdleTimer(flow: Flow, ms: number): void {
    flow.timer = setTimeout(() => {
      const idle = performance.now() - flow.lastActivity;
      if (idle >= flow.idleMs) this.endFlow(flow, 'idle timeout');
      else this.armIdleTimer(flow, flow.idleMs - idle);
    }, ms);
    flow.timer.unref();
  }

  /** Ends a flow: FIN on its stream (the client closes its side), a reset if the peer lingers. */
  private endFlow(flow: Flow, reason: string): void {
    if (!this.forget(flow)) return;
    flow.reason ??= reason;
    if (!flow.stream.destroyed) {
      flow.stream.end();
      const grace = setTimeout(() => flow.stream.destroy(), FLOW_CLOSE_GRACE_MS);
      grace.unref();
      flow.stream.once('close', () => clearTimeout(grace));
    }
  }

  /** Takes `flow` out of the table (its place is free for a new sender); false if it was not there. */
  private forget(flow: Flow): boolean {
    if (this.flows.get(flow.key) !== flow) return false;
    this.flows.delete(flow.key);
    flow.target.flows--;
    clearTimeout(flow.timer);
    return true;
  }

  private onFlowClosed(flow: Flow): void {
    this.forget(flow);
    if (!flow.decoder.end()) {
      flow.dropped++;
      this.stats.droppedTruncated++;
    }
    this.opts.traffic.end(flow.counts);
    this.opts.logger.info(
      {
        client: flow.target.client,
        proxy: flow.target.proxy.name,
        conn: flow.conn,
        remote_addr: flow.key,
        datagrams_in: flow.datagramsIn,
        datagrams_out: flow.datagramsOut,
        bytes_in: flow.counts.bytesIn,
        bytes_out: flow.counts.bytesOut,
        dropped: flow.dropped,
        ms: Math.round(performance.now() - flow.startedAt),
        reason: flow.reason ?? 'closed',
      },
      'udp flow closed',
    );
  }
}
