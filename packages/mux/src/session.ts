import { EventEmitter } from 'node:events';
import type { Duplex } from 'node:stream';
import { MuxError } from './errors.js';
import {
  describeHeader,
  Flag,
  type FrameHeader,
  FrameType,
  GoAwayCode,
  HEADER_SIZE,
  INITIAL_WINDOW,
  MAX_WINDOW,
  PROTOCOL_VERSION,
  writeHeader,
} from './frame.js';
import { FrameDecoder } from './frame-decoder.js';
import { SendOrder } from './send-order.js';
import { Stream, type StreamHost } from './stream.js';

export interface SessionOptions {
  /** True on the side that dialed the connection: it opens odd stream ids, the other side even ones. */
  client: boolean;
  /** Receive window a busy stream may grow to, in bytes (at least 256 KiB, where every stream starts). */
  maxStreamWindow?: number;
  /**
   * Window growth shared by all streams, in bytes: the streams' windows beyond their first 256 KiB each
   * add up to at most this. What a peer can make us buffer is bounded by this plus 256 KiB per stream
   * (a finished stream counts until its data has been read).
   */
  maxSessionWindow?: number;
  /** Milliseconds between keepalive pings; 0 disables them. */
  keepAliveInterval?: number;
  /** Milliseconds a keepalive ping may go unanswered before the session is closed. */
  keepAliveTimeout?: number;
  /**
   * Milliseconds without a byte from the peer, while a ping (keepalive or peerSilence's) waited for its
   * answer, that make the session emit 'stall' (with the silence in ms) once the answers are in; 0 never
   * does. A link that stops for less than the keepalive timeout otherwise leaves no trace, while the user saw
   * every connection freeze.
   */
  stallNotice?: number;
  /** Concurrent streams in both directions; an incoming SYN beyond it is answered with RST. */
  maxStreams?: number;
  /** Milliseconds to wait for the peer's ACK of a stream we opened; 0 waits forever. */
  openTimeout?: number;
}

export const DEFAULT_MAX_STREAM_WINDOW = 16 * 1024 * 1024;
export const DEFAULT_MAX_SESSION_WINDOW = 64 * 1024 * 1024;
const CLOSE_GRACE_MS = 2000;
/**
 * A stream whose reader consumed half its window within the growth period of the previous update gets its
 * window doubled, so a window settles near twice the period's worth of data at the stream's rate; all that
 * data is queued ahead of every other stream when the path is slow. The period is four round trips of the
 * tunnel (the fastest ping seen): enough for a window to cover the round trip on a long path, while on a slow
 * link with a short path a bulk stream stays near 256 KiB. Before a ping has come back, and at most: 200 ms.
 */
const MAX_WINDOW_GROWTH_PERIOD_MS = 200;
/** Event-loop turns (and, on a busy machine, waits for a CPU) dominate a loopback or LAN round trip. */
const MIN_WINDOW_GROWTH_PERIOD_MS = 20;
const MAX_QUEUED_ANSWER_BYTES = 64 * 1024;
/** peerSilence() sends a ping when none waits and none went for this long (ms). */
const PROBE_INTERVAL_MS = 500;
/**
 * The round trip peerSilence() allows a ping before any came back: a guess on the long side (a satellite
 * hop with full queues), replaced by the first answer's.
 */
const UNMEASURED_RTT_MS = 1000;
/** Each answer lets the expected round trip shrink by this share towards its own. */
const EXPECTED_RTT_DECAY = 1 / 8;
/**
 * An answer later than expected, after the peer was silent this long (ms) past the expectation while pings
 * waited, waited out a stopped link and is no round trip (as TCP takes no sample from a segment it sent
 * again): it raises the expectation by at most this much, or by as much as it was, if more. Taken whole, a
 * 5 s cut made the next cut's first 5 s pass for a slow answer, and every datagram sent into it went stale.
 * A late answer after which the peer was heard meanwhile is a slow link (our uplink's queue full of
 * downloads), and is taken whole.
 */
const STOPPED_ANSWER_MARGIN_MS = 1000;
/**
 * Frame headers written in one turn are encoded side by side into buffers of this size and leave as one
 * chunk per run: every chunk queued on a stream costs ~100 bytes of bookkeeping, and over a WebSocket, whose
 * buffer takes 4 MiB before we see backpressure, a peer that sent pings and did not read the answers had
 * 4 MiB of 12-byte chunks queued (~90 MiB of heap).
 */
