import { openWebSocket, type WebSocketStream, WebSocketUpgradeError } from '@porthole/mux';

export interface DialOptions {
  server: string;
  token: string;
  ca?: Buffer;
  /** Time allowed for TCP + TLS + the HTTP upgrade. */
  timeoutMs: number;
}

/** A dial failed; `message` is the reason to log ("401: token expired", "ECONNREFUSED 127.0.0.1:7000"). */
export class DialError extends Error {
  override readonly name = 'DialError';
  constructor(
    message: string,
    /** HTTP status when the server answered the upgrade with an error. */
    readonly status?: number,
  ) {
    super(message);
  }

  /**
   * The server refused our token (as opposed to being unreachable or busy). 429 too: the server limits only
   * sources whose tokens fail (a valid one is never refused by it), and its body says why ours did.
   */
  get isAuthFailure(): boolean {
    return this.status === 401 || this.status === 429;
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

function describe(err: NodeJS.ErrnoException): string {
  // Node's connect errors read "connect ECONNREFUSED 127.0.0.1:7000"; keep that, it names the peer.
  return (err.message || err.code || String(err)).trim();
}

/**
 * What the usual mistakes in a server URL look like from here, said next to the error: TLS spoken to a
 * plain port reads "wrong version number", plain HTTP to a TLS port "socket hang up", a wrong path 404.
 */
function hintFor(server: string, message: string, status?: number): string {
  const secure = URL.canParse(server) && new URL(server).protocol === 'wss:';
  if (secure && /wrong version number|packet length too long/.test(message))
    return ' (the server does not speak TLS on this port: is it ws:// there?)';
  if (!secure && /socket hang up/.test(message))
    return ' (the server closed the connection unanswered: does it expect wss:// here?)';
  if (status === 404) {
    const path = URL.canParse(server) ? new URL(server).pathname : server;
    return ` (no control endpoint at ${path}: the URL's path must be the server's path, "/_porthole" unless set)`;
  }
  return '';
}

/**
 * Opens the WebSocket to the server with the token in `Authorization: Bearer`. Resolves when the
 * upgrade succeeded; rejects with a DialError carrying the server's status and reason otherwise.
 */
export async function dial(opts: DialOptions): Promise<WebSocketStream> {
  try {
    return await openWebSocket(opts.server, {
      headers: { Authorization: `Bearer ${opts.token}` },
      timeoutMs: opts.timeoutMs,
      ...(opts.ca ? { ca: opts.ca } : {}),
    });
  } catch (err) {
    if (err instanceof WebSocketUpgradeError)
      throw new DialError(`${err.message}${hintFor(opts.server, err.message, err.status)}`, err.status);
    const message = describe(err as NodeJS.ErrnoException);
    throw new DialError(`${message}${hintFor(opts.server, message)}`);
  }
}
