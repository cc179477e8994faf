// The admin listener of a real server (JSON API, Prometheus /metrics, /healthz, Bearer protection) and
// `porthole-client status` against a real client's admin endpoint.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { curl } from './lib/curl.js';
import { startHttpBackend, startUdpEcho, udpClient } from './lib/http-backend.js';
import { clientBin, eventually, freePort, run, serverBin, waitFor, withHarness } from './lib/processes.js';
import {
  issueRoutedToken,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  startRoutedClient,
  startRoutedServer,
} from './lib/routing.js';
import { EchoPinger, echoRoundTrip, startEchoServer } from './lib/services.js';
import { startTunnel } from './lib/tunnel.js';

const ADMIN_TOKEN = 'admin-token-for-e2e-0123456789abcdef';

/** GET with `Authorization: Bearer token`; `null` sends no Authorization header. */
async function api(base: string, path: string, token: string | null = ADMIN_TOKEN) {
  const res = await fetch(`${base}${path}`, {
    headers: token === null ? {} : { Authorization: `Bearer ${token}` },
  });
  const text = await res.text();
  return { status: res.status, headers: res.headers, text, json: () => JSON.parse(text) };
}

/** Checks the text exposition line by line: HELP and TYPE before each family's samples, sample syntax. */
function parseExposition(text: string): Map<string, number> {
  const samples = new Map<string, number>();
  const typed = new Set<string>();
  assert.ok(text.endsWith('\n'), 'the exposition ends with a newline');
  for (const line of text.trimEnd().split('\n')) {
    const meta = /^# (HELP|TYPE) ([a-zA-Z_:][a-zA-Z0-9_:]*) (.+)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') {
        assert.match(meta[3]!, /^(counter|gauge|histogram)$/, line);
        typed.add(meta[2]!);
      }
      continue;
    }
    const sample =
      /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})? (\S+)$/.exec(line);
    assert.ok(sample, `not a valid sample line: ${line}`);
    const family = sample[1]!.replace(/_(bucket|sum|count)$/, '');
    assert.ok(typed.has(sample[1]!) || typed.has(family), `sample before its TYPE: ${line}`);
    const value = Number(sample[3] === '+Inf' ? Number.POSITIVE_INFINITY : sample[3]);
    assert.ok(!Number.isNaN(value), `value of ${line}`);
    samples.set(`${sample[1]}${sample[2] ?? ''}`, value);
  }
  return samples;
}

