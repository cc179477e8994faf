import { isUtf8 } from 'node:buffer';
import { randomFillSync } from 'node:crypto';
import { Duplex } from 'node:stream';
import { countGatheredAsUnread, PieceGatherer } from './piece-gatherer.js';
import {
  CloseCode,
  MAX_HEADER_SIZE,
  MaskKey,
  maskInto,
  Opcode,
  writeFrameHeader,
} from './websocket-frame.js';
import { WebSocketFrameParser } from './websocket-frame-parser.js';
import { WriteAllowance } from './write-allowance.js';

export interface WebSocketStreamOptions {
  /** 'client' masks what it sends and accepts only unmasked frames; 'server' the reverse (RFC 6455 §5.1). */
  role: 'client' | 'server';
  /** Bytes the peer sent right behind the handshake, read along with it. */
  head?: Buffer;
  /** Bytes buffered for writing before write() reports backpressure (default 4 MiB). */
  highWaterMark?: number;
}

/**
 * The least a writer may queue (see WriteAllowance): a quarter of a second at 512 kbit/s, still more than
 * a 10 Mbit/s link sends while the event loop turns to refill it.
 */
const MIN_WRITE_ALLOWANCE = 16 * 1024;

/** Frames carry at most this much, for peers that assemble whole messages before handing them on. */
export const MAX_FRAME_PAYLOAD = 1024 * 1024;
/** How long a close handshake may take before the socket is dropped. */
const CLOSE_TIMEOUT_MS = 2000;
/** Masked frames at least this big are built in reused buffers (see FrameBufferPool). */
const POOLED_FRAME_MIN = 64 * 1024;
const POOLED_FRAME_SIZE = MAX_HEADER_SIZE + MAX_FRAME_PAYLOAD;
const POOL_KEEP = 4;
const MASK_KEY_BATCH = 1024;
/**
 * How long one connection's input may hold the event loop in one turn before the others get theirs. libuv
 * reads a ready socket up to 32 times (2 MiB) a turn, and each WebSocket and mux frame costs about a
 * microsecond: a peer sending 1-byte frames held the loop ~300 ms a turn, and every other tunnel waited.
 */
const TURN_BUDGET_MS = 10;

type Callback = (err?: Error | null) => void;

interface TcpOptions {
  setNoDelay?(noDelay?: boolean): unknown;
  setTimeout?(ms: number): unknown;
}

/**
 * A WebSocket connection after its handshake, as a byte stream: everything written leaves as binary frames
 * (one frame per write batch, up to 1 MiB), and the payload of every binary frame received is pushed as
 * it arrives, in pieces that are views of the socket's reads. Message boundaries carry no meaning for us,
 * so nothing is reassembled and, on the server, nothing is copied: this is the tunnel's hot path.
 *
 * Pings are answered; a close frame is answered and ends the readable side; close() starts a close
 * handshake; end() sends close 1000. A protocol violation sends the matching close code and destroys the
 * stream with an error saying what the peer did.
 */
export class WebSocketStream extends Duplex {
  /** The close code and reason the peer sent, once its close frame arrived. */
  remoteClose: { code: number; reason: string } | undefined;
  private readonly socket: Duplex;
  private readonly parser: WebSocketFrameParser;
  private readonly masking: boolean;
  private readonly pool = new FrameBufferPool();
  private readonly mask = new MaskKey();
  private maskKeys = Buffer.allocUnsafe(0);
  private maskKeyOffset = 0;
  private closeSent = false;
  private closeReceived = false;
  private closeTimer: NodeJS.Timeout | undefined;
  /** A write callback held until the socket drains. */
  private heldCallback: Callback | undefined;
  /** What a writer may queue here before it is told to hold back (writableRoom). */
  private readonly allowance: WriteAllowance;
  /** Payload bytes handed to the socket so far (its writableLength of them it has not taken yet). */
  private sentToSocket = 0;
  /** writableRoom said there is none: 'drain' is due when the socket catches up. */
  private congestionReported = false;
  /** The latest ping's payload, answered once the socket drains (pings while it is full are not queued). */
  private pendingPong: Buffer | undefined;
  /** When this turn's first read came (performance.now()), or -1 outside a turn with reads. */
  private turnStart = -1;
  /** The socket is paused until the next turn: this turn's budget is spent. */
  private yielding = false;
  /** The socket is paused until the reader wants more: push() said the buffer is full. */
  private readerFull = false;
  /** Small payload pieces that arrived while the reader (the mux session) had stopped reading. */
  private readonly gatherer = new PieceGatherer(this);

