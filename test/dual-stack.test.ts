// A dual-stack server (proxy_bind = "::") in front of services on ::1: visitors over IPv4 and IPv6, and the
// address each is known by in the server's lines and the client's. Node reports an IPv4 peer of a
// dual-stack socket as "::ffff:127.0.0.1"; both programs must write it as 127.0.0.1, so one visitor reads
// the same on both ends of the tunnel.
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import net from 'node:net';
import { test } from 'node:test';
import { startUdpEcho } from './lib/http-backend.js';
import { clientBin, freePorts, run, withHarness, withTimeout } from './lib/processes.js';
import { issueRoutedToken, startRoutedClient, startRoutedServer, tomlLines } from './lib/routing.js';
import { startEchoServer } from './lib/services.js';

/** One TCP round trip from `host` to `port`; resolves with the visitor's own port once the tunnel closed it. */
function tcpVisit(host: string, port: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port, allowHalfOpen: true });
    const got: Buffer[] = [];
    let localPort = 0;
    socket.on('connect', () => {
      localPort = socket.localPort ?? 0;
      socket.end('ping');
    });
    socket.on('data', (d: Buffer) => got.push(d));
    socket.on('error', reject);
    socket.on('close', () => {
      if (Buffer.concat(got).toString() === 'ping') resolve(localPort);
      else reject(new Error(`echo from ${host} got ${JSON.stringify(Buffer.concat(got).toString())}`));
    });
  });
}

/** One datagram from `host` to `port` and its echo; resolves with the visitor's own port. */
function udpVisit(host: string, port: number): Promise<number> {
  const socket = createSocket(net.isIPv6(host) ? 'udp6' : 'udp4');
  return new Promise<number>((resolve, reject) => {
    socket.on('error', reject);
    socket.on('message', (msg) => {
      if (msg.toString().endsWith('|ping')) resolve(socket.address().port);
      else reject(new Error(`udp echo from ${host} got ${JSON.stringify(msg.toString())}`));
    });
    socket.bind(0, host, () => socket.send('ping', port, host));
  }).finally(() => socket.close());
}

test(
  "an IPv4 visitor of a dual-stack proxy is 127.0.0.1 in the client's log lines, as in the server's; an IPv6 one [::1] (tcp and udp)",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const tcpService = await startEchoServer('::1');
      const udpService = await startUdpEcho('echo', '::1');
      t.after(() => Promise.all([tcpService.close(), udpService.close()]));
      const [tcpPort, udpPort] = (await freePorts(2)) as [number, number];
      const server = await startRoutedServer(h, {
        http: false,
        top: { listen: '[::1]:0', proxy_bind: '::', udp_idle_timeout: '1s' },
      });
      const token = await issueRoutedToken(server, { name: 'dual', ports: `${tcpPort},${udpPort}` });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'tcp6', type: 'tcp', local: `[::1]:${tcpService.port}`, remote_port: tcpPort },
          { name: 'udp6', type: 'udp', local: `[::1]:${udpService.port}`, remote_port: udpPort },
        ],
      });

      // "<proxy> from <visitor>: <remote_addr>", as each program wrote it.
      const serverSaw: string[] = [];
      const clientSaw: string[] = [];
      for (const [visitor, written] of [
        ['127.0.0.1', (port: number) => `127.0.0.1:${port}`],
        ['::1', (port: number) => `[::1]:${port}`],
      ] as const) {
        for (const [proxy, line, visit, remotePort] of [
          ['tcp6', 'connection closed', tcpVisit, tcpPort],
          ['udp6', 'udp flow closed', udpVisit, udpPort],
        ] as const) {
          const from = { server: server.proc.mark(), client: client.proc.mark() };
          const port = await withTimeout(
            visit(visitor, remotePort),
            10_000,
            () => `${proxy} from ${visitor}`,
          );
          const remote_addr = written(port);
          const serverLine = await server.proc.waitForMsg(line, 10_000, {
            from: from.server,
            fields: { proxy, remote_addr },
          });
          const clientLine = await client.proc.waitForMsg(line, 10_000, {
            from: from.client,
            fields: { proxy, conn: serverLine.conn },
          });
          serverSaw.push(`${proxy} from ${visitor}: ${remote_addr}`);
          clientSaw.push(`${proxy} from ${visitor}: ${String(clientLine.remote_addr)}`);
        }
      }
      t.diagnostic(`client's lines: ${clientSaw.join('; ')}`);
      assert.deepEqual(clientSaw, serverSaw);
    }),
);

test(
  "a name with an IPv6 and an IPv4 address that both refuse: the client's connect failed line and status name both attempts",
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      // The name resolves as a dual-stack VPS's does (AAAA and A) through a hosts file of the test's own,
      // mounted over /etc/hosts in a mount namespace that only the client's processes run in.
      if ((await run('unshare', ['-m', 'true'], { timeoutMs: 10_000 })).code !== 0) {
        t.skip('unshare -m is not permitted here (needs root)');
        return;
      }
      const hosts = await h.file('hosts', '::1 dual.test\n127.0.0.1 dual.test\n', 0o644);
      const withHosts = (args: string[]) => [
        '-m',
        'sh',
        '-c',
        'mount --bind "$0" /etc/hosts && exec "$@"',
        hosts,
        clientBin,
        ...args,
      ];
      const [port] = (await freePorts(1)) as [number];
      const bothRefused = `connect ECONNREFUSED ::1:${port}; connect ECONNREFUSED 127.0.0.1:${port}`;
      const config = await h.file(
        'client.toml',
        `${tomlLines({
          server: `ws://dual.test:${port}/_porthole`,
          token_file: await h.file('token', 'not.a.token\n'),
          reconnect_initial: '200ms',
        })}\n[[proxies]]\n${tomlLines({ name: 'p', type: 'tcp', local: '127.0.0.1:9', remote_port: 2222 })}\n`,
      );
      const client = h.spawn('client', 'unshare', withHosts(['--config', config]));
      const line = await client.waitForMsg('connect failed', 10_000);
      t.diagnostic(`connect failed: ${String(line.reason)}`);

      const status = await run('unshare', withHosts(['status', '--admin', `dual.test:${port}`]), {
        timeoutMs: 10_000,
      });
      t.diagnostic(`status (exit ${status.code}): ${status.stderr.trim()}`);
      assert.deepEqual(
        { connectFailed: line.reason, status: status.stderr.trim().split(': ').slice(1).join(': ') },
        {
          connectFailed: bothRefused,
          status: `cannot reach the client at dual.test:${port}: ${bothRefused}`,
        },
      );
    }),
);