const HEADER_BATCH_SIZE = 4096;

const defaults = {
  maxStreamWindow: DEFAULT_MAX_STREAM_WINDOW,
  // Four streams at full window: bulk transfers keep their speed, while readers that stop reading (a
  // visitor who never reads a download) cannot make the server hold 16 MiB each.
  maxSessionWindow: DEFAULT_MAX_SESSION_WINDOW,
  keepAliveInterval: 30_000,
  keepAliveTimeout: 10_000,
  stallNotice: 0,
  // Every tunnelled connection is a stream: tens of thousands of idle connections through one tunnel must fit.
  maxStreams: 65_536,
  openTimeout: 30_000,
};

/** A connection that says how much more data it takes before that would wait behind a slow link (WebSocketStream). */
interface PacedConnection {
  readonly writableRoom?: number;
}

interface PendingPing {
  started: bigint;
  resolve: (rttMs: number) => void;
  reject: (err: Error) => void;
}

const goAwayNames: Record<number, string> = {
  [GoAwayCode.Normal]: 'normal',
  [GoAwayCode.ProtocolError]: 'protocol error',
  [GoAwayCode.InternalError]: 'internal error',
};

/**
 * A yamux session over any byte-stream Duplex. Events: 'stream' (a peer-opened Stream), 'ack' (stream, ms: the
 * peer acknowledged a stream we opened, ms after our SYN), 'goaway' (code), 'error' (emitted only when someone
 * listens), 'close' (err?: the reason, absent on an orderly end).
 */
export class Session extends EventEmitter {
  readonly maxStreamWindow: number;
  private readonly conn: Duplex;
  private readonly options: Required<Omit<SessionOptions, 'client'>>;
  private readonly isClient: boolean;
  private readonly streams = new Map<number, Stream>();
  private readonly decoder: FrameDecoder;
  private readonly host: StreamHost;
  private nextStreamId: number;
  private bodyTarget: Stream | undefined;
  private localGoAway = false;
  private remoteGoAway = false;
  private isClosed = false;
  private closedLocally = false;
  /** Bytes of answers (ping ACKs, RSTs, stream ACKs) queued while the peer is not reading what we send. */
  private queuedAnswerBytes = 0;
  private pausedForAnswers = false;
  private corked = false;
  /** Headers of this turn: `headers` holds them from `headersFrom` to `headersTo`, not yet written. */
  private headers = Buffer.allocUnsafe(HEADER_BATCH_SIZE);
  private headersFrom = 0;
  private headersTo = 0;
  /**
   * Streams whose data waits for room in the connection. Frames without a body (window updates, pings,
   * opens, closes) never wait here: they go ahead of all queued data, so a new stream's ACK or a ping's
   * answer waits only for what the connection already holds, not for every busy stream's window.
   */
  private readonly sendOrder = new SendOrder<Stream>();
  /** Sum of the open streams' grownWindow, at most options.maxSessionWindow. */
  private grownWindow = 0;
  /** Released streams whose growth still counts in grownWindow: their data is not read yet. */
  private readonly releasedUnread = new Set<Stream>();
  private readonly pings = new Map<number, PendingPing>();
  private nextPingId = 1;
  /** The fastest ping round trip so far, in ms; undefined until one came back. */
  private minRtt: number | undefined;
  private keepAliveTimer: NodeJS.Timeout | undefined;
  private keepAliveInFlight = false;
  /** Frames received so far: any of them shows the peer alive while a ping's answer is on its way. */
  private framesReceived = 0;
  /** When a keepalive ping was last answered (the session's start before the first). */
  private keepAliveAnsweredAt = performance.now();
  /** When bytes last came from the peer. */
  private lastReceivedAt = performance.now();
  /** Since when a ping of ours has been waiting for its answer; undefined while none waits. */
  private pingsWaitingSince: number | undefined;
  /** The longest time without bytes from the peer while pings waited, since none did. */
  private longestSilence = 0;
  /** When our last ping left (a probe goes only so often). */
  private lastPingSentAt = Number.NEGATIVE_INFINITY;
  /**
   * How long a ping's answer takes on this link (ms): the longest recent round trip, shrinking slowly towards
   * newer ones; undefined until one came back.
   */
  private expectedRtt: number | undefined;

