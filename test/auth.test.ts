// Auth failures give the client a clear reason; the server and its valid clients are unaffected.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import { rawUpgradeRequest } from './lib/http-backend.js';
import { clientBin, freePorts, type Harness, sleep, waitFor, withHarness } from './lib/processes.js';
import { startRoutedServer } from './lib/routing.js';
import { EchoPinger, echoRoundTrip, startEchoServer } from './lib/services.js';
import {
  issueToken,
  jwtClaims,
  portOf,
  type RunningServer,
  startClient,
  startServer,
  writeClientConfig,
  writeServerConfig,
} from './lib/tunnel.js';

/** A raw WebSocket upgrade request with optional headers; resolves with the HTTP status (101 or an error). */
function upgradeStatus(
  url: string,
  headers: Record<string, string>,
  localAddress?: string,
): Promise<{ status: number; body: string }> {
  const u = new URL(url.replace(/^ws/, 'http'));
  return new Promise((resolve, reject) => {
    const req = http.request({
      ...(localAddress === undefined ? {} : { localAddress }),
      host: u.hostname,
      port: u.port,
      path: u.pathname,
      headers: {
        Connection: 'Upgrade',
        Upgrade: 'websocket',
        'Sec-WebSocket-Version': '13',
        'Sec-WebSocket-Key': Buffer.from('porthole-e2e-key').toString('base64'),
        ...headers,
      },
      timeout: 5000,
    });
    req.on('upgrade', (res, socket) => {
      socket.destroy();
      resolve({ status: res.statusCode ?? 0, body: '' });
    });
    req.on('response', (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('timeout', () => req.destroy(new Error('upgrade request timed out')));
    req.on('error', reject);
    req.end();
  });
}

/** Start a client that is expected to fail; return its first "connect failed" line. */
async function expectConnectFailed(
  h: Harness,
  server: RunningServer,
  token: string,
  name: string,
  remotePort: number,
) {
  const { proc } = await startClient(
    h,
    // Slow retries: a few failures per client keep this test under the server's per-IP failure limit.
    {
      server: server.url,
      token,
      proxies: [{ name: 'p', local: '127.0.0.1:9', remotePort }],
      reconnectInitial: '1s',
      reconnectMax: '2s',
    },
    { name, waitFor: 'none' },
  );
  const line = await proc.waitForMsg('connect failed', 15_000);
  assert.equal(
    (await proc.settledLogsWithMsg('session established')).length,
    0,
    `${name}: no session may be established`,
  );
  return { proc, line };
}

test(
  'auth failures are refused with a clear reason while a valid client keeps working',
  { timeout: 100_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [goodPort, grantedPort, notGrantedPort, notAllowedPort, spare] = await freePorts(5);
      assert.ok(goodPort && grantedPort && notGrantedPort && notAllowedPort && spare, 'five free ports');
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());

      // Tokens first (with a config that has no revocations), then the real config revoking one of them.
      const initial = await writeServerConfig(h, {
        allowPorts: [goodPort, grantedPort, notGrantedPort, spare].map(String),
      });
      const goodToken = await issueToken(initial, { name: 'good', ports: String(goodPort) });
      const grantToken = await issueToken(initial, {
        name: 'grants',
        ports: `${grantedPort},${notAllowedPort}`,
      });
      const revokedToken = await issueToken(initial, { name: 'revoked', ports: String(spare) });
      const expiringToken = await issueToken(initial, {
        name: 'expiring',
        ports: String(spare),
        expires: '1s',
      });
      const expiresAt = Number(jwtClaims(expiringToken).exp) * 1000;
      assert.ok(Number.isFinite(expiresAt), 'the token carries exp');
      const otherSecret = await writeServerConfig(h, { allowPorts: [String(spare)] });
      const foreignToken = await issueToken(otherSecret, { name: 'foreign', ports: String(spare) });
      const revokedJti = String(jwtClaims(revokedToken).jti);
      assert.ok(revokedJti && revokedJti !== 'undefined', 'the token carries a jti');
      const config = await writeServerConfig(h, {
        ...initial.options,
        secretFile: initial.secretFile,
        revokedTokens: [revokedJti],
      });
      const server = await startServer(h, config);

      // The valid client and a connection through it that stays open for the whole test.
      const good = await startClient(
        h,
        {
          server: server.url,
          token: goodToken,
          proxies: [{ name: 'good', local: `127.0.0.1:${echo.port}`, remotePort: goodPort }],
        },
        { name: 'good-client' },
      );
      const pinger = await EchoPinger.connect('127.0.0.1', good.ports.get('good')!);
      h.onCleanup(() => pinger.close());
      const assertGoodWorks = async (when: string) => {
        assert.ok(
          await pinger.ping(),
          `long-lived connection through the valid client ${when}: ${pinger.failures.join('; ')}`,
        );
        const r = await echoRoundTrip('127.0.0.1', good.ports.get('good')!, 100_000, { timeoutMs: 5000 });
        assert.equal(r.ok, true, `new connection through the valid client ${when}: ${r.error}`);
      };
      await assertGoodWorks('before the bad clients');

      // 1. No token at all: the upgrade is refused with 401 before any WebSocket exists.
      const noToken = await upgradeStatus(server.url, {});
      assert.equal(
        noToken.status,
        401,
        `upgrade without Authorization: HTTP ${noToken.status} ${noToken.body}`,
      );
      const badBearer = await upgradeStatus(server.url, { Authorization: 'Bearer not-a-jwt' });
      assert.equal(
        badBearer.status,
        401,
        `upgrade with a malformed token: HTTP ${badBearer.status} ${badBearer.body}`,
      );
      await server.proc.waitForMsg('auth failed', 5000);
      t.diagnostic(
        `no token: HTTP ${noToken.status} "${noToken.body.trim()}"; malformed: HTTP ${badBearer.status} "${badBearer.body.trim()}"`,
      );

      // The client with an empty token file: refused at start (exit 2 naming the key) or by the server (401).
      {
        const configPath = await writeClientConfig(h, {
          server: server.url,
          token: '',
          proxies: [{ name: 'p', local: '127.0.0.1:9', remotePort: spare }],
          reconnectInitial: '1s',
          reconnectMax: '2s',
        });
        const proc = h.spawn('client-empty-token', clientBin, ['--config', configPath]);
        const outcome = await proc.waitForMsg('connect failed', 15_000).then(
          (l) => ({ kind: 'log' as const, reason: String(l.reason), code: null }),
          async (err) => {
            if (!proc.closed) throw err;
            return { kind: 'exit' as const, reason: '', code: (await proc.exited).code };
          },
        );
        if (outcome.kind === 'exit') {
          assert.equal(outcome.code, 2, `empty token: exit code\n${proc.tail(10)}`);
          assert.match(proc.tail(10), /token/i, 'empty token: the error names the token');
          t.diagnostic(`empty token file: client exits 2: ${proc.output.at(-1)?.text}`);
        } else {
          assert.match(outcome.reason, /401/, 'empty token: reason carries the 401');
          t.diagnostic(`empty token file: connect failed: ${outcome.reason}`);
        }
        await proc.stop();
      }

      const cases: Array<{ name: string; token: string; reason: RegExp }> = [
        { name: 'malformed', token: 'not.a.jwt', reason: /401/ },
        { name: 'bad-signature', token: foreignToken, reason: /401.*signature|signature.*401/i },
        { name: 'revoked', token: revokedToken, reason: /401.*revoked|revoked.*401/i },
      ];
      for (const c of cases) {
        const { proc, line } = await expectConnectFailed(h, server, c.token, `client-${c.name}`, spare);
        assert.match(String(line.reason), c.reason, `${c.name}: reason of "connect failed"`);
        assert.ok(
          Number(line.retry_ms) > 0,
          `${c.name}: the client says when it retries (retry_ms=${line.retry_ms})`,
        );
        t.diagnostic(`${c.name}: connect failed: ${line.reason} (retry in ${line.retry_ms} ms)`);
        await proc.stop();
        await assertGoodWorks(`after the ${c.name} client`);
      }
      // The server's line names the client whose revoked token that was (its signature checked out).
      const revokedLine = server.proc.logsWithMsg('auth failed').find((l) => l.reason === 'token revoked');
      assert.equal(revokedLine?.client, 'revoked', JSON.stringify(revokedLine));
      assert.equal(revokedLine?.jti, revokedJti);

      // Expired: wait until the 1 s token is past its exp, then it must be refused as expired, with retries.
      await sleep(Math.max(0, expiresAt - Date.now() + 1200));
      {
        const { proc, line } = await expectConnectFailed(h, server, expiringToken, 'client-expired', spare);
        assert.match(
          String(line.reason),
          /401.*expired|expired.*401/i,
          'expired: reason of "connect failed"',
        );
        t.diagnostic(`expired: connect failed: ${line.reason} (retry in ${line.retry_ms} ms)`);
        // It keeps retrying with backoff and stays refused.
        const second = await proc.waitForLog(
          (l) => l.msg === 'connect failed' && l !== line,
          15_000,
          0,
          'a second "connect failed"',
        );
        assert.match(String(second.reason), /expired/i);
        await proc.stop();
      }
      await assertGoodWorks('after the expired client');

      // Ports: one client, three proxies: granted+allowed works, outside the grant and outside allow_ports refused.
      const echo2 = await startEchoServer();
      h.onCleanup(() => echo2.close());
      const ports = await startClient(
        h,
        {
          server: server.url,
          token: grantToken,
          proxies: [
            { name: 'allowed', local: `127.0.0.1:${echo2.port}`, remotePort: grantedPort },
            { name: 'not-granted', local: `127.0.0.1:${echo2.port}`, remotePort: notGrantedPort },
            { name: 'not-allowed', local: `127.0.0.1:${echo2.port}`, remotePort: notAllowedPort },
          ],
        },
        { name: 'client-ports', waitFor: 'none' },
      );
      const notGranted = await ports.proc.waitForMsg('proxy refused', 15_000, {
        fields: { proxy: 'not-granted' },
      });
      assert.match(String(notGranted.reason), /grant/i, 'outside the grant: reason');
      assert.match(
        String(notGranted.reason),
        new RegExp(String(notGrantedPort)),
        'outside the grant: the reason names the port',
      );
      const notAllowed = await ports.proc.waitForMsg('proxy refused', 15_000, {
        fields: { proxy: 'not-allowed' },
      });
      assert.match(String(notAllowed.reason), /allow/i, 'outside allow_ports: reason');
      assert.match(
        String(notAllowed.reason),
        new RegExp(String(notAllowedPort)),
        'outside allow_ports: the reason names the port',
      );
      t.diagnostic(`outside the grant: proxy refused: ${notGranted.reason}`);
      t.diagnostic(`outside allow_ports: proxy refused: ${notAllowed.reason}`);
      const allowed = await ports.proc.waitForMsg('proxy registered', 15_000, {
        fields: { proxy: 'allowed' },
      });
      const allowedPort = Number(
        String(allowed.remote_addr ?? `:${grantedPort}`)
          .split(':')
          .pop(),
      );
      const viaAllowed = await echoRoundTrip('127.0.0.1', allowedPort, 50_000, { timeoutMs: 5000 });
      assert.equal(viaAllowed.ok, true, `the client's other proxy still works: ${viaAllowed.error}`);
      const refusedListener = await echoRoundTrip('127.0.0.1', notGrantedPort, 10, { timeoutMs: 3000 });
      assert.equal(refusedListener.ok, false, 'nothing listens on the refused port');
      await assertGoodWorks('after the port refusals');

      // The server kept running, the valid client never lost its session, and no secret reached a log.
      assert.equal(server.proc.alive, true, 'server still running');
      assert.equal(
        good.proc.logsWithMsg('session established').length,
        1,
        'valid client kept its one session',
      );
      assert.deepEqual(pinger.failures, [], 'the long-lived connection never failed');
      const secrets = [goodToken, grantToken, revokedToken, expiringToken, foreignToken];
      for (const p of h.procs) {
        for (const s of secrets) assert.equal(p.outputContains(s), false, `${p.name} logged a token`);
        assert.equal(p.outputContains(secretOf(server)), false, `${p.name} logged the server secret`);
      }
      assert.ok(server.proc.logsWithMsg('auth failed').length >= 5, 'the server logged each auth failure');
    }),
);

