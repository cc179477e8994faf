// One tunnel stream to a local HTTP service, spoken to as an HTTP/1.1 client: it sends one request at a
// time and reads the response (head, then a body framed by length, chunks or close), handing it on as it
// arrives. Between requests it sits in the pool; whether it may go back there is decided here.
import type { Duplex, Readable } from 'node:stream';
import { ChunkedDecoder, headEnd, type TokenBucket } from '@porthole/protocol';
import { forwardableTrailers } from './http-fields.js';
import {
  type BodyFraming,
  parseResponseHead,
  type ResponseHead,
  UpstreamProtocolError,
} from './http-response-head.js';

/** Largest response head (status line and fields) taken from a local service at the least. */
export const MAX_RESPONSE_HEAD = 64 * 1024;

/**
 * The largest response head taken from a local service: as large as a request's may be ([http]
 * max_header_size: a service that sets a big cookie is what big request heads come from), and never under
 * 64 KiB (the service is the user's own, not a stranger; past this its answer is a 502).
 */
export function maxResponseHead(maxHeaderSize: number): number {
  return Math.max(MAX_RESPONSE_HEAD, maxHeaderSize);
}
/** A retired stream whose far side never finishes is reset after this long. */
const RETIRE_GRACE_MS = 15_000;

/** Where a response goes as it arrives (the visitor's side of the exchange). */
export interface ResponseSink {
  /** The final head; informational (1xx) heads are read past. */
  onHead(head: ResponseHead): void;
  /** A piece of the body; false: the visitor is behind, call resume() once it has drained. */
  onBody(data: Buffer): boolean;
  /** The body is whole; `trailers`: the fields after a chunked body, as received (flat [name, value, ...]). */
  onEnd(trailers: readonly string[]): void;
  /**
   * The exchange failed and its stream is gone. `retryable`: the stream had carried earlier requests and
   * not a byte of this response came back, so the service never saw this request or dropped it unread.
   */
  onError(err: Error, retryable: boolean): void;
  /**
   * Given for a request that asks for an upgrade: the service switched protocols (101). The connection
   * lets go of its stream, paused, with the head as the service sent it and any bytes after it; the
   * stream is the caller's from here on.
   */
  onUpgrade?(head: Buffer, rest: Buffer): void;
}

/** An exchange's byte counts, added to as its bytes move (the admin API reads them live). */
export interface ExchangeBytes {
  /** The request as sent into the tunnel: its head, then its body (without any chunk framing). */
  bytesIn: number;
  /** The response as the service sent it, head and framing included. */
  bytesOut: number;
}

/** What the pool hears from a connection. */
export interface ConnectionOwner {
  /** An exchange ended; `reusable`: the stream is clean and may carry another request. */
  exchangeDone(conn: UpstreamConnection, reusable: boolean): void;
  /** The stream is closed, or is ending while idle: never hand it out again. */
  gone(conn: UpstreamConnection): void;
}

enum State {
  Idle,
  /** Request sent (or being sent), waiting for the final response head. */
  Head,
  Body,
  Closed,
}

/** A visitor's request body: an IncomingMessage, whose trailer fields are known once it has ended. */
export interface RequestBody extends Readable {
  readonly rawTrailers?: readonly string[];
}

const EMPTY = Buffer.alloc(0);
const NO_TRAILERS: readonly string[] = [];
const CHUNKED_END = Buffer.from('0\r\n\r\n');
const CRLF = Buffer.from('\r\n');

