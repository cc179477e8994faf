// The client's TCP connection to a local service. A service may answer before it has read the whole request
// (413 or 401 while an upload is still coming) and close, which resets the connection under the rest of the
// upload: the next write fails (ECONNRESET, then EPIPE) while its answer still waits, unread, in the kernel.
// Node destroys a socket whose write failed at once, the answer with it, and the visitor got a 502 instead
// (about one try in five with a 50 MB upload). Here the answer is read and passed on first.
import { readSync } from 'node:fs';
import { Socket } from 'node:net';

/**
 * At most this much is read after a failed write. An early answer is small; a longer one is cut here, as it
 * was before (the tunnel stream is reset behind it), and memory stays bounded however full the kernel was.
 */
const LAST_WORDS_MAX = 1024 * 1024;
const READ_SIZE = 64 * 1024;

/** Node's handle of a connected socket: fd is its descriptor (not in Node's types; -1 where there is none). */
type SocketWithHandle = { _handle?: { fd?: number } | null };

export class LocalSocket extends Socket {
  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    // Only behind an empty buffer: bytes read from the descriptor now would pass ahead of what is buffered
    // (the pipe paused the socket), which destroy() drops, and the visitor would get a hole, not an answer.
    if (
      (err as NodeJS.ErrnoException | null)?.syscall === 'write' &&
      this.readableLength === 0 &&
      this.listenerCount('data') > 0
    )
      this.passOnUnread();
    super._destroy(err, callback);
  }

  /**
   * Hands what the service sent and nobody read yet to the 'data' listeners (the pipe towards the tunnel),
   * before the socket closes and its error resets the tunnel stream behind those bytes. The readable side
   * stopped taking bytes when the write failed, so they are read from the descriptor itself, which is
   * non-blocking: an empty queue ends the loop with EAGAIN, the peer's close with 0 or ECONNRESET.
   */
  private passOnUnread(): void {
    const fd = (this as unknown as SocketWithHandle)._handle?.fd;
    if (fd === undefined || fd < 0) return;
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
      this.emit('data', buf.subarray(0, n));
    }
  }
}