function secretOf(server: RunningServer): string {
  return readFileSync(server.config.secretFile, 'utf8').trim();
}

test(
  'refused upgrades (wrong path, bad token, unknown host) let go of their sockets though the peer never closes',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const server = await startRoutedServer(h);
      const pid = server.proc.pid!;
      const openFds = () => readdirSync(`/proc/${pid}/fd`).length;
      const baseline = openFds();
      const controlPort = portOf(new URL(server.url).host);
      const attempts: [port: number, request: string, status: RegExp][] = [];
      for (let i = 0; i < 10; i++) {
        attempts.push([controlPort, rawUpgradeRequest('/elsewhere', 'x'), /^HTTP\/1\.1 404 /]);
        attempts.push([
          controlPort,
          rawUpgradeRequest('/_porthole', 'x', 'Authorization: Bearer a.b.c\r\n'),
          /^HTTP\/1\.1 401 /,
        ]);
        attempts.push([server.httpPort!, rawUpgradeRequest('/', 'nobody.test'), /^HTTP\/1\.1 404 /]);
      }
      const peers = await Promise.all(
        attempts.map(
          ([port, request, status]) =>
            new Promise<{ socket: net.Socket; ended: Promise<void> }>((resolve, reject) => {
              // Half-open: the peer's side stays open after the server's FIN, as a hostile peer's would.
              const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true }, () =>
                socket.write(request),
              );
              let text = '';
              const ended = new Promise<void>((done) => socket.once('end', done));
              socket.on('data', (d: Buffer) => {
                text += d.toString('latin1');
                if (/\r\n\r\n/.test(text)) {
                  assert.match(text, status);
                  resolve({ socket, ended });
                }
              });
              socket.on('error', reject);
            }),
        ),
      );
      h.onCleanup(() => {
        for (const { socket } of peers) socket.destroy();
      });
      // The peers keep their side open and never close: the server must close its own all the same.
      await Promise.all(peers.map((p) => p.ended));
      await waitFor(`the server back to its ${baseline} descriptors`, () => openFds() <= baseline + 2, 8000);
    }),
);

