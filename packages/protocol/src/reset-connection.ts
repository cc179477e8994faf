import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';

/**
 * Ends a connection so that its peer sees it cut short, not finished. A TCP socket gets a real RST. A TLS
 * socket (a visitor of the https port, terminated here) is destroyed without close_notify, which is TLS's
 * own sign of a cut: its handle is TLS's, not TCP's, and resetAndDestroy() throws on it. A socket that has
 * begun its FIN is destroyed too: libuv refuses to reset it (uv_tcp_close_reset: EINVAL) after Node has let
 * go of the handle, so its descriptor would leak. Anything else (a mux stream) is destroyed, which sends a
 * yamux RST.
 */
export function resetConnection(side: Duplex): void {
  if (
    side instanceof Socket &&
    !(side instanceof TLSSocket) &&
    !side.connecting &&
    !side.writableEnded &&
    side.readyState !== 'closed'
  )
    side.resetAndDestroy();
  else side.destroy();
}
