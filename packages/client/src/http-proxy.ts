// An http-proxy proxy's stream (`local = "http-proxy"`, frp's http_proxy plugin): the visitor's HTTP proxy
// request read and checked here (CONNECT host:port, or an absolute-form request such as
// `GET http://nas.lan/x HTTP/1.1`), its destination checked and connected from the client's side as socks5's
// is (forward-destination.ts), and then the bytes carried: after a CONNECT both ways as they come, otherwise
// the one request (forwarded-request.ts) and its response, after which the connection closes.
import { STATUS_CODES } from 'node:http';
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Stream } from '@porthole/mux';
import {
  basicCredentialsMatch,
  formatHostPort,
  isRefusedRequest,
  normalizeRequestHost,
  parseConnectTarget,
  parseRequestHead,
  plainErrorResponse,
  type RequestHead,
  readRequestHead,
} from '@porthole/protocol';
import {
  connectForwardDestination,
  DestinationRefused,
  type ForwardDestination,
} from './forward-destination.js';
import { ForwardedRequest, type RequestBodyFraming } from './forwarded-request.js';
import { StreamGone } from './local-connect.js';
import type { SocksSettings } from './proxy-config.js';

/**
 * A visitor that has not sent its whole request head by then gets 408: until then it holds one of the proxy's
 * pending places (PendingLocalConnects), as a SOCKS handshake does.
 */
const HEAD_TIMEOUT_MS = 10_000;
/** A proxy request's line and fields; cookies and tokens make browsers' heads long, 32 KiB is plenty. */
export const MAX_HTTP_PROXY_HEAD_BYTES = 32 * 1024;

/** The request was refused or failed, its answer already written; `dest` once it was named. */
export class HttpProxyRequestFailed extends Error {
  constructor(
    message: string,
    readonly dest: string | undefined,
  ) {
    super(message);
  }
}

export interface HttpProxyConnection {
  /** Carried to `socket`: the stream itself after a CONNECT, the one forwarded request otherwise. */
  visitor: Duplex;
  socket: Socket;
  /** "name:port" or "address:port", as the visitor asked. */
  dest: string;
  /** The address connected to, when `dest` is a name. */
  destAddr?: string;
}

/** Fields of one hop only (RFC 9110 7.6.1), and the ones addressed to this proxy: not passed on. */
const HOP_FIELDS = new Set([
  'connection',
  'keep-alive',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'host',
  'content-length',
]);

/**
 * Reads and answers `stream`'s proxy request and connects its destination; throws HttpProxyRequestFailed
 * (its answer written), or StreamGone if the visitor left.
 */
export async function openHttpProxyDestination(
  stream: Stream,
  rules: SocksSettings,
): Promise<HttpProxyConnection> {
  const read = await readRequestHead(stream, {
    maxBytes: MAX_HTTP_PROXY_HEAD_BYTES,
    timeoutMs: HEAD_TIMEOUT_MS,
  });
  if (read.state === 'gone') throw new StreamGone(read.reason);
  if (read.state === 'refused') throw refuse(stream, read.refused.status, read.refused.reason, undefined);
  const request = parseRequestHead(read.head);
  if (isRefusedRequest(request)) throw refuse(stream, request.status, request.reason, undefined);
  const authorizations = request.fields.filter((field) => field.key === 'proxy-authorization');
  if (authorizations.length > 1)
    throw refuse(stream, 400, 'more than one Proxy-Authorization field', undefined);
  if (rules.credentials) {
    const credentials = {
      user: Buffer.from(rules.credentials.user),
      password: Buffer.from(rules.credentials.password),
    };
    const given = authorizations[0]?.value;
    if (!basicCredentialsMatch(given, credentials))
      throw refuse(
        stream,
        407,
        given === undefined ? 'no Proxy-Authorization' : 'wrong username or password',
        undefined,
      );
  }
  const target = request.method === 'CONNECT' ? connectTarget(request) : absoluteTarget(request);
  if ('refused' in target) throw refuse(stream, 400, target.refused, undefined);
  const { destination, forward } = target;
  const dest = formatHostPort(destination.host, destination.port);
  let opened: Awaited<ReturnType<typeof connectForwardDestination>>;
  try {
    opened = await connectForwardDestination(destination, rules, stream);
  } catch (err) {
    if (!(err instanceof DestinationRefused)) throw err;
    throw refuse(stream, err.notAllowed ? 403 : 502, err.message, dest);
  }
  const { socket } = opened;
  const named = { dest, ...(opened.destAddr ? { destAddr: opened.destAddr } : {}) };
  if (!forward) {
    stream.write('HTTP/1.1 200 Connection established\r\n\r\n');
    // What the visitor sent after its CONNECT without waiting for the answer (a TLS ClientHello).
    if (read.rest.length > 0) socket.write(read.rest);
    return { visitor: stream, socket, ...named };
  }
  return {
    visitor: new ForwardedRequest(stream, forward.head, read.rest, forward.framing),
    socket,
    ...named,
  };
}

