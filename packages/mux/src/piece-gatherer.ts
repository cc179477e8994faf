import { Readable } from 'node:stream';

/**
 * Small pieces that arrive while a reader is not taking data are copied together into buffers of this
 * size: each chunk in a Readable's buffer costs ~100 bytes of bookkeeping beyond its bytes, so a window of
 * 1-byte yamux Data frames held as 256 Ki chunks cost 27 MiB of heap, not 256 KiB, and 1-byte WebSocket
 * frames held for a paused session cost 100 MiB per million.
 */
export const GATHER_SIZE = 16 * 1024;
/**
 * Only pieces under this size are gathered: above it a chunk's bookkeeping is at most a tenth of its bytes.
 * The pieces of a bulk transfer (TLS hands them over in 16 KiB records) are pushed as they are, not copied:
 * their bookkeeping is under 1%, and a copy of each would only add to the bulk path's work.
 */
const GATHER_BELOW = 1024;

/** Readable's own readableLength: the bytes pushed and not yet read. */
const pushedLength = Object.getOwnPropertyDescriptor(Readable.prototype, 'readableLength')!.get!;

/**
 * Where a Readable's small pieces wait, copied together, while its reader is behind; they are pushed a full
 * buffer at a time, or all at once when the reader comes for them. The Readable tells it of its reader:
 * beforeRead/afterRead around read(), readerPaused from pause(). Bytes gathered are unread data like those
 * pushed: countGatheredAsUnread makes readableLength say so.
 */
export class PieceGatherer {
  private buffer: Buffer | undefined;
  private filled = 0;
  /** Bytes the reader's last read() waited for and did not get (0: it is not waiting). */
  private awaited = 0;

  constructor(private readonly readable: Readable) {}

  /** Bytes gathered and not yet pushed. */
  get length(): number {
    return this.filled;
  }

  /** Whether `piece` should wait here rather than be pushed: it is small, and data already waits unread. */
  wants(piece: Buffer): boolean {
    return piece.length < GATHER_BELOW && this.readable.readableLength > 0;
  }

  /**
   * Copies `piece` in, pushing each buffer it fills, and all of it once a waiting read(n) can have its n
   * bytes; returns what the last push returned (true if none).
   */
  add(piece: Buffer): boolean {
    let more = true;
    let rest = piece;
    while (rest.length > 0) {
      this.buffer ??= Buffer.allocUnsafe(GATHER_SIZE);
      const n = rest.copy(this.buffer, this.filled);
      this.filled += n;
      rest = rest.subarray(n);
      if (this.filled === GATHER_SIZE) more = this.flush();
    }
    if (this.awaited > 0 && this.readable.readableLength >= this.awaited) more = this.flush();
    return more;
  }

  /** read(0) is Node refilling its buffer, not a reader taking data; any other read gets what is gathered. */
  beforeRead(size: number | undefined): void {
    if (size !== 0) this.flush();
  }

  afterRead(size: number | undefined, chunk: unknown): void {
    if (size !== 0) this.awaited = chunk === null ? (size ?? 1) : 0;
  }

  /** A pipe pauses its source when the destination is full: the reader no longer waits for data. */
  readerPaused(): void {
    this.awaited = 0;
  }

  /** Pushes what is gathered (a reader is taking data, or the stream ends); returns what push returned. */
  flush(): boolean {
    const buffer = this.buffer;
    const n = this.filled;
    this.drop();
    if (!buffer || n === 0 || this.readable.destroyed) return true;
    // A short one is copied out, so that it does not pin the whole buffer.
    return this.readable.push(
      n < GATHER_SIZE / 2 ? Buffer.from(buffer.subarray(0, n)) : buffer.subarray(0, n),
    );
  }

  /** Forgets what is gathered (the stream was destroyed). */
  drop(): void {
    this.buffer = undefined;
    this.filled = 0;
  }
}

/** Makes `readableLength` of the class whose prototype this is count what its gatherer holds. */
export function countGatheredAsUnread<T extends Readable>(
  prototype: T,
  gathererOf: (readable: T) => PieceGatherer | undefined,
): void {
  Object.defineProperty(prototype, 'readableLength', {
    get(this: T): number {
      // Fields are set after the base constructor: undefined until then.
      return (pushedLength.call(this) as number) + (gathererOf(this)?.length ?? 0);
    },
  });
}