  constructor(conn: Duplex, options: SessionOptions) {
    super();
    this.conn = conn;
    this.isClient = options.client;
    this.options = { ...defaults, ...stripUndefined(options) };
    this.maxStreamWindow = Math.max(this.options.maxStreamWindow, INITIAL_WINDOW);
    if (this.maxStreamWindow > MAX_WINDOW) throw new RangeError('maxStreamWindow must fit in 32 bits');
    if (!(this.options.maxSessionWindow >= 0)) throw new RangeError('maxSessionWindow must be at least 0');
    this.nextStreamId = options.client ? 1 : 2;
    this.host = {
      maxStreamWindow: this.maxStreamWindow,
      windowGrowthPeriod: () => this.windowGrowthPeriod(),
      claimWindowGrowth: (wanted, force) => this.claimWindowGrowth(wanted, force),
      writeFrame: (type, flags, id, length, body) => this.writeFrame(type, flags, id, length, body),
      roomForData: () => (this.sendOrder.size === 0 ? this.connRoom() : 0),
      queueData: (stream) => this.queueForTurn(stream),
      unqueueData: (stream) => this.sendOrder.remove(stream),
      releaseStream: (stream) => this.releaseStream(stream),
    };
    this.decoder = new FrameDecoder({
      onHeader: (header) => this.onHeader(header),
      onData: (piece) => this.bodyTarget?.onData(piece),
      onDataEnd: (header) => this.onDataEnd(header),
    });

    conn.on('data', (chunk: Buffer) => {
      this.noteReceived();
      this.decoder.push(chunk);
    });
    conn.on('end', () => this.onConnEnded());
    conn.on('close', () => this.onConnEnded());
    conn.on('error', (err: Error) =>
      this.terminate(new MuxError('ERR_SESSION_CLOSED', `connection error: ${err.message}`, { cause: err })),
    );
    conn.on('drain', () => this.onConnDrain());

    if (this.options.keepAliveInterval > 0) {
      this.keepAliveTimer = setInterval(() => this.keepAlive(), this.options.keepAliveInterval);
      this.keepAliveTimer.unref();
      // The first round trip, measured before any bulk data queues up in front of it.
      setImmediate(() => this.keepAlive());
    }
  }

  get closed(): boolean {
    return this.isClosed;
  }

  get streamCount(): number {
    return this.streams.size;
  }

  /** Opens a stream. It is usable at once: data may follow the SYN before the peer's ACK. */
  open(): Stream {
    const id = this.nextStreamId;
    const stream = new Stream(this, this.host, id);
    const refusal = this.openRefusal(id);
    if (refusal) {
      stream.failBeforeOpen(refusal);
      return stream;
    }
    this.nextStreamId += 2;
    this.streams.set(id, stream);
    stream.announce(Flag.SYN);
    stream.startOpenTimer(this.options.openTimeout);
    return stream;
  }

  /** Round-trip time in milliseconds. */
  ping(): Promise<number> {
    if (this.isClosed) return Promise.reject(new MuxError('ERR_SESSION_CLOSED', 'session is closed'));
    const id = this.nextPingId;
    this.nextPingId = (this.nextPingId % MAX_WINDOW) + 1;
    return new Promise((resolve, reject) => {
      const now = performance.now();
      if (this.pings.size === 0) this.pingsWaitingSince = now;
      this.lastPingSentAt = now;
      this.pings.set(id, { started: process.hrtime.bigint(), resolve, reject });
      this.writeFrame(FrameType.Ping, Flag.SYN, 0, id);
    });
  }

  /**
   * How long (ms) the peer has been silent while a ping of ours waits for its answer, counted from when that
   * answer was due (a round trip after the ping left, as long as recent ones took): 0 while none waits or
   * the peer is heard. When none waits, one is sent (at most every PROBE_INTERVAL_MS), so that a sender asking
   * this as it sends learns of a link that stopped within about that long, not at the next keepalive: a
   * datagram sent into a stopped link arrives, if ever, in a burst of stale ones once the link is back.
   * Counted from the ping's departure instead, a 1.2 s round trip looked like 0.2 s of silence per ping, and
   * a one-way udp flow over that working link lost 16% of its datagrams.
   */
  peerSilence(): number {
    const now = performance.now();
    const since = this.pingsWaitingSince;
    if (since !== undefined) {
      const answerDue = since + (this.expectedRtt ?? UNMEASURED_RTT_MS);
      return Math.max(0, now - Math.max(answerDue, this.lastReceivedAt));
    }
    if (!this.isClosed && now - this.lastPingSentAt >= PROBE_INTERVAL_MS) this.ping().catch(() => {});
    return 0;
  }

