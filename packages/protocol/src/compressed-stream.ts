// A proxy's `compression`: the bytes of one tunnel stream after its header, raw deflate each way, so that a
// slow uplink carries less of a compressible service (frp's transport.useCompression).
import { Duplex } from 'node:stream';
import { constants, createDeflateRaw, createInflateRaw, type DeflateRaw, type InflateRaw } from 'node:zlib';

/**
 * The deflate window, as a power of two (4 KiB). Part of the wire format: an inflater must have a window at
 * least as large as its deflater's, so both ends use this one, and a larger one needs a new header field.
 * What a stream costs (Node 20, whose zlib is Chromium's: its hash table is 64 KiB whatever memLevel says):
 * a deflater ~110 KiB of RSS once used (~225 KiB with zlib's default window), up to ~170 KiB allocated under
 * a bulk transfer; an inflater ~25 KiB. The deflater goes after IDLE_DEFLATER_MS without input.
 */
export const COMPRESSION_WINDOW_BITS = 12;
/**
 * zlib's default. It sizes the block buffer too (16K symbols): with 4 (1K) random bytes went through at half
 * the speed (each tiny block weighed as stored or coded), for no RSS saved on Chromium's zlib.
 */
const COMPRESSION_MEM_LEVEL = 8;
/** Fastest: a tunnel endpoint should not be the bottleneck the uplink was. */
const COMPRESSION_LEVEL = 1;
/**
 * zlib's output buffer per deflater and inflater, Node's default: each is a trip to the thread pool, so 8 KiB
 * cost a third of the speed on text, and 64 KiB would hold 96 KiB more per connection for ~40% more.
 */
const COMPRESSION_CHUNK_BYTES = 16 * 1024;
/**
 * A deflater that had nothing to do for this long is let go, and a new one made for the next write: most of
 * a compressed connection's memory, freed while it idles (an ssh session, a keep-alive connection). Its
 * last output ended with a sync flush, on a byte boundary, and a new deflater's blocks never refer back past
 * their own start, so the peer's inflater reads on across the seam; only the dictionary is lost.
 */
export const IDLE_DEFLATER_MS = 5_000;

/** The inflater met bytes that are not what our deflater wrote (corrupt data, or a peer speaking another format). */
export class CompressionError extends Error {
  override readonly name = 'CompressionError';
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

/**
 * `raw` (a tunnel stream past its header) as a stream of uncompressed bytes: what is written is deflated
 * onto `raw`, what `raw` delivers is inflated. The deflater flushes (Z_SYNC_FLUSH) whenever its input pauses
 * (nothing more in this event-loop turn), so a keystroke is not held for more input. The zlib states are
 * made on first use, so a connection that carries nothing costs no zlib memory. Backpressure holds through
 * both: a full `raw` stops the deflater, which stops taking writes; a reader that stops reading stops the
 * inflater, which stops reading `raw` (whose window then closes). Half-close passes through (the end of our
 * writes ends the deflate stream, then `raw`); an error of `raw`, or corrupt data, destroys this stream and
 * `raw` (a yamux RST), that connection only.
 */
export class CompressedStream extends Duplex {
  private deflater: DeflateRaw | undefined;
  private inflater: InflateRaw | undefined;
  private flushScheduled = false;
  private idleTimer: NodeJS.Timeout | undefined;

  constructor(private readonly raw: Duplex) {
    super({ allowHalfOpen: true });
    raw.on('data', this.onRawData);
    raw.once('end', this.onRawEnd);
    raw.on('error', this.onRawError);
    raw.once('close', this.onRawClose);
    raw.pause();
  }

  override _read(): void {
    if (this.inflater) this.inflater.resume();
    else this.raw.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    const deflater = this.deflater ?? this.startDeflater();
    this.scheduleFlush();
    if (deflater.write(chunk)) callback();
    else deflater.once('drain', () => callback());
  }

