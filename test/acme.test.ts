// [https.acme] against pebble (Let's Encrypt's ACME test server) with real peers: the server orders a
// certificate for app.test over http-01 on its own [http] port, serves it on [https] to curl and openssl,
// loads it from storage after a restart instead of ordering again, renews it before it ends without
// dropping connections, and keeps serving the others while an order fails and is retried.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { test } from 'node:test';
import tls from 'node:tls';
import { curl } from './lib/curl.js';
import { startHttpBackend } from './lib/http-backend.js';
import { startPebble } from './lib/pebble.js';
import { ADMIN_TOKEN, adminApi, adminText } from './lib/private.js';
import {
  eventually,
  freePort,
  type Harness,
  run,
  serverBin,
  withHarness,
  withTimeout,
} from './lib/processes.js';
import {
  certificateFingerprint,
  issueRoutedToken,
  makeCa,
  makeCert,
  type RoutedClient,
  type RoutedServer,
  servedCertificate,
  startRoutedClient,
  startRoutedServer,
  tomlLines,
} from './lib/routing.js';
import { startServer } from './lib/tunnel.js';

/** A routed server whose [http] port is `httpPort` (pebble's), with [https] and these [https.acme] keys. */
function startAcmeServer(
  h: Harness,
  httpPort: number,
  acme: { domains: string[]; directory: string; storage: string; ca_file: string },
  more: { httpKeys?: Record<string, string>; admin?: boolean } = {},
): Promise<RoutedServer> {
  return startRoutedServer(h, {
    http: { listen: `127.0.0.1:${httpPort}`, ...more.httpKeys },
    https: { certs: [] },
    tables: ['[https.acme]', tomlLines(acme)],
    ...(more.admin ? { admin: { token: ADMIN_TOKEN } } : {}),
  });
}

/** An http proxy for app.test to a test backend; resolves once it is registered. */
async function serveApp(h: Harness, server: RoutedServer): Promise<RoutedClient> {
  const backend = await startHttpBackend('app');
  h.onCleanup(() => backend.close());
  const token = await issueRoutedToken(server, { name: 'edge', hosts: ['app.test'] });
  return startRoutedClient(h, {
    server: server.url,
    token,
    proxies: [{ name: 'app', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.test'] }],
  });
}

/** curl over https to app.test on the server's TLS port, trusting only pebble's root. */
function curlApp(server: RoutedServer, rootFile: string) {
  const port = server.httpsPort!;
  return curl(
    ['--cacert', rootFile, '--resolve', `app.test:${port}:127.0.0.1`],
    `https://app.test:${port}/hello`,
  );
}

test(
  'a certificate from pebble for app.test is served on [https], and loaded from storage after a restart',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const httpPort = await freePort();
      const pebble = await startPebble(h, { httpPort });
      const storage = h.path('acme');
      const acme = { domains: ['app.test'], directory: pebble.directory, storage, ca_file: pebble.caFile };
      const server = await startAcmeServer(h, httpPort, acme);
      const issued = await server.proc.waitForMsg('acme certificate issued', 60_000, {
        fields: { domain: 'app.test' },
      });
      assert.ok(Date.parse(String(issued.expires_at)) > Date.now(), JSON.stringify(issued));
      const client = await serveApp(h, server);
      assert.ok(
        ((client.registered.get('app')?.urls ?? []) as string[]).includes(
          `https://app.test:${server.httpsPort}/`,
        ),
        JSON.stringify(client.registered.get('app')),
      );

      const reached = await curlApp(server, pebble.rootFile);
      assert.equal(reached.code, 0, reached.stderr);
      assert.equal(reached.status, 200, reached.body);
      assert.match(reached.body, /app/);
      const served = await servedCertificate(server.httpsPort!, 'app.test');
      const san = await run('openssl', ['x509', '-noout', '-ext', 'subjectAltName'], { input: served });
      assert.match(san.stdout, /DNS:app\.test\b/);

      // What is kept: 0700 directory, 0600 files; the chain on disk is the one served.
      assert.equal((await stat(storage)).mode & 0o777, 0o700);
      for (const file of ['account.key', 'app.test.crt', 'app.test.key'])
        assert.equal((await stat(`${storage}/${file}`)).mode & 0o777, 0o600, file);
      const fingerprint = await certificateFingerprint({ pem: served });
      assert.equal(await certificateFingerprint({ file: `${storage}/app.test.crt` }), fingerprint);

      // A restart with the same storage: loaded, served at once, nothing ordered.
      await server.proc.stop(5000);
      const again = await startServer(h, server.config, 'server again');
      const loaded = await again.proc.waitForMsg('acme certificate loaded', 15_000, {
        fields: { domain: 'app.test' },
      });
      assert.equal(loaded.expires_at, issued.expires_at);
      const httpsLine = again.proc.logsWithMsg('https listening')[0]!;
      const httpsPort = Number(String(httpsLine.addr).split(':').pop());
      assert.equal(
        await certificateFingerprint({ pem: await servedCertificate(httpsPort, 'app.test') }),
        fingerprint,
      );
      assert.deepEqual(await again.proc.settledLogsWithMsg('acme certificate issued'), []);
      assert.deepEqual(again.proc.logsWithMsg('acme order failed'), []);
    }),
);

