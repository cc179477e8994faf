import type { Duplex } from 'node:stream';
import { plainErrorResponse } from '@porthole/protocol';

/** How long a peer has to read a last answer and close, once it is all written, before the socket goes. */
const LINGER_MS = 2_000;

/**
 * Ends a socket handed over by an upgrade (refused: wrong path, failed sign-in, no route; or answered by a
 * service that did not switch protocols), after `answer` if given. Node's HTTP timeouts no longer watch such
 * a socket, and its server keeps sockets half-open: so what the peer still sends is read and dropped (its FIN
 * must be seen for the socket to close), and a peer that neither reads nor closes loses the socket
 * LINGER_MS after the last byte went out instead of holding it.
 */
export function answerAndClose(socket: Duplex, answer?: string | Uint8Array): void {
  if (socket.destroyed) return;
  if (answer === undefined) socket.end();
  else socket.end(answer);
  socket.resume();
  const letGo = (): void => {
    const timer = setTimeout(() => socket.destroy(), LINGER_MS);
    timer.unref();
    socket.once('close', () => clearTimeout(timer));
  };
  if (socket.writableFinished) letGo();
  else socket.once('finish', letGo);
}

/**
 * Answers a request read off a raw socket (an upgrade, a tcpmux CONNECT) with a plain HTTP error, `fields`
 * ("Name: value" lines) and `body` as its text, and closes the connection.
 */
export function refuseAndClose(socket: Duplex, status: number, body: string, fields: string[] = []): void {
  answerAndClose(socket, plainErrorResponse(status, body, fields));
}