  override _final(callback: (error?: Error | null) => void): void {
    if (!this.deflater) {
      // Nothing was ever written: an empty deflate stream (one final empty block) still tells the peer's
      // inflater the end is clean.
      this.startDeflater();
    }
    this.raw.once('finish', () => callback());
    this.deflater!.end();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.raw.off('data', this.onRawData);
    this.raw.off('end', this.onRawEnd);
    this.raw.off('close', this.onRawClose);
    // Errors after this one are the same connection's, already reported.
    this.raw.off('error', this.onRawError);
    this.raw.on('error', () => {});
    clearTimeout(this.idleTimer);
    this.deflater?.destroy();
    this.inflater?.destroy();
    if (error || !(this.raw.readableEnded && this.raw.writableFinished)) this.raw.destroy();
    callback(error);
  }

  private startDeflater(): DeflateRaw {
    const deflater = createDeflateRaw({
      level: COMPRESSION_LEVEL,
      windowBits: COMPRESSION_WINDOW_BITS,
      memLevel: COMPRESSION_MEM_LEVEL,
      chunkSize: COMPRESSION_CHUNK_BYTES,
    });
    // pipe() pauses the deflater while `raw` is full, and ends `raw` after the deflate stream's last block.
    deflater.pipe(this.raw);
    deflater.on('error', (err: Error & { code?: string }) =>
      this.destroy(new CompressionError(`deflate: ${err.message}`, err.code)),
    );
    this.deflater = deflater;
    return deflater;
  }

  private startInflater(): InflateRaw {
    const inflater = createInflateRaw({
      windowBits: COMPRESSION_WINDOW_BITS,
      chunkSize: COMPRESSION_CHUNK_BYTES,
    });
    inflater.on('data', (chunk: Buffer) => {
      if (!this.push(chunk)) inflater.pause();
    });
    inflater.once('end', () => this.push(null));
    inflater.on('error', (err: Error & { code?: string }) =>
      this.destroy(new CompressionError(`corrupt compressed data: ${err.message}`, err.code)),
    );
    inflater.on('drain', () => this.raw.resume());
    this.inflater = inflater;
    return inflater;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => {
      this.flushScheduled = false;
      const deflater = this.deflater;
      if (deflater && !deflater.writableEnded && !deflater.destroyed)
        deflater.flush(constants.Z_SYNC_FLUSH, () => this.armIdleTimer());
    });
  }

  private armIdleTimer(): void {
    if (this.idleTimer) this.idleTimer.refresh();
    else {
      this.idleTimer = setTimeout(() => this.releaseIdleDeflater(), IDLE_DEFLATER_MS);
      this.idleTimer.unref();
    }
  }

  /** Lets the deflater go if all it wrote has gone on to `raw` and nothing came since its last flush. */
  private releaseIdleDeflater(): void {
    const deflater = this.deflater;
    if (!deflater || this.flushScheduled || deflater.writableEnded) return;
    if (deflater.writableLength > 0 || deflater.readableLength > 0) {
      // Still writing out to a full `raw`: asked again later.
      this.idleTimer?.refresh();
      return;
    }
    deflater.unpipe(this.raw);
    deflater.destroy();
    this.deflater = undefined;
  }

  private readonly onRawData = (chunk: Buffer): void => {
    const inflater = this.inflater ?? this.startInflater();
    if (!inflater.write(chunk)) this.raw.pause();
  };

  private readonly onRawEnd = (): void => {
    if (this.inflater) this.inflater.end();
    // The peer ended without a byte: not even the empty final block its deflater always writes.
    else this.destroy(new CompressionError('the compressed stream ended before its first block', undefined));
  };

  private readonly onRawError = (err: Error): void => {
    this.destroy(err);
  };

  /** `raw` went without both its ends (a reset without an error, a session's close): so does this stream. */
  private readonly onRawClose = (): void => {
    if (!(this.raw.readableEnded && this.raw.writableFinished)) this.destroy();
  };
}
