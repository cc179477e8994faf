import type { Session } from '@porthole/mux';
import type { ClientBandwidth } from './client-bandwidth.js';
import type { ConnectionLimit } from './connection-limit.js';
import type { VisitorCheck } from './server-plugins.js';

/** What a name routed by a tls or tcpmux port leads to: the proxy, its client's session and its limits. */
export interface RoutedTarget {
  client: string;
  proxy: string;
  /** The proxy asked for compression: its streams' header says so, and their bytes are deflated. */
  compression?: true;
  session: Session;
  /** The proxy's max_connections: a visitor over it is turned away before a stream is opened. */
  limit: ConnectionLimit;
  /** Its client's cap, shared with the client's other connections. */
  bandwidth: ClientBandwidth;
  /** The server's plugins' say on each visitor (NewUserConn). */
  visitorCheck?: VisitorCheck;
}