test(
  'admin API: Bearer-protected JSON and Prometheus metrics that follow a live connection; healthz; client status',
  {
    timeout: 90_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const remotePort = await freePort();
      const clientAdminPort = await freePort();
      const { server, client, publicPort } = await startTunnel(
        h,
        [{ name: 'web', local: `127.0.0.1:${echo.port}`, remotePort }],
        {
          tokenName: 'homelab',
          // Long enough for the checks during the drain; the held connection closes after them.
          server: { admin: { token: ADMIN_TOKEN }, shutdownTimeout: '15s' },
          client: { adminListen: `127.0.0.1:${clientAdminPort}` },
        },
      );
      const base = server.adminUrl!;
      assert.match(base, /^http:\/\/127\.0\.0\.1:\d+$/, 'the admin listener is on loopback');

      // healthz needs no token; everything else does.
      const health = await api(base, '/healthz', null);
      assert.equal(health.status, 200);
      assert.deepEqual(health.json(), { status: 'ok' });
      for (const path of ['/api/clients', '/api/proxies', '/api/connections', '/metrics']) {
        const anonymous = await api(base, path, null);
        assert.equal(anonymous.status, 401, `${path} without a token`);
        assert.match(anonymous.headers.get('www-authenticate') ?? '', /^Bearer/);
        assert.equal(
          (await api(base, path, 'wrong-token-wrong-token-wrong')).status,
          401,
          `${path} wrong token`,
        );
      }
      assert.ok(!server.proc.outputContains(ADMIN_TOKEN), 'the admin token is never logged');

      const clients = (await api(base, '/api/clients')).json().clients;
      assert.equal(clients.length, 1);
      assert.equal(clients[0].name, 'homelab');
      assert.match(clients[0].remote_addr, /^127\.0\.0\.1:\d+$/);
      // When the session ends for the token's expiry (issued without --expires: 365 days), beside the
      // same on the 'client connected' line.
      const daysLeft = (Date.parse(clients[0].token_expires_at) - Date.now()) / 86_400_000;
      assert.ok(daysLeft > 364 && daysLeft <= 365, `token_expires_at ${clients[0].token_expires_at}`);
      const connected = server.proc.logsWithMsg('client connected')[0];
      assert.equal(connected?.token_expires_at, clients[0].token_expires_at);
      assert.deepEqual(
        clients[0].proxies.map((p: Record<string, unknown>) => [
          p.name,
          p.type,
          p.public_addr,
          p.open_connections,
        ]),
        [['web', 'tcp', `127.0.0.1:${publicPort}`, 0]],
      );

      // A live connection shows up with growing byte counts, then goes away and is counted.
      const pinger = await EchoPinger.connect('127.0.0.1', publicPort);
      h.onCleanup(() => pinger.close());
      for (let i = 0; i < 5; i++) assert.ok(await pinger.ping());
      const live = await eventually(
        'the connection listed with bytes',
        async () => {
          const list = (await api(base, '/api/connections')).json().connections;
          return list.length === 1 && list[0].bytes_in > 0 ? list : undefined;
        },
        5000,
      );
      assert.equal(live[0].client, 'homelab');
      assert.equal(live[0].proxy, 'web');
      assert.match(live[0].remote_addr, /^127\.0\.0\.1:\d+$/);
      const firstBytes = live[0].bytes_in;
      for (let i = 0; i < 5; i++) assert.ok(await pinger.ping());
      const later = (await api(base, '/api/connections')).json().connections;
      assert.ok(later[0].bytes_in > firstBytes, 'bytes_in grows while the connection is used');
      const proxies = (await api(base, '/api/proxies')).json().proxies;
      assert.equal(proxies[0].open_connections, 1);
      assert.equal(proxies[0].bytes_in, later[0].bytes_in);

      // A refused client authentication is counted by reason.
      await new Promise<void>((resolve) => {
        const ws = new WebSocket(server.url, { headers: { Authorization: 'Bearer not-a-jwt' } });
        ws.on('unexpected-response', (_req, res) => {
          assert.equal(res.statusCode, 401);
          res.resume();
          resolve();
        });
        ws.on('error', () => resolve());
      });

      const metricsRes = await api(base, '/metrics');
      assert.equal(metricsRes.status, 200);
      assert.match(metricsRes.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
      const m = parseExposition(metricsRes.text);
      const label = '{client="homelab",proxy="web"}';
      assert.equal(m.get('porthole_clients'), 1);
      assert.equal(m.get('porthole_proxies{type="tcp"}'), 1);
      assert.equal(m.get('porthole_open_connections'), 1);
      assert.equal(m.get(`porthole_proxy_open_connections${label}`), 1);
      assert.ok(m.get(`porthole_proxy_bytes_in_total${label}`)! >= later[0].bytes_in);
      assert.ok(m.get(`porthole_proxy_bytes_out_total${label}`)! > 0);
      assert.equal(m.get('porthole_auth_failures_total{reason="malformed token"}'), 1);
      assert.equal(m.get('porthole_admin_auth_failures_total'), 8);
      assert.ok(m.get('porthole_stream_open_seconds_count')! >= 1, 'stream opens are timed');
      assert.equal(
        m.get('porthole_stream_open_seconds_bucket{le="+Inf"}'),
        m.get('porthole_stream_open_seconds_count'),
      );
      assert.ok(m.get('process_resident_memory_bytes')! > 10e6);
      assert.ok(m.get('process_open_fds')! > 5);

      pinger.close();
      await eventually(
        'the closed connection to be counted',
        async () => {
          const p = (await api(base, '/api/proxies')).json().proxies[0];
          return p.open_connections === 0 && p.connections_total === 1 ? p : undefined;
        },
        5000,
      );
      assert.deepEqual((await api(base, '/api/connections')).json(), { connections: [] });

      // porthole-client status reads the client's own admin endpoint.
      const status = await run(clientBin, ['status', '--config', client.configPath], { timeoutMs: 15_000 });
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /session: +established as "homelab" \(session [0-9a-f]{8}\)/);
      assert.match(status.stdout, /^token: +expires \S+Z, in 36[45]d \d+h$/m);
      assert.match(
        status.stdout,
        new RegExp(
          `web +tcp +127\\.0\\.0\\.1:${echo.port} +${remotePort} +registered +0 +public 127\\.0\\.0\\.1:${publicPort}`,
        ),
      );
      const json = await run(clientBin, ['status', '--admin', `127.0.0.1:${clientAdminPort}`, '--json'], {
        timeoutMs: 15_000,
      });
      assert.equal(json.code, 0, json.stderr);
      assert.equal(JSON.parse(json.stdout).proxies[0].state, 'registered');
      // A page that rebound its name to 127.0.0.1 (DNS rebinding) arrives with that name as Host: refused.
      const statusFor = async (host: string, url: string) =>
        (await run('curl', ['-sS', '-o', '/dev/null', '-w', '%{http_code}', '-H', `Host: ${host}`, url]))
          .stdout;
      assert.equal(
        await statusFor('attacker.example:80', `http://127.0.0.1:${clientAdminPort}/api/status`),
        '421',
        "the client's status for another Host",
      );
      // The server's loopback admin listener too: neither its page nor its API for another Host.
      for (const path of ['/', '/api/clients']) {
        assert.equal(
          await statusFor('attacker.example', `${base}${path}`),
          '421',
          `the server's ${path} for another Host`,
        );
      }
      assert.equal((await api(base, '/healthz', null)).status, 200, 'healthz answers whatever the Host');
      const unreachable = await run(clientBin, ['status', '--admin', `127.0.0.1:${await freePort()}`], {
        timeoutMs: 15_000,
      });
      assert.equal(unreachable.code, 1);
      assert.match(unreachable.stderr, /cannot reach the client/);

      // While the server drains, healthz says so; the client reports that its session is gone.
      const holder = await EchoPinger.connect('127.0.0.1', publicPort);
      h.onCleanup(() => holder.close());
      assert.ok(await holder.ping());
      server.proc.kill('SIGTERM');
      await server.proc.waitForMsg('shutting down', 5000);
      const draining = await api(base, '/healthz', null);
      assert.equal(draining.status, 503);
      assert.deepEqual(draining.json(), { status: 'draining' });
      // The client hears of it: its proxy shows closed while the open connection finishes.
      const drained = await eventually(
        'the client to show its proxy closed by the drain',
        async () => {
          const r = await run(clientBin, ['status', '--admin', `127.0.0.1:${clientAdminPort}`, '--json'], {
            timeoutMs: 15_000,
          });
          const proxy = JSON.parse(r.stdout).proxies[0];
          return proxy.state === 'closed' ? proxy : undefined;
        },
        10_000,
      );
      assert.match(String(drained.reason), /shut/);
      // The session is still up for the open connection, but no proxy is served: status says so by its exit.
      const unserved = await run(clientBin, ['status', '--config', client.configPath], { timeoutMs: 15_000 });
      assert.equal(unserved.code, 5, unserved.stdout + unserved.stderr);
      assert.match(unserved.stdout, /session: +established/);
      assert.match(unserved.stdout, /^web +tcp .* closed +\d+ +.*shut/m);
      // The last open connection goes, so the drain ends now rather than at shutdown_timeout.
      holder.close();
      await server.proc.exited;
      const down = await eventually(
        'the client status to leave "established"',
        async () => {
          const r = await run(clientBin, ['status', '--config', client.configPath], { timeoutMs: 15_000 });
          return r.code === 3 ? r : undefined;
        },
        10_000,
      );
      // Sampled between attempts or during one (a refused connect takes a moment).
      assert.match(down.stdout, /session: +reconnecting for \d+s, (next attempt in|connecting now)/);
      assert.match(down.stdout, /last error: /);
    }),
);

