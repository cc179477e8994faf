// A peer may send its last bytes and reset while we are still writing to it: a service answering 413 or 401
// before it read the upload, a visitor saying "BYE" and leaving in the middle of a download. The reset makes
// our next write fail (ECONNRESET, then EPIPE) while those bytes still wait, unread, in the kernel, and Node
// destroys a socket whose write failed at once, the bytes with it: the visitor got a 502 instead of the 413
// (about one try in five with a 50 MB upload), the service never heard the visitor's last line (8 tries in
// 40). Here they are read and passed on first.
import { readSync } from 'node:fs';
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { socketDescriptor } from './socket-handle.js';

/**
 * At most this much is read after a failed write. Last words are short; longer ones are cut here, as they
 * were before (the other side is reset behind them), and memory stays bounded however full the kernel was.
 */
const LAST_WORDS_MAX = 1024 * 1024;
const READ_SIZE = 64 * 1024;

type DestroyMethod = (this: Socket, err: Error | null, callback: (err?: Error | null) => void) => void;

const plainDestroy = (Socket.prototype as unknown as { _destroy: DestroyMethod })._destroy;

/**
 * Makes `socket` pass on what its peer sent and nobody read yet when a write to it fails, before it closes.
 * For plain TCP (or Unix) sockets only: a TLS socket's descriptor holds ciphertext. Costs nothing until a
 * write fails: it replaces the socket's _destroy, which runs once.
 */
export function passOnUnreadAfterFailedWrite(socket: Socket): void {
  if (socket instanceof TLSSocket) return;
  (socket as unknown as { _destroy: DestroyMethod })._destroy = destroyPassingOnUnread;
}

// One function for every socket, not a closure each.
function destroyPassingOnUnread(
  this: Socket,
  err: Error | null,
  callback: (err?: Error | null) => void,
): void {
  // Only behind an empty buffer: bytes read from the descriptor now would pass ahead of what is buffered
  // (the pipe paused the socket), which destroy() drops, and the other side would get a hole, not the end.
  if (
    (err as NodeJS.ErrnoException | null)?.syscall === 'write' &&
    this.readableLength === 0 &&
    this.listenerCount('data') > 0
  )
    passOnUnread(this);
  plainDestroy.call(this, err, callback);
}

/**
 * Hands what the peer sent and nobody read yet to the 'data' listeners (the pipe towards the other side),
 * before the socket closes and its error resets the other side behind those bytes. The readable side
 * stopped taking bytes when the write failed, so they are read from the descriptor itself, which is
 * non-blocking: an empty queue ends the loop with EAGAIN, the peer's close with 0 or ECONNRESET.
 */
function passOnUnread(socket: Socket): void {
  const fd = socketDescriptor(socket);
  if (fd < 0) return;
  let total = 0;
  while (total < LAST_WORDS_MAX) {
    const buf = Buffer.allocUnsafe(READ_SIZE);
    let n: number;
    try {
      n = readSync(fd, buf, 0, READ_SIZE, null);
    } catch {
      return;
    }
    if (n === 0) return;
    total += n;
    socket.emit('data', buf.subarray(0, n));
  }
}
