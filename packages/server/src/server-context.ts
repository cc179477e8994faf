import type { CoalescedLines, ConnectionTracker, Logger } from '@porthole/protocol';
import type { ClientSession } from './client-session.js';
import type { ServerConfig } from './config.js';
import type { PortHolder } from './proxy-groups.js';
import type { RoutingState } from './proxy-routing.js';
import type { ProxyTraffic } from './proxy-traffic.js';
import type { ServerPlugins } from './server-plugins.js';

/** What every client session shares: settings, the registry of clients and ports, the connection count. */
export interface ServerContext {
  /** Replaced as a whole by a reload (SIGHUP); read it at use time, do not keep a copy. */
  config: ServerConfig;
  readonly logger: Logger;
  readonly tracker: ConnectionTracker;
  /** Per-proxy totals (connections, bytes, refusals) for the admin API and /metrics. */
  readonly traffic: ProxyTraffic;
  readonly serverVersion: string;
  /** Sessions that completed hello, by client name (one per name: a new one takes over). */
  readonly clients: Map<string, ClientSession>;
  /** Every live session, including those that have not said hello yet. */
  readonly sessions: Set<ClientSession>;
  /**
   * Public tcp port -> the session and proxy that hold it; for a load-balancing group's port, its listener
   * (the members are on it), the first member's name and the group (proxy-groups.ts).
   */
  readonly ports: Map<number, PortHolder>;
  /** UDP ports, hostname routes and the vhost ports' addresses (udp, http and tls proxies). */
  readonly routing: RoutingState;
  /** The [[plugins]] of the running config, asked at sign-in, registration and visitor connections. */
  readonly plugins: ServerPlugins;
  /** 'visit refused' lines, one per visitor and reason per 10 s (a visitor retrying in a loop). */
  readonly visitRefusals: CoalescedLines;
}