/** One request with its own Host header (fetch would not send another), for the admin endpoints' rules. */
function ask(
  url: string,
  opts: { method?: string; host?: string; token?: string } = {},
): Promise<{ status: number; allow: string | undefined; body: string }> {
  const headers: Record<string, string> = {};
  if (opts.host !== undefined) headers.Host = opts.host;
  if (opts.token !== undefined) headers.Authorization = `Bearer ${opts.token}`;
  return new Promise((resolve, reject) => {
    const req = request(url, { method: opts.method ?? 'GET', headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, allow: res.headers.allow, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

test(
  "the client's admin endpoint answers as the server's: /healthz for any Host, HEAD, 405 with Allow, every way of writing loopback",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const clientAdminPort = await freePort();
      const { server } = await startTunnel(
        h,
        [{ name: 'web', local: `127.0.0.1:${echo.port}`, remotePort: await freePort() }],
        {
          server: { admin: { token: ADMIN_TOKEN } },
          client: { adminListen: `127.0.0.1:${clientAdminPort}` },
        },
      );
      const endpoints = [
        { name: 'server', base: server.adminUrl!, data: '/api/clients', token: ADMIN_TOKEN },
        {
          name: 'client',
          base: `http://127.0.0.1:${clientAdminPort}`,
          data: '/api/status',
          token: undefined,
        },
      ];
      // Before, the client answered 421 to /healthz for another Host, 405 to HEAD (without Allow), and both
      // took [::ffff:127.0.0.1] for a foreign name.
      for (const { name, base, data, token } of endpoints) {
        const port = new URL(base).port;
        const cases: [what: string, path: string, opts: Parameters<typeof ask>[1], status: number][] = [
          ['GET /healthz, a foreign Host', '/healthz', { host: 'vps.example.com' }, 200],
          ['HEAD /healthz', '/healthz', { method: 'HEAD' }, 200],
          [`HEAD ${data}`, data, { method: 'HEAD' }, 200],
          ['an IPv4-mapped loopback Host', data, { host: `[::ffff:127.0.0.1]:${port}` }, 200],
          ['::1 written out', data, { host: `[0:0:0:0:0:0:0:1]:${port}` }, 200],
          ['a rebinding page', data, { host: `attacker.example:${port}` }, 421],
          ['POST /healthz', '/healthz', { method: 'POST' }, 405],
        ];
        for (const [what, path, opts, status] of cases) {
          const answer = await ask(`${base}${path}`, { ...opts, ...(token === undefined ? {} : { token }) });
          assert.equal(answer.status, status, `${name}: ${what}: ${answer.body}`);
          if (opts?.method === 'HEAD') assert.equal(answer.body, '', `${name}: ${what} has no body`);
          if (status === 405) assert.equal(answer.allow, 'GET, HEAD', `${name}: ${what}`);
        }
      }
    }),
);

test(
  'admin API: http requests and udp flows are counted like connections, live and once over; udp drops by cause',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const web = await startHttpBackend('web');
      const echo = await startUdpEcho('echo');
      h.onCleanup(() => Promise.all([web.close(), echo.close()]));
      const udpPort = await freePort();
      const server = await startRoutedServer(h, { admin: { token: ADMIN_TOKEN } });
      const token = await issueRoutedToken(server, {
        name: 'mixed',
        ports: String(udpPort),
        hosts: ['app.test'],
      });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'web', type: 'http', local: `127.0.0.1:${web.port}`, hosts: ['app.test'] },
          {
            name: 'echo',
            type: 'udp',
            local: `127.0.0.1:${echo.port}`,
            remote_port: udpPort,
            // Long enough that the flow is still open through the checks below on a stalled machine.
            udp_idle_timeout: '5s',
            max_flows: 1,
          },
        ],
      });
      const base = server.adminUrl!;
      const proxy = async (name: string) =>
        ((await api(base, '/api/proxies')).json().proxies as Record<string, number | string>[]).find(
          (p) => p.name === name,
        )!;
      const onceClosed = (name: string, what: string, timeoutMs: number) =>
        eventually(
          what,
          async () => {
            const p = await proxy(name);
            return p.open_connections === 0 ? p : undefined;
          },
          timeoutMs,
        );

      // Three uploads: each request's head and body went into the tunnel, each answer came back.
      const body = 'x'.repeat(10_000);
      let answered = 0;
      for (let i = 0; i < 3; i++) {
        const r = await curl(
          ['-H', 'Host: app.test', '--data-binary', body],
          `http://127.0.0.1:${server.httpPort}/sha256`,
        );
        assert.equal(r.status, 200, r.stderr);
        answered += Buffer.byteLength(r.body);
      }
      const afterPosts = await proxy('web');
      assert.equal(afterPosts.connections_total, 3, 'each request counts once');
      assert.equal(afterPosts.open_connections, 0);
      const bytesIn = afterPosts.bytes_in as number;
      assert.ok(bytesIn > 3 * 10_000 && bytesIn < 3 * 12_000, `bytes_in ${bytesIn}: three heads and bodies`);
      const bytesOut = afterPosts.bytes_out as number;
      assert.ok(
        bytesOut > answered && bytesOut < answered + 3 * 1000,
        `bytes_out ${bytesOut} (bodies ${answered})`,
      );
      // Log lines leave the server in batches.
      const logged = await eventually(
        'three request log lines',
        async () => {
          const lines = server.proc.logsWithMsg('http request').filter((l) => l.proxy === 'web');
          return lines.length === 3 ? lines : undefined;
        },
        5000,
      );
      assert.equal(
        logged.reduce((sum, l) => sum + Number(l.bytes_in), 0),
        bytesIn,
        'the request log lines carry the same bytes',
      );

      // A download in progress is listed among the open connections, with its bytes growing.
      const downloaded = new Promise<number>((resolve, reject) => {
        const req = request(
          {
            host: '127.0.0.1',
            port: server.httpPort,
            path: '/stream?bytes=200000&chunks=100',
            headers: { Host: 'app.test' },
          },
          (res) => {
            let n = 0;
            res.on('data', (chunk: Buffer) => {
              n += chunk.length;
            });
            res.on('end', () => resolve(n));
            res.on('error', reject);
          },
        );
        req.on('error', reject);
        req.end();
      });
      const live = await eventually(
        'the download listed with bytes',
        async () => {
          const list = (await api(base, '/api/connections')).json().connections as Record<string, unknown>[];
          const row = list.find((c) => c.proxy === 'web');
          return row && (row.bytes_out as number) > 0 ? row : undefined;
        },
        5000,
      );
      assert.equal(live.client, 'mixed');
      assert.equal(live.conn, null, 'a pooled request has no connection id of its own');
      assert.match(String(live.remote_addr), /^127\.0\.0\.1:\d+$/);
      assert.equal((await proxy('web')).open_connections, 1);
      assert.equal(await downloaded, 200_000);
      const afterDownload = await onceClosed('web', 'the download counted', 5000);
      assert.equal(afterDownload.connections_total, 4);
      assert.ok((afterDownload.bytes_out as number) > bytesOut + 200_000);

      // A udp flow: listed while open with exact payload bytes, folded into the totals once idle.
      const { socket: sender, replies } = await udpClient();
      h.onCleanup(() => sender.close());
      for (const word of ['one', 'two', 'three']) sender.send(word, udpPort, '127.0.0.1');
      await waitFor('three echoes', () => replies.length === 3, 5000);
      const flow = await eventually(
        'the flow listed',
        async () => {
          const list = (await api(base, '/api/connections')).json().connections as Record<string, unknown>[];
          return list.find((c) => c.proxy === 'echo');
        },
        5000,
      );
      assert.equal(flow.remote_addr, `127.0.0.1:${sender.address().port}`);
      assert.equal(typeof flow.conn, 'number');
      assert.equal(flow.bytes_in, 11, 'one + two + three');
      assert.equal(flow.bytes_out, 11 + 3 * 'echo|'.length);
      // A second sender is over max_flows: its datagram is dropped, and counted by cause. (The flow has just
      // been busy: one silent for a second would give its place to the new sender instead.)
      sender.send('four', udpPort, '127.0.0.1');
      await waitFor('the fourth echo', () => replies.length === 4, 5000);
      const { socket: other } = await udpClient();
      h.onCleanup(() => other.close());
      other.send('over the limit', udpPort, '127.0.0.1');
      const udpLabel = (extra: string) => `{client="mixed",proxy="echo",${extra}}`;
      const m = await eventually(
        'the dropped datagram counted',
        async () => {
          const sample = parseExposition((await api(base, '/metrics')).text);
          return sample.get(`porthole_udp_datagrams_dropped_total${udpLabel('cause="flow_limit"')}`) === 1
            ? sample
            : undefined;
        },
        5000,
      );
      assert.equal(m.get('porthole_proxy_open_connections{client="mixed",proxy="echo"}'), 1);
      assert.equal(m.get('porthole_open_connections'), 1);
      assert.equal(m.get(`porthole_udp_datagrams_total${udpLabel('direction="in"')}`), 4);
      assert.equal(m.get(`porthole_udp_datagrams_total${udpLabel('direction="out"')}`), 4);
      assert.equal(m.get(`porthole_udp_flows_evicted_total{client="mixed",proxy="echo"}`), 0);
      assert.equal(m.get(`porthole_udp_datagrams_dropped_total${udpLabel('cause="send"')}`), 0);
      const closed = await onceClosed('echo', 'the idle flow counted', 15_000);
      assert.deepEqual([closed.connections_total, closed.bytes_in, closed.bytes_out], [1, 15, 35]);
      assert.deepEqual((await api(base, '/api/connections')).json(), { connections: [] });
    }),
);

