import { Duplex } from 'node:stream';

/** The parts of a `ws` WebSocket we use; typed structurally so the mux has no runtime dependency. */
export interface WebSocketLike {
  binaryType: string;
  readonly bufferedAmount: number;
  readonly readyState: number;
  send(data: Buffer, options: { binary: boolean; compress?: boolean }, callback: (err?: Error) => void): void;
  close(code?: number, reason?: string): void;
  terminate(): void;
  pause(): void;
  resume(): void;
  on(event: 'message', listener: (data: Buffer, isBinary: boolean) => void): this;
  on(event: 'close', listener: (code: number, reason: Buffer) => void): this;
  on(event: 'error', listener: (err: Error) => void): this;
  once(event: 'open', listener: () => void): this;
}

export interface WebSocketDuplexOptions {
  /** Bytes queued in the WebSocket (ws.bufferedAmount) before write() reports backpressure. */
  highWaterMark?: number;
}

const CONNECTING = 0;
const OPEN = 1;
/** A message is sent as soon as this much is pending (one data frame may take it a little past). */
export const MAX_MESSAGE_BYTES = 1024 * 1024;

/**
 * A WebSocket as a byte stream: incoming binary messages are concatenated (message boundaries mean
 * nothing), and everything written in one event-loop turn leaves as one binary message (up to 1 MiB).
 * Wrap the socket while it is still connecting or inside its 'open' handler: `ws` emits messages that came
 * with the handshake before a later `await` resumes, and those would be lost.
 */
export function webSocketDuplex(ws: WebSocketLike, options: WebSocketDuplexOptions = {}): Duplex {
  return new WebSocketDuplex(ws, options.highWaterMark ?? 4 * 1024 * 1024);
}

class WebSocketDuplex extends Duplex {
  private readonly ws: WebSocketLike;
  private readonly limit: number;
  private pending: Buffer[] = [];
  private pendingBytes = 0;
  private flushScheduled = false;
  /** A write callback held until the WebSocket's queue drains below the limit. */
  private heldCallback: ((err?: Error | null) => void) | undefined;

  constructor(ws: WebSocketLike, limit: number) {
    super({ allowHalfOpen: false, writableHighWaterMark: limit, readableHighWaterMark: limit });
    this.ws = ws;
    this.limit = limit;
    ws.binaryType = 'nodebuffer';
    ws.on('message', (data, isBinary) => {
      if (!isBinary) {
        this.destroy(new Error('text message on a binary WebSocket'));
        return;
      }
      if (!this.push(data)) ws.pause();
    });
    ws.on('close', () => {
      this.push(null);
      this.releaseHeld(new Error('WebSocket closed'));
      // A close while our side still writes is not an orderly end for the writer.
      if (!this.writableFinished) this.destroy();
    });
    ws.on('error', (err) => this.destroy(err));
    // Writes made before the handshake completes wait for it.
    if (ws.readyState === CONNECTING) ws.once('open', () => this.flush());
  }

  override _read(): void {
    this.ws.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.enqueue(chunk);
    this.afterEnqueue(callback);
  }

  override _writev(
    chunks: { chunk: Buffer; encoding: BufferEncoding }[],
    callback: (err?: Error | null) => void,
  ): void {
    for (const { chunk } of chunks) this.enqueue(chunk);
    this.afterEnqueue(callback);
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.flush();
    if (this.ws.readyState === OPEN) this.ws.close(1000);
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.pending = [];
    this.pendingBytes = 0;
    this.releaseHeld(err ?? new Error('stream destroyed'));
    if (this.ws.readyState === OPEN) {
      if (err) this.ws.terminate();
      else this.ws.close(1000);
    }
    callback(err);
  }

  private enqueue(chunk: Buffer): void {
    this.pending.push(chunk);
    this.pendingBytes += chunk.length;
    // Many streams writing in one turn must not build one giant message: peers cap message sizes.
    if (this.pendingBytes >= MAX_MESSAGE_BYTES) {
      this.flush();
      return;
    }
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => {
        this.flushScheduled = false;
        this.flush();
      });
    }
  }

  private afterEnqueue(callback: (err?: Error | null) => void): void {
    if (this.pendingBytes + this.ws.bufferedAmount < this.limit) callback();
    else this.heldCallback = callback;
  }

  private flush(): void {
    if (this.pendingBytes === 0 || this.ws.readyState === CONNECTING) return;
    const message =
      this.pending.length === 1 ? this.pending[0]! : Buffer.concat(this.pending, this.pendingBytes);
    this.pending = [];
    this.pendingBytes = 0;
    if (this.ws.readyState !== OPEN) {
      this.destroy(new Error('WebSocket is not open'));
      return;
    }
    this.ws.send(message, { binary: true, compress: false }, (err) => {
      if (err) this.destroy(err);
      else if (this.heldCallback && this.ws.bufferedAmount < this.limit) this.releaseHeld();
    });
  }

  private releaseHeld(err?: Error): void {
    const callback = this.heldCallback;
    this.heldCallback = undefined;
    callback?.(err);
  }
}
