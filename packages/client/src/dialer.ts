import { openWebSocket, type WebSocketStream, WebSocketUpgradeError } from '@porthole/mux';
import { DEFAULT_CONTROL_PATH } from '@porthole/protocol';
import {
  describeConnectError,
  describeTunnelClosedUnanswered,
  UNTRUSTED_CERTIFICATE,
} from './connect-error.js';
import { type DialProxy, describeDialProxy } from './dial-proxy.js';
import { openProxyTunnel, ProxyTunnelError } from './proxy-tunnel.js';
import { retryAfterMs } from './reconnect.js';

export interface DialOptions {
  server: string;
  token: string;
  ca?: Buffer;
  /** An HTTP CONNECT or SOCKS5 proxy to reach the server through. */
  proxy?: DialProxy;
  /** Time allowed for TCP + the proxy's tunnel + TLS + the HTTP upgrade. */
  timeoutMs: number;
}

/** A dial failed; `message` is the reason to log ("401: token expired", "ECONNREFUSED 127.0.0.1:7000"). */
export class DialError extends Error {
  override readonly name = 'DialError';
  constructor(
    message: string,
    /** HTTP status when the server answered the upgrade with an error. */
    readonly status?: number,
    /** How long the server asked us to wait before the next attempt (its Retry-After), in ms. */
    readonly retryAfterMs?: number,
    /** The proxy on the way refused our credentials for it, or wants some (HTTP 407, SOCKS5's refusal). */
    readonly proxyCredentialsRefused = false,
  ) {
    super(message);
  }

  /**
   * The server refused our token (as opposed to being unreachable or busy). 429 too: the server limits only
   * sources whose tokens fail (a valid one is never refused by it), and its body says why ours did. And the
   * proxy refusing our credentials for it: as with a token, retrying the same ones cannot succeed.
   */
  get isAuthFailure(): boolean {
    return this.status === 401 || this.status === 429 || this.proxyCredentialsRefused;
  }
}

/**
 * The server URL as log lines and `status` show it: without a user or password. The config refuses them, but a
 * ClientConfig built in code may carry one, and logs must never hold a secret. A plain pattern, not URL:
 * it must also clean what URL cannot parse.
 */