test(
  'admin config: a missing token is refused by check; the token must be long enough and fit a header; the client admin listens on loopback, on a port of its own',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const secret = await h.file('secret', `${'s'.repeat(40)}\n`);
      const noToken = await h.file(
        'a.toml',
        `[auth]\nsecret_file = "${secret}"\n[admin]\nlisten = "127.0.0.1:0"\n`,
      );
      const r1 = await run(serverBin, ['check', '--config', noToken]);
      assert.equal(r1.code, 2);
      assert.match(r1.stderr, /a\.toml: admin: set exactly one of token or token_file/);
      const short = await h.file('b.toml', `[auth]\nsecret_file = "${secret}"\n[admin]\ntoken = "short"\n`);
      const r2 = await run(serverBin, ['check', '--config', short]);
      assert.equal(r2.code, 2);
      assert.match(r2.stderr, /b\.toml: admin\.token: the admin token must be at least 16 characters/);
      // A token with a space could never be presented: the Authorization header's parser splits on it.
      const spaced = await h.file(
        'd.toml',
        `[auth]\nsecret_file = "${secret}"\n[admin]\ntoken = "correct horse battery staple"\n`,
      );
      const r4 = await run(serverBin, ['check', '--config', spaced]);
      assert.equal(r4.code, 2);
      assert.match(
        r4.stderr,
        /d\.toml: admin\.token: the admin token must be printable ASCII without spaces/,
      );
      const clientToml = await h.file(
        'c.toml',
        `server = "ws://127.0.0.1:1/_porthole"\ntoken = "x"\n[admin]\nlisten = "0.0.0.0:7401"\n`,
      );
      const r3 = await run(clientBin, ['check', '--config', clientToml]);
      assert.equal(r3.code, 2);
      assert.match(r3.stderr, /c\.toml: admin\.listen: must be a loopback address/);
      // Port 0 would bind somewhere `porthole-client status --config` cannot know: check refuses it as
      // status does (before, check and run took it, and status then refused the same file).
      const anyPort = await h.file(
        'c0.toml',
        `server = "ws://127.0.0.1:1/_porthole"\ntoken = "x"\n[admin]\nlisten = "127.0.0.1:0"\n`,
      );
      const r5 = await run(clientBin, ['check', '--config', anyPort]);
      assert.equal(r5.code, 2, r5.stdout);
      assert.match(r5.stderr, /c0\.toml: admin\.listen: port 0 is outside 1-65535/);
      const status = await run(clientBin, ['status', '--config', anyPort]);
      assert.equal(status.code, 2);
      assert.match(status.stderr, /c0\.toml: admin\.listen: port 0 is outside 1-65535/);
    }),
);