test(
  'auth failures from many sources at once are logged up to a budget, the rest summed up in one line',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const server = await startRoutedServer(h);
      // 40 sources (127.0.0.0/8 is all loopback), one failure each: under every source's own limit.
      for (let i = 0; i < 40; i++) {
        const r = await upgradeStatus(server.url, { Authorization: 'Bearer a.b.c' }, `127.0.1.${i + 1}`);
        assert.equal(r.status, 401);
      }
      const summary = await server.proc.waitForMsg('auth failures not logged one by one', 15_000);
      const lines = server.proc.logsWithMsg('auth failed');
      assert.equal(lines.length, 20, 'twenty lines, one per source, then the budget is spent');
      assert.equal(new Set(lines.map((l) => l.remote_addr)).size, 20);
      // The first summary comes at once, the rest of the burst at the end of the interval.
      assert.ok(Number(summary.unlogged) >= 1);
      const totals = await summedUp(server, 20);
      assert.deepEqual(totals, { unlogged: 20, over_line_budget: 20, over_failure_limit: 0 });
    }),
);

test(
  'one source past its failure_limit once the line budget is spent: every unlogged attempt counted, and the summary names it',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const server = await startRoutedServer(h);
      // failure_limit is 20 by default, as many as the lines of 10 s: 20 lines, then two 429s without one.
      const statuses: number[] = [];
      for (let i = 0; i < 22; i++)
        statuses.push((await upgradeStatus(server.url, { Authorization: 'Bearer a.b.c' })).status);
      assert.deepEqual(statuses, [...new Array<number>(20).fill(401), 429, 429]);
      assert.equal((await server.proc.settledLogsWithMsg('auth failed')).length, 20);
      // The first 429, whose line would say the source is over its limit, is past the budget; the second
      // is a source over its limit, never logged one by one.
      const totals = await summedUp(server, 2);
      assert.deepEqual(totals, { unlogged: 2, over_line_budget: 1, over_failure_limit: 1 });
      for (const line of server.proc.logsWithMsg('auth failures not logged one by one')) {
        assert.equal(line.sources, 1, JSON.stringify(line));
        assert.equal(line.source, '127.0.0.1');
      }
    }),
);

