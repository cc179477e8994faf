// remote_bind (ssh -R 127.0.0.1:8080:localhost:80): a tcp or udp proxy bound on an address its client asks
// for, among the server's allow_bind, instead of proxy_bind. The server here binds proxy_bind 127.0.0.2, so
// that a port on 127.0.0.1 (loopback has all of 127/8) tells the two apart: reached on the one, refused on
// the other.
import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import { test } from 'node:test';
import { startUdpEcho } from './lib/http-backend.js';
import { clientBin, freePort, type Harness, run, waitFor, withHarness } from './lib/processes.js';
import { rewriteRoutedClientProxies, startRoutedClient } from './lib/routing.js';
import { echoRoundTrip, startEchoServer, tryConnect } from './lib/services.js';
import { issueToken, rewriteServerConfig, startServer } from './lib/tunnel.js';

const ADMIN_TOKEN = 'admin-token-for-remote-bind-0123456789';
const PROXY_BIND = '127.0.0.2';

/** Sends `word` to host:port over UDP and waits (bounded) for the echo's `tag|word`. */
async function udpEchoes(h: Harness, host: string, port: number, word: string, tag: string): Promise<void> {
  const socket = createSocket(isIPv6(host) ? 'udp6' : 'udp4');
  h.onCleanup(() => socket.close());
  const replies: Buffer[] = [];
  socket.on('message', (msg) => replies.push(msg));
  // Datagrams may be lost: ask again until an answer comes.
  const asking = setInterval(() => socket.send(word, port, host), 200);
  h.onCleanup(() => clearInterval(asking));
  socket.send(word, port, host);
  await waitFor(`the udp echo of "${word}" through ${host} port ${port}`, () => replies.length > 0, 5000);
  clearInterval(asking);
  assert.equal(replies[0]!.toString(), `${tag}|${word}`);
}

/** True when nothing holds host:port for UDP (we can bind it ourselves). */
async function udpPortFree(host: string, port: number): Promise<boolean> {
  const socket = createSocket(isIPv6(host) ? 'udp6' : 'udp4');
  return new Promise((resolve) => {
    socket.once('error', () => {
      socket.close();
      resolve(false);
    });
    socket.bind(port, host, () => socket.close(() => resolve(true)));
  });
}

/** A tcp port answers on `at` and is refused on `notAt`. */
async function servedOnlyOn(at: string, notAt: string, port: number): Promise<void> {
  const echoed = await echoRoundTrip(at, port, 16 * 1024);
  assert.ok(echoed.ok, `an echo through ${at}:${port}: ${echoed.error}`);
  assert.equal(await tryConnect(notAt, port, 5000), 'refused', `nothing listens on ${notAt}:${port}`);
}