test(
  "a failing order is logged with the CA's reason and retried later, while the other names are served",
  { timeout: 180_000 },
  (t) =>
    withHarness(t, async (h) => {
      const httpPort = await freePort();
      const pebble = await startPebble(h, { httpPort });
      const storage = h.path('acme');
      // A stored chain that is garbage: said, and ordered again, not fatal.
      await mkdir(storage, { mode: 0o700 });
      await writeFile(`${storage}/app.test.crt`, 'not a certificate\n');
      await writeFile(`${storage}/app.test.key`, 'not a key\n');
      const acme = {
        // dnsmasq answers under "test" only: pebble cannot resolve this one, and fails its challenge.
        domains: ['nowhere.invalid', 'app.test'],
        directory: pebble.directory,
        storage,
        ca_file: pebble.caFile,
      };
      const server = await startAcmeServer(h, httpPort, acme, { admin: true });
      const unusable = await server.proc.waitForMsg(
        'acme stored certificate unusable: ordering a new one',
        15_000,
      );
      assert.equal(unusable.domain, 'app.test');
      const failed = await server.proc.waitForMsg('acme order failed', 60_000, {
        fields: { domain: 'nowhere.invalid' },
      });
      assert.equal(failed.level, 'warn');
      assert.match(String(failed.problem_type), /^urn:ietf:params:acme:error:/, JSON.stringify(failed));
      assert.match(String(failed.reason), /nowhere\.invalid/, JSON.stringify(failed));
      assert.equal(failed.failures, 1);
      assert.equal(failed.retry_in_ms, 60_000);
      await server.proc.waitForMsg('acme certificate issued', 60_000, { fields: { domain: 'app.test' } });
      await serveApp(h, server);
      const reached = await curlApp(server, pebble.rootFile);
      assert.equal(reached.status, 200, reached.stderr);
      // Tried again a minute later, and then after twice as long.
      const second = await server.proc.waitForMsg('acme order failed', 90_000, {
        fields: { domain: 'nowhere.invalid', failures: 2 },
      });
      assert.equal(second.retry_in_ms, 120_000);
      // The admin API and /metrics show each name's certificate end and its failed orders in a row.
      const listed = (await adminApi(server, '/api/certificates')).acme as Record<string, unknown>[];
      assert.deepEqual(
        listed.map((c) => [c.domain, c.expires_at !== null, c.failures]),
        [
          ['nowhere.invalid', false, 2],
          ['app.test', true, 0],
        ],
      );
      const metrics = await adminText(server, '/metrics');
      const expiry = /^porthole_acme_certificate_expiry_timestamp_seconds\{domain="app\.test"\} (\d+)$/m.exec(
        metrics,
      );
      assert.ok(expiry, metrics);
      const appEntry = listed.find((c) => c.domain === 'app.test')!;
      assert.equal(Number(expiry[1]) * 1000, Date.parse(String(appEntry.expires_at)));
      assert.doesNotMatch(metrics, /expiry_timestamp_seconds\{domain="nowhere\.invalid"\}/);
      assert.match(metrics, /^porthole_acme_order_failures\{domain="nowhere\.invalid"\} 2$/m);
      const gap = Date.parse(String(second.time)) - Date.parse(String(failed.time));
      assert.ok(gap >= 59_000, `retried after ${gap} ms`);
      // No key authorization or account key reaches the log.
      const log = server.proc.tail(10_000);
      assert.doesNotMatch(log, /PRIVATE KEY|keyAuthorization|"d":/);
    }),
);

