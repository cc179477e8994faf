// An HTTP/1.1 request head read off a raw byte stream, with a time and size bound, and split into its request
// line and fields strictly (RFC 9112 2-5): the server's tcpmux CONNECT and the client's http-proxy local both
// act on what it names, so anything this parser is unsure of is refused rather than guessed at.
import type { Readable } from 'node:stream';
import { normalizeRequestHost } from './host-names.js';
import { HTTP_FIELD_VALUE, HTTP_TOKEN } from './http-field-syntax.js';

/** Index just past the blank line that ends a head in `buf`, searching from `from`; -1 if not there yet. */
export function headEnd(buf: Buffer, from = 0): number {
  let at = buf.indexOf(0x0a, from);
  while (at >= 0) {
    const next = buf[at + 1];
    if (next === 0x0a) return at + 2;
    if (next === 0x0d && buf[at + 2] === 0x0a) return at + 3;
    at = buf.indexOf(0x0a, at + 1);
  }
  return -1;
}

/** A request answered with `status` and closed before it goes anywhere; `reason` is for the log and the body. */
export interface RefusedRequest {
  status: 400 | 405 | 408 | 431;
  reason: string;
}

export type ReadRequestHead =
  | {
      state: 'head';
      head: Buffer /** What the visitor sent after the head in the same reads. */;
      rest: Buffer;
    }
  | { state: 'refused'; refused: RefusedRequest }
  /** The visitor went away before its head was complete: nothing to answer. */
  | { state: 'gone'; reason: string };

/**
 * Reads up to the blank line that ends the request head, at most `maxBytes`, within `timeoutMs` (the
 * setting that says so, if one does, is named in the 408's reason). The stream is left paused with nothing
 * unread lost: what came after the head is in `rest`.
 */
export function readRequestHead(
  socket: Readable,
  { maxBytes, timeoutMs, timeoutSetting }: { maxBytes: number; timeoutMs: number; timeoutSetting?: string },
): Promise<ReadRequestHead> {
  return new Promise((resolve) => {
    let received = Buffer.alloc(0);
    const finish = (result: ReadRequestHead): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onGone);
      socket.off('close', onGone);
      socket.pause();
      resolve(result);
    };
    const onData = (chunk: Buffer): void => {
      // A blank line may straddle two reads: search again from a little before the new bytes.
      const from = Math.max(0, received.length - 3);
      received = Buffer.concat([received, chunk]);
      const end = headEnd(received, from);
      if (end >= 0 && end <= maxBytes) {
        finish({ state: 'head', head: received.subarray(0, end), rest: received.subarray(end) });
      } else if (received.length >= maxBytes) {
        const reason = `request head larger than ${maxBytes} bytes`;
        finish({ state: 'refused', refused: { status: 431, reason } });
      }
    };
    const onGone = (): void =>
      finish({
        state: 'gone',
        reason: `closed after ${received.length} bytes, before the end of its request`,
      });
    const timer = setTimeout(() => {
      const setting = timeoutSetting === undefined ? '' : ` (${timeoutSetting})`;
      const reason = `no complete request within ${timeoutMs} ms${setting}`;
      finish({ state: 'refused', refused: { status: 408, reason } });
    }, timeoutMs);
    socket.on('data', onData);
    socket.once('end', onGone);
    socket.once('close', onGone);
  });
}

export interface RequestField {
  /** As the visitor wrote it ("Content-Type"). */
  name: string;
  /** Lowercased, for lookups. */
  key: string;
  /** Without the whitespace around it. */
  value: string;
}

export interface RequestHead {
  method: string;
  /** The request target as written: authority-form, absolute-form, origin-form or "*". */
  target: string;
  /** "HTTP/1.1" or "HTTP/1.0". */
  version: string;
  fields: RequestField[];
}

const REQUEST_LINE = /^([^ ]+) ([^ ]+) (HTTP\/1\.[01])$/;

/**
 * The request line and fields of a complete head (as readRequestHead gave it), or 400: lines not ended by
 * CRLF, a malformed request line, obs-fold, a field that is not name ":" value.
 */
export function parseRequestHead(head: Buffer): RequestHead | RefusedRequest {
  const text = head.toString('latin1');
  if (!text.endsWith('\r\n\r\n')) return badRequest('lines must end with CRLF');
  const lines = text.slice(0, -4).split('\r\n');
  if (lines.some((line) => line.includes('\r') || line.includes('\n')))
    return badRequest('lines must end with CRLF');
  const requestLine = REQUEST_LINE.exec(lines[0]!);
  if (!requestLine || !HTTP_TOKEN.test(requestLine[1]!)) return badRequest('malformed request line');
  const [, method, target, version] = requestLine as unknown as [string, string, string, string];
  const fields: RequestField[] = [];
  for (const line of lines.slice(1)) {
    if (line.startsWith(' ') || line.startsWith('\t'))
      return badRequest('obs-fold (a field line starting with a space)');
    const colon = line.indexOf(':');
    const name = colon < 0 ? '' : line.slice(0, colon);
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (!HTTP_TOKEN.test(name) || !HTTP_FIELD_VALUE.test(value)) return badRequest('malformed header field');
    fields.push({ name, key: name.toLowerCase(), value });
  }
  return { method, target, version, fields };
}

export function isRefusedRequest(parsed: RequestHead | RefusedRequest): parsed is RefusedRequest {
  return 'status' in parsed;
}

export function badRequest(reason: string): RefusedRequest {
  return { status: 400, reason };
}

/** authority-form (RFC 9112 3.2.3): host ":" port, the port required. */
const AUTHORITY_PORT = /:([0-9]{1,5})$/;

/**
 * A CONNECT target ("nas.example.com:22", "[::1]:5432"): its host normalized (normalizeRequestHost) and its
 * port; undefined when it is not host ":" port with a port in 1-65535.
 */
export function parseConnectTarget(target: string): { name: string; port: number } | undefined {
  const port = AUTHORITY_PORT.exec(target);
  const name = normalizeRequestHost(target);
  if (!port || Number(port[1]) < 1 || Number(port[1]) > 65535 || name === undefined) return undefined;
  return { name, port: Number(port[1]) };
}