/** The summary lines' counts added up, once `unlogged` reaches `expected` (a burst's tail comes 10 s later). */
async function summedUp(server: RunningServer, expected: number): Promise<Record<string, number>> {
  const totals = () => {
    const sum = { unlogged: 0, over_line_budget: 0, over_failure_limit: 0 };
    for (const line of server.proc.logsWithMsg('auth failures not logged one by one'))
      for (const key of Object.keys(sum) as (keyof typeof sum)[]) sum[key] += Number(line[key]);
    return sum;
  };
  await waitFor(`${expected} unlogged failures summed up`, () => totals().unlogged >= expected, 15_000);
  await server.proc.settledLogsWithMsg('auth failures not logged one by one');
  return totals();
}

test(
  'exit_on_auth_failure exits 4 on a refused token; two clients on one token do not trade the tunnel at once',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [port] = await freePorts(1);
      const server = await startServer(h, await writeServerConfig(h, { allowPorts: [String(port)] }));
      const foreign = await writeServerConfig(h, { allowPorts: [String(port)] });
      const refused = h.spawn('client-refused', clientBin, [
        '--config',
        await writeClientConfig(h, {
          server: server.url,
          token: await issueToken(foreign, { name: 'foreign' }),
          proxies: [{ name: 'p', local: '127.0.0.1:9', remotePort: port! }],
          exitOnAuthFailure: true,
        }),
      ]);
      assert.equal((await refused.exited).code, 4, refused.tail(5));

      const token = await issueToken(server.config, { name: 'shared' });
      const spec = {
        server: server.url,
        token,
        proxies: [{ name: 'p', local: '127.0.0.1:9', remotePort: port! }],
        reconnectInitial: '100ms',
        reconnectMax: '6s',
      };
      const first = await startClient(h, spec, { name: 'first' });
      await startClient(h, spec, { name: 'second' });
      const notice = await first.proc.waitForMsg('server notice', 10_000, { fields: { code: 'taken_over' } });
      assert.match(String(notice.reason), /are two clients using one token\?/);
      const lost = await first.proc.waitForMsg('session lost', 10_000);
      assert.equal(lost.retry_ms, 6000, 'the first waits reconnect_max before taking the session back');
      t.diagnostic(`taken over: ${notice.reason}; retry in ${lost.retry_ms} ms`);
    }),
);

