// A socks5 proxy's stream (`local = "socks5"`): the SOCKS handshake, the destination checked against
// socks_allow and connected from the client's side (a name resolved here, the point of it), and the reply;
// the stream is then carried as any tcp proxy's is.
import { lookup } from 'node:dns/promises';
import type { Socket } from 'node:net';
import type { Stream } from '@porthole/mux';
import { formatHostPort, withTimeout } from '@porthole/protocol';
import { connectLocal, LocalConnectError } from './local-connect.js';
import type { SocksSettings } from './proxy-config.js';
import { readSocksRequest, replyForError, SocksReply, socksReply } from './socks5.js';

/**
 * A visitor that has not named its destination by then is dropped: until then it holds one of the proxy's
 * pending places (PendingLocalConnects), and a few bytes then silence would hold it for good.
 */
const SOCKS_HANDSHAKE_TIMEOUT_MS = 10_000;
/** A name's lookup that has not answered by then fails the request (host unreachable). */
const LOOKUP_TIMEOUT_MS = 10_000;
/** The addresses of one name tried in turn, at most (each for up to the local connect timeout). */
const MAX_ADDRESSES_TRIED = 4;

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
  const { host, port, isName } = request;
  const dest = formatHostPort(host, port);
  const refuse = (reply: number, reason: string) => {
    stream.write(socksReply(reply));
    return new SocksRequestFailed(reason, dest);
  };
  if (socks.allowPorts && !socks.allowPorts.contains(port))
    throw refuse(SocksReply.notAllowed, `port ${port} is not in socks_allow_ports`);
  let addresses = [host];
  if (isName) {
    try {
      const found = await withTimeout(lookup(host, { all: true }), LOOKUP_TIMEOUT_MS, `lookup of ${host}`);
      addresses = found.map((entry) => entry.address);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw refuse(
        replyForError(code ?? 'ENOTFOUND'),
        `lookup of ${host} failed: ${code ?? (err as Error).message}`,
      );
    }
  }
  const allowed = socks.allow ? addresses.filter((address) => socks.allow!.contains(address)) : addresses;
  if (allowed.length === 0)
    throw refuse(SocksReply.notAllowed, `${addresses.join(', ')} is not in socks_allow`);
  let failure: LocalConnectError | undefined;
  for (const address of allowed.slice(0, MAX_ADDRESSES_TRIED)) {
    try {
      const socket = await connectLocal({ host: address, port }, stream);
      stream.write(
        socksReply(SocksReply.succeeded, { address: socket.localAddress, port: socket.localPort }),
      );
      return { socket, dest, ...(isName ? { destAddr: formatHostPort(address, port) } : {}) };
    } catch (err) {
      if (!(err instanceof LocalConnectError)) throw err;
      failure = err;
    }
  }
  throw refuse(replyForError(failure?.code), failure?.message ?? 'connect failed');
}
