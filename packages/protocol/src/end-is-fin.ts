import { readSync } from 'node:fs';
import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { isUnixSocket, socketDescriptor } from './socket-handle.js';

const EMPTY = Buffer.alloc(0);
const PROBE = Buffer.alloc(1);

/**
 * Calls `then` once `src`'s 'end' is known to be its peer's FIN, not a reset; a reset fails the socket
 * instead (its 'error', ECONNRESET), and `then` is not called.
 *
 * libuv reports a reset that lands behind bytes not yet read as an end: a short read while the poll says
 * hung up ends the stream without the read that would return ECONNRESET (Node 20's libuv 1.46; libuv PR
 * #4997 reads on while POLLIN is set). A peer that aborted an upload, or a service that crashed
 * mid-download, then looked finished, and passing that end on as a FIN handed the other side a cut transfer
 * that looked whole (8 in 10 visitor resets mid-upload reached the service as a FIN). An empty write tells
 * them apart: a reset socket refuses it, a half-closed one takes it and nothing goes on the wire. Bytes
 * already queued on the socket fail the same way in the libuv callback that reported the end, so one turn
 * later the socket has failed if it was reset. The empty write's own completion is not waited for: queued
 * behind bytes for a peer that has stopped reading, it would hold the FIN back for good.
 *
 * Not told apart: a socket whose FIN is out takes no more writes, so a service that resets behind unread
 * bytes after the visitor's FIN still looks finished. A TLS socket is left as it was: its writes are TLS
 * records, not TCP's, and its resets came as ECONNRESET when tried.
 *
 * A Unix socket cannot be asked with a write: a peer that closed (rather than shut down its sending side)
 * makes every write fail with EPIPE, an empty one too, so each service that answers and closes looked
 * reset, and the visitor lost the end of the answer. Its reset, a close with our bytes unread, waits as
 * the socket's error behind the end libuv reported, so one read of the descriptor tells them apart.
 */
export function whenEndIsFin(src: Duplex, then: () => void): void {
  if (!(src instanceof Socket) || src instanceof TLSSocket || src.writableEnded) {
    then();
    return;
  }
  if (isUnixSocket(src)) {
    whenUnixEndIsClose(src, socketDescriptor(src), then);
    return;
  }
  src.write(EMPTY);
  setImmediate(() => {
    if (!src.errored) then();
  });
}

/**
 * The read returns 0 after a close, fails with ECONNRESET after a close that left our bytes unread; the
 * descriptor is non-blocking, and nothing can follow the peer's end, so it never waits or takes data.
 */
function whenUnixEndIsClose(src: Socket, fd: number, then: () => void): void {
  if (fd >= 0) {
    try {
      readSync(fd, PROBE, 0, 1, null);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ECONNRESET') {
        src.destroy(err as Error);
        return;
      }
    }
  }
  then();
}
