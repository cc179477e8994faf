// A chunked body (RFC 9112 7.1) decoded as it arrives (a local service's response at the server, a visitor's
// request at the client's http-proxy): the data comes out as views of the input, chunk extensions are read
// past, trailer fields are kept as received, and every line has a length limit.

/** The body broke chunked coding: the exchange it belongs to fails. */
export class ChunkedBodyError extends Error {
  readonly code = 'ERR_CHUNKED_BODY';
}

/** Longest chunk-size line (with extensions) or trailer line; beyond it the body is refused. */
const MAX_LINE = 4096;
/** Largest trailer section. */
const MAX_TRAILERS = 16 * 1024;
const HEX_SIZE = /^[0-9a-fA-F]{1,13}$/;

enum State {
  SizeLine,
  Data,
  DataEnd,
  TrailerLine,
  Done,
}

export class ChunkedDecoder {
  private state = State.SizeLine;
  /** Bytes left in the current chunk. */
  private remaining = 0;
  /** The line being read (size or trailer), latin1. */
  private line = '';
  private trailerBytes = 0;
  /** The trailer section as received, a flat [name, value, ...] list (a line without a colon: name ''). */
  readonly trailers: string[] = [];

  get done(): boolean {
    return this.state === State.Done;
  }

  /**
   * Reads `input`, handing body bytes to `onData`. Returns how many bytes of `input` belonged to the
   * body: all of them unless the body ended inside `input`.
   */
  push(input: Buffer, onData: (data: Buffer) => void): number {
    let at = 0;
    while (at < input.length && this.state !== State.Done) {
      if (this.state === State.Data) {
        const take = Math.min(this.remaining, input.length - at);
        onData(input.subarray(at, at + take));
        at += take;
        this.remaining -= take;
        if (this.remaining === 0) this.state = State.DataEnd;
      } else {
        at = this.readLine(input, at);
      }
    }
    return at;
  }

  /** Reads up to the end of a line (or of `input`); acts on the line once it is whole. */
  private readLine(input: Buffer, at: number): number {
    const lf = input.indexOf(0x0a, at);
    const end = lf < 0 ? input.length : lf;
    this.line += input.toString('latin1', at, end);
    if (this.line.length > MAX_LINE) throw new ChunkedBodyError('chunked body: line too long');
    if (lf < 0) return input.length;
    const line = this.line.endsWith('\r') ? this.line.slice(0, -1) : this.line;
    this.line = '';
    this.onLine(line);
    return lf + 1;
  }

  private onLine(line: string): void {
    switch (this.state) {
      case State.DataEnd:
        if (line !== '') throw new ChunkedBodyError('chunked body: chunk data longer than its size');
        this.state = State.SizeLine;
        return;
      case State.SizeLine: {
        const semicolon = line.indexOf(';');
        const size = (semicolon < 0 ? line : line.slice(0, semicolon)).trim();
        if (!HEX_SIZE.test(size))
          throw new ChunkedBodyError(`chunked body: bad chunk size ${JSON.stringify(size.slice(0, 20))}`);
        this.remaining = Number.parseInt(size, 16);
        this.state = this.remaining === 0 ? State.TrailerLine : State.Data;
        return;
      }
      case State.TrailerLine:
        if (line === '') {
          this.state = State.Done;
          return;
        }
        this.trailerBytes += line.length + 2;
        if (this.trailerBytes > MAX_TRAILERS) throw new ChunkedBodyError('chunked body: trailers too large');
        this.keepTrailer(line);
        return;
    }
  }

  /** `name: value`; a folded continuation line (leading space) has no name of its own and is kept as such. */
  private keepTrailer(line: string): void {
    const colon = line.indexOf(':');
    if (colon <= 0 || line[0] === ' ' || line[0] === '\t') this.trailers.push('', line);
    else this.trailers.push(line.slice(0, colon), line.slice(colon + 1).trim());
  }
}