/** One /metrics scrape with curl: its sample lines (the exposition checked on the way). */
async function scrapeMetrics(adminUrl: string): Promise<string[]> {
  const r = await curl(['-H', `Authorization: Bearer ${ADMIN_TOKEN}`], `${adminUrl}/metrics`);
  assert.equal(r.status, 200, r.stderr);
  parseExposition(r.body);
  return r.body.split('\n').filter((line) => line !== '' && !line.startsWith('#'));
}

/** The per-proxy sample lines of `proxy` in a scrape. */
function seriesOf(lines: readonly string[], proxy: string): string[] {
  return lines.filter((line) => line.includes(`proxy="${proxy}"`));
}

test(
  "/metrics: a proxy removed by a client reload loses its per-proxy series at once, even with a connection still open on it; 30 names added and removed keep the series count where it was; the server's totals stay",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const [keptPort, churnPort] = [await freePort(), await freePort()];
      const server = await startRoutedServer(h, { http: false, admin: { token: ADMIN_TOKEN } });
      const adminUrl = server.adminUrl!;
      const token = await issueRoutedToken(server, { name: 'homelab', ports: `${keptPort},${churnPort}` });
      const local = `127.0.0.1:${echo.port}`;
      const kept: RoutedProxy = { name: 'kept', type: 'tcp', local, remote_port: keptPort };
      const churn = (name: string): RoutedProxy => ({ name, type: 'tcp', local, remote_port: churnPort });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [kept, churn('gone')],
      });
      const reload = async (
        proxies: RoutedProxy[],
        closed: string | undefined,
        registered: string | undefined,
      ) => {
        await rewriteRoutedClientProxies(client.configPath, proxies);
        const [mark, serverMark] = [client.proc.mark(), server.proc.mark()];
        client.proc.kill('SIGHUP');
        await client.proc.waitForMsg('config reloaded', 10_000, { from: mark });
        if (closed)
          await server.proc.waitForMsg('proxy closed', 10_000, {
            from: serverMark,
            fields: { proxy: closed },
          });
        if (registered)
          await client.proc.waitForMsg('proxy registered', 10_000, {
            from: mark,
            fields: { proxy: registered },
          });
      };
      // Traffic on both, and a connection left open on "gone".
      for (const port of [keptPort, churnPort]) assert.ok((await echoRoundTrip('127.0.0.1', port, 100)).ok);
      const open = await EchoPinger.connect('127.0.0.1', churnPort);
      h.onCleanup(() => open.close());
      assert.ok(await open.ping());
      const before = await scrapeMetrics(adminUrl);
      assert.ok(
        before.includes('porthole_proxy_connections_total{client="homelab",proxy="gone"} 2'),
        before.join('\n'),
      );
      const keptSeries = seriesOf(before, 'kept');
      assert.ok(keptSeries.length >= 5, keptSeries.join('\n'));

      await reload([kept], 'gone', undefined);
      const after = await scrapeMetrics(adminUrl);
      assert.deepEqual(seriesOf(after, 'gone'), []);
      assert.deepEqual(seriesOf(after, 'kept'), keptSeries, "the kept proxy's series are as they were");
      assert.ok(
        after.includes('porthole_open_connections 1'),
        'the connection still open is counted server-wide',
      );
      assert.ok(await open.ping(), 'the open connection carries on');
      open.close();
      await eventually(
        'the open connection to close',
        async () => (await scrapeMetrics(adminUrl)).includes('porthole_open_connections 0'),
        10_000,
      );
      assert.deepEqual(
        seriesOf(await scrapeMetrics(adminUrl), 'gone'),
        [],
        'its closing does not bring the series back',
      );

      // Names that come and go: each one's series leave with it.
      const counts: number[] = [];
      for (let i = 0; i < 30; i += 1) {
        await reload([kept, churn(`churn-${i}`)], i === 0 ? undefined : `churn-${i - 1}`, `churn-${i}`);
        assert.ok((await echoRoundTrip('127.0.0.1', churnPort, 100)).ok);
        const lines = await scrapeMetrics(adminUrl);
        counts.push(lines.filter((line) => line.includes('proxy="')).length);
        assert.deepEqual(seriesOf(lines, `churn-${i - 1}`), []);
      }
      t.diagnostic(`per-proxy series after each cycle: ${counts.join(' ')}`);
      assert.deepEqual(new Set(counts).size, 1, `per-proxy series: ${counts.join(' ')}`);
      // Coming back, a name counts from 0 (a new series, as Prometheus expects of a counter that went away).
      await reload([kept, churn('gone')], 'churn-29', 'gone');
      const back = await scrapeMetrics(adminUrl);
      assert.ok(
        back.includes('porthole_proxy_connections_total{client="homelab",proxy="gone"} 0'),
        seriesOf(back, 'gone').join('\n'),
      );
      assert.ok(back.includes('porthole_proxies{type="tcp"} 2'));
    }),
);
