// What kind of connection a net.Socket carries, read off Node's handle (not in Node's types): TCP and Unix
// sockets share the class, but not what the kernel and libuv let us do with them. A Unix socket has no
// reset to send (resetAndDestroy() throws on it) and no FIN of its own to ask about (a write after its
// peer's close fails with EPIPE, an empty one too).
import type { Socket } from 'node:net';

/** Node's handle of a connected socket: its class ('TCP', 'Pipe' for a Unix socket, 'TLSWrap'), its descriptor. */
interface SocketHandle {
  fd?: number;
  constructor: { name: string };
}

function handleOf(socket: Socket): SocketHandle | undefined {
  return (socket as unknown as { _handle?: SocketHandle | null })._handle ?? undefined;
}

/** A plain TCP socket whose handle Node still holds (not TLS, not a Unix socket, not closed). */
export function isTcpSocket(socket: Socket): boolean {
  return handleOf(socket)?.constructor.name === 'TCP';
}

/** A Unix-domain stream socket whose handle Node still holds. */
export function isUnixSocket(socket: Socket): boolean {
  return handleOf(socket)?.constructor.name === 'Pipe';
}

/** The socket's file descriptor, or -1 where it has none (closed, or not a descriptor of its own). */
export function socketDescriptor(socket: Socket): number {
  return handleOf(socket)?.fd ?? -1;
}