  /** Tells the peer to open no more streams; streams already open carry on. */
  goAway(code: GoAwayCode = GoAwayCode.Normal): void {
    if (this.localGoAway || this.isClosed) return;
    this.localGoAway = true;
    this.writeFrame(FrameType.GoAway, 0, 0, code);
  }

  /** Ends the session: GoAway, then the connection is closed once written; every open stream is destroyed. */
  close(err?: Error): void {
    if (this.isClosed) return;
    this.writeWaitingData();
    this.goAway(err ? GoAwayCode.InternalError : GoAwayCode.Normal);
    this.closedLocally = true;
    this.terminate(err);
  }

  private openRefusal(id: number): MuxError | undefined {
    if (this.isClosed) return new MuxError('ERR_SESSION_CLOSED', 'session is closed');
    if (this.remoteGoAway) return new MuxError('ERR_SESSION_GOAWAY', 'peer sent GoAway: no new streams');
    if (this.streams.size >= this.options.maxStreams)
      return new MuxError('ERR_TOO_MANY_STREAMS', `already ${this.streams.size} streams (maxStreams)`);
    if (id > MAX_WINDOW) return new MuxError('ERR_SESSION_GOAWAY', 'stream ids exhausted');
    return undefined;
  }

  private onHeader(header: FrameHeader): void {
    this.bodyTarget = undefined;
    this.framesReceived += 1;
    if (header.version !== PROTOCOL_VERSION) {
      this.protocolError(`unsupported version ${header.version} (${describeHeader(header)})`);
      return;
    }
    switch (header.type) {
      case FrameType.Data:
      case FrameType.WindowUpdate:
        this.onStreamFrame(header);
        return;
      case FrameType.Ping:
        this.onPing(header);
        return;
      case FrameType.GoAway:
        this.onGoAway(header.length);
        return;
      default:
        this.protocolError(`unknown frame type ${header.type} (${describeHeader(header)})`);
    }
  }

  private onStreamFrame(header: FrameHeader): void {
    const { streamId: id, flags, type } = header;
    if (id === 0) {
      this.protocolError(`stream frame on stream 0 (${describeHeader(header)})`);
      return;
    }
    let stream = this.streams.get(id);
    if (flags & Flag.SYN) {
      if (stream) {
        this.protocolError(`duplicate SYN for stream ${id}`);
        return;
      }
      if ((id % 2 === 1) === this.isClient) {
        this.protocolError(`peer opened stream ${id}, an id of our parity`);
        return;
      }
      stream = this.acceptStream(id);
      if (!stream) {
        this.bodyBeyondAnyWindow(header);
        return;
      }
    }
    if (!stream) {
      // A frame for a stream that is gone: late frames after a close are normal, data is discarded and
      // the sender is told (once per frame) that nobody is listening.
      if (this.bodyBeyondAnyWindow(header)) return;
      if (type === FrameType.Data && header.length > 0 && !(flags & Flag.RST))
        this.writeAnswer(FrameType.WindowUpdate, Flag.RST, id, 0);
      return;
    }
    if (flags & Flag.ACK) {
      const openMs = stream.onAck();
      if (openMs !== undefined) this.emit('ack', stream, openMs);
    }
    if (type === FrameType.WindowUpdate) {
      if (!stream.onWindowUpdate(header.length)) {
        this.protocolError(`stream ${id}: window update of ${header.length} overflows the send window`);
        return;
      }
      this.applyCloseFlags(stream, flags);
      return;
    }
    if (!stream.reserveReceive(header.length)) {
      this.protocolError(
        `stream ${id}: ${header.length} bytes of data beyond the receive window of ${stream.receiveWindow}`,
      );
      return;
    }
    this.bodyTarget = stream;
  }

  /**
   * The body of a Data frame for a stream we do not hold (gone, refused, never opened) is read and
   * discarded. A peer keeping to the protocol has no more of it in flight than the window we granted that
   * stream, and no window we grant exceeds maxStreamWindow: a longer frame is a protocol error, as for a
   * stream we hold, rather than up to 4 GiB of what follows read and thrown away. True when it was one.
   */
  private bodyBeyondAnyWindow(header: FrameHeader): boolean {
    if (header.type !== FrameType.Data || header.length <= this.maxStreamWindow) return false;
    this.protocolError(
      `stream ${header.streamId}: ${header.length} bytes of data for a stream we do not hold, beyond the largest window we grant (${this.maxStreamWindow})`,
    );
    return true;
  }

