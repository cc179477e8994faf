import type { Duplex } from 'node:stream';

/** How long a peer has to read a last answer and close, before its socket is destroyed. */
const LINGER_MS = 2_000;

/**
 * Writes a last answer on a socket handed over by an upgrade (refused: wrong path, failed sign-in, no route) and closes
 * it. Node's HTTP timeouts no longer watch a socket handed over like this, and its server keeps sockets
 * half-open: so what the peer still sends is read and dropped (its FIN must be seen for the socket to
 * close), and a peer that neither reads nor closes loses the socket after LINGER_MS instead of holding it.
 */
export function answerAndClose(socket: Duplex, answer: string): void {
  if (socket.destroyed) return;
  socket.end(answer);
  socket.resume();
  const timer = setTimeout(() => socket.destroy(), LINGER_MS);
  timer.unref();
  socket.once('close', () => clearTimeout(timer));
}
