import { type ConnectionTracker, type ProcessResources, processResources } from '@porthole/protocol';
import type { ProxyConfig } from './config.js';
import { urlWithoutUserinfo } from './dialer.js';
import { describeProxyLocal } from './proxy-config.js';
import type { OpenUdpFlows } from './udp-forwarder.js';
import { describeBind } from './visitor-config.js';
import type { Visitor } from './visitor-listener.js';

export type ProxyState =
  | { state: 'pending' }
  /**
   * remotePort: a tcp or udp proxy's port on the server (the one it picked for remote_port 0). compression:
   * the server deflates its streams; compressionUnavailable: it asked for that, and why it runs plain.
   */
  | {
      state: 'registered';
      remoteAddr?: string;
      remotePort?: number;
      urls?: string[];
      service?: string;
      compression?: true;
      compressionUnavailable?: string;
    }
  | { state: 'refused'; reason: string }
  | { state: 'closed'; reason: string }
  /** Its health check failed: the client unregistered it, and registers it again after a check passes. */
  | { state: 'withdrawn'; reason: string };

export type SessionState = 'connecting' | 'established' | 'reconnecting' | 'stopping';

/** What `porthole-client status` prints and the client's admin endpoint serves. */
export interface ClientStatus {
  state: SessionState;
  server: string;
  /** How the server is dialled, as the start line says: the proxy (never its credentials) or "direct". */
  via: string;
  /** Where `via` was decided ("config", "--proxy", "env https_proxy", "env no_proxy"); absent: nothing named a proxy. */
  via_from?: string;
  /** The name the server knows us by (the token's subject), once established. */
  client?: string;
  session_id?: string;
  /** ISO time the current state began. */
  since: string;
  /** Why the last dial or session failed; cleared once a session is established. */
  last_error?: string;
  /** ISO time of the next dial while reconnecting. */
  retry_at?: string;
  /** When the client's token expires (the server then ends the session); absent for one that never does. */
  token_expires_at?: string;
  /**
   * The server operator's cap on this client's proxies together, each way, as the server said it at sign-in
   * or since, after a reload of its config ("10MB"); absent: none (or a server older than the cap).
   */
  server_bandwidth_limit?: string;
  open_connections: number;
  /** Mux streams open on the current session (the control stream included). */
  streams: number;
  /** Memory, descriptors and event-loop resources of the client process. */
  process: ProcessResources;
  proxies: {
    name: string;
    type: string;
    local: string;
    /** The port on the server once registered; before, as configured (0: the server will pick one). */
    remote_port: number | undefined;
    /** tcp/udp: the address it asked the server to bind (remote_bind); absent: the server's proxy_bind. */
    remote_bind?: string;
    state: ProxyState['state'];
    remote_addr?: string;
    /** Where visitors reach an http or tls proxy (its names on the vhost ports). */
    urls?: string[];
    reason?: string;
    open_connections: number;
    /** Its bandwidth_limit as written ("1MB"), each way; absent: none. */
    bandwidth_limit?: string;
    /** Its load-balancing group; absent: none. */
    group?: string;
    /** With a health_check: what the last checks say ("unhealthy": withdrawn from the server). */
    health?: 'healthy' | 'unhealthy';
    /** A private proxy: true, and once registered the name visitors ask for ("homelab/ssh"). */
    private?: boolean;
    service?: string;
    /** Its tunnel hop runs deflated: it asked for compression and the server took it. */
    compression: boolean;
    /** It asked for compression and runs plain: why (a server older than compression). */
    compression_unavailable?: string;
  }[];
  /** Local ports whose connections visit other clients' private services. */
  visitors: {
    name: string;
    /** Absent in older clients' answers: tcp. */
    type?: 'tcp' | 'udp';
    service: string;
    bind: string;
    listening: boolean;
    open_connections: number;
    /** Why it does not listen, or why its last visit was refused (cleared by one that is not). */
    reason?: string;
  }[];
}

/** The client's session state as it changes (dialling, established, lost), and each proxy's registration. */
export class SessionStatus {
  private state: SessionState = 'connecting';
  private since = Date.now();
  private client: string | undefined;
  private sessionId: string | undefined;
  private serverBandwidthLimit: string | undefined;
  private lastError: string | undefined;
  private retryAt: number | undefined;
  private readonly proxyStates = new Map<string, ProxyState>();

  /** The session's state now (a visit refused for want of a session says it). */
  get current(): SessionState {
    return this.state;
  }

  /** How the server is dialled (the client sets it at the start and on a reload). */
  via: { via: string; via_from?: string } = { via: 'direct' };

  constructor(public server: string) {}

  private enter(state: SessionState): void {
    if (this.state !== state) this.since = Date.now();
    this.state = state;
  }

  connecting(): void {
    this.enter(this.state === 'connecting' ? 'connecting' : 'reconnecting');
    this.retryAt = undefined;
    this.sessionId = undefined;
    this.proxyStates.clear();
  }

  failed(reason: string, retryMs: number): void {
    this.enter('reconnecting');
    this.lastError = reason;
    this.retryAt = Date.now() + retryMs;
    this.sessionId = undefined;
    this.proxyStates.clear();
  }

