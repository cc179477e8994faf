// A socks5 proxy's stream (`local = "socks5"`): the SOCKS handshake, the destination checked and connected
// from the client's side (forward-destination.ts, shared with http-proxy), and the reply; the stream is then
// carried as any tcp proxy's is.
import type { Socket } from 'node:net';
import type { Stream } from '@porthole/mux';
import { formatHostPort, withTimeout } from '@porthole/protocol';
import { connectForwardDestination, DestinationRefused } from './forward-destination.js';
import type { SocksSettings } from './proxy-config.js';
import { readSocksRequest, replyForError, SocksReply, socksReply } from './socks5.js';

/**
 * A visitor that has not named its destination by then is dropped: until then it holds one of the proxy's
 * pending places (PendingLocalConnects), and a few bytes then silence would hold it for good.
 */
const SOCKS_HANDSHAKE_TIMEOUT_MS = 10_000;

/** The request was refused or failed (its reply, if any, already written); `dest` once it was named. */
export class SocksRequestFailed extends Error {
  constructor(
    message: string,
    readonly dest: string | undefined,
  ) {
    super(message);
  }
}

export interface SocksConnection {
  socket: Socket;
  /** "name:port" or "address:port", as the visitor asked. */
  dest: string;
  /** The address connected to, when `dest` is a name. */
  destAddr?: string;
}

/** Answers `stream`'s SOCKS request and connects it; throws SocksRequestFailed, or StreamGone if the visitor left. */
export async function openSocksDestination(stream: Stream, socks: SocksSettings): Promise<SocksConnection> {
  let request: Awaited<ReturnType<typeof readSocksRequest>>;
  try {
    request = await withTimeout(
      readSocksRequest(stream, socks.credentials),
      SOCKS_HANDSHAKE_TIMEOUT_MS,
      'SOCKS handshake',
    );
  } catch (err) {
    throw new SocksRequestFailed((err as Error).message, undefined);
  }
  const dest = formatHostPort(request.host, request.port);
  try {
    const opened = await connectForwardDestination(request, socks, stream);
    const { socket } = opened;
    stream.write(socksReply(SocksReply.succeeded, { address: socket.localAddress, port: socket.localPort }));
    return { ...opened, dest };
  } catch (err) {
    if (!(err instanceof DestinationRefused)) throw err;
    stream.write(socksReply(err.notAllowed ? SocksReply.notAllowed : replyForError(err.code)));
    throw new SocksRequestFailed(err.message, dest);
  }
}
