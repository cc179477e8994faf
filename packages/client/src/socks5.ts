// The SOCKS5 server side (RFC 1928, with RFC 1929 username/password) that a `local = "socks5"` tcp proxy
// speaks on each tunnel stream, as chisel's R:socks and `ssh -R 1080` do: the visitor names a destination and
// the client connects to it from its own network. CONNECT only.
import { isIP } from 'node:net';
import type { Duplex } from 'node:stream';
import { formatIp, parseIp, readExactly, sameSecret } from '@porthole/protocol';

// Exported for the client side of the same handshake (proxy-tunnel.ts: a dial through a SOCKS5 proxy).
export const VERSION = 0x05;
export const AUTH_VERSION = 0x01;
export const METHOD_NO_AUTH = 0x00;
export const METHOD_USER_PASSWORD = 0x02;
export const METHOD_NONE_ACCEPTABLE = 0xff;
export const CMD_CONNECT = 0x01;
export const ATYP_IPV4 = 0x01;
export const ATYP_DOMAIN = 0x03;
export const ATYP_IPV6 = 0x04;

/** RFC 1928 6: the REP field of a reply. */
export const SocksReply = {
  succeeded: 0x00,
  generalFailure: 0x01,
  notAllowed: 0x02,
  networkUnreachable: 0x03,
  hostUnreachable: 0x04,
  connectionRefused: 0x05,
  ttlExpired: 0x06,
  commandNotSupported: 0x07,
  addressTypeNotSupported: 0x08,
} as const;

/** A REP in words, as a proxy's refusal is logged: "connection refused (5)". */
export function socksReplyName(reply: number): string {
  const names: Record<number, string> = {
    [SocksReply.generalFailure]: 'general failure',
    [SocksReply.notAllowed]: 'connection not allowed by ruleset',
    [SocksReply.networkUnreachable]: 'network unreachable',
    [SocksReply.hostUnreachable]: 'host unreachable',
    [SocksReply.connectionRefused]: 'connection refused',
    [SocksReply.ttlExpired]: 'TTL expired',
    [SocksReply.commandNotSupported]: 'command not supported',
    [SocksReply.addressTypeNotSupported]: 'address type not supported',
  };
  return `${names[reply] ?? 'unknown reply'} (${reply})`;
}

export interface SocksCredentials {
  user: string;
  password: string;
}

/** What a visitor asked to CONNECT to: an IP address, or a name the client resolves. */
export interface SocksDestination {
  host: string;
  port: number;
  isName: boolean;
}

/**
 * The handshake failed. `reply`: the REP already sent (a request the client refuses), so the caller only ends
 * the stream; absent when the visitor never got as far as a request (bad version, no method, wrong password).
 */
export class SocksHandshakeError extends Error {
  constructor(
    message: string,
    readonly reply?: number,
  ) {
    super(message);
  }
}

async function take(stream: Duplex, n: number): Promise<Buffer> {
  const bytes = n === 0 ? Buffer.alloc(0) : await readExactly(stream, n);
  if (bytes === null) throw new SocksHandshakeError('visitor ended the SOCKS handshake');
  return bytes;
}

/** RFC 1929: the visitor's user and password, answered with success or failure. */
async function authenticate(stream: Duplex, credentials: SocksCredentials): Promise<void> {
  const [version, userLength] = await take(stream, 2);
  if (version !== AUTH_VERSION)
    throw new SocksHandshakeError(`username/password version ${version}, expected ${AUTH_VERSION}`);
  const user = await take(stream, userLength!);
  const [passwordLength] = await take(stream, 1);
  const password = await take(stream, passwordLength!);
  // Both compared whatever the first gives, so a wrong user takes as long as a wrong password.
  const userOk = sameSecret(user, credentials.user);
  const passwordOk = sameSecret(password, credentials.password);
  if (!(userOk && passwordOk)) {
    stream.write(Buffer.from([AUTH_VERSION, 0x01]));
    throw new SocksHandshakeError(`wrong username or password (user "${printable(user)}")`);
  }
  stream.write(Buffer.from([AUTH_VERSION, 0x00]));
}

