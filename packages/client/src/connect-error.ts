// A failed connect in words that name the peer: the dial's `connect failed` line and `status`, and a local
// service's `local connect failed` line.
import { isUnixSocketAddress, type LocalAddress } from '@porthole/protocol';

/**
 * Node's codes for a certificate that no CA the client trusts has signed (the server's, or a local service's
 * behind local_tls), and how each comes about with a private CA or none.
 */
export const UNTRUSTED_CERTIFICATE = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE', // "unable to verify the first certificate": the server sent its own alone
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', // it sent an intermediate too, but the root is not trusted here
  'SELF_SIGNED_CERT_IN_CHAIN', // it sent the private CA's certificate along
  'DEPTH_ZERO_SELF_SIGNED_CERT', // its certificate is self-signed
]);

/**
 * Node's own message, "connect ECONNREFUSED 127.0.0.1:7000", which names the address. A name with several
 * addresses (a VPS with AAAA and A records, `localhost` as ::1 and 127.0.0.1) is tried address by address
 * (Node 20's autoSelectFamily), and when every one fails the error is an AggregateError with an empty message
 * of its own: each attempt is named instead ("connect ECONNREFUSED ::1:7000; connect ECONNREFUSED
 * 127.0.0.1:7000"), where its code alone would not say which addresses were tried.
 */
export function describeConnectError(err: NodeJS.ErrnoException): string {
  if (err instanceof AggregateError && err.errors.length > 0)
    return err.errors.map((inner: NodeJS.ErrnoException) => describeConnectError(inner)).join('; ');
  return (err.message || err.code || String(err)).trim();
}

/**
 * A dial whose proxy said yes to the CONNECT and then closed the tunnel before the server sent a byte. The
 * server is not what closed it (read alone, "socket hang up" or a cut TLS handshake points at the server's
 * port or scheme): the proxy's own connection to the server failed or was cut, or its rules end such
 * tunnels; its log says which.
 */
export function describeTunnelClosedUnanswered(
  proxy: string,
  tunnel: { answer: string; target: string },
  err: NodeJS.ErrnoException,
): string {
  return `the proxy ${proxy} answered ${tunnel.answer} to CONNECT ${tunnel.target}, then closed the tunnel before the server answered (${describeConnectError(err)}): its connection to the server failed or was cut, or its rules end such tunnels; the proxy's log says which`;
}

/**
 * Why a connect to a proxy's local service failed, for its `local connect failed` line. A TCP service's code
 * says enough (the line's `local` names the address); a Unix socket's failures each have a usual cause a
 * user switching from `ssh -R` would not guess (a stale socket file, its permissions, a systemd unit's
 * PrivateTmp), so they are named along with the path.
 */
export function describeLocalConnectError(local: LocalAddress, err: NodeJS.ErrnoException): string {
  if (!err.code) return err.message;
  if (!isUnixSocketAddress(local)) return err.code;
  const path = local.path;
  switch (err.code) {
    case 'ENOENT':
      return `ENOENT: no socket at ${path} (is the service running? a socket under /tmp is invisible to a unit with PrivateTmp=yes)`;
    case 'ECONNREFUSED':
      return `ECONNREFUSED: nothing accepts connections on ${path} (a socket file left by a service that stopped, or not a socket)`;
    case 'EACCES':
    case 'EPERM':
      return `${err.code}: this user may not connect to ${path} (it needs write permission on the socket and search permission on its directories)`;
    case 'ENOTDIR':
      return `ENOTDIR: a part of ${path} is not a directory`;
    default:
      return `${err.code}: ${path}`;
  }
}
