import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { isTcpSocket } from './socket-handle.js';

/**
 * Ends a connection so that its peer sees it cut short, not finished. A TCP socket gets a real RST. A TLS
 * socket (a visitor of the https port, terminated here) is destroyed without close_notify, which is TLS's
 * own sign of a cut: its handle is TLS's, not TCP's, and resetAndDestroy() throws on it. So it does on a
 * Unix socket (a local service at unix:PATH), which has no reset: its peer reads ECONNRESET only if it had
 * sent bytes we never read, and the end otherwise. Thrown in the pipe's error handler, that ended the client.
 * A socket that has begun its FIN is destroyed too: libuv refuses to reset it (uv_tcp_close_reset: EINVAL)
 * after Node has let go of the handle, so its descriptor would leak. Anything else (a mux stream) is
 * destroyed, which sends a yamux RST.
 */
export function resetConnection(side: Duplex): void {
  if (
    side instanceof Socket &&
    isTcpSocket(side) &&
    !side.connecting &&
    !side.writableEnded &&
    side.readyState !== 'closed'
  )
    side.resetAndDestroy();
  else side.destroy();
}