  private onDataEnd(header: FrameHeader): void {
    const stream = this.bodyTarget;
    this.bodyTarget = undefined;
    if (!stream) return;
    stream.onDataFrameEnd();
    this.applyCloseFlags(stream, header.flags);
  }

  private applyCloseFlags(stream: Stream, flags: number): void {
    if (flags & Flag.RST) stream.onRemoteReset();
    else if (flags & Flag.FIN) stream.onRemoteFin();
  }

  private acceptStream(id: number): Stream | undefined {
    if (
      this.localGoAway ||
      this.streams.size >= this.options.maxStreams ||
      this.listenerCount('stream') === 0
    ) {
      this.writeAnswer(FrameType.WindowUpdate, Flag.RST, id, 0);
      return undefined;
    }
    const stream = new Stream(this, this.host, id);
    this.streams.set(id, stream);
    stream.announce(Flag.ACK);
    this.noteAnswerQueued();
    this.emit('stream', stream);
    return stream;
  }

  private onPing(header: FrameHeader): void {
    if (header.flags & Flag.SYN) {
      this.writeAnswer(FrameType.Ping, Flag.ACK, 0, header.length);
      return;
    }
    const pending = this.pings.get(header.length);
    if (!pending) return;
    this.pings.delete(header.length);
    const rtt = Number(process.hrtime.bigint() - pending.started) / 1e6;
    if (this.minRtt === undefined || rtt < this.minRtt) this.minRtt = rtt;
    this.expectedRtt = this.nextExpectedRtt(rtt);
    if (this.pings.size === 0) this.allPingsAnswered();
    pending.resolve(rtt);
  }

  private nextExpectedRtt(rtt: number): number {
    const expected = this.expectedRtt ?? rtt;
    if (rtt <= expected) return expected - (expected - rtt) * EXPECTED_RTT_DECAY;
    if (this.longestSilence < expected + STOPPED_ANSWER_MARGIN_MS) return rtt;
    return Math.min(rtt, expected + Math.max(expected, STOPPED_ANSWER_MARGIN_MS));
  }

  private allPingsAnswered(): void {
    this.pingsWaitingSince = undefined;
    const { stallNotice } = this.options;
    if (stallNotice > 0 && this.longestSilence >= stallNotice)
      this.emit('stall', Math.round(this.longestSilence));
    this.longestSilence = 0;
  }

  private onGoAway(code: number): void {
    this.remoteGoAway = true;
    this.emit('goaway', code);
    if (code !== GoAwayCode.Normal) {
      const name = goAwayNames[code] ?? `code ${code}`;
      this.terminate(new MuxError('ERR_SESSION_GOAWAY', `peer ended the session: GoAway (${name})`));
    }
  }

  private keepAlive(): void {
    if (this.keepAliveInFlight || this.isClosed) return;
    this.keepAliveInFlight = true;
    const timeout = this.options.keepAliveTimeout;
    let framesSeen = this.framesReceived;
    const check = (): void => {
      // Frames that came meanwhile are signs of life too: on a slow uplink full of data the answer queues
      // behind them (8 downloads over 512 kbit/s held it back 30 s, and both ends dropped a busy session).
      if (this.framesReceived !== framesSeen) {
        framesSeen = this.framesReceived;
        timer = setTimeout(check, timeout);
        timer.unref();
        return;
      }
      // The silence since the last answer, not this ping's wait alone: the programs set the timeout to
      // heartbeat_timeout minus the interval, and the user knows the former.
      const silent = Math.round(performance.now() - this.keepAliveAnsweredAt);
      this.terminate(
        new MuxError(
          'ERR_KEEPALIVE_TIMEOUT',
          `keepalive ping unanswered: no ping answered for ${silent} ms, and nothing else received for ${timeout} ms`,
        ),
      );
    };
    let timer = setTimeout(check, timeout);
    timer.unref();
    this.ping().then(
      () => {
        clearTimeout(timer);
        this.keepAliveInFlight = false;
        this.keepAliveAnsweredAt = performance.now();
      },
      () => clearTimeout(timer),
    );
  }

