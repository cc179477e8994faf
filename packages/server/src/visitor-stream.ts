// The tunnel stream for a visitor's TCP connection (tcp, tls and tcpmux ports): its header tells the client
// which proxy the bytes are for, who the visitor is and which address it reached (for PROXY headers).
import type { Socket } from 'node:net';
import type { Session, Stream } from '@porthole/mux';
import { type StreamHeader, writeStreamHeader } from '@porthole/protocol';

/** What the listener adds to the header: the visitor's own fields come from its socket. */
type ListenerFields = Pick<StreamHeader, 'proxy' | 'conn' | 'public_addr' | 'confirm_connect'>;

export function openVisitorStream(session: Session, visitor: Socket, fields: ListenerFields): Stream {
  const stream = session.open();
  writeStreamHeader(stream, {
    ...fields,
    remote_addr: visitor.remoteAddress ?? '',
    remote_port: visitor.remotePort ?? 0,
    ...(visitor.localAddress === undefined
      ? {}
      : { dest_addr: visitor.localAddress, dest_port: visitor.localPort ?? 0 }),
  });
  return stream;
}
