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

/** A tcp echo server on each of `count` ports from `first`, whose banner is `name` and its index ("web0"). */
async function startEchoRun(h: Harness, first: number, count: number, name: string): Promise<void> {
  for (let i = 0; i < count; i++) {
    const echo = await startEchoServer('127.0.0.1', first + i, `${name}${i}`);
    h.onCleanup(() => echo.close());
  }
}

/** A server allowing `ports` and a token granting them. */
async function startRangeServer(
  h: Harness,
  ports: string,
): Promise<{ server: RunningServer; token: string }> {
  const server = await startServer(h, { allowPorts: [ports] });
  return { server, token: await issueToken(server.config, { name: 'ranges', ports }) };
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
      await startEchoRun(h, tcpLocal, 4, 'web');
      for (let i = 0; i < 3; i++) {
        const echo = await startUdpEcho(`game${i}`, '127.0.0.1', udpLocal + i);
        h.onCleanup(() => echo.close());
      }
      const { server, token } = await startRangeServer(h, `${span(tcpPublic, 4)},${span(udpPublic, 3)}`);
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
      await startEchoRun(h, local, 4, 'svc');
      const { server, token } = await startRangeServer(h, span(remote, 4));
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
  'porthole-client check refuses ranges of different lengths and one past the cap, exit 2, naming the table and key (the flag for a --udp rule)',
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
        `${config}: proxies[0] ("game").remote_port: 27015-27029 is 15 ports and local's 27015-27030 is 16 ports: the two pair port by port, so they must be as many`,
        `${config}: proxies[1] ("rtp").remote_port: 20000-21024 is 1025 ports, more than the 1024 one table may expand to: split it over several tables`,
      ]);
      // The quick flag's form, named as the flag.
      const server = ['--server', 'ws://127.0.0.1:7000/_porthole', '--token-file', tokenFile];
      const rule = '27015-27018:127.0.0.1:27015-27019';
      const flag = await run(clientBin, ['check', ...server, '--udp', rule]);
      assert.equal(flag.code, 2, flag.stdout);
      assert.equal(
        flag.stderr,
        `command line: --udp: "${rule}": 27015-27018 is 4 ports and local's 27015-27019 is 5 ports: the two pair port by port, so they must be as many\n`,
      );
      const ok = await run(clientBin, ['check', ...server, '--udp', '27015-27018:127.0.0.1:27015-27018']);
      assert.equal(ok.code, 0, ok.stderr);
      assert.match(ok.stdout, /ok \(4 proxies\)\n.*a port range, 4 proxies \(udp-27015 \.\.\. udp-27018\)\n/);
    }),
);
