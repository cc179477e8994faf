// The HTTP CONNECT request a tcpmux visitor opens with (RFC 9110 9.3.6): read off the raw socket with a
// time and size bound, and parsed strictly, since the name it carries picks the service the bytes after it
// reach. Anything this parser is unsure of is refused rather than guessed at.
import type { Readable } from 'node:stream';
import { HTTP_FIELD_VALUE, HTTP_TOKEN, normalizeRequestHost } from '@porthole/protocol';
import { headEnd } from './http-response-head.js';

/** A CONNECT head is a line and a few fields; 8 KiB leaves room for a long Proxy-Authorization. */
export const MAX_CONNECT_HEAD_BYTES = 8 * 1024;

export interface ConnectRequest {
  /** The target's host, normalized for the route lookup ("nas.example.com"). */
  name: string;
  /** The target as the visitor wrote it ("nas.example.com:22"): the port is not used for routing. */
  authority: string;
  /** The Proxy-Authorization field's value, if one came. */
  proxyAuthorization: string | undefined;
}

/** A request answered with `status` and closed before it is routed; `reason` is for the log and the body. */
export interface RefusedRequest {
  status: 400 | 405 | 408 | 431;
  reason: string;
}

export type ReadConnectHead =
  | {
      state: 'head';
      head: Buffer /** What the visitor sent after the head in the same reads. */;
      rest: Buffer;
    }
  | { state: 'refused'; refused: RefusedRequest }
  /** The visitor went away before its head was complete: nothing to answer. */
  | { state: 'gone'; reason: string };

/**
 * Reads up to the blank line that ends the request head, at most `maxBytes`, within `timeoutMs`. The socket
 * is left paused with nothing unread lost: what came after the head is in `rest`.
 */
export function readConnectHead(
  socket: Readable,
  { maxBytes, timeoutMs }: { maxBytes: number; timeoutMs: number },
): Promise<ReadConnectHead> {
  return new Promise((resolve) => {
    let received = Buffer.alloc(0);
    const finish = (result: ReadConnectHead): void => {
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
      const reason = `no complete request within ${timeoutMs} ms (handshake_timeout)`;
      finish({ state: 'refused', refused: { status: 408, reason } });
    }, timeoutMs);
    socket.on('data', onData);
    socket.once('end', onGone);
    socket.once('close', onGone);
  });
}

const REQUEST_LINE = /^([^ ]+) ([^ ]+) HTTP\/1\.[01]$/;
/** authority-form (RFC 9112 3.2.3): host ":" port, the port required. */
const AUTHORITY_PORT = /:([0-9]{1,5})$/;

/**
 * The routed parts of a complete head (as readConnectHead gave it), or why it is refused: 405 for another
 * method; 400 for lines not ended by CRLF, obs-fold, a field that is not name ":" value, a target not in
 * authority form, and two Host or Proxy-Authorization fields or a Host naming another host than the target
 * (one request would name two services).
 */
export function parseConnectHead(head: Buffer): ConnectRequest | RefusedRequest {
  const text = head.toString('latin1');
  if (!text.endsWith('\r\n\r\n')) return bad('lines must end with CRLF');
  const lines = text.slice(0, -4).split('\r\n');
  if (lines.some((line) => line.includes('\r') || line.includes('\n')))
    return bad('lines must end with CRLF');
  const requestLine = REQUEST_LINE.exec(lines[0]!);
  if (!requestLine || !HTTP_TOKEN.test(requestLine[1]!)) return bad('malformed request line');
  const [, method, target] = requestLine as unknown as [string, string, string];
  if (method !== 'CONNECT') return { status: 405, reason: `method ${method.slice(0, 16)}, not CONNECT` };
  const port = AUTHORITY_PORT.exec(target);
  const name = normalizeRequestHost(target);
  if (!port || Number(port[1]) < 1 || Number(port[1]) > 65535 || name === undefined)
    return bad('the CONNECT target is not host:port');
  const fields = new Map<string, string>();
  for (const line of lines.slice(1)) {
    if (line.startsWith(' ') || line.startsWith('\t'))
      return bad('obs-fold (a field line starting with a space)');
    const colon = line.indexOf(':');
    const fieldName = colon < 0 ? '' : line.slice(0, colon).toLowerCase();
    const value = line.slice(colon + 1).replace(/^[ \t]+|[ \t]+$/g, '');
    if (!HTTP_TOKEN.test(fieldName) || !HTTP_FIELD_VALUE.test(value)) return bad('malformed header field');
    if ((fieldName === 'host' || fieldName === 'proxy-authorization') && fields.has(fieldName))
      return bad(`more than one ${fieldName === 'host' ? 'Host' : 'Proxy-Authorization'} field`);
    fields.set(fieldName, value);
  }
  const host = fields.get('host');
  if (host !== undefined && normalizeRequestHost(host) !== name)
    return bad('Host names another host than the CONNECT target');
  return { name, authority: target, proxyAuthorization: fields.get('proxy-authorization') };
}

function bad(reason: string): RefusedRequest {
  return { status: 400, reason };
}
