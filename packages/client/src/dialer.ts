import type { IncomingMessage } from 'node:http';
import { WebSocket } from 'ws';

/** Largest WebSocket message accepted from the server; see the server's MAX_WS_MESSAGE_BYTES. */
const MAX_WS_MESSAGE_BYTES = 64 * 1024 * 1024;
/** An error body longer than this is cut: it is a reason for a log line, not content. */
const MAX_REASON_BYTES = 512;

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

  /** The server refused our token (as opposed to being unreachable or busy). */
  get isAuthFailure(): boolean {
    return this.status === 401;
  }
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

function describe(err: NodeJS.ErrnoException): string {
  // Node's connect errors read "connect ECONNREFUSED 127.0.0.1:7000"; keep that, it names the peer.
  return err.message || err.code || String(err);
}

/**
 * Opens the WebSocket to the server with the token in `Authorization: Bearer`. Resolves when the
 * upgrade succeeded; rejects with a DialError carrying the server's status and reason otherwise.
 */
export function dial(opts: DialOptions): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const fail = (err: DialError) => {
      if (settled) return;
      settled = true;
      ws.terminate();
      reject(err);
    };
    const ws = new WebSocket(opts.server, {
      headers: { Authorization: `Bearer ${opts.token}` },
      perMessageDeflate: false,
      maxPayload: MAX_WS_MESSAGE_BYTES,
      handshakeTimeout: opts.timeoutMs,
      followRedirects: false,
      ...(opts.ca ? { ca: opts.ca } : {}),
    });
    ws.once('unexpected-response', (req, res) => {
      readReason(res).then((body) => {
        req.destroy();
        const reason = body || res.statusMessage || 'no reason given';
        fail(new DialError(`${res.statusCode}: ${reason}`, res.statusCode));
      });
    });
    ws.once('error', (err: NodeJS.ErrnoException) => fail(new DialError(describe(err))));
    ws.once('open', () => {
      if (settled) return;
      settled = true;
      ws.removeAllListeners('error');
      resolve(ws);
    });
  });
}