type Target =
  | { destination: ForwardDestination; forward?: { head: Buffer; framing: RequestBodyFraming } }
  | { refused: string };

function destinationOf(name: string, port: number): ForwardDestination {
  return { host: name, port, isName: isIP(name) === 0 };
}

function connectTarget(request: RequestHead): Target {
  const target = parseConnectTarget(request.target);
  if (!target) return { refused: 'the CONNECT target is not host:port' };
  return { destination: destinationOf(target.name, target.port) };
}

/** "http://" authority, then a path and query or nothing; no user info, no fragment. */
const ABSOLUTE_HTTP = /^http:\/\/([^/?#@]+)([/?][^#]*)?$/i;

/**
 * An absolute-form request (RFC 9112 3.2.2): its destination, and its head as the destination gets it (the
 * target in origin-form, Host from the target, this hop's fields and the proxy's left out, Connection: close
 * since the connection carries this one request), or why it is refused: anything whose body's end is not
 * certain (both Transfer-Encoding and Content-Length, a coding other than chunked, two lengths) is, since the
 * destination might read the end elsewhere (request smuggling).
 */
function absoluteTarget(request: RequestHead): Target {
  const match = ABSOLUTE_HTTP.exec(request.target);
  if (!match) {
    return {
      refused: /^https:/i.test(request.target)
        ? 'an https:// target is reached with CONNECT'
        : 'not a proxy request: the target must be http://host[:port]/path, or CONNECT host:port',
    };
  }
  const authority = match[1]!;
  const name = normalizeRequestHost(authority);
  const port = /:([0-9]{1,5})$/.exec(authority);
  if (
    name === undefined ||
    /:$/.test(authority) ||
    (port && (Number(port[1]) < 1 || Number(port[1]) > 65535))
  )
    return { refused: 'the target does not name a host' };
  const framing = bodyFraming(request);
  if ('refused' in framing) return framing;
  const path = match[2] === undefined ? '/' : match[2].startsWith('?') ? `/${match[2]}` : match[2];
  const connectionOptions = request.fields
    .filter((field) => field.key === 'connection' || field.key === 'proxy-connection')
    .flatMap((field) => field.value.split(',').map((option) => option.trim().toLowerCase()));
  const lines = [`${request.method} ${path} ${request.version}`, `Host: ${authority}`];
  for (const field of request.fields) {
    if (HOP_FIELDS.has(field.key) || field.key.startsWith('proxy-') || connectionOptions.includes(field.key))
      continue;
    lines.push(`${field.name}: ${field.value}`);
  }
  if (framing.kind === 'length') lines.push(`Content-Length: ${framing.length}`);
  if (framing.kind === 'chunked') lines.push('Transfer-Encoding: chunked');
  lines.push('Connection: close', '', '');
  return {
    destination: destinationOf(name, port ? Number(port[1]) : 80),
    forward: { head: Buffer.from(lines.join('\r\n'), 'latin1'), framing },
  };
}

function bodyFraming(request: RequestHead): RequestBodyFraming | { refused: string } {
  const codings = request.fields.filter((field) => field.key === 'transfer-encoding');
  const lengths = request.fields.filter((field) => field.key === 'content-length');
  if (codings.length > 0 && lengths.length > 0)
    return {
      refused: 'both Transfer-Encoding and Content-Length (the body would end where each reader chose)',
    };
  if (codings.length > 0) {
    if (request.version !== 'HTTP/1.1')
      return { refused: `Transfer-Encoding in an ${request.version} request` };
    if (codings.length > 1 || codings[0]!.value.toLowerCase() !== 'chunked')
      return { refused: 'a Transfer-Encoding other than chunked' };
    return { kind: 'chunked' };
  }
  if (lengths.length > 1) return { refused: 'more than one Content-Length field' };
  if (lengths.length === 0) return { kind: 'none' };
  const length = lengths[0]!.value;
  if (!/^[0-9]{1,15}$/.test(length)) return { refused: 'a Content-Length that is not a number' };
  return { kind: 'length', length: Number(length) };
}

/** Answers `status` and says why in the body; the caller ends the stream once it is read. */
function refuse(
  stream: Stream,
  status: number,
  reason: string,
  dest: string | undefined,
): HttpProxyRequestFailed {
  const body = `${status} ${STATUS_CODES[status] ?? ''}: ${status === 407 ? 'proxy credentials required' : reason}`;
  const fields = status === 407 ? ['Proxy-Authenticate: Basic realm="porthole"'] : [];
  stream.write(plainErrorResponse(status, body, fields));
  return new HttpProxyRequestFailed(`${status}: ${reason}`, dest);
}
