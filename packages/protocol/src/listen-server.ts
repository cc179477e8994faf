import type { AddressInfo, Server } from 'node:net';

/**
 * Binds `server` on host:port. Resolves with the bound address, or rejects with the bind error itself
 * (EADDRINUSE, EACCES) for the caller to name the listener. Errors after that, a failed accept under
 * EMFILE most often, go to `onLaterError`: a server that emits 'error' with no listener ends the process.
 */
export function listenServer(
  server: Server,
  at: { host: string; port: number },
  onLaterError: (err: Error) => void,
): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(at.port, at.host, () => {
      server.off('error', reject);
      server.on('error', onLaterError);
      resolve(server.address() as AddressInfo);
    });
  });
}