/** A visitor-given name for a log line: at most 64 characters, controls shown as "?". */
function printable(bytes: Buffer): string {
  return bytes.toString('latin1', 0, 64).replace(/[^\x20-\x7e]/g, '?');
}

/**
 * Reads the visitor's greeting, authenticates it (with `credentials`, or none when undefined) and reads its
 * request; a CONNECT's destination is returned, to be answered with `socksReply`. Anything else is answered
 * and thrown. At most 2+255+2+255+1+255+4+1+255+2 bytes are read; the caller bounds the time.
 */
export async function readSocksRequest(
  stream: Duplex,
  credentials: SocksCredentials | undefined,
): Promise<SocksDestination> {
  const [version, methodCount] = await take(stream, 2);
  if (version !== VERSION) throw new SocksHandshakeError(`not SOCKS5 (version byte ${version})`);
  const methods = await take(stream, methodCount!);
  const wanted = credentials ? METHOD_USER_PASSWORD : METHOD_NO_AUTH;
  if (!methods.includes(wanted)) {
    stream.write(Buffer.from([VERSION, METHOD_NONE_ACCEPTABLE]));
    throw new SocksHandshakeError(
      credentials ? 'visitor offered no username/password authentication' : 'visitor offered no method',
    );
  }
  stream.write(Buffer.from([VERSION, wanted]));
  if (credentials) await authenticate(stream, credentials);

  const [requestVersion, command, , addressType] = await take(stream, 4);
  if (requestVersion !== VERSION) throw new SocksHandshakeError(`request version ${requestVersion}`);
  let host: string;
  let isName = false;
  if (addressType === ATYP_IPV4) {
    host = formatIp({ family: 4, bytes: await take(stream, 4) });
  } else if (addressType === ATYP_IPV6) {
    host = formatIp({ family: 6, bytes: await take(stream, 16) });
  } else if (addressType === ATYP_DOMAIN) {
    const [length] = await take(stream, 1);
    host = (await take(stream, length!)).toString('latin1');
    isName = isIP(host) === 0;
  } else {
    refuse(stream, SocksReply.addressTypeNotSupported, `address type ${addressType} not supported`);
  }
  const port = (await take(stream, 2)).readUInt16BE(0);
  if (command !== CMD_CONNECT)
    refuse(stream, SocksReply.commandNotSupported, `command ${command} not supported (CONNECT only)`);
  if (isName && (host === '' || /[^\w.-]/.test(host)))
    refuse(
      stream,
      SocksReply.hostUnreachable,
      `"${printable(Buffer.from(host, 'latin1'))}" is not a host name`,
    );
  return { host, port, isName };
}

function refuse(stream: Duplex, reply: number, reason: string): never {
  stream.write(socksReply(reply));
  throw new SocksHandshakeError(reason, reply);
}

/** A reply: REP, and the address the client connected from (zeros on failure, as RFC 1928 allows). */
export function socksReply(
  reply: number,
  bound?: { address?: string | undefined; port?: number | undefined },
) {
  const ip = parseIp(bound?.address) ?? { family: 4, bytes: Buffer.alloc(4) };
  const head = Buffer.from([VERSION, reply, 0, ip.family === 4 ? ATYP_IPV4 : ATYP_IPV6]);
  const port = Buffer.alloc(2);
  port.writeUInt16BE(bound?.port ?? 0);
  return Buffer.concat([head, ip.bytes, port]);
}

/** The REP for a failed connect or lookup, by its error code. */
export function replyForError(code: string | undefined): number {
  switch (code) {
    case 'ECONNREFUSED':
      return SocksReply.connectionRefused;
    case 'ENETUNREACH':
      return SocksReply.networkUnreachable;
    case 'EHOSTUNREACH':
    case 'EHOSTDOWN':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
    case 'EAI_NODATA':
      return SocksReply.hostUnreachable;
    case 'ETIMEDOUT':
      return SocksReply.ttlExpired;
    default:
      return SocksReply.generalFailure;
  }
}