  static {
    countGatheredAsUnread(WebSocketStream.prototype, (ws) => ws.gatherer);
  }

  constructor(socket: Duplex, options: WebSocketStreamOptions) {
    const limit = options.highWaterMark ?? 4 * 1024 * 1024;
    super({ allowHalfOpen: false, writableHighWaterMark: limit, readableHighWaterMark: limit });
    this.allowance = new WriteAllowance(Math.min(MIN_WRITE_ALLOWANCE, limit), limit);
    this.socket = socket;
    this.masking = options.role === 'client';
    this.parser = new WebSocketFrameParser(options.role === 'server', {
      onPayload: (piece) => this.onPayload(piece),
      onControl: (opcode, payload) => this.onControl(opcode, payload),
      onProtocolError: (code, message) => this.onProtocolError(code, message),
    });
    const tcp = socket as Duplex & TcpOptions;
    // Frames are written whole, in batches: Nagle would only add latency.
    tcp.setNoDelay?.(true);
    tcp.setTimeout?.(0);
    socket.on('data', (chunk: Buffer) => this.onSocketData(chunk));
    socket.on('end', () => this.onSocketEnd());
    socket.on('close', () => this.onSocketClose());
    socket.on('error', (err: Error) => this.destroy(err));
    socket.on('drain', () => {
      this.allowance.socketTook(this.sentToSocket);
      this.sendPendingPong();
      this.releaseHeld();
      this.reportRoom();
    });
    if (options.head && options.head.length > 0) this.parser.push(options.head);
  }

  /**
   * Bytes a writer may add before what waits here (counted until the socket has taken it) is more than the
   * link drains in a few milliseconds (see WriteAllowance); at 0 or below it should hold its data back and
   * write again at the next 'drain'. A mux session does, so that what it writes next (a window update, a
   * ping's answer, a small stream's few bytes) goes ahead of its bulk streams' data instead of behind up to
   * highWaterMark of it: seconds on a slow uplink. On a fast link the allowance grows to highWaterMark.
   */
  get writableRoom(): number {
    const room = this.roomLeft();
    if (room <= 0) {
      this.congestionReported = true;
      this.allowance.holdingBack();
    }
    return room;
  }

  /** writableRoom without telling anyone: for the checks of our own. */
  private roomLeft(): number {
    return this.allowance.bytes - this.writableLength;
  }

  /** A writer told of congestion hears 'drain' once it is over (Node's own 'drain' needs highWaterMark). */
  private readonly reportRoom = (): void => {
    if (!this.congestionReported || this.writableNeedDrain || this.roomLeft() <= 0) return;
    this.congestionReported = false;
    this.emit('drain');
  };

  /** Starts the close handshake: no data is sent after it; the stream ends when the peer answers. */
  close(code: number = CloseCode.Normal, reason = ''): void {
    if (this.closeSent || !this.socket.writable) return;
    this.closeSent = true;
    const text = Buffer.from(reason, 'utf8');
    // A close frame holds 125 bytes: the code and 123 bytes of reason (ours are short ASCII).
    const payload = Buffer.allocUnsafe(2 + Math.min(text.length, 123));
    payload.writeUInt16BE(code, 0);
    text.copy(payload, 2, 0, payload.length - 2);
    this.sendFrames(Opcode.Close, [payload], payload.length);
    if (this.closeReceived) {
      this.socket.end();
      return;
    }
    this.closeTimer = setTimeout(() => this.socket.destroy(), CLOSE_TIMEOUT_MS);
    this.closeTimer.unref();
  }

  override _read(): void {
    this.readerFull = false;
    if (!this.yielding && this.socket.isPaused()) this.socket.resume();
  }

  override read(size?: number): ReturnType<Duplex['read']> {
    this.gatherer.beforeRead(size);
    const chunk = super.read(size);
    this.gatherer.afterRead(size, chunk);
    return chunk;
  }

