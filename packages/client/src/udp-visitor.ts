// A udp [[visitors]] table at work: a UDP socket on `bind` whose every sender is a flow, as on the server's
// public udp port (UdpFlowTable): each flow is one visit, a stream carrying u16-framed datagrams both ways
// to the owner's private udp proxy, whose end serves it as any udp flow (udp-forwarder.ts).
import { isIPv6 } from 'node:net';
import type { Stream } from '@porthole/mux';
import { type UdpFlow, type UdpFlowStart, UdpFlowTable, udpFlowClosedFields } from '@porthole/protocol';
import { DEFAULT_UDP_IDLE_TIMEOUT_MS } from './udp-forwarder.js';
import { DEFAULT_VISITOR_MAX_FLOWS, describeBind, type VisitorConfig } from './visitor-config.js';
import { Visitor, type VisitorHost, type VisitorState } from './visitor-listener.js';

/** What a udp visit let through without an idle timeout in its answer means. */
const OLDER_SERVER =
  'the server is older than udp visitors: it took the visit for a tcp one (its first datagrams may have reached the service as bytes)';

/**
 * After a refusal, datagrams from senders without a flow are dropped for this long instead of each asking
 * again: every reason to refuse (no grant, the other type, the service's max_flows, no session) holds for
 * the visitor, not for one sender, and a game sending 60 datagrams a second would have the server open and
 * refuse 60 visits a second.
 */
const REFUSED_HOLD_MS = 1000;

export class UdpVisitor extends Visitor {
  private readonly table: UdpFlowTable<UdpVisitor>;
  /** The streams of flows the server let through; the others' refusals are their 'visit refused' lines. */
  private readonly answered = new WeakSet<Stream>();
  private refusedUntil = 0;

  constructor(config: VisitorConfig, host: VisitorHost) {
    super(config, host);
    this.table = new UdpFlowTable<UdpVisitor>({
      family: isIPv6(config.bind.host) ? 'udp6' : 'udp4',
      peerEnded: 'the owner ended the flow',
      place: () => (this.table.size < this.maxFlows ? this : undefined),
      start: (_visitor, _sender, key) => this.startFlow(key),
      released: () => {},
      closed: (flow) => this.onFlowClosed(flow),
      flowLimitReached: (dropped) =>
        host.logger.warn(
          {
            visitor: this.config.name,
            service: this.config.service,
            max_flows: this.maxFlows,
            dropped,
            dropped_total: this.table.stats.droppedFlowLimit,
          },
          'udp flow limit reached: datagrams from new senders dropped',
        ),
      socketError: (err) =>
        host.logger.error({ visitor: this.config.name, reason: err.message }, 'visitor listener error'),
    });
  }

  private get maxFlows(): number {
    return this.config.maxFlows ?? DEFAULT_VISITOR_MAX_FLOWS;
  }

  /** A lowered max_flows ends the flows past it, the least recently active first (as the server does). */
  override retarget(config: VisitorConfig): void {
    super.retarget(config);
    this.refusedUntil = 0;
    const quietest = this.table.list().sort((a, b) => a.lastActivity - b.lastActivity);
    for (const flow of quietest.slice(0, Math.max(0, quietest.length - this.maxFlows)))
      this.table.end(flow, `max_flows lowered to ${this.maxFlows} by a reload`);
  }

  protected bind(): Promise<void> {
    return this.table.bind(this.config.bind.host, this.config.bind.port);
  }

  /** Frees the port; its flows end with it (the socket they answer from is gone). */
  close(): Promise<void> {
    this.listening = false;
    this.table.close('visitor closed');
    return new Promise((resolve) => setImmediate(resolve));
  }

  override state(): VisitorState {
    return { ...super.state(), openFlows: this.table.size };
  }

  /**
   * A new sender: a visit stream, its first datagrams written behind the request at once (the server passes
   * them on once it has let the visit through, or drops them), carried back once the answer is read.
   */
  private startFlow(key: string): UdpFlowStart | undefined {
    if (performance.now() < this.refusedUntil) return undefined;
    let opened: Stream | undefined;
    const visit = this.visit(key, (stream) => {
      opened = stream;
    });
    // visit() opens the stream before its first await, or returns the reason there is no session.
    if (!opened) return undefined;
    return {
      stream: opened,
      idleMs: DEFAULT_UDP_IDLE_TIMEOUT_MS,
      counts: { bytesIn: 0, bytesOut: 0 },
      ready: visit.then((result) => {
        if (typeof result === 'string') return false;
        const { udp_idle_timeout_ms: idleMs, conn } = result.answer;
        // A server older than udp visitors reads the request as a tcp visit's, and says no idle timeout.
        if (idleMs === undefined) {
          result.stream.destroy();
          this.refused(key, OLDER_SERVER);
          return false;
        }
        this.answered.add(result.stream);
        return { idleMs, ...(conn === undefined ? {} : { conn }) };
      }),
    };
  }

  protected override refused(remoteAddr: string, reason: string): string {
    this.refusedUntil = performance.now() + REFUSED_HOLD_MS;
    return super.refused(remoteAddr, reason);
  }

  private onFlowClosed(flow: UdpFlow<UdpVisitor>): void {
    // A refused visit is its 'visit refused' line (one per 10 s for a sender that goes on): no line of its own.
    if (!this.answered.has(flow.stream)) return;
    this.host.logger.info(
      {
        visitor: this.config.name,
        service: this.config.service,
        bind: describeBind(this.config),
        ...udpFlowClosedFields(flow),
      },
      'udp flow closed',
    );
  }
}
