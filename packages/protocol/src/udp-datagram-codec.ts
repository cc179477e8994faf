// UDP over a byte stream (a tunnel stream per UDP flow): each datagram is framed as a u16 big-endian length
// followed by the payload, so datagram boundaries survive any chunking. Both ends are lossy by design,
// like UDP itself: what cannot be carried (oversize, a stalled or closed stream) is dropped and counted,
// never fatal and never buffered without bound.
import type { Writable } from 'node:stream';

/** Largest payload a u16 length can frame. (IPv4 UDP carries at most 65507; the sender's socket decides.) */
export const MAX_DATAGRAM_BYTES = 0xffff;
export const DATAGRAM_HEADER_BYTES = 2;
/** Default bound on what a DatagramWriter lets queue in its stream before it drops (bytes, overhead included). */
export const DEFAULT_MAX_BUFFERED_DATAGRAM_BYTES = 512 * 1024;
/**
 * What a queued datagram costs beyond its bytes (the stream's write entries, the header buffer), charged
 * against the bounds: counted in bytes alone, a flood of empty datagrams (2 bytes each) would queue
 * 262,144 writes, some 40 MiB of heap, under a 512 KiB bound.
 */
export const QUEUED_DATAGRAM_OVERHEAD = 256;

/** A bound shared by several writers (all the flows of one udp proxy): what they have queued together. */
export interface DatagramBudget {
  used: number;
  readonly limit: number;
}

/**
 * What all the flows of one udp proxy may have queued towards the tunnel together (bytes and overhead), on
 * either end: each flow holds at most DEFAULT_MAX_BUFFERED_DATAGRAM_BYTES, and 1024 flows of that would be
 * half a gigabyte.
 */
export const PROXY_DATAGRAM_BUDGET_BYTES = 16 * 1024 * 1024;

/** A fresh, empty budget for the flows of one udp proxy. */
export function proxyDatagramBudget(): DatagramBudget {
  return { used: 0, limit: PROXY_DATAGRAM_BUDGET_BYTES };
}

/**
 * The frame for one datagram as two buffers, [length header, the payload itself] (the payload is not
 * copied), or undefined when the payload is longer than MAX_DATAGRAM_BYTES. A zero-length datagram is valid.
 */
export function frameDatagram(payload: Uint8Array): [header: Buffer, payload: Uint8Array] | undefined {
  if (payload.length > MAX_DATAGRAM_BYTES) return undefined;
  const header = Buffer.allocUnsafe(DATAGRAM_HEADER_BYTES);
  header.writeUInt16BE(payload.length, 0);
  return [header, payload];
}

export type DatagramWriteResult =
  /** Queued on the stream. */
  | 'sent'
  /** Longer than MAX_DATAGRAM_BYTES: dropped. */
  | 'dropped-oversize'
  /** The writer (or the budget it shares) holds as much as it may (its reader is slow): dropped, as UDP would. */
  | 'dropped-backpressure'
  /** The stream is ended or destroyed: dropped. */
  | 'dropped-closed'
  /** The tunnel's link has stopped (see DatagramWriterOptions.linkStopped): dropped rather than sent stale. */
  | 'dropped-link-stopped';

export interface DatagramWriterStats {
  sent: number;
  sentBytes: number;
  droppedOversize: number;
  droppedBackpressure: number;
  droppedClosed: number;
  droppedLinkStopped: number;
}

export interface DatagramWriterOptions {
  /** Drop a datagram that would take what this writer has queued (bytes and overhead) past this. Default 512 KiB. */
  maxBufferedBytes?: number;
  /** Drop a datagram that would take this shared budget past its limit. */
  budget?: DatagramBudget;
  /**
   * Asked before each datagram: true while the tunnel's link seems stopped. Datagrams written then wait in
   * buffers (the kernel's takes megabytes) and reach the other end as one burst of stale ones once the link
   * is back: a game server gets seconds of old inputs at once, a resolver queries its clients gave up on.
   */
  linkStopped?: () => boolean;
}

/** Writes framed datagrams to a stream: header and payload in one writev where the stream supports it. */
export class DatagramWriter {
  readonly stats: DatagramWriterStats = {
    sent: 0,
    sentBytes: 0,
    droppedOversize: 0,
    droppedBackpressure: 0,
    droppedClosed: 0,
    droppedLinkStopped: 0,
  };
  private readonly maxBufferedBytes: number;
  private readonly budget: DatagramBudget | undefined;
  private readonly linkStopped: (() => boolean) | undefined;
  /** What is queued and not yet written (bytes and overhead), and each datagram's share, oldest first. */
  private queued = 0;
  private costs: number[] = [];
  private costsHead = 0;

  constructor(
    private readonly stream: Writable,
    options: DatagramWriterOptions = {},
  ) {
    this.maxBufferedBytes = options.maxBufferedBytes ?? DEFAULT_MAX_BUFFERED_DATAGRAM_BYTES;
    this.budget = options.budget;
    this.linkStopped = options.linkStopped;
    // Writes still queued when the stream goes are released with it, callbacks or not.
    stream.once('close', this.releaseAll);
  }

  /** A datagram's last write completed (or failed): its share is released, in queue order. */
  private readonly written = (): void => {
    const cost = this.costs[this.costsHead];
    if (cost === undefined) return;
    this.costsHead++;
    this.queued -= cost;
    if (this.budget) this.budget.used -= cost;
    if (this.costsHead >= 1024 && this.costsHead * 2 >= this.costs.length) {
      this.costs = this.costs.slice(this.costsHead);
      this.costsHead = 0;
    }
  };