  private noteReceived(): void {
    const now = performance.now();
    const since = this.pingsWaitingSince;
    if (since !== undefined) {
      const silence = now - Math.max(since, this.lastReceivedAt);
      if (silence > this.longestSilence) this.longestSilence = silence;
    }
    this.lastReceivedAt = now;
  }

  private protocolError(message: string): void {
    this.goAway(GoAwayCode.ProtocolError);
    this.terminate(new MuxError('ERR_MUX_PROTOCOL', `yamux protocol error: ${message}`));
  }

  private onConnEnded(): void {
    if (this.isClosed) return;
    const orderly = this.remoteGoAway && this.streams.size === 0;
    this.terminate(orderly ? undefined : new MuxError('ERR_SESSION_CLOSED', 'connection closed by peer'));
  }

  private terminate(err?: Error): void {
    if (this.isClosed) return;
    this.isClosed = true;
    this.decoder.stop();
    this.bodyTarget = undefined;
    if (this.keepAliveTimer) clearInterval(this.keepAliveTimer);
    const closedError =
      err instanceof MuxError
        ? err
        : new MuxError('ERR_SESSION_CLOSED', err?.message ?? 'session closed', { cause: err });
    for (const pending of this.pings.values()) pending.reject(closedError);
    this.pings.clear();
    this.pingsWaitingSince = undefined;
    // A close we asked for closes streams like sockets closed by their owner; anything else is their error.
    const streamError = err || !this.closedLocally ? closedError : undefined;
    for (const stream of [...this.streams.values()]) stream.abort(streamError);
    this.streams.clear();
    this.grownWindow = 0;
    this.releasedUnread.clear();
    this.sendOrder.clear();
    this.uncork();
    this.closeConn(err);
    if (err && this.listenerCount('error') > 0) this.emit('error', err);
    this.emit('close', err);
  }

  /** Lets a final GoAway reach the peer, but never waits long on a peer that stopped reading. */
  private closeConn(err: Error | undefined): void {
    const conn = this.conn;
    if (conn.destroyed) return;
    if (conn.writableEnded || (err instanceof MuxError && err.code === 'ERR_KEEPALIVE_TIMEOUT')) {
      conn.destroy();
      return;
    }
    const grace = setTimeout(() => conn.destroy(), CLOSE_GRACE_MS);
    grace.unref();
    conn.end(() => {
      clearTimeout(grace);
      conn.destroy();
    });
  }

  /**
   * Writes a frame the peer's own input asked for. Those cost us memory per frame the peer sends, so while the
   * peer is not reading, we stop reading too once a bounded amount is queued (TCP pushes back on the peer).
   * Only answers count: pausing on data backpressure would deadlock two peers that both send bulk data.
   */
  private writeAnswer(type: FrameType, flags: number, streamId: number, length: number): void {
    this.writeFrame(type, flags, streamId, length);
    this.noteAnswerQueued();
  }

  private noteAnswerQueued(): void {
    if (!this.conn.writableNeedDrain) return;
    this.queuedAnswerBytes += HEADER_SIZE;
    if (this.queuedAnswerBytes > MAX_QUEUED_ANSWER_BYTES && !this.pausedForAnswers) {
      this.pausedForAnswers = true;
      this.conn.pause();
    }
  }

  private onConnDrain(): void {
    this.queuedAnswerBytes = 0;
    if (this.pausedForAnswers) {
      this.pausedForAnswers = false;
      this.conn.resume();
    }
    this.writeQueuedData();
  }

  /** Bytes of data the connection takes before more would only wait there, behind what it holds. */
  private connRoom(): number {
    if (this.conn.writableNeedDrain) return 0;
    return (this.conn as PacedConnection).writableRoom ?? Number.POSITIVE_INFINITY;
  }

  /**
   * The session is closing: data written before the close and still waiting for its turn goes into the
   * connection now, whatever its room, ahead of the GoAway (which an error's code makes the peer act on at
   * once), as it did when streams wrote straight into the connection. A last message before a close (the
   * server's notice of why it ends the session, "taken_over" or "token expired") is otherwise lost whenever
   * the link is busy. Only the writes waiting now: what their callbacks write next is cut by the close.
   */
  private writeWaitingData(): void {
    const waiting: Stream[] = [];
    for (let stream = this.sendOrder.next(); stream; stream = this.sendOrder.next()) waiting.push(stream);
    for (const stream of waiting) stream.writeQueuedNow();
  }

