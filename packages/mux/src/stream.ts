import { Duplex } from 'node:stream';
import { MuxError } from './errors.js';
import { Flag, FrameType, INITIAL_WINDOW, MAX_WINDOW } from './frame.js';
import { countGatheredAsUnread, PieceGatherer } from './piece-gatherer.js';
import type { SendTurn } from './send-order.js';
import type { Session } from './session.js';

/** What a stream needs from its session; kept narrow so the stream cannot reach into session state. */
export interface StreamHost {
  readonly maxStreamWindow: number;
  /** How soon after the previous update a consumed half-window counts as busy (see growWindowIfBusy). */
  windowGrowthPeriod(): number;
  /**
   * Takes up to `wanted` bytes of window growth from the session's shared allowance; returns how much.
   * `force`: all of it, even past the allowance (for a read(n) the application bounds itself).
   */
  claimWindowGrowth(wanted: number, force?: boolean): number;
  writeFrame(type: FrameType, flags: number, streamId: number, length: number, body?: Buffer): void;
  /**
   * Bytes of data the connection takes now; 0 while it is full or other streams' data waits for a turn,
   * and then this stream's data waits too.
   */
  roomForData(): number;
  /** Queues the stream for a turn to write a frame (queuedFrameLength and writeQueuedFrame, then). */
  queueData(stream: Stream): void;
  /**
   * Takes a destroyed stream out of the order of turns: left waiting there, it kept all it held (what the
   * peer sent and nobody read) until its turn came, for as long as the connection stayed full.
   */
  unqueueData(stream: Stream): void;
  releaseStream(stream: Stream): void;
}

/** Big frames keep header overhead negligible; the cap keeps one stream from monopolising a turn. */
const MAX_DATA_FRAME = 128 * 1024;
/** A frame may overshoot the connection's room by this much rather than be cut into slivers. */
const MIN_DATA_FRAME = 4 * 1024;
/** How long data that arrived before the session ended stays readable before the stream fails anyway. */
const ABORT_DRAIN_MS = 2000;
const EMPTY = Buffer.alloc(0);

interface BlockedWrite {
  rest: Buffer;
  callback: (err?: Error | null) => void;
}

/**
 * One yamux stream as a Node Duplex. Flow control follows the spec: the peer may send at most
 * `recvWindow` more bytes, and window is granted back only as the application consumes data (measured
 * as what left our readable buffer), so a reader that stops reading holds at most its window. The window
 * starts at yamux's 256 KiB and grows only while the reader keeps up with a fast sender, up to
 * maxStreamWindow and as far as the session's shared allowance lets it.
 */
export class Stream extends Duplex implements SendTurn {
  readonly id: number;
  /** @internal */
  sendStart = 0;
  /** @internal */
  sendFinish = 0;
  /** @internal */
  sendDue = 0;
  /** @internal */
  sendIndex = -1;
  /** @internal */
  sendSeq = 0;
  readonly session: Session;
  private readonly host: StreamHost;
  /** Bytes the peer still lets us send. */
  private sendWindow = INITIAL_WINDOW;
  /** Bytes we still let the peer send. */
  private recvWindow = INITIAL_WINDOW;
  /** Bytes of the Data frame being received that have not arrived yet (already out of recvWindow). */
  private bodyInFlight = 0;
  /** What unread bytes plus recvWindow are topped back up to: the most this stream can make us hold. */
  private windowTarget = INITIAL_WINDOW;
  /** When the last window update was due (or the stream began): the start of the growth measurement. */
  private windowEpoch = performance.now();
  private localFin = false;
  private remoteFin = false;
  /** An RST was sent or received, or the stream never made it onto the wire. */
  private reset = false;
  /** A write waiting for the peer to grant window. */
  private blocked: BlockedWrite | undefined;
  /** A write waiting for its turn to use the connection (see SendOrder). */
  private queued: BlockedWrite | undefined;
  private openTimer: NodeJS.Timeout | undefined;
  /** When our SYN left, until the peer's ACK arrives. */
  private synSentAt: number | undefined;
  /** The session ended with data still unread: the error raised once that data has been read. */
  private failAfterDrain: MuxError | undefined;
  private drainTimer: NodeJS.Timeout | undefined;
  /** Small pieces that arrived while the reader was not taking data (see onData); not yet pushed. */
  private readonly gatherer = new PieceGatherer(this);

