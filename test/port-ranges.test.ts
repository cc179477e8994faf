// Port ranges in one [[proxies]] table (frp's parseNumberRangePair templates): the real client expands
// `remote_port = "A-B"`, `local = "host:C-D"` into one proxy per port, each reached through its own public
// port by a real peer (socat), answered by the service on its paired local port.
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { startUdpEcho } from './lib/http-backend.js';
import { clientBin, freePortRun, type Harness, run, withHarness } from './lib/processes.js';
import { startEchoServer } from './lib/services.js';
import { clientConfigText, issueToken, type RunningServer, startServer, toml } from './lib/tunnel.js';

/** "first-last" of `count` ports from `first`. */
function span(first: number, count: number): string {
  return `${first}-${first + count - 1}`;
}

/** A client.toml for `server` with these [[proxies]] tables (key = value entries each). */
async function rangeConfigText(
  h: Harness,
  server: RunningServer,
  token: string,
  tables: Record<string, string | number>[],
): Promise<string> {
  const head = await clientConfigText(h, { server: server.url, token, proxies: [] });
  return [head, ...tables.map((table) => `[[proxies]]\n${toml(table)}\n`)].join('\n');
}

/** What socat gets back for `input` sent to a tcp or udp port on loopback (a udp answer within 1 s). */
async function socatAsk(type: 'tcp' | 'udp', port: number, input: string): Promise<string> {
  const address = `${type.toUpperCase()}:127.0.0.1:${port}`;
  const result = await run('socat', ['-T', '1', '-t', '1', '-', address], { input, timeoutMs: 10_000 });
  assert.equal(result.code, 0, `socat to ${address}: ${result.stderr}`);
  return result.stdout;
}

test(
  'a tcp and a udp range each expand into one proxy per port; every public port reaches the service on its paired local port',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const tcpLocal = await freePortRun(4);
      const tcpPublic = await freePortRun(4);
      const udpLocal = await freePortRun(3);
      const udpPublic = await freePortRun(3);
      for (let i = 0; i < 4; i++) {
        const echo = await startEchoServer('127.0.0.1', tcpLocal + i, `web${i}`);
        h.onCleanup(() => echo.close());
      }
      for (let i = 0; i < 3; i++) {
        const echo = await startUdpEcho(`game${i}`, '127.0.0.1', udpLocal + i);
        h.onCleanup(() => echo.close());
      }
      const ports = `${span(tcpPublic, 4)},${span(udpPublic, 3)}`;
      const server = await startServer(h, { allowPorts: [ports] });
      const token = await issueToken(server.config, { name: 'ranges', ports });
      const configPath = await h.file(
        'client.toml',
        await rangeConfigText(h, server, token, [
          {
            name: 'web',
            type: 'tcp',
            local: `127.0.0.1:${span(tcpLocal, 4)}`,
            remote_port: span(tcpPublic, 4),
          },
          {
            name: 'game',
            type: 'udp',
            local: `127.0.0.1:${span(udpLocal, 3)}`,
            remote_port: span(udpPublic, 3),
          },
        ]),
      );
      const check = await run(clientBin, ['check', '--config', configPath]);
      assert.equal(check.code, 0, check.stderr);
      assert.match(check.stdout, /: ok \(7 proxies\)\n/);
      assert.match(
        check.stdout,
        new RegExp(
          `proxies\\[0\\] \\("web"\\): a port range, 4 proxies \\(web-${tcpPublic} \\.\\.\\. web-${tcpPublic + 3}\\)`,
        ),
      );
      const client = h.spawn('client', clientBin, ['--config', configPath]);
      for (let i = 0; i < 4; i++)
        await client.waitForMsg('proxy registered', 15_000, { fields: { proxy: `web-${tcpPublic + i}` } });
      for (let i = 0; i < 3; i++)
        await client.waitForMsg('proxy registered', 15_000, { fields: { proxy: `game-${udpPublic + i}` } });
      for (let i = 0; i < 4; i++)
        assert.equal(await socatAsk('tcp', tcpPublic + i, 'hello\n'), `web${i}\nhello\n`, `tcp port ${i}`);
      for (let i = 0; i < 3; i++)
        assert.equal(await socatAsk('udp', udpPublic + i, 'ping'), `game${i}|ping`, `udp port ${i}`);
    }),
);

test(
  'a reload that widens a range registers the new ports alone; the running ones stay as they were',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const local = await freePortRun(4);
      const remote = await freePortRun(4);
      for (let i = 0; i < 4; i++) {
        const echo = await startEchoServer('127.0.0.1', local + i, `svc${i}`);
        h.onCleanup(() => echo.close());
      }
      const server = await startServer(h, { allowPorts: [span(remote, 4)] });
      const token = await issueToken(server.config, { name: 'ranges', ports: span(remote, 4) });
      const table = (count: number) => ({
        name: 'svc',
        type: 'tcp',
        local: `127.0.0.1:${span(local, count)}`,
        remote_port: span(remote, count),
      });
      const configPath = await h.file('client.toml', await rangeConfigText(h, server, token, [table(2)]));
      const client = h.spawn('client', clientBin, ['--config', configPath]);
      for (let i = 0; i < 2; i++)
        await client.waitForMsg('proxy registered', 15_000, { fields: { proxy: `svc-${remote + i}` } });
      assert.equal(await socatAsk('tcp', remote + 1, 'one\n'), 'svc1\none\n');

      const mark = client.mark();
      await writeFile(configPath, await rangeConfigText(h, server, token, [table(4)]));
      client.kill('SIGHUP');
      const reloaded = await client.waitForMsg('config reloaded', 10_000, { from: mark });
      assert.deepEqual(reloaded.added, [`svc-${remote + 2}`, `svc-${remote + 3}`]);
      assert.deepEqual(reloaded.removed, []);
      assert.deepEqual(reloaded.changed, []);
      for (let i = 2; i < 4; i++)
        await client.waitForMsg('proxy registered', 15_000, {
          from: mark,
          fields: { proxy: `svc-${remote + i}` },
        });
      for (let i = 0; i < 4; i++)
        assert.equal(
          await socatAsk('tcp', remote + i, 'two\n'),
          `svc${i}\ntwo\n`,
          `port ${i} after the reload`,
        );
    }),
);

test(
  'porthole-client check refuses ranges of different lengths and one past the cap, exit 2, naming the table and key',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const tokenFile = await h.file('token', 'x.y.z\n');
      const config = await h.file(
        'client.toml',
        [
          toml({ server: 'ws://127.0.0.1:7000/_porthole', token_file: tokenFile }),
          '[[proxies]]',
          toml({ name: 'game', type: 'udp', local: '127.0.0.1:27015-27030', remote_port: '27015-27029' }),
          '[[proxies]]',
          toml({ name: 'rtp', type: 'udp', local: '127.0.0.1:10000-11024', remote_port: '20000-21024' }),
          '',
        ].join('\n'),
      );
      const check = await run(clientBin, ['check', '--config', config]);
      assert.equal(check.code, 2, check.stdout);
      assert.deepEqual(check.stderr.trim().split('\n'), [
        `${config}: proxies[0] ("game").remote_port: names 27015-27029 (15 ports) and local 27015-27030 (16 ports): the two pair port by port, so they must be the same length`,
        `${config}: proxies[1] ("rtp").remote_port: names 20000-21024 (1025 ports), more than the 1024 one table may expand to: split it over several tables`,
      ]);
    }),
);
