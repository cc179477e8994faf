// A tunnel whose tcp proxy is a forward proxy answered by the client (`local = "socks5"` or "http-proxy"),
// with the socks_* keys both take: the socks5 and http-proxy tests start it the same way.
import { freePort, type Harness } from './processes.js';
import { issueRoutedToken, type RoutedProxy, startRoutedClient, startRoutedServer } from './routing.js';

export const FORWARD_USER = 'homelab';
export const FORWARD_PASSWORD = 'correct horse battery staple';

/**
 * A server and a client whose proxy `name` (local `local`; user and password from a file, `extra` keys) is on
 * its own port.
 */
export async function startForwardProxyTunnel(
  h: Harness,
  options: {
    name: string;
    local: 'socks5' | 'http-proxy';
    extra?: Record<string, string | string[]>;
    adminListen?: string;
  },
) {
  const port = await freePort();
  const passwordFile = await h.file(`${options.name}-password`, `${FORWARD_PASSWORD}\n`, 0o600);
  const server = await startRoutedServer(h, { http: false });
  const token = await issueRoutedToken(server, { name: 'lab', ports: String(port) });
  const proxy: RoutedProxy = {
    name: options.name,
    type: 'tcp',
    local: options.local,
    remote_port: port,
    socks_user: FORWARD_USER,
    socks_password_file: passwordFile,
    ...options.extra,
  };
  const client = await startRoutedClient(h, {
    server: server.url,
    token,
    proxies: [proxy],
    ...(options.adminListen === undefined ? {} : { adminListen: options.adminListen }),
  });
  return { port, server, client };
}
