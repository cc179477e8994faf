// An http.Agent whose connections are tunnel streams to the client that owns an http proxy, so Node's
// HTTP client does the request/response framing and keep-alive pooling (one stream carries many requests).
import { Agent, type ClientRequest, type ClientRequestArgs } from 'node:http';
import type { Duplex } from 'node:stream';

/** A pooled stream unused for this long is closed (the local service's keep-alive is often 5 s). */
export const FREE_STREAM_IDLE_MS = 15_000;

/** Who opened a connection, as the stream header tells the client. */
export interface Visitor {
  address: string;
  port: number;
  /** The server's side of the visitor's connection. */
  destAddress: string | undefined;
  destPort: number | undefined;
}

/** Request options carry the visitor under this key, so the agent can put it in the stream header. */
export const VISITOR_OPTION = 'portholeVisitor';

export interface TunnelAgentOptions {
  /** Opens a new tunnel stream to the owning client (header already written). */
  openStream(visitor: Visitor | undefined): Duplex;
  /** Streams open at once for this proxy; more requests wait for one to be free. */
  maxStreams: number;
  /** Idle streams kept for reuse. */
  maxFreeStreams: number;
}

type PooledStream = Duplex & { _httpMessage?: unknown; [idleTimer]?: NodeJS.Timeout };
const idleTimer = Symbol('idleTimer');

/**
 * Tunnel streams are Duplexes, not sockets: the socket-only calls the Agent and the HTTP client make
 * (keep-alive probes, ref/unref, no-delay, timeouts) do not apply and are answered as no-ops.
 */
function asSocketLike(stream: Duplex): Duplex {
  const self = stream as Duplex & Record<string, unknown>;
  for (const method of ['setKeepAlive', 'setNoDelay', 'ref', 'unref', 'setTimeout']) {
    if (typeof self[method] !== 'function') self[method] = () => stream;
  }
  return stream;
}

/**
 * Takes an idle stream out of the pool and closes it with FIN, not RST: the local connection behind it
 * ends as cleanly as a keep-alive connection timing out (a reset would read as an error in both logs).
 */
function retire(stream: PooledStream): void {
  clearTimeout(stream[idleTimer]);
  stream.emit('agentRemove');
  if (!stream.writableEnded) stream.end();
  // A peer that never finishes its side does not keep the stream.
  setTimeout(() => stream.destroy(), FREE_STREAM_IDLE_MS).unref();
}

export class TunnelAgent extends Agent {
  constructor(private readonly tunnel: TunnelAgentOptions) {
    super({
      keepAlive: true,
      maxSockets: tunnel.maxStreams,
      maxFreeSockets: tunnel.maxFreeStreams,
      scheduling: 'lifo',
    });
  }

  override createConnection(
    options: ClientRequestArgs,
    _callback?: (err: Error | null, stream: Duplex) => void,
  ): Duplex {
    const visitor = (options as Record<string, unknown>)[VISITOR_OPTION] as Visitor | undefined;
    const stream = asSocketLike(this.tunnel.openStream(visitor)) as PooledStream;
    // The local service closed a pooled stream (its keep-alive ended): it must not be handed out again.
    stream.on('end', () => {
      if (!stream._httpMessage) retire(stream);
    });
    stream.on('close', () => clearTimeout(stream[idleTimer]));
    return stream;
  }

  /** Back to the pool, unless the local side already finished; closed after FREE_STREAM_IDLE_MS idle. */
  override keepSocketAlive(socket: Duplex): boolean {
    const stream = socket as PooledStream;
    if (stream.destroyed || stream.readableEnded || stream.writableEnded) return false;
    clearTimeout(stream[idleTimer]);
    stream[idleTimer] = setTimeout(() => retire(stream), FREE_STREAM_IDLE_MS);
    stream[idleTimer].unref();
    return true;
  }

  override reuseSocket(socket: Duplex, request: ClientRequest): void {
    clearTimeout((socket as PooledStream)[idleTimer]);
    // Agent's own: drops the idle socket's error listener (else one more per request) and marks the
    // request as sent on a reused connection, which is what lets a failed idempotent request be retried.
    super.reuseSocket(socket, request);
  }
}