  override pause(): this {
    this.gatherer.readerPaused();
    return super.pause();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: Callback): void {
    this.sendData([chunk], chunk.length, callback);
  }

  override _writev(chunks: { chunk: Buffer; encoding: BufferEncoding }[], callback: Callback): void {
    const buffers: Buffer[] = new Array(chunks.length);
    let total = 0;
    for (let i = 0; i < chunks.length; i++) {
      const chunk = chunks[i]!.chunk;
      buffers[i] = chunk;
      total += chunk.length;
    }
    this.sendData(buffers, total, callback);
  }

  override _final(callback: Callback): void {
    this.close(CloseCode.Normal);
    callback();
  }

  override _destroy(err: Error | null, callback: Callback): void {
    this.gatherer.drop();
    this.releaseHeld(err ?? new Error('WebSocket destroyed'));
    if (!this.socket.destroyed) {
      // An error drops the connection at once; an orderly destroy still says goodbye.
      if (err && !this.closeSent) this.socket.destroy();
      else this.close(CloseCode.Normal);
    }
    callback(err);
  }

  private sendData(chunks: Buffer[], total: number, callback: Callback): void {
    if (this.closeSent) {
      callback(new Error('WebSocket is closing: nothing can be sent after the close frame'));
      return;
    }
    if (total > 0) this.sendFrames(Opcode.Binary, chunks, total);
    this.sentToSocket += total;
    this.allowance.socketTook(this.sentToSocket - this.socket.writableLength);
    if (this.socket.writableNeedDrain) {
      this.heldCallback = callback;
      return;
    }
    callback();
    if (this.congestionReported) process.nextTick(this.reportRoom);
  }

  /**
   * Sends `total` bytes of `chunks` as frames of at most MAX_FRAME_PAYLOAD (one frame when `total` is 0),
   * all in one writev. Server: each frame header goes between the caller's own buffers. Client: masking
   * needs a copy anyway, so each frame is built whole, masked as it is copied in.
   */
  private sendFrames(opcode: number, chunks: Buffer[], total: number): void {
    const socket = this.socket;
    const mask = this.masking ? this.mask : undefined;
    socket.cork();
    let index = 0;
    let chunkOffset = 0;
    let remaining = total;
    do {
      const payload = Math.min(remaining, MAX_FRAME_PAYLOAD);
      const frame = mask ? this.pool.take(MAX_HEADER_SIZE + payload) : Buffer.allocUnsafe(MAX_HEADER_SIZE);
      if (mask) this.nextMaskKey();
      let at = writeFrameHeader(frame, 0, opcode, payload, mask?.at(0));
      if (!mask) socket.write(frame.subarray(0, at));
      for (let done = 0; done < payload; ) {
        const chunk = chunks[index]!;
        const n = Math.min(chunk.length - chunkOffset, payload - done);
        if (n > 0) {
          const piece = n === chunk.length ? chunk : chunk.subarray(chunkOffset, chunkOffset + n);
          if (mask) maskInto(piece, mask.at(done), frame, at);
          else socket.write(piece);
          at += n;
          done += n;
          chunkOffset += n;
        }
        if (chunkOffset === chunk.length) {
          index++;
          chunkOffset = 0;
        }
      }
      if (mask) socket.write(frame.subarray(0, at), () => this.pool.give(frame));
      remaining -= payload;
    } while (remaining > 0);
    socket.uncork();
  }

  /** A fresh random key per frame (RFC 6455 §5.3), drawn from a batch to keep the syscall off the path. */
  private nextMaskKey(): void {
    if (this.maskKeyOffset + 4 > this.maskKeys.length) {
      this.maskKeys = randomFillSync(Buffer.allocUnsafe(4 * MASK_KEY_BATCH));
      this.maskKeyOffset = 0;
    }
    this.mask.set(this.maskKeys, this.maskKeyOffset);
    this.maskKeyOffset += 4;
  }

