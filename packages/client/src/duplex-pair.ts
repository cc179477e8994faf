// Two ends of a connection inside this process (Node 22's stream.duplexPair, which Node 20 lacks), with the
// parts of a socket that Node's HTTP server uses: an idle timeout. One end is carried to a tunnel stream like
// a local service's socket, so a directory the client serves has its connections counted, drained, listed
// and held to bandwidth_limit as every other proxy's are; the HTTP server reads and answers the other.
import { Duplex } from 'node:stream';

/** One end: what is written to it is read from the other, and its end is the other's end of reading. */
export class PairEnd extends Duplex {
  private peer: PairEnd | undefined;
  /** The callback of this end's peer's write that filled this end's read buffer: called once it is read. */
  private peerWriteWaits: (() => void) | undefined;
  private idleMs = 0;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor() {
    super({ allowHalfOpen: true });
  }

  static pair(): [PairEnd, PairEnd] {
    const a = new PairEnd();
    const b = new PairEnd();
    a.peer = b;
    b.peer = a;
    return [a, b];
  }

  /**
   * As a socket's: 'timeout' after `ms` without a byte either way (0: never). Node's HTTP server arms it
   * for its keep-alive and request timeouts.
   */
  setTimeout(ms: number, callback?: () => void): this {
    this.idleMs = ms;
    if (callback) this.once('timeout', callback);
    this.touch();
    return this;
  }

  private touch(): void {
    clearTimeout(this.idleTimer);
    this.idleTimer =
      this.idleMs > 0 && !this.destroyed ? setTimeout(() => this.emit('timeout'), this.idleMs) : undefined;
    this.idleTimer?.unref();
  }

  override _read(): void {
    const release = this.peerWriteWaits;
    this.peerWriteWaits = undefined;
    release?.();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    const peer = this.peer!;
    if (peer.destroyed) {
      callback(Object.assign(new Error('the other end is closed'), { code: 'EPIPE' }));
      return;
    }
    this.touch();
    peer.touch();
    // Backpressure: the writer waits while the reader's buffer is full.
    if (peer.push(chunk)) callback();
    else peer.peerWriteWaits = () => callback();
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.peer!.push(null);
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    clearTimeout(this.idleTimer);
    const peer = this.peer!;
    // A clean close (both ways ended) leaves the peer to be read to its end; any other is an abort, as a
    // socket's reset is, and reaches the peer at once.
    if (!peer.destroyed && (err || !(this.readableEnded && this.writableFinished))) peer.destroy();
    // The peer's write waiting for room here fails as a write to a closed socket does.
    const release = this.peerWriteWaits;
    this.peerWriteWaits = undefined;
    release?.();
    callback(err);
  }
}
