// A peer's address as every log line gives it: host:port, with an IPv4 peer of a dual-stack listener
// ("::ffff:127.0.0.1") written as IPv4, as its X-Forwarded-For and the http request lines have it, so one
// visitor reads the same in every line.
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { formatHostPort } from '@porthole/protocol';
import { plainAddress } from './trusted-proxies.js';

/** "127.0.0.1:40000", "[2001:db8::1]:40000"; "unknown" once the socket is gone. */
export function peerAddress(socket: Socket | Duplex): string {
  const s = socket as Socket;
  return s.remoteAddress ? formatHostPort(plainAddress(s.remoteAddress), s.remotePort ?? 0) : 'unknown';
}