  private onPayload(piece: Buffer): void {
    if (this.destroyed || this.readableEnded) return;
    // Pieces are views of the socket's reads, handed on as they are while the reader keeps up. Once it has
    // stopped (the session pauses us while its peer does not read its answers), small ones are gathered: a
    // peer sending 1-byte frames had each held as a chunk of its own, 100 MiB of heap per million.
    let more: boolean;
    if (this.gatherer.wants(piece)) more = this.gatherer.add(piece);
    else {
      this.gatherer.flush();
      more = this.push(piece);
    }
    if (!more) {
      this.readerFull = true;
      this.socket.pause();
    }
  }

  private onSocketData(chunk: Buffer): void {
    if (this.turnStart < 0) {
      this.turnStart = performance.now();
      setImmediate(this.endTurn);
    }
    this.parser.push(chunk);
    if (!this.yielding && performance.now() - this.turnStart > TURN_BUDGET_MS) {
      this.yielding = true;
      this.socket.pause();
    }
  }

  private readonly endTurn = (): void => {
    this.turnStart = -1;
    if (!this.yielding) return;
    this.yielding = false;
    if (!this.readerFull) this.socket.resume();
  };

  private onControl(opcode: number, payload: Buffer): void {
    if (opcode === Opcode.Ping) {
      if (this.closeSent) return;
      // A peer that pings faster than it reads would otherwise queue a pong per ping without limit; the
      // latest ping is the one to answer (RFC 6455 §5.5.3). Copied: it is a view into a socket read.
      if (this.socket.writableNeedDrain) this.pendingPong = Buffer.from(payload);
      else this.sendFrames(Opcode.Pong, [payload], payload.length);
      return;
    }
    if (opcode !== Opcode.Close) return;
    const code = payload.length >= 2 ? payload.readUInt16BE(0) : CloseCode.NoStatus;
    if (payload.length === 1 || (payload.length >= 2 && !isValidCloseCode(code))) {
      this.onProtocolError(CloseCode.ProtocolError, `invalid close frame (code ${code})`);
      return;
    }
    if (payload.length > 2 && !isUtf8(payload.subarray(2))) {
      this.onProtocolError(CloseCode.InvalidPayload, 'close reason is not valid UTF-8');
      return;
    }
    this.closeReceived = true;
    this.remoteClose = { code, reason: payload.toString('utf8', 2) };
    this.parser.stop();
    if (this.closeSent) this.socket.end();
    else this.close(code === CloseCode.NoStatus ? CloseCode.Normal : code);
    this.gatherer.flush();
    this.push(null);
  }

  private onProtocolError(code: number, message: string): void {
    this.parser.stop();
    this.close(code, message);
    this.destroy(new Error(`WebSocket protocol error: ${message}`));
  }

  private onSocketEnd(): void {
    this.gatherer.flush();
    this.push(null);
    if (!this.socket.writableEnded) this.socket.end();
  }

  private onSocketClose(): void {
    if (this.closeTimer) clearTimeout(this.closeTimer);
    this.releaseHeld(new Error('WebSocket closed'));
    if (!this.destroyed) this.destroy();
  }

  private sendPendingPong(): void {
    const payload = this.pendingPong;
    this.pendingPong = undefined;
    if (payload && !this.closeSent && this.socket.writable)
      this.sendFrames(Opcode.Pong, [payload], payload.length);
  }

  private releaseHeld(err?: Error): void {
    const callback = this.heldCallback;
    this.heldCallback = undefined;
    callback?.(err);
  }
}

/** Codes a peer may send (RFC 6455 §7.4): 1004–1006 and 1015 are reserved for local use. */
function isValidCloseCode(code: number): boolean {
  if (code >= 3000 && code <= 4999) return true;
  return code >= 1000 && code <= 1014 && code !== 1004 && code !== 1005 && code !== 1006;
}

/**
 * Buffers for masked frames, reused once the socket has written them: at bulk rates a fresh 1 MiB per frame
 * is external memory that V8 answers with a full GC every few dozen milliseconds.
 */
class FrameBufferPool {
  private readonly free: Buffer[] = [];

  take(size: number): Buffer {
    if (size < POOLED_FRAME_MIN) return Buffer.allocUnsafe(size);
    return this.free.pop() ?? Buffer.allocUnsafe(POOLED_FRAME_SIZE);
  }

  give(buffer: Buffer): void {
    if (buffer.length === POOLED_FRAME_SIZE && this.free.length < POOL_KEEP) this.free.push(buffer);
  }
}
