// Where a socks5 or http-proxy visitor asked to go, checked and connected from the client's side: one set of
// rules for both (socks_allow_ports, then a name resolved here, then socks_allow on the addresses it gave, so
// a name cannot lead around the list), so the two locals cannot drift apart.
import { lookup } from 'node:dns/promises';
import type { Socket } from 'node:net';
import type { Stream } from '@porthole/mux';
import { formatHostPort, withTimeout } from '@porthole/protocol';
import { connectLocal, LocalConnectError } from './local-connect.js';
import type { SocksSettings } from './proxy-config.js';

/** A name's lookup that has not answered by then fails the request (as a host that cannot be found). */
const LOOKUP_TIMEOUT_MS = 10_000;
/** The addresses of one name tried in turn, at most (each for up to the local connect timeout). */
const MAX_ADDRESSES_TRIED = 4;

/** What a visitor asked to reach: an IP address, or a name the client resolves. */
export interface ForwardDestination {
  host: string;
  port: number;
  isName: boolean;
}

export interface OpenedDestination {
  socket: Socket;
  /** The address connected to, when the destination is a name. */
  destAddr?: string;
}

/**
 * The destination was not connected. `notAllowed`: socks_allow or socks_allow_ports refused it; otherwise
 * `code` is the lookup's or the connect's error code (ETIMEDOUT for our own timeout), if it had one.
 */
export class DestinationRefused extends Error {
  constructor(
    message: string,
    readonly notAllowed: boolean,
    readonly code?: string,
  ) {
    super(message);
  }
}

/**
 * Connects to `destination` if `rules` allow it; throws DestinationRefused, or StreamGone if the visitor
 * left meanwhile.
 */
export async function connectForwardDestination(
  destination: ForwardDestination,
  rules: SocksSettings,
  stream: Stream,
): Promise<OpenedDestination> {
  const { host, port, isName } = destination;
  if (rules.allowPorts && !rules.allowPorts.contains(port))
    throw new DestinationRefused(`port ${port} is not in socks_allow_ports`, true);
  let addresses = [host];
  if (isName) {
    try {
      const found = await withTimeout(lookup(host, { all: true }), LOOKUP_TIMEOUT_MS, `lookup of ${host}`);
      addresses = found.map((entry) => entry.address);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      throw new DestinationRefused(
        `lookup of ${host} failed: ${code ?? (err as Error).message}`,
        false,
        code ?? 'ENOTFOUND',
      );
    }
  }
  const allowed = rules.allow ? addresses.filter((address) => rules.allow!.contains(address)) : addresses;
  if (allowed.length === 0)
    throw new DestinationRefused(`${addresses.join(', ')} is not in socks_allow`, true);
  let failure: LocalConnectError | undefined;
  for (const address of allowed.slice(0, MAX_ADDRESSES_TRIED)) {
    try {
      const socket = await connectLocal({ host: address, port }, stream);
      return { socket, ...(isName ? { destAddr: formatHostPort(address, port) } : {}) };
    } catch (err) {
      if (!(err instanceof LocalConnectError)) throw err;
      failure = err;
    }
  }
  throw new DestinationRefused(failure?.message ?? 'connect failed', false, failure?.code);
}