  private readonly releaseAll = (): void => {
    if (this.budget) this.budget.used -= this.queued;
    this.queued = 0;
    this.costs = [];
    this.costsHead = 0;
  };

  /** Frames and queues `payload`, or drops it and says why. Never throws, never waits. */
  write(payload: Uint8Array): DatagramWriteResult {
    const frame = frameDatagram(payload);
    if (frame === undefined) {
      this.stats.droppedOversize++;
      return 'dropped-oversize';
    }
    if (!this.stream.writable) {
      this.stats.droppedClosed++;
      return 'dropped-closed';
    }
    if (this.linkStopped?.()) {
      this.stats.droppedLinkStopped++;
      return 'dropped-link-stopped';
    }
    const cost = DATAGRAM_HEADER_BYTES + payload.length + QUEUED_DATAGRAM_OVERHEAD;
    const budget = this.budget;
    if (this.queued + cost > this.maxBufferedBytes || (budget && budget.used + cost > budget.limit)) {
      this.stats.droppedBackpressure++;
      return 'dropped-backpressure';
    }
    this.queued += cost;
    if (budget) budget.used += cost;
    this.costs.push(cost);
    // Corked writes reach the stream's _writev together (one writev(2) on a net.Socket).
    this.stream.cork();
    if (payload.length > 0) {
      this.stream.write(frame[0]);
      this.stream.write(frame[1], this.written);
    } else this.stream.write(frame[0], this.written);
    this.stream.uncork();
    this.stats.sent++;
    this.stats.sentBytes += payload.length;
    return 'sent';
  }
}

export interface DatagramDecoderStats {
  datagrams: number;
  bytes: number;
  /** Datagrams longer than maxDatagramBytes: skipped without buffering. */
  droppedOversize: number;
  /** A datagram cut off by the end of the stream (counted by end()). */
  droppedTruncated: number;
}

export interface DatagramDecoderOptions {
  /** Skip (and count) datagrams longer than this, e.g. 65507 for an IPv4 UDP socket. Default 65535. */
  maxDatagramBytes?: number;
}

/**
 * Turns stream chunks back into datagrams, under any chunking. A datagram that lies within one chunk is
 * returned as a view of that chunk (no copy); one that spans chunks is assembled once, in a buffer of its
 * exact size. At most one datagram is ever held.
 */
export class DatagramDecoder {
  readonly stats: DatagramDecoderStats = { datagrams: 0, bytes: 0, droppedOversize: 0, droppedTruncated: 0 };
  private readonly maxDatagramBytes: number;
  /** First length byte when a header was split across chunks; -1 when none. */
  private headerHigh = -1;
  /** Length of the datagram being read; -1 while reading a header. */
  private expected = -1;
  /** The spanning datagram being assembled (undefined while skipping an oversize one). */
  private partial: Buffer | undefined;
  private filled = 0;

  constructor(options: DatagramDecoderOptions = {}) {
    this.maxDatagramBytes = Math.min(options.maxDatagramBytes ?? MAX_DATAGRAM_BYTES, MAX_DATAGRAM_BYTES);
  }

  /** Bytes of an unfinished datagram (header included) held or skipped so far. */
  get pendingBytes(): number {
    if (this.expected < 0) return this.headerHigh < 0 ? 0 : 1;
    return DATAGRAM_HEADER_BYTES + this.filled;
  }

  /** Feeds one chunk; returns the datagrams it completed, in order. */
  push(chunk: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let offset = 0;
    while (offset < chunk.length) {
      if (this.expected < 0) {
        // Reading a length header, possibly split over two chunks.
        if (this.headerHigh < 0) {
          if (chunk.length - offset >= DATAGRAM_HEADER_BYTES) {
            this.expected = chunk.readUInt16BE(offset);
            offset += DATAGRAM_HEADER_BYTES;
          } else {
            this.headerHigh = chunk[offset]!;
            offset += 1;
            continue;
          }
        } else {
          this.expected = (this.headerHigh << 8) | chunk[offset]!;
          this.headerHigh = -1;
          offset += 1;
        }
        this.filled = 0;
        const oversize = this.expected > this.maxDatagramBytes;
        const available = chunk.length - offset;
        if (!oversize && available >= this.expected) {
          // The whole datagram is in this chunk: a view, not a copy.
          const end = offset + this.expected;
          this.deliver(out, chunk.subarray(offset, end));
          offset = end;
          continue;
        }
        this.partial = oversize ? undefined : Buffer.allocUnsafe(this.expected);
      }
      // Continuing a datagram that spans chunks (or skipping an oversize one).
      const take = Math.min(this.expected - this.filled, chunk.length - offset);
      if (this.partial !== undefined) chunk.copy(this.partial, this.filled, offset, offset + take);
      this.filled += take;
      offset += take;
      if (this.filled === this.expected) {
        if (this.partial === undefined) {
          this.stats.droppedOversize++;
          this.expected = -1;
          this.filled = 0;
        } else {
          const done = this.partial;
          this.partial = undefined;
          this.deliver(out, done);
        }
      }
    }
    return out;
  }

  /** The stream ended: counts a cut-off datagram as dropped. Returns true when the stream ended cleanly. */
  end(): boolean {
    const clean = this.pendingBytes === 0;
    if (!clean) this.stats.droppedTruncated++;
    this.headerHigh = -1;
    this.expected = -1;
    this.partial = undefined;
    this.filled = 0;
    return clean;
  }

  private deliver(out: Buffer[], datagram: Buffer): void {
    this.expected = -1;
    this.filled = 0;
    this.stats.datagrams++;
    this.stats.bytes += datagram.length;
    out.push(datagram);
  }
}
