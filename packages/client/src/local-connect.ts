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

/**
 * Connects to the local service; given up when `stream` or its session closes first, so its pending place is
 * freed and the service never gets a request whose answer cannot reach the visitor. `why`, if given, is
 * added to a timeout's message.
 */
export function connectLocal(
  local: LocalAddress,
  stream: Stream,
  timeoutMs = LOCAL_CONNECT_TIMEOUT_MS,
  why = '',
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
    const settle = () => {
      clearTimeout(timer);
      stream.off('close', gone);
      forgetSession();
    };
    const gone = () => {
      settle();
      socket.destroy();
      reject(new StreamGone());
    };
    const timer = setTimeout(() => {
      settle();
      socket.destroy();
      const message = `connect to ${formatLocalAddress(local)} timed out after ${formatDuration(timeoutMs)}${why}`;
      reject(new LocalConnectError(message, 'ETIMEDOUT'));
    }, timeoutMs);
    stream.once('close', gone);
    const forgetSession = sessionClose.add(stream.session, gone);
    socket.once('connect', () => {
      settle();
      socket.removeAllListeners('error');
      socket.setNoDelay(true);
      resolve(socket);
    });
    socket.once('error', (err: NodeJS.ErrnoException) => {
      settle();
      reject(new LocalConnectError(describeLocalConnectError(local, err), err.code));
    });
  });
}
