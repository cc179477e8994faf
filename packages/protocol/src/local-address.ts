// A proxy's local service as config keys and quick-flag rules write it: "host:port", or "unix:PATH" for a
// service that listens only on a Unix socket (php-fpm, gunicorn, the Docker API, a Caddy admin socket), as
// `ssh -R 8080:/run/app.sock` and frp's unix_domain_socket plugin allow. "unix:" is the spelling gunicorn,
// uvicorn and nginx's proxy_pass already use, and keeps one key (`local`) and one rule form for both.
import { formatHostPort, type HostPort, parseHostPort } from './host-port.js';

export interface UnixSocketAddress {
  /** The socket's path; relative until the client config resolves it. */
  path: string;
}

export type LocalAddress = HostPort | UnixSocketAddress;

const UNIX_PREFIX = 'unix:';

/**
 * sun_path holds 108 bytes with its NUL. libuv cuts a longer path short without a word, and the connect
 * then fails with ENOENT on a path nobody wrote, or reaches another socket whose path is that prefix.
 */
export const UNIX_SOCKET_PATH_MAX_BYTES = 107;

export function isUnixSocketAddress(local: LocalAddress): local is UnixSocketAddress {
  return 'path' in local;
}

/** Parses "127.0.0.1:22", "[::1]:22" or "unix:/run/app.sock"; throws with the reason. */
export function parseLocalAddress(text: string): LocalAddress {
  if (text.startsWith(UNIX_PREFIX)) {
    const path = text.slice(UNIX_PREFIX.length);
    if (path === '')
      throw new Error(`"${text}" names no socket (expected unix:PATH, e.g. unix:/run/app.sock)`);
    if (path.includes('\0')) throw new Error(`"${text}": a socket path cannot hold a NUL byte`);
    return { path };
  }
  // ssh -R's spelling ("8080:/run/app.sock") would otherwise read as a bad host.
  if (/^[./~]/.test(text))
    throw new Error(`"${text}" looks like a path: a Unix socket is written "unix:${text}"`);
  return parseHostPort(text);
}

/** "127.0.0.1:22", "[::1]:22", "unix:/run/app.sock": as `parseLocalAddress` reads it, for logs and status. */
export function formatLocalAddress(local: LocalAddress): string {
  return isUnixSocketAddress(local) ? `${UNIX_PREFIX}${local.path}` : formatHostPort(local.host, local.port);
}
