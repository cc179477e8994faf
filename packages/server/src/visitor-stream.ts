// The tunnel stream for a visitor's TCP connection (tcp, tls and tcpmux ports): its header tells the client
// which proxy the bytes are for, who the visitor is and which address it reached (for PROXY headers).
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Session } from '@porthole/mux';
import type { StreamHeader } from '@porthole/protocol';
import { openTunnelStream } from './tunnel-stream.js';

/** What the listener adds to the header: the visitor's own fields come from its socket. */
type ListenerFields = Pick<
  StreamHeader,
  'proxy' | 'conn' | 'public_addr' | 'confirm_connect' | 'compression'
>;

export function openVisitorStream(session: Session, visitor: Socket, fields: ListenerFields): Duplex {
  return openTunnelStream(session, {
    ...fields,
    remote_addr: visitor.remoteAddress ?? '',
    remote_port: visitor.remotePort ?? 0,
    ...(visitor.localAddress === undefined
      ? {}
      : { dest_addr: visitor.localAddress, dest_port: visitor.localPort ?? 0 }),
  });
}