  /** Gives waiting streams their turns, a frame each, until the connection is full again. */
  private writeQueuedData(): void {
    for (let room = this.connRoom(); room > 0 && !this.isClosed; room = this.connRoom()) {
      const stream = this.sendOrder.next();
      if (!stream) return;
      const length = stream.queuedFrameLength(room);
      // A frame takes its header's bytes of the connection too: charged the body alone, a stream writing
      // 1-byte pieces took 13 bytes of the link per byte it was charged, over 90% of it against a bulk stream.
      this.sendOrder.charge(stream, length > 0 ? HEADER_SIZE + length : 0);
      if (stream.writeQueuedFrame(length)) this.queueForTurn(stream);
    }
  }

  /**
   * Queues `stream`'s waiting data for a turn, due as if its frame were as short as a turn's can be: what
   * the room then allows is not known yet. Due its whole waiting chunk instead (64 KiB a read), a bulk stream
   * kept its turns until the chunk was through, and with 200 downloads on a 2 Mbit/s uplink the last of
   * them waited 50 s for a first byte.
   */
  private queueForTurn(stream: Stream): void {
    this.sendOrder.add(stream, HEADER_SIZE + stream.queuedFrameLength(0));
  }

  private writeFrame(type: FrameType, flags: number, streamId: number, length: number, body?: Buffer): void {
    if (this.isClosed && type !== FrameType.GoAway) return;
    if (this.conn.writableEnded || this.conn.destroyed) return;
    // Frames written in one event-loop turn leave as one writev (one WebSocket message, one syscall).
    // The turn, not the tick: one poll phase runs a callback per ready socket, and uncorking after each
    // cost a syscall per request under load. setImmediate runs right after that poll phase, so a lone
    // frame leaves as soon as it did with nextTick; many streams' frames share one write.
    if (!this.corked) {
      this.corked = true;
      this.conn.cork();
      setImmediate(this.uncorkAtTurnEnd);
    }
    if (this.headersTo + HEADER_SIZE > this.headers.length) {
      this.writeHeaders();
      this.headers = Buffer.allocUnsafe(HEADER_BATCH_SIZE);
      this.headersFrom = 0;
      this.headersTo = 0;
    }
    writeHeader(this.headers, this.headersTo, type, flags, streamId, length);
    this.headersTo += HEADER_SIZE;
    if (body) {
      this.writeHeaders();
      this.conn.write(body);
    }
  }

  /** Writes the headers gathered since the last write (a run of them, or the one before a body). */
  private writeHeaders(): void {
    if (this.headersTo === this.headersFrom) return;
    this.conn.write(this.headers.subarray(this.headersFrom, this.headersTo));
    this.headersFrom = this.headersTo;
  }

  private readonly uncorkAtTurnEnd = (): void => this.uncork();

  private uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    if (!this.conn.writableEnded && !this.conn.destroyed) this.writeHeaders();
    else this.headersFrom = this.headersTo;
    this.conn.uncork();
  }

  private windowGrowthPeriod(): number {
    if (this.minRtt === undefined) return MAX_WINDOW_GROWTH_PERIOD_MS;
    return Math.min(MAX_WINDOW_GROWTH_PERIOD_MS, Math.max(MIN_WINDOW_GROWTH_PERIOD_MS, 4 * this.minRtt));
  }

  private claimWindowGrowth(wanted: number, force = false): number {
    const granted = force
      ? wanted
      : Math.max(0, Math.min(wanted, this.options.maxSessionWindow - this.grownWindow));
    this.grownWindow += granted;
    return granted;
  }

  // A released stream can receive nothing more (both sides finished, or it was reset). Its growth returns to
  // the shared allowance once the application has read what it holds (or destroyed it): until then those
  // bytes are in memory, and returning it early would let the next stream grow into the same allowance.
  private releaseStream(stream: Stream): void {
    if (this.streams.get(stream.id) !== stream) return;
    this.streams.delete(stream.id);
    const grown = stream.grownWindow;
    if (grown === 0) return;
    if (stream.destroyed || stream.readableLength === 0) {
      this.grownWindow -= grown;
      return;
    }
    this.releasedUnread.add(stream);
    const giveBack = (): void => {
      if (this.releasedUnread.delete(stream)) this.grownWindow -= grown;
    };
    stream.once('end', giveBack);
    stream.once('close', giveBack);
  }
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
