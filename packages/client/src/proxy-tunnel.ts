// A TCP connection to the server's host and port by way of an HTTP CONNECT (RFC 9110 9.3.6) or SOCKS5
// (RFC 1928, RFC 1929) proxy: what the dial speaks TLS and the WebSocket upgrade over on a network whose only
// way out is its proxy.
import { connect, isIP, type Socket } from 'node:net';
import { parseIp, readExactly } from '@porthole/protocol';
import { describeConnectError } from './connect-error.js';
import { type DialProxy, describeDialProxy } from './dial-proxy.js';
import {
  ATYP_DOMAIN,
  ATYP_IPV4,
  ATYP_IPV6,
  AUTH_VERSION,
  CMD_CONNECT,
  METHOD_NO_AUTH,
  METHOD_NONE_ACCEPTABLE,
  METHOD_USER_PASSWORD,
  VERSION as SOCKS_VERSION,
  SocksReply,
  socksReplyName,
} from './socks5.js';

/** A proxy's answer to a CONNECT is a status line and a few fields: more than this is not a proxy talking. */
export const MAX_PROXY_HEAD_BYTES = 16 * 1024;

/** The proxy could not be reached or would not open the tunnel; the message names the proxy, never a password. */
export class ProxyTunnelError extends Error {
  override readonly name = 'ProxyTunnelError';
  constructor(
    message: string,
    /** The proxy refused our credentials or wants some: a config mistake that retrying will not mend. */
    readonly credentialsRefused = false,
  ) {
    super(message);
  }
}

export interface TunnelTarget {
  /** A name or an IP address (an IPv6 one without brackets). */
  host: string;
  port: number;
}

function hostPort(target: TunnelTarget): string {
  return isIP(target.host) === 6 ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`;
}

/** A tunnel the proxy opened: `socket`'s next bytes are the server's. */
export interface ProxyTunnel {
  socket: Socket;
  /** How the proxy said yes, for a reason: "200" (HTTP), "succeeded" (SOCKS5). */
  answer: string;
  /** What the proxy itself sent (its answer): socket.bytesRead past it came from the server. */
  answerBytes: number;
  /** "127.0.0.1:443", as the CONNECT named it. */
  target: string;
}

/**
 * Connects to `proxy` and has it open a tunnel to `target`, within `timeoutMs`. Resolves with the socket, its
 * next bytes the server's (any the proxy sent after its answer are still in it, unread); rejects with a
 * ProxyTunnelError.
 */
export async function openProxyTunnel(
  proxy: DialProxy,
  target: TunnelTarget,
  timeoutMs: number,
): Promise<ProxyTunnel> {
  const socket = connect({ host: proxy.host, port: proxy.port });
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    socket.destroy(new Error('timed out'));
  }, timeoutMs);
  try {
    // The handshake reads in paused mode ('readable'), exactly what it needs: the rest stays in the socket
    // for the TLS or HTTP layer that takes it over. This listener stays too (a no-op once settled): an error
    // between two reads, or before that layer listens, must not go unhandled.
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.on('error', reject);
    }).catch((err: NodeJS.ErrnoException) => {
      if (timedOut) throw err;
      // "ECONNREFUSED proxy 127.0.0.1:3128": which of the two hops failed comes first.
      const reason = err.code ?? describeConnectError(err);
      throw new ProxyTunnelError(`${reason} proxy ${hostPort(proxy)}`);
    });
    const answer =
      proxy.kind === 'http'
        ? await httpConnect(socket, proxy, target)
        : await socksConnect(socket, proxy, target);
    // What was read but put back (bytes after the answer) is the server's.
    const answerBytes = socket.bytesRead - socket.readableLength;
    return { socket, answer, answerBytes, target: hostPort(target) };
  } catch (err) {
    socket.destroy();
    if (timedOut)
      throw new ProxyTunnelError(
        `the proxy ${describeDialProxy(proxy)} did not open a tunnel to ${hostPort(target)} within ${timeoutMs} ms`,
      );
    if (err instanceof ProxyTunnelError) throw err;
    throw new ProxyTunnelError(`proxy ${describeDialProxy(proxy)}: ${(err as Error).message}`);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolves with the status the proxy said yes with. */
async function httpConnect(socket: Socket, proxy: DialProxy, target: TunnelTarget): Promise<string> {
  const authority = hostPort(target);
  const credentials = proxy.credentials;
  const authorization = credentials
    ? `Proxy-Authorization: Basic ${Buffer.from(`${credentials.user}:${credentials.password}`).toString('base64')}\r\n`
    : '';
  socket.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${authorization}\r\n`);
  const head = await readHead(socket, proxy);
  const statusLine = head.slice(0, head.indexOf('\r\n') === -1 ? undefined : head.indexOf('\r\n'));
  const match = /^HTTP\/1\.[01] (\d{3})(?: (.*))?$/.exec(statusLine);
  if (!match)
    throw new ProxyTunnelError(
      `the proxy ${describeDialProxy(proxy)} did not answer the CONNECT in HTTP (is it a SOCKS5 proxy? then write socks5://)`,
    );
  const status = Number(match[1]);
  const answer = `${status}${match[2] ? ` ${printable(match[2])}` : ''}`;
  if (status >= 200 && status < 300) return String(status);
  // 407 is the proxy's "who are you"; a 401 to a CONNECT can only be the proxy's too (no server has been
  // reached), and is what tinyproxy answers to a wrong password.
  if (status === 407 || status === 401)
    throw new ProxyTunnelError(
      credentials
        ? `the proxy ${describeDialProxy(proxy)} refused the credentials (${answer})`
        : `the proxy ${describeDialProxy(proxy)} wants credentials (${answer}): give them as "http://user:password@host:port", or the password in proxy_password_file`,
      true,
    );
  throw new ProxyTunnelError(
    `the proxy ${describeDialProxy(proxy)} answered ${answer} to CONNECT ${authority}`,
  );
}