async function adminProxies(
  adminUrl: string,
): Promise<{ name: string; remote_port: number; remote_bind?: string; public_addr: string }[]> {
  const res = await fetch(`${adminUrl}/api/proxies`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(res.status, 200);
  return ((await res.json()) as { proxies: [] }).proxies;
}

test(
  'remote_bind: a tcp proxy on 127.0.0.1 and a udp proxy on ::1 answer there and not on proxy_bind, an address outside allow_bind is refused naming the allowed ones, and both ends show the address',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [webPort, dnsPort, plainPort, widePort] = [
        await freePort(),
        await freePort(),
        await freePort(),
        await freePort(),
      ];
      const server = await startServer(h, {
        proxyBind: PROXY_BIND,
        allowBind: ['127.0.0.1', '::1'],
        allowPorts: ['1024-65535'],
        admin: { token: ADMIN_TOKEN },
      });
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const udpEcho = await startUdpEcho('dns');
      h.onCleanup(() => udpEcho.close());
      const adminPort = await freePort();
      const client = await startRoutedClient(h, {
        server: server.url,
        token: await issueToken(server.config, { name: 'vps-user' }),
        adminListen: `127.0.0.1:${adminPort}`,
        proxies: [
          {
            name: 'web',
            type: 'tcp',
            local: `127.0.0.1:${echo.port}`,
            remote_port: webPort,
            remote_bind: '127.0.0.1',
          },
          {
            name: 'dns',
            type: 'udp',
            local: `127.0.0.1:${udpEcho.port}`,
            remote_port: dnsPort,
            remote_bind: '::1',
          },
          { name: 'plain', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: plainPort },
          {
            name: 'wide',
            type: 'tcp',
            local: `127.0.0.1:${echo.port}`,
            remote_port: widePort,
            remote_bind: '0.0.0.0',
          },
        ],
        waitFor: ['web', 'dns', 'plain'],
      });
      assert.equal(client.registered.get('web')?.remote_addr, `127.0.0.1:${webPort}`);
      assert.equal(client.registered.get('dns')?.remote_addr, `[::1]:${dnsPort}`);
      assert.equal(client.registered.get('plain')?.remote_addr, `${PROXY_BIND}:${plainPort}`);

      await servedOnlyOn('127.0.0.1', PROXY_BIND, webPort);
      await servedOnlyOn(PROXY_BIND, '127.0.0.1', plainPort);
      await udpEchoes(h, '::1', dnsPort, 'over ::1', 'dns');
      assert.ok(await udpPortFree(PROXY_BIND, dnsPort), `udp ${PROXY_BIND}:${dnsPort} is not bound`);

      const refused = await client.proc.waitForMsg('proxy refused', 10_000, { fields: { proxy: 'wide' } });
      assert.equal(
        refused.reason,
        `remote_bind 0.0.0.0 is not allowed: this server binds proxies on ${PROXY_BIND}, 127.0.0.1, ::1 (proxy_bind and allow_bind)`,
      );
      assert.equal(await tryConnect('127.0.0.1', widePort, 5000), 'refused');

      const json = await run(clientBin, ['status', '--admin', `127.0.0.1:${adminPort}`, '--json'], {
        timeoutMs: 15_000,
      });
      const proxies = (JSON.parse(json.stdout) as { proxies: { name: string; remote_bind?: string }[] })
        .proxies;
      assert.deepEqual(
        proxies.map((p) => [p.name, p.remote_bind]),
        [
          ['web', '127.0.0.1'],
          ['dns', '::1'],
          ['plain', undefined],
          ['wide', '0.0.0.0'],
        ],
      );
      const text = await run(clientBin, ['status', '--admin', `127.0.0.1:${adminPort}`], {
        timeoutMs: 15_000,
      });
      assert.match(
        text.stdout,
        new RegExp(`\\nweb +tcp +127\\.0\\.0\\.1:${echo.port} +127\\.0\\.0\\.1:${webPort} +registered`),
      );
      assert.match(
        text.stdout,
        new RegExp(`\\ndns +udp +127\\.0\\.0\\.1:${udpEcho.port} +\\[::1\\]:${dnsPort} +registered`),
      );
      assert.match(
        text.stdout,
        new RegExp(`\\nplain +tcp +127\\.0\\.0\\.1:${echo.port} +${plainPort} +registered`),
      );

      const listed = await adminProxies(server.adminUrl!);
      assert.deepEqual(listed.map((p) => [p.name, p.remote_bind, p.public_addr]).sort(), [
        ['dns', '::1', `[::1]:${dnsPort}`],
        ['plain', undefined, `${PROXY_BIND}:${plainPort}`],
        ['web', '127.0.0.1', `127.0.0.1:${webPort}`],
      ]);
    }),
);

test(
  'ssh -R syntax on the quick flags: --tcp 127.0.0.1:PORT:localhost:PORT, --udp [::1]:PORT:..., an address with port 0, next to the plain form',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [webPort, dnsPort, plainPort] = [await freePort(), await freePort(), await freePort()];
      const server = await startServer(h, {
        proxyBind: PROXY_BIND,
        allowBind: ['127.0.0.1', '::1'],
        allowPorts: ['1024-65535'],
      });
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const udpEcho = await startUdpEcho('dns');
      h.onCleanup(() => udpEcho.close());
      const tokenFile = await h.file(
        'quick-token',
        `${await issueToken(server.config, { name: 'quick' })}\n`,
      );
      const proc = h.spawn('client', clientBin, [
        '--server',
        server.url,
        '--token-file',
        tokenFile,
        '--tcp',
        `127.0.0.1:${webPort}:localhost:${echo.port}`,
        '--udp',
        `[::1]:${dnsPort}:127.0.0.1:${udpEcho.port}`,
        '--tcp',
        `${plainPort}:127.0.0.1:${echo.port}`,
        '--tcp',
        `127.0.0.1:0:127.0.0.1:${echo.port}`,
      ]);
      const registered = async (proxy: string) =>
        String((await proc.waitForMsg('proxy registered', 15_000, { fields: { proxy } })).remote_addr);
      assert.equal(await registered(`tcp-${webPort}`), `127.0.0.1:${webPort}`);
      assert.equal(await registered(`udp-${dnsPort}`), `[::1]:${dnsPort}`);
      assert.equal(await registered(`tcp-${plainPort}`), `${PROXY_BIND}:${plainPort}`);
      const picked = await registered('tcp-0');
      assert.match(picked, /^127\.0\.0\.1:\d+$/);
      const pickedPort = Number(picked.slice(picked.lastIndexOf(':') + 1));

      await servedOnlyOn('127.0.0.1', PROXY_BIND, webPort);
      await servedOnlyOn(PROXY_BIND, '127.0.0.1', plainPort);
      await servedOnlyOn('127.0.0.1', PROXY_BIND, pickedPort);
      await udpEchoes(h, '::1', dnsPort, 'quick', 'dns');

      // A host name where the address goes is refused before anything is dialled, saying what to write.
      const mistake = await run(
        clientBin,
        ['--server', server.url, '--token-file', tokenFile, '--tcp', `localhost:${webPort}:localhost:80`],
        { timeoutMs: 15_000 },
      );
      assert.equal(mistake.code, 2, mistake.stderr);
      assert.match(
        mistake.stderr,
        /^command line: --tcp: invalid rule "localhost:\d+:localhost:80": "localhost" is neither a port nor an address to bind \(bind address "localhost": write the loopback address itself: "127\.0\.0\.1" or "::1"\)/m,
      );
    }),
);