  static {
    countGatheredAsUnread(Stream.prototype, (stream) => stream.gatherer);
  }

  /** @internal Streams are made by Session.open() and arrive via Session's 'stream' event. */
  constructor(session: Session, host: StreamHost, id: number) {
    super({ allowHalfOpen: true, readableHighWaterMark: 256 * 1024, writableHighWaterMark: 64 * 1024 });
    this.session = session;
    this.host = host;
    this.id = id;
  }

  /** @internal Sends SYN or ACK. It grants nothing beyond yamux's initial 256 KiB: windows grow with use. */
  announce(flags: number): void {
    if (flags & Flag.SYN) this.synSentAt = performance.now();
    this.host.writeFrame(FrameType.WindowUpdate, flags, this.id, 0);
  }

  /** @internal */
  startOpenTimer(ms: number): void {
    if (ms <= 0) return;
    this.openTimer = setTimeout(() => {
      this.destroy(
        new MuxError(
          'ERR_STREAM_OPEN_TIMEOUT',
          `stream ${this.id}: peer did not acknowledge within ${ms} ms`,
        ),
      );
    }, ms);
    this.openTimer.unref();
  }

  /** @internal A stream that could not be opened: fails asynchronously, sends nothing. */
  failBeforeOpen(err: MuxError): void {
    this.reset = true;
    process.nextTick(() => this.destroy(err));
  }

  /** @internal Returns the ms from our SYN to this ACK the first time a stream we opened is acknowledged. */
  onAck(): number | undefined {
    if (this.openTimer) {
      clearTimeout(this.openTimer);
      this.openTimer = undefined;
    }
    const sentAt = this.synSentAt;
    if (sentAt === undefined) return undefined;
    this.synSentAt = undefined;
    return performance.now() - sentAt;
  }

  /** @internal Returns false when the update would overflow the window (a protocol error). */
  onWindowUpdate(delta: number): boolean {
    if (this.sendWindow + delta > MAX_WINDOW) return false;
    this.sendWindow += delta;
    const blocked = this.blocked;
    if (blocked && this.sendWindow > 0) {
      this.blocked = undefined;
      this.sendChunk(blocked.rest, blocked.callback);
    }
    return true;
  }

  /** @internal Returns false when the frame exceeds the window we granted (a protocol error). */
  reserveReceive(length: number): boolean {
    if (length > this.recvWindow) return false;
    this.recvWindow -= length;
    this.bodyInFlight = length;
    return true;
  }

  /** @internal */
  get receiveWindow(): number {
    return this.recvWindow;
  }

  /** @internal Window this stream holds beyond the initial 256 KiB, taken from the session's allowance. */
  get grownWindow(): number {
    return this.windowTarget - INITIAL_WINDOW;
  }

  /** @internal A piece of a Data frame's body, a view into the session's input chunk. */
  onData(piece: Buffer): void {
    this.bodyInFlight -= piece.length;
    if (this.reset || this.remoteFin || this.destroyed) return;
    if (!this.gatherer.wants(piece)) {
      this.gatherer.flush();
      // A view pins its whole input chunk. When the piece will sit in our buffer (reader paused or behind),
      // copy small pieces out, so a stalled reader pins at most its window, not every message it touched.
      const willBuffer = this.readableFlowing !== true || this.readableLength > 0;
      this.push(willBuffer && piece.length < piece.buffer.byteLength / 2 ? Buffer.from(piece) : piece);
      return;
    }
    // Data already waits unread: the reader is paused or behind.
    this.gatherer.add(piece);
  }

  /** @internal */
  onDataFrameEnd(): void {
    this.bodyInFlight = 0;
    if (!this.reset && !this.remoteFin) this.grantWindow();
  }

  /** @internal */
  onRemoteFin(): void {
    if (this.remoteFin || this.reset) return;
    this.remoteFin = true;
    this.gatherer.flush();
    this.push(null);
    if (this.localFin) this.host.releaseStream(this);
  }

  /** @internal */
  onRemoteReset(): void {
    if (this.reset) return;
    this.reset = true;
    this.destroy(new MuxError('ERR_STREAM_RESET', `stream ${this.id} reset by peer`));
  }