/** A proxy's words for a log line: at most 100 characters, controls shown as "?". */
function printable(text: string): string {
  return text.slice(0, 100).replace(/[^\x20-\x7e]/g, '?');
}

/**
 * The proxy's answer head, up to its blank line; what follows stays in the socket. Read in paused mode,
 * chunk by chunk, the surplus of the last chunk put back.
 */
function readHead(socket: Socket, proxy: DialProxy): Promise<string> {
  return new Promise((resolve, reject) => {
    let head = Buffer.alloc(0);
    const cleanup = () => {
      socket.off('readable', onReadable);
      socket.off('end', onEnd);
      socket.off('error', onError);
      socket.off('close', onEnd);
    };
    const fail = (err: Error) => {
      cleanup();
      reject(err);
    };
    const onError = (err: Error) => fail(err);
    const onEnd = () =>
      fail(
        new ProxyTunnelError(
          `the proxy ${describeDialProxy(proxy)} closed the connection before answering the CONNECT`,
        ),
      );
    function onReadable(): void {
      for (
        let chunk = socket.read() as Buffer | null;
        chunk !== null;
        chunk = socket.read() as Buffer | null
      ) {
        // The blank line may straddle two chunks: search from 3 bytes before the new one.
        const from = Math.max(0, head.length - 3);
        head = Buffer.concat([head, chunk]);
        const end = head.indexOf('\r\n\r\n', from);
        if (end !== -1 && end + 4 <= MAX_PROXY_HEAD_BYTES) {
          cleanup();
          const rest = head.subarray(end + 4);
          if (rest.length > 0) socket.unshift(rest);
          resolve(head.subarray(0, end).toString('latin1'));
          return;
        }
        if (head.length >= MAX_PROXY_HEAD_BYTES) {
          fail(
            new ProxyTunnelError(
              `the proxy ${describeDialProxy(proxy)} answered the CONNECT with a head over ${MAX_PROXY_HEAD_BYTES} bytes`,
            ),
          );
          return;
        }
      }
    }
    socket.on('readable', onReadable);
    socket.on('end', onEnd);
    socket.on('error', onError);
    socket.on('close', onEnd);
  });
}

