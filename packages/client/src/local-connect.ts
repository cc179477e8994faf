// One connect to a tunnel stream's destination (a proxy's local service, or a SOCKS visitor's choice), given
// up when the stream or its session goes first.
import { connect, type Socket } from 'node:net';
import type { Stream } from '@porthole/mux';
import {
  CloseHooks,
  formatDuration,
  formatLocalAddress,
  isUnixSocketAddress,
  type LocalAddress,
} from '@porthole/protocol';
import { describeLocalConnectError } from './connect-error.js';
import { type LocalTls, type LocalTlsError, startLocalTls } from './local-tls.js';

/** A local service that does not accept within this time counts as a failed connect. */
export const LOCAL_CONNECT_TIMEOUT_MS = 10_000;

/** The stream went away (visitor left, session lost) before the local service answered. */
export class StreamGone extends Error {}

/** A connect that failed, with the error's code (ETIMEDOUT for our own timeout): a SOCKS reply is chosen by it. */
export class LocalConnectError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

/**
 * The sessions that streams waiting on a local connect came on. A lost session leaves a stream whose visitor
 * had sent its end (a request, then FIN, waiting for the answer) open for its reader, so that stream's own
 * 'close' does not come, while its visitor is already cut off.
 */
const sessionClose = new CloseHooks();

/** What goes on a local connection before the visitor's bytes. */
export interface LocalPreamble {
  /** Written first, in clear (a PROXY header: nginx and HAProxy read it before any TLS). */
  preface?: Buffer;
  /** The proxy's local_tls: a TLS handshake after the preface; its failure fails the connect. */
  tls?: LocalTls;
}

/**
 * Connects to the local service; given up when `stream` or its session closes first, so its pending place is
 * freed and the service never gets a request whose answer cannot reach the visitor. `why`, if given, is
 * added to a timeout's message. The time allowed covers the TLS handshake too (a service that accepts and
 * never answers the ClientHello holds a stream as long as one that never accepts).
 */
export function connectLocal(
  local: LocalAddress,
  stream: Stream,
  timeoutMs = LOCAL_CONNECT_TIMEOUT_MS,
  why = '',
  preamble: LocalPreamble = {},
): Promise<Socket> {
  return new Promise((resolve, reject) => {
    if (stream.destroyed) {
      reject(new StreamGone());
      return;
    }
    const socket = connect({
      ...(isUnixSocketAddress(local) ? { path: local.path } : { host: local.host, port: local.port }),
      allowHalfOpen: true,
    });
    // The socket to destroy when giving up: the TLS one once its handshake has begun.
    let current: Socket = socket;
    const settle = () => {
      clearTimeout(timer);
      stream.off('close', gone);
      forgetSession();
    };
    const gone = () => {
      settle();
      current.destroy();
      reject(new StreamGone());
    };
    const timer = setTimeout(() => {
      settle();
      current.destroy();
      const during = current === socket ? 'connect to' : 'TLS handshake with';
      const message = `${during} ${formatLocalAddress(local)} timed out after ${formatDuration(timeoutMs)}${why}`;
      reject(new LocalConnectError(message, 'ETIMEDOUT'));
    }, timeoutMs);
    stream.once('close', gone);
    const forgetSession = sessionClose.add(stream.session, gone);
    const connected = (ready: Socket) => {
      settle();
      ready.setNoDelay(true);
      resolve(ready);
    };
    socket.once('connect', () => {
      socket.removeAllListeners('error');
      if (preamble.preface) socket.write(preamble.preface);
      if (!preamble.tls || isUnixSocketAddress(local)) {
        connected(socket);
        return;
      }
      // Its failures are the TLS socket's to report (it owns the connection now).
      socket.on('error', () => {});
      const { tlsSocket, secured } = startLocalTls(socket, local, preamble.tls);
      current = tlsSocket;
      // After a timeout or the stream's close this is the destroy's own failure, and the promise is settled.
      secured.then(connected, (err: LocalTlsError) => {
        settle();
        reject(new LocalConnectError(err.message, err.code));
      });
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      settle();
      reject(new LocalConnectError(describeLocalConnectError(local, err), err.code));
    });
  });
}