test(
  'a certificate with a third of its lifetime left is renewed in place: new handshakes get the new one, open connections stay',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const httpPort = await freePort();
      // 30 s certificates: due for renewal 20 s after they are issued.
      const pebble = await startPebble(h, { httpPort, validitySeconds: 30 });
      const acme = {
        domains: ['app.test'],
        directory: pebble.directory,
        storage: h.path('acme'),
        ca_file: pebble.caFile,
      };
      // The connection opened before the renewal is kept alive across it (the defaults would close it idle).
      const server = await startAcmeServer(h, httpPort, acme, {
        httpKeys: { keep_alive_timeout: '60s', idle_timeout: '60s' },
      });
      const first = await server.proc.waitForMsg('acme certificate issued', 60_000, {
        fields: { domain: 'app.test' },
      });
      await serveApp(h, server);
      const port = server.httpsPort!;
      const firstPrint = await certificateFingerprint({ pem: await servedCertificate(port, 'app.test') });
      const root = await readFile(pebble.rootFile);
      const open = tls.connect({ host: '127.0.0.1', port, servername: 'app.test', ca: root });
      h.onCleanup(() => open.destroy());
      await once(open, 'secureConnect');
      let answer = '';
      open.setEncoding('utf8');
      open.on('data', (d: string) => {
        answer += d;
      });
      open.write('GET /before HTTP/1.1\r\nHost: app.test\r\n\r\n');
      await eventually(
        'the first answer on the kept-alive connection',
        async () => /^HTTP\/1\.1 200/.test(answer),
        10_000,
      );
      const renewed = await server.proc.waitForMsg('acme certificate issued', 40_000, {
        from: server.proc.logs.indexOf(first) + 1,
        fields: { domain: 'app.test' },
      });
      assert.ok(Date.parse(String(renewed.expires_at)) > Date.parse(String(first.expires_at)));
      assert.ok(
        Date.parse(String(renewed.time)) < Date.parse(String(first.expires_at)),
        'renewed before the end',
      );
      const secondPrint = await certificateFingerprint({ pem: await servedCertificate(port, 'app.test') });
      assert.notEqual(secondPrint, firstPrint);
      const reached = await curlApp(server, pebble.rootFile);
      assert.equal(reached.status, 200, reached.stderr);
      // The connection made with the first certificate still carries requests.
      answer = '';
      open.write('GET /after HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n');
      await withTimeout(once(open, 'end'), 10_000, () => `no answer on the open connection: ${answer}`);
      assert.match(answer, /^HTTP\/1\.1 200/);
    }),
);

test(
  'explicit [[https.certs]] win over [https.acme]; a reload orders names added and stops serving names removed',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const httpPort = await freePort();
      const pebble = await startPebble(h, { httpPort });
      const ca = await makeCa(h);
      const vault = await makeCert(h, ca, 'vault.test', ['vault.test']);
      const server = await startRoutedServer(h, {
        http: { listen: `127.0.0.1:${httpPort}` },
        https: { certs: [vault] },
        tables: [
          '[https.acme]',
          tomlLines({
            domains: ['app.test', 'vault.test'],
            directory: pebble.directory,
            storage: h.path('acme'),
            ca_file: pebble.caFile,
          }),
        ],
      });
      const explicit = await server.proc.waitForMsg(
        'acme name has a [[https.certs]] certificate: that one is served, none ordered',
        15_000,
      );
      assert.equal(explicit.domain, 'vault.test');
      await server.proc.waitForMsg('acme certificate issued', 60_000, { fields: { domain: 'app.test' } });
      const port = server.httpsPort!;
      assert.equal(
        await certificateFingerprint({ pem: await servedCertificate(port, 'vault.test') }),
        await certificateFingerprint({ file: vault.cert }),
      );
      // A tls proxy cannot take a name the server terminates with an ACME certificate.
      const token = await issueRoutedToken(server, { name: 'edge', hosts: ['app.test'] });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [{ name: 'grab', type: 'tls', local: '127.0.0.1:9', hosts: ['app.test'] }],
        waitFor: [],
      });
      await client.proc
        .waitForMsg('proxy refused', 15_000, { fields: { proxy: 'grab' } })
        .then((line) =>
          assert.match(
            String(line.reason),
            /hostname app\.test is served by the server itself \(https\.acme\)/,
          ),
        );

      const text = await readFile(server.config.configPath, 'utf8');
      await writeFile(
        server.config.configPath,
        text.replace('domains = ["app.test", "vault.test"]', 'domains = ["other.test"]'),
      );
      const from = server.proc.mark();
      server.proc.kill('SIGHUP');
      await server.proc.waitForMsg('acme certificate issued', 60_000, {
        from,
        fields: { domain: 'other.test' },
      });
      await server.proc.waitForMsg('acme name removed: its certificate is no longer served', 5_000, {
        from,
        fields: { domain: 'app.test' },
      });
      const otherSan = await run('openssl', ['x509', '-noout', '-ext', 'subjectAltName'], {
        input: await servedCertificate(port, 'other.test'),
      });
      assert.match(otherSan.stdout, /DNS:other\.test\b/);
      await assert.rejects(servedCertificate(port, 'app.test'), /got no certificate/);
      // The explicit certificate is served as before.
      assert.equal(
        await certificateFingerprint({ pem: await servedCertificate(port, 'vault.test') }),
        await certificateFingerprint({ file: vault.cert }),
      );
    }),
);