async function take(socket: Socket, n: number, proxy: DialProxy): Promise<Buffer> {
  const bytes = await readExactly(socket, n);
  if (bytes === null)
    throw new ProxyTunnelError(
      `the proxy ${describeDialProxy(proxy)} closed the connection in the SOCKS5 handshake`,
    );
  return bytes;
}

async function socksConnect(socket: Socket, proxy: DialProxy, target: TunnelTarget): Promise<string> {
  const name = describeDialProxy(proxy);
  const credentials = proxy.credentials;
  const methods = credentials ? [METHOD_NO_AUTH, METHOD_USER_PASSWORD] : [METHOD_NO_AUTH];
  socket.write(Buffer.from([SOCKS_VERSION, methods.length, ...methods]));
  const [version, method] = await take(socket, 2, proxy);
  if (version !== SOCKS_VERSION)
    throw new ProxyTunnelError(
      `the proxy ${name} is not a SOCKS5 proxy (version byte ${version}; an HTTP proxy is written http://)`,
    );
  if (method === METHOD_USER_PASSWORD && credentials) {
    const user = Buffer.from(credentials.user);
    const password = Buffer.from(credentials.password);
    socket.write(
      Buffer.concat([
        Buffer.from([AUTH_VERSION, user.length]),
        user,
        Buffer.from([password.length]),
        password,
      ]),
    );
    const [, status] = await take(socket, 2, proxy);
    if (status !== 0) throw new ProxyTunnelError(`the proxy ${name} refused the credentials (SOCKS5)`, true);
  } else if (method === METHOD_NONE_ACCEPTABLE) {
    throw credentials
      ? new ProxyTunnelError(`the proxy ${name} accepts neither username/password nor no authentication`)
      : new ProxyTunnelError(
          `the proxy ${name} wants credentials: give them as "socks5://user:password@host:port", or the password in proxy_password_file`,
          true,
        );
  } else if (method !== METHOD_NO_AUTH) {
    throw new ProxyTunnelError(`the proxy ${name} chose SOCKS5 method ${method}, which was not offered`);
  }

  socket.write(Buffer.concat([Buffer.from([SOCKS_VERSION, CMD_CONNECT, 0]), socksAddress(target)]));
  const [replyVersion, reply, , addressType] = await take(socket, 4, proxy);
  if (replyVersion !== SOCKS_VERSION)
    throw new ProxyTunnelError(
      `the proxy ${name} answered the SOCKS5 request with version byte ${replyVersion}`,
    );
  if (reply !== SocksReply.succeeded)
    throw new ProxyTunnelError(
      `the proxy ${name} answered ${socksReplyName(reply!)} to CONNECT ${hostPort(target)}`,
    );
  // The address the proxy connected from, and its port: read to leave the server's first byte next.
  const addressLength =
    addressType === ATYP_IPV4
      ? 4
      : addressType === ATYP_IPV6
        ? 16
        : addressType === ATYP_DOMAIN
          ? (await take(socket, 1, proxy))[0]!
          : undefined;
  if (addressLength === undefined)
    throw new ProxyTunnelError(`the proxy ${name} answered with SOCKS5 address type ${addressType}`);
  await take(socket, addressLength + 2, proxy);
  return socksReplyName(SocksReply.succeeded);
}

/** ATYP, address and port of a SOCKS5 request: an IP as its bytes, a name for the proxy to resolve. */
function socksAddress(target: TunnelTarget): Buffer {
  const port = Buffer.alloc(2);
  port.writeUInt16BE(target.port);
  const ip = parseIp(target.host);
  if (ip) return Buffer.concat([Buffer.from([ip.family === 4 ? ATYP_IPV4 : ATYP_IPV6]), ip.bytes, port]);
  const name = Buffer.from(target.host);
  if (name.length > 255)
    throw new ProxyTunnelError(`the server's name is over 255 bytes, the most SOCKS5 carries`);
  return Buffer.concat([Buffer.from([ATYP_DOMAIN, name.length]), name, port]);
}
