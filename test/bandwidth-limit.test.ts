// A proxy's bandwidth_limit (frp's transport.bandwidthLimit), with real server and client processes: a tcp
// proxy capped at "1MB" (1 MiB/s) moves 4 MiB each way no faster than that, byte-exact, while an uncapped
// proxy of the same client moves it at loopback speed; two connections share the cap; a reload changes it
// under an open connection; a udp proxy's datagrams over the cap are dropped and counted. Only lower bounds
// on the capped transfers' times (a slow machine can only make them slower); the upper bounds are many
// times what the fast case needs.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { startUdpEcho, udpClient } from './lib/http-backend.js';
import { clientBin, freePorts, type Harness, run, sleep, withHarness, withTimeout } from './lib/processes.js';
import {
  issueRoutedToken,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  startRoutedClient,
  startRoutedServer,
  startUdpTunnel,
} from './lib/routing.js';
import { download, MIB, startTransferService, upload } from './lib/transfers.js';
import { portOf } from './lib/tunnel.js';

/** A routed server and a client with these tcp proxies, each on a free public port of its own. */
async function startTcpTunnel(
  h: Harness,
  proxies: { name: string; keys?: Record<string, string> }[],
  adminListen?: string,
) {
  const localPort = await startTransferService(h);
  const ports = await freePorts(proxies.length);
  const server = await startRoutedServer(h, { http: false });
  const token = await issueRoutedToken(server, { name: 'homelab', ports: ports.join(',') });
  const tables: RoutedProxy[] = proxies.map((p, i) => ({
    name: p.name,
    type: 'tcp',
    local: `127.0.0.1:${localPort}`,
    remote_port: ports[i]!,
    ...p.keys,
  }));
  const client = await startRoutedClient(h, {
    server: server.url,
    token,
    proxies: tables,
    ...(adminListen === undefined ? {} : { adminListen }),
  });
  const publicPort = (name: string) => portOf(client.registered.get(name)?.remote_addr);
  return { server, client, tables, publicPort };
}

const within = <T>(p: Promise<T>, what: string, h: Harness) =>
  withTimeout(p, 60_000, () => `${what}\n${h.dumpLogs()}`);

test(
  'a tcp proxy capped at "1MB" moves 4 MiB each way at 1 MiB/s, byte-exact; an uncapped proxy of the same client does not wait; status and the registered line show the cap',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [adminPort] = await freePorts(1);
      const admin = `127.0.0.1:${adminPort}`;
      const { client, publicPort } = await startTcpTunnel(
        h,
        [{ name: 'capped', keys: { bandwidth_limit: '1MB' } }, { name: 'open' }],
        admin,
      );
      assert.equal(client.registered.get('capped')?.bandwidth_limit, '1MB');
      assert.equal(client.registered.get('open')?.bandwidth_limit, undefined);

      for (const [what, transfer] of [
        ['upload', upload],
        ['download', download],
      ] as const) {
        const open = await within(transfer(publicPort('open'), 4 * MIB, `open-${what}`), `open ${what}`, h);
        assert.equal(open.received, open.sent, `open ${what}: sha256`);
        // Loopback moves 4 MiB in tens of milliseconds.
        assert.ok(open.ms < 2500, `the uncapped ${what} took ${Math.round(open.ms)} ms`);
        const capped = await within(
          transfer(publicPort('capped'), 4 * MIB, `capped-${what}`),
          `capped ${what}`,
          h,
        );
        assert.equal(capped.received, capped.sent, `capped ${what}: sha256`);
        // 1 MiB of burst, then 3 MiB at 1 MiB/s: 3 s, less what the last read may take on credit.
        assert.ok(capped.ms >= 2500, `the capped ${what} took only ${Math.round(capped.ms)} ms`);
        t.diagnostic(
          `${what}: 4 MiB uncapped ${Math.round(open.ms)} ms, capped at 1MB ${Math.round(capped.ms)} ms`,
        );
      }

      const status = await run(clientBin, ['status', '--config', client.configPath], { timeoutMs: 15_000 });
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /^PROXY +TYPE +LOCAL +REMOTE PORT +STATE +OPEN +LIMIT +DETAIL$/m);
      assert.match(status.stdout, /^capped +tcp +\S+ +\d+ +registered +\d+ +1MB\/s +public /m);
      assert.match(status.stdout, /^open +tcp +\S+ +\d+ +registered +\d+ +- +public /m);
      const json = await run(clientBin, ['status', '--admin', admin, '--json'], { timeoutMs: 15_000 });
      const proxies = (JSON.parse(json.stdout) as { proxies: { name: string; bandwidth_limit?: string }[] })
        .proxies;
      assert.deepEqual(
        proxies.map((p) => [p.name, p.bandwidth_limit]),
        [
          ['capped', '1MB'],
          ['open', undefined],
        ],
      );
    }),
);

test(
  'two connections on a capped proxy share its cap: 2 MiB each at once take as long as 4 MiB alone',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const { publicPort } = await startTcpTunnel(h, [{ name: 'capped', keys: { bandwidth_limit: '1MB' } }]);
      const started = performance.now();
      const both = await within(
        Promise.all([
          download(publicPort('capped'), 2 * MIB, 'first'),
          download(publicPort('capped'), 2 * MIB, 'second'),
        ]),
        'two downloads',
        h,
      );
      const ms = performance.now() - started;
      for (const [i, d] of both.entries()) assert.equal(d.received, d.sent, `download ${i + 1}: sha256`);
      // 4 MiB in all: 1 MiB of burst, then 3 s. A cap per connection would move both in about 1 s.
      assert.ok(ms >= 2500, `two 2 MiB downloads on a 1MB proxy took only ${Math.round(ms)} ms together`);
      t.diagnostic(
        `2 x 2 MiB: ${both.map((d) => Math.round(d.ms)).join(' and ')} ms, ${Math.round(ms)} ms in all`,
      );
    }),
);