export function urlWithoutUserinfo(server: string): string {
  return server.replace(/^([a-z][a-z0-9+.-]*:\/\/)[^/?#\\]*@/i, '$1');
}

/** The shortest start of a cut-off token worth hiding: a shorter one says nothing (every JWT starts "eyJ"). */
const MIN_TOKEN_PART = 8;

/**
 * `text` with our token hidden. A server URL that leads somewhere other than porthole's endpoint, say a
 * traefik/whoami or an httpbin that answers with the request it got, sends our Authorization header back in
 * its body, and the body is the reason `connect failed` logs and `status` shows. The body is cut at 512 bytes,
 * so it may end with the token's start: that is hidden too.
 */
function withoutToken(text: string, token: string): string {
  if (token.length < MIN_TOKEN_PART) return text;
  const hidden = text.split(token).join('[token]');
  for (let length = Math.min(token.length - 1, hidden.length); length >= MIN_TOKEN_PART; length--)
    if (hidden.endsWith(token.slice(0, length))) return `${hidden.slice(0, -length)}[token]`;
  return hidden;
}

/**
 * What the usual mistakes in a server URL look like from here, said next to the error: TLS spoken to a
 * plain port reads "wrong version number", plain HTTP to a TLS port "socket hang up", a wrong path or port 404,
 * an [https] port without a certificate for the name a handshake cut short.
 */
function hintFor(server: string, message: string, status?: number): string {
  const secure = URL.canParse(server) && new URL(server).protocol === 'wss:';
  if (secure && /wrong version number|packet length too long/.test(message))
    return ' (the server does not speak TLS on this port: is it ws:// there?)';
  if (!secure && /socket hang up/.test(message))
    return ' (the server closed the connection unanswered: does it expect wss:// here?)';
  if (secure && /disconnected before secure TLS connection/.test(message))
    return " (the server closed the connection in the TLS handshake: on its [https] port, dial a name it has a certificate for; an IP address sends no SNI, which is served only with https's default_host)";
  if (status === 404) {
    const path = URL.canParse(server) ? new URL(server).pathname : server;
    // The default path already: the URL's port (or host) is what leads elsewhere.
    if (path === DEFAULT_CONTROL_PATH)
      return ` (no control endpoint at ${path}: is this porthole-server's port, its listen or [http]/[https] port? A server whose path is set otherwise needs that path in the URL)`;
    return ` (no control endpoint at ${path}: the URL's path must be the server's path, "${DEFAULT_CONTROL_PATH}" unless set)`;
  }
  return '';
}

/**
 * What to check when the server's certificate was refused, said next to Node's terse reason: the CA (ca_file,
 * which a private CA needs and nothing else names), or the URL's host (the names are in Node's message).
 */
function certificateHint(code: string | undefined, caFileSet: boolean): string {
  if (code !== undefined && UNTRUSTED_CERTIFICATE.has(code))
    return caFileSet
      ? " (the server's certificate is not signed by the CA in ca_file: is that the CA that issued it?)"
      : " (the server's certificate is not signed by a CA this machine trusts: for a private CA, set ca_file (--ca-file) to the CA's certificate)";
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    return " (the server URL's host must be one of the certificate's names: dial it by one of them, or give it a certificate for this one)";
  return '';
}

/** A connection to the server's host and port through `proxy`; its refusal as a DialError. */
async function tunnelThrough(proxy: DialProxy, server: string, timeoutMs: number) {
  const url = new URL(server);
  const target = {
    host: url.hostname.replace(/^\[(.*)\]$/, '$1'),
    port: Number(url.port) || (url.protocol === 'wss:' ? 443 : 80),
  };
  try {
    return await openProxyTunnel(proxy, target, timeoutMs);
  } catch (err) {
    if (err instanceof ProxyTunnelError)
      throw new DialError(err.message, undefined, undefined, err.credentialsRefused);
    throw err;
  }
}

/**
 * Opens the WebSocket to the server with the token in `Authorization: Bearer`, through `proxy` if set.
 * Resolves when the upgrade succeeded; rejects with a DialError carrying the server's status and reason otherwise.
 */
export async function dial(opts: DialOptions): Promise<WebSocketStream> {
  const deadline = Date.now() + opts.timeoutMs;
  const tunnel = opts.proxy ? await tunnelThrough(opts.proxy, opts.server, opts.timeoutMs) : undefined;
  try {
    return await openWebSocket(opts.server, {
      headers: { Authorization: `Bearer ${opts.token}` },
      // The proxy's part came out of the same allowance.
      timeoutMs: Math.max(1, deadline - Date.now()),
      ...(opts.ca ? { ca: opts.ca } : {}),
      ...(tunnel ? { socket: tunnel.socket } : {}),
    });
  } catch (err) {
    if (err instanceof WebSocketUpgradeError) {
      const message = withoutToken(err.message, opts.token);
      throw new DialError(
        `${message}${hintFor(opts.server, message, err.status)}`,
        err.status,
        retryAfterMs(err.retryAfter),
      );
    }
    const error = err as NodeJS.ErrnoException;
    // Not a byte from the server, and not for want of time: the proxy ended what it had opened.
    if (opts.proxy && tunnel && tunnel.socket.bytesRead === tunnel.answerBytes && Date.now() < deadline)
      throw new DialError(describeTunnelClosedUnanswered(describeDialProxy(opts.proxy), tunnel, error));
    const message = withoutToken(describeConnectError(error), opts.token);
    const hint = hintFor(opts.server, message) || certificateHint(error.code, opts.ca !== undefined);
    throw new DialError(`${message}${hint}`);
  }
}