test(
  'SIGTERM during an order abandons it cleanly: exit 0, no failure logged, no unhandled rejection',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      // A CA that accepts connections and never answers: the order waits on its directory.
      const silent = net.createServer(() => {});
      const held: net.Socket[] = [];
      silent.on('connection', (socket) => held.push(socket));
      silent.listen(0, '127.0.0.1');
      await once(silent, 'listening');
      h.onCleanup(() => {
        for (const socket of held) socket.destroy();
        silent.close();
      });
      const caPort = (silent.address() as net.AddressInfo).port;
      const server = await startRoutedServer(h, {
        https: { certs: [] },
        tables: [
          '[https.acme]',
          tomlLines({
            domains: ['app.test'],
            directory: `https://127.0.0.1:${caPort}/dir`,
            storage: h.path('acme'),
          }),
        ],
      });
      await eventually('the order reached the CA', async () => held.length > 0, 10_000);
      server.proc.kill('SIGTERM');
      const exit = await withTimeout(server.proc.exited, 15_000, () => 'the server did not exit');
      assert.equal(exit.code, 0, server.proc.tail(50));
      assert.deepEqual(server.proc.logsWithMsg('acme order failed'), []);
      assert.equal(server.proc.logsWithMsg('server stopped').length, 1);
      assert.doesNotMatch(server.proc.tail(200), /Unhandled|unhandled|ERR_UNHANDLED/);
    }),
);

test(
  'check (and start) refuse [https.acme] mistakes, naming the key and the entry',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const secret = await h.file('secret', `${'s'.repeat(40)}\n`);
      const base = `listen = "127.0.0.1:0"\n[auth]\nsecret_file = "${secret}"\n`;
      const http = '[http]\nlisten = "127.0.0.1:0"\n';
      const https = '[https]\nlisten = "127.0.0.1:0"\n';
      const cases: [name: string, text: string, problem: RegExp][] = [
        [
          'no-http',
          `${base}${https}[https.acme]\ndomains = ["app.example.com"]\n`,
          /no-http\.toml: https\.acme: needs \[http\] listen: the CA checks each name over plain HTTP \(http-01\)/,
        ],
        [
          'no-https',
          `${base}${http}[https.acme]\ndomains = ["app.example.com"]\n`,
          /no-https\.toml: https\.listen: required/,
        ],
        [
          'wildcard',
          `${base}${http}${https}[https.acme]\ndomains = ["app.example.com", "*.example.com"]\n`,
          /wildcard\.toml: https\.acme\.domains\[1\]: "\*\.example\.com" is a wildcard, which http-01 cannot prove: use \[\[https\.certs\]\] for it/,
        ],
        [
          'address',
          `${base}${http}${https}[https.acme]\ndomains = ["192.0.2.7"]\n`,
          /address\.toml: https\.acme\.domains\[0\]: "192\.0\.2\.7" is an IP address, which http-01 cannot prove: use \[\[https\.certs\]\]/,
        ],
        [
          'twice',
          `${base}${http}${https}[https.acme]\ndomains = ["app.example.com", "App.Example.com."]\n`,
          /twice\.toml: https\.acme\.domains\[1\]: "app\.example\.com" is listed twice/,
        ],
        [
          'bad-name',
          `${base}${http}${https}[https.acme]\ndomains = ["app_example com"]\n`,
          /bad-name\.toml: https\.acme\.domains\[0\]: /,
        ],
        [
          'plain-directory',
          `${base}${http}${https}[https.acme]\ndomains = ["app.example.com"]\ndirectory = "http://ca.example.com/dir"\n`,
          /plain-directory\.toml: https\.acme\.directory: must be an https:\/\/ URL/,
        ],
        [
          'typo',
          `${base}${http}${https}[https.acme]\ndomains = ["app.example.com"]\nemial = "me@example.com"\n`,
          /typo\.toml: https\.acme\.emial: unknown key \(did you mean "email"\?\)/,
        ],
      ];
      for (const [name, text, problem] of cases) {
        const file = await h.file(`${name}.toml`, text);
        for (const command of [['check'], []]) {
          const r = await run(serverBin, [...command, '--config', file], { timeoutMs: 20_000 });
          assert.equal(r.code, 2, `${name} ${command}: exit ${r.code}\n${r.stdout}${r.stderr}`);
          assert.match(r.stderr, problem, name);
        }
      }
      const good = await h.file(
        'good.toml',
        `${base}${http}${https}[https.acme]\ndomains = ["app.example.com", "vault.example.com"]\nemail = "me@example.com"\n`,
      );
      const ok = await run(serverBin, ['check', '--config', good], { timeoutMs: 20_000 });
      assert.equal(ok.code, 0, ok.stderr);
    }),
);
