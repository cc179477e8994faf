import { createHash, randomBytes } from 'node:crypto';
import { type ClientRequest, request as httpRequest, type IncomingMessage } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { isIP, type Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { connect as tlsConnect } from 'node:tls';
import { WebSocketStream } from './websocket-stream.js';

/** RFC 6455 §1.3: the server proves it read the key by hashing it with this GUID. */
const HANDSHAKE_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
/** A key is 16 random bytes in base64. */
const KEY_PATTERN = /^[+/0-9A-Za-z]{21}[AQgw]==$/;
/** An error body longer than this is cut: it is a reason for a log line, not content. */
const MAX_REASON_BYTES = 512;

export function webSocketAccept(key: string): string {
  return createHash('sha1')
    .update(key + HANDSHAKE_GUID)
    .digest('base64');
}

export type UpgradeCheck = { ok: true; key: string } | { ok: false; status: number; reason: string };

/** Whether an HTTP upgrade request is a WebSocket handshake we can accept (RFC 6455 §4.2.1). */
export function checkUpgradeRequest(req: IncomingMessage): UpgradeCheck {
  if (req.method !== 'GET') return { ok: false, status: 405, reason: 'a WebSocket upgrade is a GET' };
  if (req.headers.upgrade?.toLowerCase() !== 'websocket')
    return { ok: false, status: 400, reason: 'expected a WebSocket upgrade' };
  if (req.headers['sec-websocket-version'] !== '13')
    return { ok: false, status: 400, reason: 'unsupported Sec-WebSocket-Version (13 expected)' };
  const key = req.headers['sec-websocket-key'];
  if (typeof key !== 'string' || !KEY_PATTERN.test(key.trim()))
    return { ok: false, status: 400, reason: 'missing or malformed Sec-WebSocket-Key' };
  return { ok: true, key: key.trim() };
}

/** Completes a handshake that passed checkUpgradeRequest: writes the 101 answer, returns the stream. */
export function acceptWebSocket(socket: Duplex, head: Buffer, key: string): WebSocketStream {
  socket.write(
    'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Accept: ${webSocketAccept(key)}\r\n\r\n`,
  );
  return new WebSocketStream(socket, { role: 'server', head });
}

/** The server answered the upgrade with an HTTP error; `message` is "STATUS: reason from the body". */
export class WebSocketUpgradeError extends Error {
  override readonly name = 'WebSocketUpgradeError';
  constructor(
    readonly status: number,
    readonly reason: string,
    /** The answer's Retry-After field as sent (a 429's or 503's: when to try again), if it had one. */
    readonly retryAfter?: string,
  ) {
    super(`${status}: ${reason}`);
  }
}

export interface OpenWebSocketOptions {
  /** Extra request headers (e.g. Authorization). */
  headers?: Record<string, string>;
  /** CA certificates to trust for wss:// instead of the system's. */
  ca?: Buffer;
  /** Time allowed for TCP + TLS + the HTTP upgrade. */
  timeoutMs: number;
  highWaterMark?: number;
  /**
   * A connection already open to the URL's host and port (a proxy's tunnel to it): the handshake (TLS first,
   * for wss://) runs over it instead of a new one. Destroyed with the request on failure.
   */
  socket?: Socket;
}

/**
 * Dials a ws:// or wss:// URL and performs the client handshake (RFC 6455 §4.1). Rejects with a
 * WebSocketUpgradeError when the server answers with an HTTP error (redirects are not followed), with
 * the socket's error ("connect ECONNREFUSED 127.0.0.1:7000") when it cannot be reached.
 */
export function openWebSocket(url: string, options: OpenWebSocketOptions): Promise<WebSocketStream> {
  return new Promise((resolve, reject) => {
    // The errors leave the URL out: a user or password in it must not reach a log line.
    let target: URL;
    try {
      target = new URL(url);
    } catch {
      reject(new Error('not a URL'));
      return;
    }
    const secure = target.protocol === 'wss:';
    if (!secure && target.protocol !== 'ws:') {
      reject(new Error(`not a ws:// or wss:// URL (${target.protocol})`));
      return;
    }
    const host = target.hostname.replace(/^\[(.*)\]$/, '$1');
    const key = randomBytes(16).toString('base64');
    const tunnel = options.socket;
    const servername = secure && !isIP(host) ? { servername: host } : {};
    const req: ClientRequest = (secure ? httpsRequest : httpRequest)({
      host,
      port: target.port || (secure ? 443 : 80),
      path: `${target.pathname}${target.search}`,
      method: 'GET',
      // Without an agent, http takes the connection createConnection gives it (TLS done here, as https's
      // agent would: the same CA and server name).
      ...(tunnel
        ? {
            createConnection: () =>
              secure
                ? tlsConnect({ socket: tunnel, ...servername, ...(options.ca ? { ca: options.ca } : {}) })
                : tunnel,
          }
        : { agent: false }),
      headers: {
        ...options.headers,
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Key': key,
        'Sec-WebSocket-Version': '13',
      },
      ...(secure && options.ca ? { ca: options.ca } : {}),
      ...servername,
    });
    let settled = false;
    const fail = (err: Error) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      req.destroy();
      // Whether or not the request has taken it over yet.
      tunnel?.destroy();
      reject(err);
    };
    const timer = setTimeout(
      () =>
        fail(new Error(`WebSocket handshake with ${target.host} timed out after ${options.timeoutMs} ms`)),
      options.timeoutMs,
    );
    req.on('error', fail);
    req.on('response', (res: IncomingMessage) => {
      readReason(res).then((body) =>
        fail(
          new WebSocketUpgradeError(
            res.statusCode ?? 0,
            body || res.statusMessage || 'no reason given',
            res.headers['retry-after'],
          ),
        ),
      );
    });
    req.on('upgrade', (res: IncomingMessage, socket: Duplex, head: Buffer) => {
      if (settled) {
        socket.destroy();
        return;
      }
      const problem =
        res.headers.upgrade?.toLowerCase() !== 'websocket'
          ? 'the server upgraded to something other than WebSocket'
          : res.headers['sec-websocket-accept'] !== webSocketAccept(key)
            ? 'the server answered with a wrong Sec-WebSocket-Accept'
            : undefined;
      if (problem) {
        socket.destroy();
        fail(new Error(problem));
        return;
      }
      settled = true;
      clearTimeout(timer);
      resolve(
        new WebSocketStream(socket, {
          role: 'client',
          head,
          ...(options.highWaterMark ? { highWaterMark: options.highWaterMark } : {}),
        }),
      );
    });
    req.end();
  });
}

function readReason(res: IncomingMessage): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const finish = () => resolve(Buffer.concat(chunks).toString('utf8').trim().slice(0, MAX_REASON_BYTES));
    res.on('data', (chunk: Buffer) => {
      if (size < MAX_REASON_BYTES) chunks.push(chunk);
      size += chunk.length;
    });
    res.on('end', finish);
    res.on('error', finish);
    res.on('close', finish);
  });
}
