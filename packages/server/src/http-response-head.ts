// The head of a response from a local service (status line and header fields) as an http proxy reads it
// off a tunnel stream, and what it says about the body after it (RFC 9112 6.3) and about the connection.
import { HTTP_FIELD_VALUE, HTTP_TOKEN } from '@porthole/protocol';

/** The local service broke HTTP/1.1: the exchange fails (502 when nothing was sent to the visitor yet). */
export class UpstreamProtocolError extends Error {
  readonly code = 'ERR_UPSTREAM_PROTOCOL';
}

/** How the body after a head ends. */
export type BodyFraming =
  | { kind: 'none' }
  | { kind: 'length'; length: number }
  | { kind: 'chunked' }
  /** Until the local service closes its side: the stream cannot carry another request. */
  | { kind: 'close' };

export interface ResponseHead {
  statusCode: number;
  statusMessage: string;
  /** [name, value, name, value, ...] as the service sent them. */
  rawHeaders: string[];
  body: BodyFraming;
  /** The stream may carry another request once this response is complete. */
  keepAlive: boolean;
  /** The Connection field's options, lowercased: the fields they name describe this hop only. */
  connection: readonly string[];
}

const STATUS_LINE = /^HTTP\/1\.([01]) ([0-9]{3})(?: (.*))?$/s;
const DECIMAL = /^[0-9]{1,15}$/;
const NO_BODY: BodyFraming = { kind: 'none' };
const CHUNKED: BodyFraming = { kind: 'chunked' };
const UNTIL_CLOSE: BodyFraming = { kind: 'close' };

/** A comma-separated field value as lowercased tokens, empty ones dropped. */
export function headerTokens(value: string): string[] {
  return value
    .split(',')
    .map((t) => t.trim().toLowerCase())
    .filter((t) => t !== '');
}

/**
 * Parses a complete head (`head` ends with its blank line). `requestMethod` decides whether a body can
 * follow at all. Throws UpstreamProtocolError on anything a careful proxy must not pass on.
 */
export function parseResponseHead(head: Buffer, requestMethod: string): ResponseHead {
  const lines = head.toString('latin1').split('\n');
  // The blank line (and the empty string after it) are not fields.
  lines.length -= 2;
  const statusLine = stripCr(lines[0] ?? '');
  const status = STATUS_LINE.exec(statusLine);
  if (!status) throw new UpstreamProtocolError(`bad status line ${JSON.stringify(statusLine.slice(0, 80))}`);
  const http10 = status[1] === '0';
  const statusCode = Number(status[2]);
  const statusMessage = status[3] ?? '';
  if (statusCode < 100) throw new UpstreamProtocolError(`bad status code ${statusCode}`);
  // Node's own header check refuses the same characters (writeHead would throw on them).
  if (!HTTP_FIELD_VALUE.test(statusMessage)) throw new UpstreamProtocolError('bad character in status line');

  const rawHeaders: string[] = [];
  let contentLength: number | undefined;
  let transferEncoding: string[] | undefined;
  let connection: string[] = [];
  for (let i = 1; i < lines.length; i++) {
    const line = stripCr(lines[i]!);
    const colon = line.indexOf(':');
    // A line starting with whitespace continues the previous field (obsolete folding): refused, as
    // RFC 9112 5.2 allows, rather than guessed at.
    if (colon <= 0 || !HTTP_TOKEN.test(line.slice(0, colon)))
      throw new UpstreamProtocolError(`bad header line ${JSON.stringify(line.slice(0, 80))}`);
    const name = line.slice(0, colon);
    const value = line.slice(colon + 1).trim();
    if (!HTTP_FIELD_VALUE.test(value)) throw new UpstreamProtocolError(`bad character in header ${name}`);
    rawHeaders.push(name, value);
    switch (name.toLowerCase()) {
      case 'content-length':
        for (const part of value.split(',')) {
          const n = part.trim();
          if (!DECIMAL.test(n))
            throw new UpstreamProtocolError(`bad content-length ${JSON.stringify(value)}`);
          if (contentLength !== undefined && contentLength !== Number(n))
            throw new UpstreamProtocolError('conflicting content-length headers');
          contentLength = Number(n);
        }
        break;
      case 'transfer-encoding':
        transferEncoding = [...(transferEncoding ?? []), ...headerTokens(value)];
        break;
      case 'connection':
        connection = [...connection, ...headerTokens(value)];
        break;
    }
  }

  let keepAlive = http10 ? connection.includes('keep-alive') : !connection.includes('close');
  let body: BodyFraming;
  if (requestMethod === 'HEAD' || statusCode < 200 || statusCode === 204 || statusCode === 304) {
    body = NO_BODY;
  } else if (transferEncoding !== undefined) {
    // HTTP/1.0 has no transfer codings: its framing is faulty and the response is discarded (RFC 9112 6.1).
    if (http10) throw new UpstreamProtocolError('transfer-encoding in an HTTP/1.0 response');
    // Both framings at once is how responses are smuggled: transfer-encoding wins, and the stream is
    // not trusted with another request (RFC 9112 6.3).
    if (contentLength !== undefined) keepAlive = false;
    // Chunked is the only coding undone here, and Transfer-Encoding is this hop's: a body under another
    // coding (gzip...) would reach the visitor with that coding's name gone and its bytes read as plain
    // (the visitor never asked for one: TE is not passed on). Refused with a 502, as nginx has since 1.23
    // and HAProxy since 2.5; nginx 1.22 dropped the coding's name as this did.
    if (transferEncoding.length !== 1 || transferEncoding[0] !== 'chunked')
      throw new UpstreamProtocolError(
        `unsupported transfer-encoding ${JSON.stringify(transferEncoding.join(', '))}`,
      );
    body = CHUNKED;
  } else if (contentLength !== undefined) {
    body = { kind: 'length', length: contentLength };
  } else {
    body = UNTIL_CLOSE;
  }
  if (body.kind === 'close') keepAlive = false;
  return { statusCode, statusMessage, rawHeaders, body, keepAlive, connection };
}

function stripCr(line: string): string {
  return line.endsWith('\r') ? line.slice(0, -1) : line;
}