test(
  'a reload that changes only remote_bind moves the listener (tcp and udp), and a server reload that takes an address out of allow_bind closes the proxies on it',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [webPort, dnsPort] = [await freePort(), await freePort()];
      const serverOptions = {
        proxyBind: PROXY_BIND,
        allowBind: ['127.0.0.1', '::1'],
        allowPorts: ['1024-65535'],
      };
      const server = await startServer(h, serverOptions);
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const udpEcho = await startUdpEcho('dns');
      h.onCleanup(() => udpEcho.close());
      const proxiesOn = (web: string | undefined, dns: string) => [
        {
          name: 'web',
          type: 'tcp' as const,
          local: `127.0.0.1:${echo.port}`,
          remote_port: webPort,
          ...(web === undefined ? {} : { remote_bind: web }),
        },
        {
          name: 'dns',
          type: 'udp' as const,
          local: `127.0.0.1:${udpEcho.port}`,
          remote_port: dnsPort,
          remote_bind: dns,
        },
      ];
      const client = await startRoutedClient(h, {
        server: server.url,
        token: await issueToken(server.config, { name: 'mover' }),
        proxies: proxiesOn('127.0.0.1', '::1'),
      });
      await servedOnlyOn('127.0.0.1', PROXY_BIND, webPort);
      await udpEchoes(h, '::1', dnsPort, 'before', 'dns');

      // web back to proxy_bind (the key removed), dns from ::1 to 127.0.0.1.
      const mark = client.proc.mark();
      await rewriteRoutedClientProxies(client.configPath, proxiesOn(undefined, '127.0.0.1'));
      client.proc.kill('SIGHUP');
      const moved = async (proxy: string) =>
        String(
          (await client.proc.waitForMsg('proxy registered', 15_000, { from: mark, fields: { proxy } }))
            .remote_addr,
        );
      assert.equal(await moved('web'), `${PROXY_BIND}:${webPort}`);
      assert.equal(await moved('dns'), `127.0.0.1:${dnsPort}`);
      await servedOnlyOn(PROXY_BIND, '127.0.0.1', webPort);
      await udpEchoes(h, '127.0.0.1', dnsPort, 'after', 'dns');
      assert.ok(await udpPortFree('::1', dnsPort), `udp [::1]:${dnsPort} is free again`);

      // The operator takes 127.0.0.1 out of allow_bind: dns, bound there, is closed and its client told why.
      await rewriteServerConfig(h, server.config, { ...serverOptions, allowBind: ['::1'] });
      server.proc.kill('SIGHUP');
      const reason = `remote_bind 127.0.0.1 is not allowed: this server binds proxies on ${PROXY_BIND}, ::1 (proxy_bind and allow_bind)`;
      await server.proc.waitForMsg('proxy closed', 15_000, {
        fields: { proxy: 'dns', reason: `server configuration changed: ${reason}` },
      });
      assert.ok(await udpPortFree('127.0.0.1', dnsPort), `udp 127.0.0.1:${dnsPort} is free`);
      await servedOnlyOn(PROXY_BIND, '127.0.0.1', webPort);
    }),
);