  /** @internal The session ended under this stream; without an error (a local close) it just closes. */
  abort(err: MuxError | undefined): void {
    this.gatherer.flush();
    this.reset = true;
    if (!err || this.destroyed) {
      this.destroy(err);
      return;
    }
    // What arrived before the end is the application's: a peer's last message before it closed the
    // connection (a notice, an unregister) must still be readable. The error follows once it is read;
    // writes meanwhile wait and fail with it.
    if (this.remoteFin) {
      // The peer had finished: everything it sent is here, whole. It reads to its 'end' like any
      // finished stream, however slow the reader (a visitor downloading the last of a response); only
      // the write half is broken. Memory stays what the window let in.
      this.failAfterDrain = err;
      if (this.readableEnded) this.destroy(err);
      else this.once('end', () => this.destroy(err));
      return;
    }
    if (this.readableLength > 0) {
      // Unfinished: the data is cut short anyway, so a reader that does not come for it soon is not waited for.
      this.failAfterDrain = err;
      this.drainTimer = setTimeout(() => this.destroy(err), ABORT_DRAIN_MS);
      this.drainTimer.unref();
      return;
    }
    this.destroy(err);
  }

  override _read(): void {
    if (!this.reset && !this.remoteFin) this.grantWindow();
  }

  // Node calls _read() before it takes a chunk out and then not again until the next push(), so _read alone
  // can miss the consumption that frees the window: a peer then waits forever on a window we never grant.
  // Every way of consuming (flowing mode, pipe, async iteration, read()) goes through read(), so grant here.
  override read(size?: number): ReturnType<Duplex['read']> {
    this.gatherer.beforeRead(size);
    const chunk = super.read(size);
    this.gatherer.afterRead(size, chunk);
    if (!this.reset && !this.remoteFin) {
      if (chunk !== null) this.grantWindow();
      else if (size !== undefined && size > this.readableLength) this.widenFor(size);
    }
    // A finished stream fails at its 'end' instead: destroyed here, it would never emit it.
    if (this.failAfterDrain && !this.remoteFin && this.readableLength === 0)
      this.destroy(this.failAfterDrain);
    return chunk;
  }