  established(client: string, sessionId: string, serverBandwidthLimit?: string): void {
    this.enter('established');
    this.client = client;
    this.sessionId = sessionId;
    this.serverBandwidthLimit = serverBandwidthLimit;
    this.retryAt = undefined;
    // An error from before the session is history: a monitor reading the JSON must not see it as current.
    this.lastError = undefined;
  }

  /** The server's cap on this client changed (a reload of its config); returns the one it replaces. */
  serverBandwidthLimitChanged(limit: string | undefined): string | undefined {
    const previous = this.serverBandwidthLimit;
    this.serverBandwidthLimit = limit;
    return previous;
  }

  stopping(): void {
    this.enter('stopping');
  }

  set(proxy: string, state: ProxyState): void {
    this.proxyStates.set(proxy, state);
  }

  forget(proxy: string): void {
    this.proxyStates.delete(proxy);
  }

  /** Proxies the server is not serving now: refused at registration, or closed by it since. */
  notServed(): string[] {
    const names: string[] = [];
    for (const [name, state] of this.proxyStates)
      if (state.state === 'refused' || state.state === 'closed') names.push(name);
    return names;
  }

  /** A udp proxy's open flows are its connections, as on the server. */
  view(
    proxies: ReadonlyMap<string, ProxyConfig>,
    tracker: ConnectionTracker,
    udpFlows: OpenUdpFlows,
    streams: number,
    health?: {
      withdrawnReason(proxy: string): string | undefined;
      health(proxy: string): 'healthy' | 'unhealthy' | undefined;
    },
    visitors: ReadonlyMap<string, Visitor> = new Map(),
  ): ClientStatus {
    const open = new Map<string, number>();
    const visiting = new Map<string, number>();
    for (const c of tracker.connections()) {
      if (c.fields.visitor !== undefined && c.fields.proxy === undefined) {
        const name = String(c.fields.visitor);
        visiting.set(name, (visiting.get(name) ?? 0) + 1);
        continue;
      }
      const name = String(c.fields.proxy ?? '');
      open.set(name, (open.get(name) ?? 0) + 1);
    }
    let visitorFlows = 0;
    for (const visitor of visitors.values()) visitorFlows += visitor.state().openFlows ?? 0;
    const status: ClientStatus = {
      state: this.state,
      server: urlWithoutUserinfo(this.server),
      ...this.via,
      since: new Date(this.since).toISOString(),
      open_connections: tracker.size + udpFlows.size + visitorFlows,
      streams,
      process: processResources(),
      proxies: [...proxies.values()].map((proxy) => {
        const withdrawn = health?.withdrawnReason(proxy.name);
        // Withdrawn by its health check: not served whatever the server last said of it.
        const state: ProxyState =
          withdrawn === undefined
            ? (this.proxyStates.get(proxy.name) ?? { state: 'pending' })
            : { state: 'withdrawn', reason: withdrawn };
        const checked = health?.health(proxy.name);
        return {
          name: proxy.name,
          type: proxy.type,
          local: describeProxyLocal(proxy),
          remote_port: ('remotePort' in state ? state.remotePort : undefined) ?? proxy.remotePort,
          ...(proxy.remoteBind === undefined ? {} : { remote_bind: proxy.remoteBind }),
          state: state.state,
          ...('remoteAddr' in state && state.remoteAddr ? { remote_addr: state.remoteAddr } : {}),
          ...('urls' in state && state.urls ? { urls: state.urls } : {}),
          ...('reason' in state ? { reason: state.reason } : {}),
          open_connections: (open.get(proxy.name) ?? 0) + udpFlows.count(proxy.name),
          ...(proxy.bandwidthLimit ? { bandwidth_limit: proxy.bandwidthLimit.text } : {}),
          ...(proxy.group === undefined ? {} : { group: proxy.group }),
          ...(checked === undefined ? {} : { health: checked }),
          ...(proxy.private ? { private: true } : {}),
          ...('service' in state && state.service ? { service: state.service } : {}),
          compression: 'compression' in state && state.compression === true,
          ...('compressionUnavailable' in state && state.compressionUnavailable
            ? { compression_unavailable: state.compressionUnavailable }
            : {}),
        };
      }),
      visitors: [...visitors.values()].map((visitor) => {
        const { listening, error, lastRefusal, openFlows } = visitor.state();
        const reason = error ?? lastRefusal;
        return {
          name: visitor.name,
          type: visitor.current.type,
          service: visitor.current.service,
          bind: describeBind(visitor.current),
          listening,
          // A udp visitor's flows, counted as a udp proxy's are.
          open_connections: (visiting.get(visitor.name) ?? 0) + (openFlows ?? 0),
          ...(reason === undefined ? {} : { reason }),
        };
      }),
    };
    if (this.client !== undefined) status.client = this.client;
    if (this.sessionId !== undefined) status.session_id = this.sessionId;
    if (this.serverBandwidthLimit !== undefined) status.server_bandwidth_limit = this.serverBandwidthLimit;
    if (this.lastError !== undefined) status.last_error = this.lastError;
    if (this.retryAt !== undefined) status.retry_at = new Date(this.retryAt).toISOString();
    return status;
  }
}
