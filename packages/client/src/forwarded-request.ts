// The visitor's side of one absolute-form request an http-proxy local forwards: what the destination reads is
// the rewritten head and the body, re-framed here (a Content-Length body cut at its length, a chunked one
// decoded and encoded again), so the destination sees exactly one request framed as this client read it.
// What the visitor sends after the body is dropped: it would be a request this client never checked.
import { Duplex } from 'node:stream';
import { ChunkedDecoder } from '@porthole/protocol';

export type RequestBodyFraming = { kind: 'none' } | { kind: 'length'; length: number } | { kind: 'chunked' };

const CRLF = Buffer.from('\r\n');
const LAST_CHUNK = Buffer.from('0\r\n\r\n');

/**
 * Carried in place of the visitor's stream: reads give the request, writes (the destination's response) go to
 * the visitor. Its reading ends when the visitor's does, once the body is whole; before that, the end fails
 * it, as does a body that breaks chunked coding.
 */
export class ForwardedRequest extends Duplex {
  private remaining = 0;
  private readonly decoder: ChunkedDecoder | undefined;
  private bodyDone = false;

  constructor(
    private readonly visitor: Duplex,
    head: Buffer,
    rest: Buffer,
    framing: RequestBodyFraming,
  ) {
    super({ allowHalfOpen: true });
    this.push(head);
    if (framing.kind === 'length') this.remaining = framing.length;
    this.decoder = framing.kind === 'chunked' ? new ChunkedDecoder() : undefined;
    this.bodyDone = framing.kind === 'none' || (framing.kind === 'length' && framing.length === 0);
    visitor.on('data', this.onData);
    visitor.once('end', this.onEnd);
    visitor.once('error', (err) => this.destroy(err));
    visitor.once('close', () => {
      if (this.bodyDone) this.endReading();
      else this.destroy(new Error('visitor closed before the end of its request'));
    });
    if (rest.length > 0) this.onData(rest);
    visitor.resume();
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.bodyDone || this.destroyed) return;
    let more = true;
    if (this.decoder) {
      try {
        this.decoder.push(chunk, (data) => {
          if (data.length > 0)
            more = this.push(Buffer.concat([Buffer.from(data.length.toString(16)), CRLF, data, CRLF]));
        });
      } catch (err) {
        this.destroy(err as Error);
        return;
      }
      if (this.decoder.done) {
        // Trailer fields are not passed on: the destination was told of no Trailer.
        more = this.push(LAST_CHUNK);
        this.bodyDone = true;
      }
    } else {
      const take = Math.min(this.remaining, chunk.length);
      if (take > 0) more = this.push(chunk.subarray(0, take));
      this.remaining -= take;
      if (this.remaining === 0) this.bodyDone = true;
    }
    if (!more) this.visitor.pause();
  };

  private readonly onEnd = (): void => {
    if (this.bodyDone) this.endReading();
    else this.destroy(new Error('visitor ended in the middle of its request body'));
  };

  private readingEnded = false;

  /** The visitor's end, passed on once: the destination has had the whole request by then. */
  private endReading(): void {
    if (this.readingEnded || this.destroyed) return;
    this.readingEnded = true;
    this.push(null);
  }

  override _read(): void {
    this.visitor.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (err?: Error | null) => void): void {
    this.visitor.write(chunk, (err) => callback(err));
  }

  override _final(callback: (err?: Error | null) => void): void {
    this.visitor.end();
    callback();
  }

  override _destroy(err: Error | null, callback: (err?: Error | null) => void): void {
    this.visitor.off('data', this.onData);
    if (!this.visitor.destroyed) this.visitor.destroy(err ?? undefined);
    callback(err);
  }
}