test(
  'a reload that raises the cap speeds up the open connection: it is not dropped, and its bytes arrive whole',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const { client, tables, publicPort } = await startTcpTunnel(h, [
        { name: 'capped', keys: { bandwidth_limit: '64KB' } },
      ]);
      const started = performance.now();
      // At 64 KiB/s, 2 MiB would take 31 s.
      const running = download(publicPort('capped'), 2 * MIB, 'reloaded');
      await sleep(1000);
      await rewriteRoutedClientProxies(client.configPath, [{ ...tables[0]!, bandwidth_limit: '1MB' }]);
      const from = client.proc.logs.length;
      client.proc.child.kill('SIGHUP');
      const reloaded = await client.proc.waitForMsg('config reloaded', 15_000, { from });
      assert.deepEqual(reloaded.bandwidth_limit_changed, ['capped']);
      assert.deepEqual(reloaded.changed, [], 'nothing for the server to register again');
      const done = await within(running, 'the download across the reload', h);
      const ms = performance.now() - started;
      assert.equal(done.received, done.sent, 'sha256 across the reload');
      assert.ok(ms < 15_000, `the download took ${Math.round(ms)} ms: the new cap did not apply to it`);
      // A lower bound too: the first second ran at 64 KiB/s, not unlimited.
      assert.ok(ms >= 1500, `the download took only ${Math.round(ms)} ms`);
      const closed = await client.proc.waitForMsg('connection closed', 10_000, {
        fields: { proxy: 'capped' },
      });
      assert.equal(closed.reason, 'closed');
      assert.equal(client.proc.logsWithMsg('proxy registered').length, 1, 'not registered again');
      t.diagnostic(`2 MiB at 64KB then 1MB after 1 s: ${Math.round(ms)} ms`);
    }),
);

test(
  'a udp proxy capped at "8KB" drops the datagrams over its cap and counts them in its flow line',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('game');
      h.onCleanup(() => echo.close());
      const { client, remotePort } = await startUdpTunnel(h, {
        client: 'homelab',
        proxy: {
          name: 'game',
          local: `127.0.0.1:${echo.port}`,
          bandwidth_limit: '8KB',
          udp_idle_timeout: '1s',
        },
      });
      const visitor = await udpClient();
      h.onCleanup(() => visitor.socket.close());
      // 100 KB within a few milliseconds, against 8 KiB of burst and 8 KiB/s.
      const datagram = Buffer.alloc(1000, 0x67);
      for (let i = 0; i < 100; i++) {
        visitor.socket.send(datagram, remotePort, '127.0.0.1');
        if (i % 10 === 9) await sleep(5);
      }
      const flow = await client.proc.waitForMsg('udp flow closed', 15_000, { fields: { proxy: 'game' } });
      const dropped = Number(flow.dropped_over_limit);
      t.diagnostic(
        `sent 100, the service got ${echo.received}, the visitor ${visitor.replies.length} replies; flow line: datagrams_in ${flow.datagrams_in}, dropped ${flow.dropped}, dropped_over_limit ${dropped}`,
      );
      assert.ok(Number(flow.datagrams_in) >= 1, 'some datagrams passed');
      assert.ok(echo.received <= 30, `the service got ${echo.received} of 100 datagrams through an 8KB cap`);
      assert.ok(visitor.replies.length <= echo.received, 'replies within the cap too');
      assert.ok(dropped >= 50, `dropped_over_limit ${dropped}`);
      assert.ok(Number(flow.dropped) >= dropped, 'counted among the drops');
    }),
);

test(
  'a udp proxy capped below its datagrams\' size ("1KB", 1400-byte datagrams) still passes them at the cap\'s rate',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('tunnel');
      h.onCleanup(() => echo.close());
      const { client, remotePort } = await startUdpTunnel(h, {
        client: 'homelab',
        proxy: {
          name: 'vpn',
          local: `127.0.0.1:${echo.port}`,
          bandwidth_limit: '1KB',
          udp_idle_timeout: '1s',
        },
      });
      const visitor = await udpClient();
      h.onCleanup(() => visitor.socket.close());
      // A WireGuard-sized datagram every 100 ms for 4 s: 1 KiB/s pays for one about every 1.4 s.
      const datagram = Buffer.alloc(1400, 0x77);
      for (let i = 0; i < 40; i++) {
        visitor.socket.send(datagram, remotePort, '127.0.0.1');
        await sleep(100);
      }
      const flow = await client.proc.waitForMsg('udp flow closed', 15_000, { fields: { proxy: 'vpn' } });
      t.diagnostic(
        `sent 40, the service got ${echo.received}; dropped_over_limit ${flow.dropped_over_limit}`,
      );
      // Before, none: a datagram larger than a second's worth was never paid for, however long it waited.
      assert.ok(echo.received >= 2, `the service got ${echo.received} of 40 datagrams through a 1KB cap`);
      assert.ok(
        echo.received <= 8,
        `the service got ${echo.received}: more than 1 KiB/s (4 s, 1400 bytes each)`,
      );
    }),
);
