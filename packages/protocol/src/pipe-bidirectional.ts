import { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { whenEndIsFin } from './end-is-fin.js';
import { resetConnection } from './reset-connection.js';
import type { TokenBucket } from './token-bucket.js';
import { TurnGatheredWrites } from './turn-gathered-writes.js';
import { passOnUnreadAfterFailedWrite } from './unread-after-failed-write.js';

export interface PipeResult {
  /** Bytes read from `a` and written towards `b`. */
  bytesAtoB: number;
  /** Bytes read from `b` and written towards `a`. */
  bytesBtoA: number;
  ms: number;
  /** "closed" when both directions ended with FIN; otherwise which side failed and how. */
  reason: string;
  error?: Error;
}

/** Live byte counts of a connection being carried (read by the admin API and metrics while it runs). */
export interface PipeProgress {
  readonly bytesAtoB: number;
  readonly bytesBtoA: number;
}

export interface PipeOptions {
  /** Names of the two sides for the reason text, e.g. ["visitor", "tunnel"]. */
  labels?: readonly [string, string];
  /**
   * Bytes of this connection the caller passed on itself before piping (a peeked ClientHello, what came
   * after an upgrade's handshake): counted as if piped.
   */
  alreadyMoved?: PipeProgress;
  /** Budgets the directions keep to (a proxy's bandwidth_limit, shared by its connections); none: unlimited. */
  limits?: PipeLimits;
}

export interface PipeLimits {
  aToB?: TokenBucket;
  bToA?: TokenBucket;
}

/**
 * `side`'s failure in the words of the `connection closed` line. A session that closed after a stream's end
 * (the client's FIN, then the client gone) says so: what the visitor got was whole, where a session closed
 * before the end cut it short.
 */
function describe(err: Error & { code?: string }, side: Duplex): string {
  if (err.code === 'ERR_STREAM_RESET') return 'reset';
  if (err.code === 'ECONNRESET') return 'reset (ECONNRESET)';
  if (err.code === 'ERR_SESSION_CLOSED')
    return side.readableEnded ? 'session closed after the end' : 'session closed';
  return err.code ? `${err.message} (${err.code})` : err.message;
}

/** How long a side that was already ending when the other failed may take to write out what it holds. */
const FLUSH_GRACE_MS = 10_000;

/** Sides abort() is letting finish: a second abort (an error, then the close that follows) leaves them be. */
const flushing = new WeakSet<Duplex>();

/**
 * Aborts a side (resetConnection: a TCP socket gets a real RST, so an aborted tunnel connection looks
 * aborted to the peer, not finished; a TLS socket goes without close_notify; a mux stream sends a yamux RST).
 * Not a side that is already ending (its source finished cleanly, so every byte queued on it arrived
 * whole): what it holds is written out and its FIN follows, then it closes, within FLUSH_GRACE_MS. Such a
 * socket could not be reset anyway: libuv refuses once its FIN is being sent (uv_tcp_close_reset: EINVAL),
 * and Node has then already dropped the handle, so the descriptor would leak and 'close' would never come
 * (found by the soak test).
 */
function abort(side: Duplex): void {
  if (side.destroyed || flushing.has(side)) return;
  if (side.writableFinished) {
    // Its FIN is out: what the kernel still holds for the peer is whole and is delivered on a plain
    // close, where a reset would throw it away.
    side.destroy();
    return;
  }
  if (side.writableEnded) {
    flushing.add(side);
    // Nothing read from it can go anywhere now.
    side.pause();
    const timer = setTimeout(() => side.destroy(), FLUSH_GRACE_MS);
    timer.unref();
    side.once('finish', () => side.destroy());
    // Closed however it ends, so one that closes before it finishes (its reader reset it) is not kept alive
    // by the timer until the grace is over.
    side.once('close', () => clearTimeout(timer));
    return;
  }
  resetConnection(side);
}

/**
 * Carries one connection between two byte streams (a TCP socket and a mux stream): bytes both ways with
 * backpressure (pipe pauses the source while the destination is full), half-close both ways (an 'end' on
 * one side ends the other's writable side, the opposite direction keeps flowing), and abort both ways
 * (an error or premature close on one side resets the other). `done` is called once, after both sides closed.
 * Sockets must have been created with `allowHalfOpen: true`. Returns the live byte counts.
 */
export function pipeBidirectional(
  a: Duplex,
  b: Duplex,
  optsOrDone: PipeOptions | ((result: PipeResult) => void),
  maybeDone?: (result: PipeResult) => void,
): PipeProgress {
  const opts = typeof optsOrDone === 'function' ? {} : optsOrDone;
  const done = typeof optsOrDone === 'function' ? optsOrDone : maybeDone!;
  const [labelA, labelB] = opts.labels ?? ['a', 'b'];
  const started = performance.now();
  const progress = {
    bytesAtoB: opts.alreadyMoved?.bytesAtoB ?? 0,
    bytesBtoA: opts.alreadyMoved?.bytesBtoA ?? 0,
  };
  let failure: { label: string; error?: Error; text: string } | undefined;
  let open = 2;

  const fail = (label: string, text: string, error?: Error) => {
    if (!failure) failure = error ? { label, error, text } : { label, text };
  };
  const errorListeners: [Duplex, (err: Error) => void][] = [];
  let stopPumps: (() => void) | undefined;
  /**
   * Node keeps a closed socket reachable from its handle's wrapper until a full GC, so anything a listener
   * still holds (the other side, the mux stream, this closure's state) would be promoted along with it.
   * Letting go once both sides closed keeps a connection's objects young: under connection churn the
   * scavenges then promote less (1.9 -> 1.3 MB each on the server at ~4k connections/s).
   */
  const letGo = () => {
    stopPumps?.();
    for (const [side, listener] of errorListeners) {
      side.off('error', listener);
      side.on('error', ignore);
    }
  };
  const watch = (self: Duplex, other: Duplex, label: string) => {
    const onError = (err: Error) => {
      fail(label, describe(err, self), err);
      abort(other);
    };
    self.on('error', onError);
    errorListeners.push([self, onError]);
    const onClose = () => {
      const clean = self.readableEnded && self.writableFinished;
      if (!clean) {
        fail(label, 'closed early');
        abort(other);
      }
      if (--open === 0) {
        letGo();
        const result: PipeResult = {
          bytesAtoB: progress.bytesAtoB,
          bytesBtoA: progress.bytesBtoA,
          ms: Math.round(performance.now() - started),
          reason: failure ? `${failure.label} ${failure.text}` : 'closed',
        };
        if (failure?.error) result.error = failure.error;
        done(result);
      }
    };
    // A side that closed before we got it still counts (its 'close' event has already gone by).
    if (self.closed) process.nextTick(onClose);
    else self.once('close', onClose);
  };
  watch(a, b, labelA);
  watch(b, a, labelB);
  // A peer's last bytes before its reset reach the other side even when the reset fails a write to it.
  if (a instanceof Socket) passOnUnreadAfterFailedWrite(a);
  if (b instanceof Socket) passOnUnreadAfterFailedWrite(b);
  const countAtoB = (n: number) => {
    progress.bytesAtoB += n;
  };
  const countBtoA = (n: number) => {
    progress.bytesBtoA += n;
  };
  const { aToB, bToA } = opts.limits ?? {};
  const stopAtoB = aToB ? limitedPump(a, b, countAtoB, aToB) : pump(a, b, countAtoB);
  const stopBtoA = bToA ? limitedPump(b, a, countBtoA, bToA) : pump(b, a, countBtoA);
  stopPumps = () => {
    stopAtoB();
    stopBtoA();
  };
  return progress;
}

/** Stands in for a finished connection's error listeners: an 'error' without any listener would throw. */
function ignore(): void {}

/**
 * `src.pipe(dest)`, except that a socket's writes are gathered per event-loop turn (TurnGatheredWrites).
 * Returns what removes its listeners.
 */
function pump(src: Duplex, dest: Duplex, count: (bytes: number) => void): () => void {
  const out = dest instanceof Socket ? new TurnGatheredWrites(dest) : dest;
  let waiting = false;
  const resume = () => {
    waiting = false;
    src.resume();
  };
  const onData = (chunk: Buffer) => {
    count(chunk.length);
    if (out.write(chunk) || waiting) return;
    waiting = true;
    src.pause();
    dest.once('drain', resume);
  };
  const stopFlow = flow(src, dest, onData);
  return () => {
    stopFlow();
    dest.off('drain', resume);
  };
}

/**
 * pump() within a budget: the source also pauses while `budget` is overdrawn, until it refills. Apart from
 * pump() so that a connection without a limit runs the same code as before limits existed.
 */
function limitedPump(
  src: Duplex,
  dest: Duplex,
  count: (bytes: number) => void,
  budget: TokenBucket,
): () => void {
  const out = dest instanceof Socket ? new TurnGatheredWrites(dest) : dest;
  let draining = false;
  let overdrawn = false;
  const resumeUnlessHeld = () => {
    // A refill may come after the other side failed and abort() paused this one to let it flush.
    if (!draining && !overdrawn && !dest.destroyed) src.resume();
  };
  const onDrain = () => {
    draining = false;
    resumeUnlessHeld();
  };
  const onRefill = () => {
    overdrawn = false;
    resumeUnlessHeld();
  };
  const onData = (chunk: Buffer) => {
    count(chunk.length);
    if (!out.write(chunk) && !draining) {
      draining = true;
      dest.once('drain', onDrain);
    }
    if (!budget.spend(chunk.length) && !overdrawn) {
      overdrawn = true;
      budget.whenRefilled(onRefill);
    }
    if (draining || overdrawn) src.pause();
  };
  const stopFlow = flow(src, dest, onData);
  return () => {
    stopFlow();
    dest.off('drain', onDrain);
    budget.cancel(onRefill);
  };
}

/** Starts `src` flowing into `onData`, its end ending `dest`. Returns what removes its listeners. */
function flow(src: Duplex, dest: Duplex, onData: (chunk: Buffer) => void): () => void {
  const endDest = () => dest.end();
  // A socket's end is passed on only once it is known to be a FIN: libuv may report a reset as an end.
  const onEnd = () => whenEndIsFin(src, endDest);
  src.on('data', onData);
  // As pipe() does: a source that already ended still ends the destination, and a source paused while its
  // first bytes were inspected (a TLS ClientHello) flows now.
  if (src.readableEnded) process.nextTick(onEnd);
  else src.once('end', onEnd);
  src.resume();
  return () => {
    src.off('data', onData);
    src.off('end', onEnd);
  };
}