export class UpstreamConnection {
  /** Exchanges completed on this stream. */
  exchanges = 0;
  /** For the pool: when the stream last went idle (performance.now()). */
  idleSince = 0;
  private state = State.Idle;
  private sink: ResponseSink | undefined;
  private method = '';
  private responseBytes = 0;
  private counts: ExchangeBytes | undefined;
  private framing: BodyFraming = { kind: 'none' };
  private keepAlive = false;
  private remaining = 0;
  private chunked: ChunkedDecoder | undefined;
  /** A head that arrived in pieces, gathered here (only then). */
  private headBuf: Buffer | undefined;
  private headLen = 0;
  private body: RequestBody | undefined;
  private chunkedBody = false;
  /** The client's cap on what visitors send (its token's or the server's), while the body is read. */
  private bodyBudget: TokenBucket | undefined;
  /** The body is paused until the stream drains, or until the budget has refilled; it resumes after both. */
  private bodyDraining = false;
  private bodyOverdrawn = false;
  private requestDone = true;
  /** The visitor half-closed during this exchange: its FIN goes on once the request is written. */
  private visitorFin = false;
  private retireTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly stream: Duplex,
    private readonly owner: ConnectionOwner,
    private readonly maxHead = MAX_RESPONSE_HEAD,
  ) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('error', this.onStreamError);
    stream.on('close', this.onClose);
  }

  /**
   * Sends a request: `head` is the request line and fields, blank line included; `body` (if any) is
   * streamed after it, re-chunked when `chunkedBody`. `counts`, if given, grows by the bytes this exchange
   * moves until it ends.
   */
  send(
    method: string,
    head: string,
    body: RequestBody | undefined,
    chunkedBody: boolean,
    sink: ResponseSink,
    counts?: ExchangeBytes,
    bodyBudget?: TokenBucket,
  ): void {
    if (this.state !== State.Idle) throw new Error('an upstream connection carries one request at a time');
    this.state = State.Head;
    this.sink = sink;
    this.method = method;
    this.responseBytes = 0;
    this.counts = counts;
    if (counts) counts.bytesIn += head.length; // latin1: one byte per character
    this.stream.write(head, 'latin1');
    this.requestDone = body === undefined;
    if (body) {
      this.body = body;
      this.chunkedBody = chunkedBody;
      this.bodyBudget = bodyBudget;
      body.on('data', this.onBodyData);
      body.on('end', this.onBodyEnd);
    }
    this.stream.resume();
  }

  /** The visitor caught up: let the response flow again. */
  resume(): void {
    if (this.state === State.Body) this.stream.resume();
  }

  /**
   * The visitor half-closed its connection (FIN) during this exchange: the FIN goes on to the service once
   * the request is all written, as it would reach the service directly. The service decides: most give
   * up on the request (so a long-poll or a stream nobody reads any more ends), some answer all the same.
   * The stream carries no further request.
   */
  visitorEnded(): void {
    if (this.state !== State.Head && this.state !== State.Body) return;
    this.visitorFin = true;
    if (this.requestDone && !this.stream.writableEnded) this.stream.end();
  }

  /** The visitor went away mid-exchange: the stream cannot be trusted with another request. */
  abort(): void {
    if (this.state !== State.Head && this.state !== State.Body) return;
    this.state = State.Closed;
    this.sink = undefined;
    this.counts = undefined;
    this.detachBody();
    this.stream.destroy();
    this.owner.exchangeDone(this, false);
  }

  /** Closes an idle stream the way a keep-alive connection times out: FIN, not a reset. */
  retire(): void {
    if (this.state === State.Closed) return;
    this.state = State.Closed;
    if (this.stream.destroyed) return;
    if (!this.stream.writableEnded) this.stream.end();
    this.stream.resume();
    // A peer that never finishes its side does not keep the stream.
    this.retireTimer = setTimeout(() => this.stream.destroy(), RETIRE_GRACE_MS);
    this.retireTimer.unref();
  }

  destroy(): void {
    this.stream.destroy();
  }

  private readonly onBodyData = (data: Buffer): void => {
    const stream = this.stream;
    if (this.counts) this.counts.bytesIn += data.length;
    let ok: boolean;
    if (this.chunkedBody) {
      if (data.length === 0) return; // a zero-length chunk would end the body
      stream.write(`${data.length.toString(16)}\r\n`, 'latin1');
      stream.write(data);
      ok = stream.write(CRLF);
    } else {
      ok = stream.write(data);
    }
    if (!ok && !this.bodyDraining) {
      this.bodyDraining = true;
      stream.once('drain', this.resumeBody);
    }
    if (this.bodyBudget && !this.bodyBudget.spend(data.length) && !this.bodyOverdrawn) {
      this.bodyOverdrawn = true;
      this.bodyBudget.whenRefilled(this.refilledBody);
    }
    if (this.bodyDraining || this.bodyOverdrawn) this.body?.pause();
  };

  private readonly resumeBody = (): void => {
    this.bodyDraining = false;
    if (!this.bodyOverdrawn) this.body?.resume();
  };

  private readonly refilledBody = (): void => {
    this.bodyOverdrawn = false;
    if (!this.bodyDraining) this.body?.resume();
  };

  private readonly onBodyEnd = (): void => {
    if (this.chunkedBody) this.stream.write(lastChunk(this.body?.rawTrailers ?? NO_TRAILERS));
    this.requestDone = true;
    this.detachBody();
    if (this.visitorFin && !this.stream.writableEnded) this.stream.end();
  };

  private detachBody(): void {
    const body = this.body;
    if (!body) return;
    this.body = undefined;
    body.off('data', this.onBodyData);
    body.off('end', this.onBodyEnd);
    this.stream.off('drain', this.resumeBody);
    this.bodyBudget?.cancel(this.refilledBody);
    this.bodyBudget = undefined;
    this.bodyDraining = false;
    this.bodyOverdrawn = false;
    // A body left half-read (the answer came first) must not stay paused: the visitor's connection
    // would stall. Node's server reads and drops what is left of it.
    body.resume();
  }

  private readonly onData = (chunk: Buffer): void => {
    if (this.state !== State.Head && this.state !== State.Body) {
      // Bytes nobody asked for: the stream's framing can no longer be trusted.
      if (this.state === State.Idle) this.stream.destroy();
      return;
    }
    this.responseBytes += chunk.length;
    if (this.counts) this.counts.bytesOut += chunk.length;
    try {
      let rest = chunk;
      while (this.state === State.Head && rest.length > 0) rest = this.readHead(rest);
      if (this.state === State.Body && rest.length > 0) this.readBody(rest);
    } catch (err) {
      this.fail(err as Error);
    }
  };

  /** Takes a head out of `chunk` (or keeps the piece for later); returns what follows the head. */
  private readHead(chunk: Buffer): Buffer {
    const prior = this.headLen;
    let buf = chunk;
    if (prior > 0) buf = this.gatherHead(chunk.subarray(0, this.maxHead + 1 - prior));
    const end = headEnd(buf, Math.max(0, prior - 2));
    if (end > this.maxHead || (end < 0 && buf.length > this.maxHead))
      throw new UpstreamProtocolError(`response head larger than ${this.maxHead} bytes`);
    if (end < 0) {
      if (prior === 0) this.gatherHead(chunk);
      return EMPTY;
    }
    const head = parseResponseHead(buf.subarray(0, end), this.method);
    this.headBuf = undefined;
    this.headLen = 0;
    const rest = chunk.subarray(end - prior);
    if (head.statusCode === 101) {
      if (!this.sink?.onUpgrade)
        throw new UpstreamProtocolError('101 Switching Protocols to a plain request');
      this.handOver(buf.subarray(0, end), rest);
      return EMPTY;
    }
    if (head.statusCode < 200) return rest; // informational: the final head follows
    this.state = State.Body;
    this.framing = head.body;
    this.keepAlive = head.keepAlive;
    if (head.body.kind === 'length') this.remaining = head.body.length;
    else if (head.body.kind === 'chunked') this.chunked = new ChunkedDecoder();
    this.sink?.onHead(head);
    if (this.state !== State.Body) return EMPTY; // aborted by the sink
    if (head.body.kind === 'none' || (head.body.kind === 'length' && this.remaining === 0))
      this.complete(rest.length === 0);
    return rest;
  }

  /** The service switched protocols: the stream leaves this connection (and any pool) for good. */
  private handOver(head: Buffer, rest: Buffer): void {
    const sink = this.sink!;
    this.state = State.Closed;
    this.sink = undefined;
    this.counts = undefined;
    this.detachBody();
    const stream = this.stream;
    stream.pause();
    stream.off('data', this.onData);
    stream.off('end', this.onEnd);
    stream.off('error', this.onStreamError);
    stream.off('close', this.onClose);
    sink.onUpgrade!(head, rest);
  }

  private gatherHead(piece: Buffer): Buffer {
    const need = this.headLen + piece.length;
    if (!this.headBuf || need > this.headBuf.length) {
      const grown = Buffer.allocUnsafe(Math.max(need, 2 * (this.headBuf?.length ?? 2048)));
      this.headBuf?.copy(grown, 0, 0, this.headLen);
      this.headBuf = grown;
    }
    piece.copy(this.headBuf, this.headLen);
    this.headLen = need;
    return this.headBuf.subarray(0, need);
  }

  private readBody(data: Buffer): void {
    switch (this.framing.kind) {
      case 'length': {
        const take = Math.min(this.remaining, data.length);
        this.remaining -= take;
        this.deliver(data.subarray(0, take));
        if (this.remaining === 0 && this.state === State.Body) this.complete(take === data.length);
        return;
      }
      case 'chunked': {
        const decoder = this.chunked!;
        const used = decoder.push(data, this.deliver);
        if (decoder.done && this.state === State.Body) this.complete(used === data.length);
        return;
      }
      case 'close':
        this.deliver(data);
        return;
      default:
        // Bytes after a response that has no body: the stream is out of step with the service.
        this.fail(new UpstreamProtocolError('bytes after a response without a body'));
    }
  }

  private readonly deliver = (data: Buffer): void => {
    if (this.state !== State.Body || data.length === 0) return;
    if (this.sink && !this.sink.onBody(data)) this.stream.pause();
  };

  /** The response is whole; `clean`: nothing came after it. */
  private complete(clean: boolean): void {
    const sink = this.sink;
    const trailers = this.chunked?.trailers ?? NO_TRAILERS;
    const reusable =
      clean && this.keepAlive && this.requestDone && !this.visitorFin && !this.stream.readableEnded;
    this.state = State.Idle;
    this.sink = undefined;
    this.counts = undefined;
    this.chunked = undefined;
    this.detachBody();
    this.exchanges += 1;
    // Read on while idle: a FIN (keep-alive over) or stray bytes must be seen before the next request.
    this.stream.resume();
    sink?.onEnd(trailers);
    this.owner.exchangeDone(this, reusable);
  }

  private fail(err: Error): void {
    if (this.state !== State.Head && this.state !== State.Body) return;
    const sink = this.sink;
    const retryable = this.exchanges > 0 && this.responseBytes === 0 && this.state === State.Head;
    this.state = State.Closed;
    this.sink = undefined;
    this.counts = undefined;
    this.detachBody();
    this.stream.destroy();
    sink?.onError(err, retryable);
    this.owner.exchangeDone(this, false);
  }

  private readonly onEnd = (): void => {
    if (this.state === State.Body && this.framing.kind === 'close') {
      this.complete(true);
      return;
    }
    if (this.state === State.Head || this.state === State.Body) {
      this.fail(
        new Error(
          this.state === State.Head
            ? 'the local service closed the connection without answering'
            : 'the local service closed the connection mid-response',
        ),
      );
      return;
    }
    // Idle: the service ended its keep-alive connection.
    this.owner.gone(this);
    this.retire();
  };

  private readonly onStreamError = (err: Error): void => {
    this.fail(err);
  };

  private readonly onClose = (): void => {
    clearTimeout(this.retireTimer);
    this.fail(new Error('tunnel stream closed'));
    this.state = State.Closed;
    this.owner.gone(this);
  };
}

/** The last chunk of a re-chunked request body, with the visitor's trailer fields that may go on. */
function lastChunk(rawTrailers: readonly string[]): Buffer {
  const { fields } = forwardableTrailers(rawTrailers);
  if (fields.length === 0) return CHUNKED_END;
  let section = '0\r\n';
  for (const [name, value] of fields) section += `${name}: ${value}\r\n`;
  return Buffer.from(`${section}\r\n`, 'latin1'); // as Node read them
}