  override pause(): this {
    this.gatherer.readerPaused();
    return super.pause();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.sendChunk(chunk, callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    if (this.failAfterDrain) {
      // No FIN can leave any more; like a write (sendChunk), the end fails when the stream closes.
      this.blocked = { rest: EMPTY, callback };
      return;
    }
    if (!this.reset) {
      this.localFin = true;
      this.host.writeFrame(FrameType.WindowUpdate, Flag.FIN, this.id, 0);
      if (this.remoteFin) this.host.releaseStream(this);
    }
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    if (this.openTimer) clearTimeout(this.openTimer);
    if (this.drainTimer) clearTimeout(this.drainTimer);
    this.gatherer.drop();
    // A write waiting for window or for its turn fails now: Node errors the writes queued behind it only
    // once it has. The stream leaves the order of turns now, not when its turn would have come.
    const waiting = this.blocked ?? this.queued;
    this.blocked = undefined;
    this.queued = undefined;
    this.host.unqueueData(this);
    waiting?.callback(err ?? new MuxError('ERR_STREAM_RESET', `stream ${this.id} was destroyed`));
    if (!this.reset && !(this.localFin && this.remoteFin)) {
      this.reset = true;
      this.host.writeFrame(FrameType.WindowUpdate, Flag.RST, this.id, 0);
    }
    this.host.releaseStream(this);
    callback(err);
  }

  private sendChunk(chunk: Buffer, callback: (err?: Error | null) => void): void {
    let rest = chunk;
    while (rest.length > 0) {
      if (this.failAfterDrain) {
        // The session is gone but its last data is still being read: failing this write now would
        // destroy the stream and that data with it. It fails when the stream closes.
        this.blocked = { rest, callback };
        return;
      }
      if (this.reset) {
        callback(new MuxError('ERR_STREAM_RESET', `stream ${this.id} was reset`));
        return;
      }
      if (this.sendWindow === 0) {
        this.blocked = { rest, callback };
        return;
      }
      const room = this.host.roomForData();
      if (room <= 0) {
        this.queued = { rest, callback };
        this.host.queueData(this);
        return;
      }
      rest = this.writeDataFrame(rest, room);
    }
    // Handed to the connection: the caller may write more, which waits its turn if the connection is full.
    callback();
  }

  /** @internal The length of the frame this stream writes in its turn, with `room` left in the connection. */
  queuedFrameLength(room: number): number {
    const queued = this.queued;
    if (!queued || this.reset || this.failAfterDrain || this.sendWindow === 0) return 0;
    return Math.min(this.nextFrameLength(queued.rest), Math.max(room, MIN_DATA_FRAME));
  }

  /**
   * @internal This stream's turn: writes a frame of `length` bytes (queuedFrameLength) of the data waiting
   * for it; true when more waits for another turn.
   */
  writeQueuedFrame(length: number): boolean {
    const queued = this.queued;
    if (!queued) return false;
    this.queued = undefined;
    if (length === 0) {
      // Reset, or the session is gone: the write fails (or waits for the stream's end) as any would.
      this.sendChunk(queued.rest, queued.callback);
      return false;
    }
    const rest = this.writeDataFrame(queued.rest, length);
    if (rest.length === 0) {
      queued.callback();
      return false;
    }
    if (this.sendWindow === 0) {
      this.blocked = { rest, callback: queued.callback };
      return false;
    }
    this.queued = { rest, callback: queued.callback };
    return true;
  }

  /**
   * @internal The session is closing (Session.writeWaitingData): the write waiting for its turn goes into
   * the connection now, as far as the window lets it; what the window holds back fails with the stream.
   */
  writeQueuedNow(): void {
    const queued = this.queued;
    if (!queued || this.reset || this.failAfterDrain) return;
    this.queued = undefined;
    let rest = queued.rest;
    while (rest.length > 0 && this.sendWindow > 0) rest = this.writeDataFrame(rest, MAX_DATA_FRAME);
    if (rest.length === 0) queued.callback();
    else this.blocked = { rest, callback: queued.callback };
  }

  private nextFrameLength(rest: Buffer): number {
    return Math.min(rest.length, this.sendWindow, MAX_DATA_FRAME);
  }

  /** Writes a frame of `rest` as long as the window and about `room` allow; returns what is left. */
  private writeDataFrame(rest: Buffer, room: number): Buffer {
    const n = Math.min(this.nextFrameLength(rest), Math.max(room, MIN_DATA_FRAME));
    this.host.writeFrame(FrameType.Data, 0, this.id, n, n === rest.length ? rest : rest.subarray(0, n));
    this.sendWindow -= n;
    return rest.subarray(n);
  }

  /**
   * Tops the peer's allowance back up to the window target minus what still sits unread in our buffer.
   * Updates are batched: one goes out once at least half the target is owed.
   */
  private grantWindow(): void {
    if (this.owed() < this.windowTarget / 2) return;
    this.growWindowIfBusy();
    this.sendGrant(this.owed());
  }

  /** What the reader consumed since the last update: bytes still on their way are not consumed yet. */
  private owed(): number {
    return this.windowTarget - this.readableLength - this.recvWindow - this.bodyInFlight;
  }

  private sendGrant(grant: number): void {
    this.recvWindow += grant;
    this.host.writeFrame(FrameType.WindowUpdate, 0, this.id, grant);
  }

  /**
   * A read(n) waits for more than the window lets the peer send (a message longer than the window): the
   * window grows to cover n, or the peer could never send the rest and the reader would wait for good.
   */
  private widenFor(size: number): void {
    const short = size - this.readableLength - this.recvWindow - this.bodyInFlight;
    if (short <= 0) return;
    const room = this.host.maxStreamWindow - this.windowTarget;
    if (size > this.windowTarget && room > 0)
      this.windowTarget += this.host.claimWindowGrowth(Math.min(size - this.windowTarget, room), true);
    const grant = this.owed();
    if (grant > 0) this.sendGrant(grant);
  }

  /** Called when an update is due: half the target was consumed since the last one. */
  private growWindowIfBusy(): void {
    const now = performance.now();
    const busy = now - this.windowEpoch < this.host.windowGrowthPeriod();
    this.windowEpoch = now;
    const room = this.host.maxStreamWindow - this.windowTarget;
    if (!busy || room <= 0) return;
    this.windowTarget += this.host.claimWindowGrowth(Math.min(this.windowTarget, room));
  }
}