test(
  'on a dual-stack listener an IPv4 peer is logged as IPv4 in every line: client connected, auth failed, connection closed',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const [port] = await freePorts(1);
      // An IPv6 socket bound to an IPv4-mapped address takes IPv4 peers as "::ffff:127.0.0.1", as one
      // bound to "::" does, on loopback only.
      const server = await startServer(h, {
        listen: '[::ffff:127.0.0.1]:0',
        proxyBind: '::ffff:127.0.0.1',
        allowPorts: [String(port)],
      });
      const url = `ws://127.0.0.1:${server.port}/_porthole`;
      const client = await startClient(h, {
        server: url,
        token: await issueToken(server.config, { name: 'dual' }),
        proxies: [{ name: 'echo', local: `127.0.0.1:${echo.port}`, remotePort: port! }],
      });
      const r = await echoRoundTrip('127.0.0.1', client.ports.get('echo')!, 1000, { timeoutMs: 5000 });
      assert.ok(r.ok, r.error);
      assert.equal((await upgradeStatus(url, { Authorization: 'Bearer a.b.c' })).status, 401);
      const hosts: Record<string, string> = {};
      for (const msg of ['client connected', 'connection closed', 'auth failed']) {
        const line = await server.proc.waitForMsg(msg, 10_000);
        hosts[msg] = String(line.remote_addr).replace(/:\d+$/, '');
      }
      assert.deepEqual(hosts, {
        'client connected': '127.0.0.1',
        'connection closed': '127.0.0.1',
        'auth failed': '127.0.0.1',
      });
      t.diagnostic('every line names the IPv4 peer 127.0.0.1');
    }),
);
