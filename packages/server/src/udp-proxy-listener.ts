// The public side of a udp proxy: one UDP socket on proxy_bind:remote_port (or the client's remote_bind).
// Each remote address:port is a flow carried on its own tunnel stream (header first, then u16-framed
// datagrams both ways: UdpFlowTable); replies from the stream go back to that flow's sender. Lossy like UDP:
// what cannot be carried is dropped and counted.
import type { RemoteInfo } from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { Session } from '@porthole/mux';
import {
  formatHostPort,
  type Logger,
  type ProxySpec,
  type UdpFlow,
  type UdpFlowStart,
  type UdpFlowStats,
  UdpFlowTable,
  udpFlowClosedFields,
  writeStreamHeader,
} from '@porthole/protocol';
import type { ClientBandwidth } from './client-bandwidth.js';
import type { Exchange, ProxyTraffic } from './proxy-traffic.js';
import { RoundRobin } from './round-robin.js';

/** Datagram counts for /metrics; flows and bytes are counted with the proxy's traffic (ProxyTraffic). */
export type UdpProxyStats = UdpFlowStats;

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

function describeBindError(err: NodeJS.ErrnoException, address: string): string {
  if (err.code === 'EADDRINUSE') return `udp address ${address} is already in use on the server`;
  if (err.code === 'EACCES') return `the server may not bind udp ${address} (permission denied)`;
  if (err.code === 'EADDRNOTAVAIL') return `udp address ${address} is not available on the server`;
  return `cannot bind udp ${address}: ${err.message}`;
}

export class UdpProxyListener {
  readonly address: string;
  private readonly table: UdpFlowTable<UdpTarget, Exchange>;
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
    const log = { client: opts.client, proxy: opts.proxy.name };
    this.table = new UdpFlowTable<UdpTarget, Exchange>({
      family: isIPv6(opts.bindHost) ? 'udp6' : 'udp4',
      peerEnded: 'client ended the flow',
      // The next member in turn with room under its max_flows.
      place: () => this.targets.pick((t) => t.flows < t.maxFlows()),
      start: (target, sender, key) => this.startFlow(target, sender, key),
      released: (flow) => {
        flow.target.flows--;
      },
      closed: (flow) => this.onFlowClosed(flow),
      flowLimitReached: (dropped) =>
        opts.logger.warn(
          {
            ...log,
            max_flows: this.targets.list().reduce((sum, t) => sum + t.maxFlows(), 0),
            dropped,
            dropped_total: this.stats.droppedFlowLimit,
          },
          'udp flow limit reached: datagrams from new senders dropped',
        ),
      socketError: (err) => opts.logger.warn({ ...log, reason: err.message }, 'udp socket error'),
      admit: (flow, direction, bytes) => {
        const budgets = flow.target.bandwidth?.budgets();
        return budgets === undefined || budgets[direction].trySpend(bytes);
      },
    });
  }

  get stats(): Readonly<UdpProxyStats> {
    return this.table.stats;
  }

  get activeFlows(): number {
    return this.table.size;
  }

  /** Binds the port; rejects with an Error whose message is the reason to send to the client (and the errno `code`). */
  async listen(): Promise<void> {
    try {
      await this.table.bind(this.opts.bindHost, this.opts.proxy.remote_port);
    } catch (err) {
      // The code stays for a caller that tries another port (port-picker.ts).
      const code = (err as NodeJS.ErrnoException).code;
      throw Object.assign(new Error(describeBindError(err as NodeJS.ErrnoException, this.address)), { code });
    }
  }

  /** The port actually bound. */
  get boundPort(): number {
    return this.table.boundPort() ?? this.opts.proxy.remote_port;
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
    const quietest = this.table
      .list()
      .filter((flow) => flow.target === target)
      .sort((a, b) => a.lastActivity - b.lastActivity)
      .slice(0, excess);
    for (const flow of quietest)
      this.table.end(flow, `max_flows lowered to ${target.maxFlows()} by a new registration`);
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
    this.table.close('proxy closed');
  }

  private startFlow(target: UdpTarget, sender: RemoteInfo, key: string): UdpFlowStart<Exchange> {
    const { session, proxy } = target;
    const conn = this.opts.nextId();
    const stream = session.open();
    const idleMs = target.idleTimeoutMs();
    target.flows++;
    writeStreamHeader(stream, {
      proxy: proxy.name,
      conn,
      remote_addr: sender.address,
      remote_port: sender.port,
      public_addr: this.address,
      udp_idle_timeout_ms: idleMs,
    });
    return { stream, conn, idleMs, counts: this.opts.traffic.begin(target.client, proxy.name, conn, key) };
  }

  private onFlowClosed(flow: UdpFlow<UdpTarget, Exchange>): void {
    this.opts.traffic.end(flow.counts);
    const { client, proxy } = flow.target;
    this.opts.logger.info({ client, proxy: proxy.name, ...udpFlowClosedFields(flow) }, 'udp flow closed');
  }
}
