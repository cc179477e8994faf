// A peer's address as every log line gives it: host:port, with an IPv4 peer of a dual-stack listener
// ("::ffff:127.0.0.1") written as IPv4, as its X-Forwarded-For and the http request lines have it, so one
// visitor reads the same in every line.
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Server as TlsServer } from 'node:tls';
import { formatPeerAddress } from '@porthole/protocol';

/** "127.0.0.1:40000", "[2001:db8::1]:40000"; "unknown" once the socket is gone. */
export function peerAddress(socket: Socket | Duplex): string {
  const s = socket as Socket;
  return s.remoteAddress ? formatPeerAddress(s.remoteAddress, s.remotePort ?? 0) : 'unknown';
}

/** A server-side TLSSocket keeps the connection it wraps as _parent (Node's own field; no public way there). */
type WrappingTlsSocket = Duplex & { _parent?: Duplex | null };

/** The TCP connection under `socket`: the one a TLSSocket wraps, or `socket` itself. */
export function connectionOf(socket: Duplex): Duplex {
  return (socket as WrappingTlsSocket)._parent ?? socket;
}

/**
 * The peers of `server`'s connections, taken as each arrives, for its 'tlsClientError': a peer that aborted
 * its handshake has taken the socket down by then, and the TLSSocket no longer knows the address.
 */
export function peersOnArrival(server: TlsServer): (tlsSocket: Duplex) => string {
  const peers = new WeakMap<object, string>();
  server.on('connection', (socket: Socket) => peers.set(socket, peerAddress(socket)));
  return (tlsSocket) => {
    return peers.get(connectionOf(tlsSocket)) ?? peerAddress(tlsSocket);
  };
}
