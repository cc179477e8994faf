import type { Writable } from 'node:stream';

/**
 * Pieces smaller than this go out at once: most are a whole message (a request, a reply, a keystroke) with
 * nothing behind them in the same read, and gathering them would cost a timer and buy nothing.
 */
const GATHER_FROM = 8 * 1024;

/**
 * How much may wait in a gathering socket before its source should pause. Without a cap, a source resumed
 * after 'drain' would hand over everything it had buffered (up to a mux window, 16 MiB) in one go; 256 KiB
 * measured 3-10% slower than 1 MiB through iperf3.
 */
const MAX_GATHERED = 1024 * 1024;

/**
 * Writes into a socket (or an HTTP response) from the tunnel, where what arrives within one event-loop turn
 * leaves in one writev. The tunnel hands a connection its bytes in pieces: TLS decrypts in 16 KiB records
 * and a WebSocket frame can span reads, so one read of the tunnel used to cost a connection a write() per
 * piece. A large piece corks the destination until the end of the turn (setImmediate runs right after the
 * poll phase that delivered the pieces); small ones are written at once.
 */
export class TurnGatheredWrites {
  private corked = false;

  constructor(private readonly dest: Writable) {}

  /**
   * Writes `chunk`. False when the source should wait for the destination's 'drain': at the high-water mark
   * as usual, but while gathering only once MAX_GATHERED waits, so that a turn's pieces are not cut short.
   */
  write(chunk: Buffer): boolean {
    if (!this.corked && chunk.length >= GATHER_FROM) {
      this.corked = true;
      this.dest.cork();
      setImmediate(uncork, this);
    }
    if (this.dest.write(chunk)) return true;
    return this.corked && this.dest.writableLength < MAX_GATHERED;
  }

  /** @internal The end of the turn. */
  uncork(): void {
    this.corked = false;
    this.dest.uncork();
  }
}

// One function for every instance, not a closure each: HTTP responses make one of these per request.
function uncork(writes: TurnGatheredWrites): void {
  writes.uncork();
}
