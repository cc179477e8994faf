// `terminate_tls`: the client ends the visitor's TLS with a certificate and key kept on the homelab box (frp's
// https2http and https2https plugins, stunnel in front of a plain service); the server routes the encrypted
// bytes by SNI and holds no key. Certificates made by `openssl req`, curl, openssl s_client and socat as
// visitors, a plain HTTP backend, `openssl s_server -www` behind local_tls, HAProxy reading the PROXY header.
import assert from 'node:assert/strict';
import { chmod, copyFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { curlFromSecondLoopback, PEER_REPORT, startReportingHaproxy } from './lib/haproxy.js';
import { startHttpBackend } from './lib/http-backend.js';
import {
  clientBin,
  freePort,
  freePorts,
  type Harness,
  run,
  withHarness,
  withTimeout,
} from './lib/processes.js';
import {
  type CertFiles,
  certificateFingerprint,
  issueRoutedToken,
  makeCa,
  makeCert,
  makeSelfSignedCert,
  type RoutedProxy,
  servedCertificate,
  startRoutedClient,
  startRoutedServer,
  tomlLines,
} from './lib/routing.js';
import { waitUntilAccepting } from './lib/services.js';

/** The fingerprint of the certificate a visitor of `name` on the TLS `port` is served, as openssl sees it. */
async function servedFingerprint(port: number, name: string): Promise<string> {
  return certificateFingerprint({ pem: await servedCertificate(port, name) });
}

/** A certificate file's fingerprint, to compare with servedFingerprint's. */
const fingerprintOfFile = (file: string) => certificateFingerprint({ file });

/** curl of https://`name`:`port`/ resolved to loopback, trusting only `ca`. */
function curlHttps(port: number, name: string, ca: CertFiles, path = '/') {
  return curl(
    ['--resolve', `${name}:${port}:127.0.0.1`, '--cacert', ca.cert],
    `https://${name}:${port}${path}`,
  );
}

/** A server with an https port whose own certificate (for edge.test) is not the one visitors must see. */
async function startServerWithOwnCert(h: Harness, ca: CertFiles) {
  const edge = await makeCert(h, ca, 'edge.test', ['edge.test']);
  const server = await startRoutedServer(h, { https: { certs: [edge] } });
  assert.ok(server.httpsPort, 'the server logged no "https listening" line');
  return { server, httpsPort: server.httpsPort, edge };
}

test(
  "https2http: a tls proxy whose client ends TLS serves its own certificate, not the server's, and passes plain HTTP to the service; a visitor refusing it is a debug line; the health check reaches the plain service",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const app = await makeCert(h, ca, 'app.test', ['app.test']);
      const { server, httpsPort, edge } = await startServerWithOwnCert(h, ca);
      const backend = await startHttpBackend('plain');
      t.after(() => backend.close());
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['app.test'] });
      const adminListen = `127.0.0.1:${await freePort()}`;
      const local = `127.0.0.1:${backend.port}`;
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        adminListen,
        logLevel: 'debug',
        proxies: [
          {
            name: 'app',
            type: 'tls',
            local,
            hosts: ['app.test'],
            terminate_tls: { cert_file: app.cert, key_file: app.key },
            health_check: { type: 'http', path: '/healthz', interval: '200ms', timeout: '2s', max_failed: 1 },
          },
        ],
      });

      const r = await curlHttps(httpsPort, 'app.test', ca, '/hello');
      assert.equal(r.status, 200, `${r.stderr} ${r.body}`);
      const seen = JSON.parse(r.body) as { url: string; headers: Record<string, string> };
      assert.equal(seen.url, '/hello');
      assert.equal(seen.headers.host, `app.test:${httpsPort}`);

      const served = await servedFingerprint(httpsPort, 'app.test');
      assert.equal(served, await fingerprintOfFile(app.cert));
      assert.notEqual(served, await fingerprintOfFile(edge.cert));

      const closed = await client.proc.waitForMsg('connection closed', 10_000, { fields: { proxy: 'app' } });
      assert.equal(closed.local, `tls ended here -> ${local}`);

      // curl without the CA refuses the certificate: the client says so at debug, and serves the next visitor.
      const from = client.proc.mark();
      const refused = await curl(
        ['--resolve', `app.test:${httpsPort}:127.0.0.1`],
        `https://app.test:${httpsPort}/`,
      );
      assert.notEqual(refused.code, 0);
      const failed = await client.proc.waitForMsg('visitor tls handshake failed', 10_000, {
        from,
        fields: { proxy: 'app' },
      });
      assert.equal(failed.level, 'debug');
      assert.match(String(failed.remote_addr), /^127\.0\.0\.1:\d+$/);
      assert.equal(failed.reason, 'visitor TLS: tlsv1 alert unknown ca');
      assert.equal((await curlHttps(httpsPort, 'app.test', ca)).status, 200);

      const status = await run(clientBin, ['status', '--admin', adminListen, '--json'], {
        timeoutMs: 15_000,
      });
      const proxy = (
        JSON.parse(status.stdout) as { proxies: { name: string; local: string; health?: string }[] }
      ).proxies.find((p) => p.name === 'app');
      assert.equal(proxy?.local, `tls ended here -> ${local}`);
      assert.equal(proxy?.health, 'healthy');
      assert.ok(
        backend.requests.some((req) => req.url === '/healthz'),
        'the health check never reached the service',
      );
    }),
);

test(
  'a tcp proxy with terminate_tls is a TLS port in front of a plain TCP service (stunnel), half-close and all',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const pair = await makeCert(h, ca, 'lines.test', ['lines.test']);
      const servicePort = await freePort();
      h.spawn('socat', 'socat', [
        `TCP-LISTEN:${servicePort},bind=127.0.0.1,reuseaddr,fork`,
        'SYSTEM:read line; echo "plain:$line"',
      ]);
      await waitUntilAccepting({ host: '127.0.0.1', port: servicePort }, 'socat');
      const remotePort = await freePort();
      const server = await startRoutedServer(h, { http: false });
      const token = await issueRoutedToken(server, { name: 'homelab', ports: String(remotePort) });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        logLevel: 'debug',
        proxies: [
          {
            name: 'lines',
            type: 'tcp',
            local: `127.0.0.1:${servicePort}`,
            remote_port: remotePort,
            terminate_tls: { cert_file: pair.cert, key_file: pair.key, handshake_timeout: '1s' },
          },
        ],
      });
      const r = await run(
        'openssl',
        [
          's_client',
          '-connect',
          `127.0.0.1:${remotePort}`,
          '-servername',
          'lines.test',
          '-CAfile',
          ca.cert,
          '-verify_return_error',
          '-quiet',
        ],
        { timeoutMs: 15_000, input: 'hello porthole\n' },
      );
      assert.equal(r.stdout, 'plain:hello porthole\n', r.stderr);
      assert.match(r.stderr, /verify return:1/);

      // A visitor that never says hello is dropped at handshake_timeout, not held.
      const from = client.proc.mark();
      const silent = connect({ host: '127.0.0.1', port: remotePort });
      silent.on('error', () => {});
      // Closed or reset: dropped either way (once() would reject on the reset's error).
      const closed = new Promise((resolve) => silent.once('close', resolve));
      await withTimeout(closed, 15_000, () => 'the silent visitor was never dropped');
      const dropped = await client.proc.waitForMsg('visitor tls handshake failed', 5_000, {
        from,
        fields: { proxy: 'lines' },
      });
      assert.equal(dropped.reason, 'visitor TLS: no handshake within 1s');
    }),
);

test(
  'https2https: terminate_tls with local_tls speaks TLS again to a TLS-only service (openssl s_server -www)',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const app = await makeCert(h, ca, 'pve.test', ['pve.test']);
      const pve = await makeSelfSignedCert(h, 'pve.lan');
      const servicePort = await freePort();
      h.spawn('s_server', 'openssl', [
        's_server',
        '-www',
        '-accept',
        `127.0.0.1:${servicePort}`,
        '-cert',
        pve.cert,
        '-key',
        pve.key,
      ]);
      await waitUntilAccepting({ host: '127.0.0.1', port: servicePort }, 'openssl s_server');
      const { server, httpsPort } = await startServerWithOwnCert(h, ca);
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['pve.test'] });
      const adminListen = `127.0.0.1:${await freePort()}`;
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        adminListen,
        proxies: [
          {
            name: 'pve',
            type: 'tls',
            local: `127.0.0.1:${servicePort}`,
            hosts: ['pve.test'],
            terminate_tls: { cert_file: app.cert, key_file: app.key },
            local_tls: { server_name: 'pve.lan', ca_file: pve.cert },
          },
        ],
      });
      const r = await curlHttps(httpsPort, 'pve.test', ca);
      assert.equal(r.status, 200, `${r.stderr} ${r.body}`);
      assert.match(r.body, /s_server -www/);
      const status = await run(clientBin, ['status', '--config', client.configPath], { timeoutMs: 15_000 });
      assert.match(
        status.stdout,
        new RegExp(`pve +tls +tls ended here -> 127\\.0\\.0\\.1:${servicePort} \\(tls\\)`),
      );
    }),
);

test(
  'SIGHUP re-reads the certificate and key: a renewed pair is served to the next visitor, a broken one is refused and the running one kept',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const first = await makeCert(h, ca, 'app.test', ['app.test']);
      const renewed = await makeCert(h, ca, 'app.test', ['app.test']);
      const other = await makeCert(h, ca, 'other.test', ['other.test']);
      // Where certbot's live/ links would be: the files the config names, replaced under it.
      const live = { cert: h.path('live-fullchain.pem'), key: h.path('live-privkey.pem') };
      await copyFile(first.cert, live.cert);
      await copyFile(first.key, live.key);
      const { server, httpsPort } = await startServerWithOwnCert(h, ca);
      const backend = await startHttpBackend('plain');
      t.after(() => backend.close());
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['app.test'] });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          {
            name: 'app',
            type: 'tls',
            local: `127.0.0.1:${backend.port}`,
            hosts: ['app.test'],
            terminate_tls: { cert_file: live.cert, key_file: live.key },
          },
        ],
      });
      assert.equal(await servedFingerprint(httpsPort, 'app.test'), await fingerprintOfFile(first.cert));

      await copyFile(renewed.cert, live.cert);
      await copyFile(renewed.key, live.key);
      let from = client.proc.mark();
      client.proc.kill('SIGHUP');
      const reloaded = await client.proc.waitForMsg('config reloaded', 15_000, { from });
      assert.deepEqual(reloaded.local_changed, ['app']);
      assert.equal(await servedFingerprint(httpsPort, 'app.test'), await fingerprintOfFile(renewed.cert));
      assert.equal((await curlHttps(httpsPort, 'app.test', ca)).status, 200);

      // Half a renewal: another certificate beside the running key.
      await copyFile(other.cert, live.cert);
      from = client.proc.mark();
      client.proc.kill('SIGHUP');
      const failed = await client.proc.waitForMsg(
        'reload failed: keeping the running configuration',
        15_000,
        {
          from,
        },
      );
      assert.match(
        String(failed.reason),
        /proxies\[0\] \("app"\)\.terminate_tls\.key_file: the key in .*live-privkey\.pem does not match the certificate in .*live-fullchain\.pem/,
      );
      assert.equal(await servedFingerprint(httpsPort, 'app.test'), await fingerprintOfFile(renewed.cert));
    }),
);

test(
  'a key that does not match the certificate is refused at start and by check, naming the key; check warns of hosts the certificate does not name and of a key file others can read',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const app = await makeCert(h, ca, 'app.test', ['app.test']);
      const other = await makeCert(h, ca, 'other.test', ['other.test']);
      const config = (proxy: RoutedProxy) =>
        [
          tomlLines({ server: 'ws://127.0.0.1:9/_porthole', token: 'x.y.z' }),
          '[[proxies]]',
          tomlLines(proxy),
          '',
        ].join('\n');
      const mismatched = await h.file(
        'mismatched.toml',
        config({
          name: 'app',
          type: 'tls',
          local: '127.0.0.1:8080',
          hosts: ['app.test'],
          terminate_tls: { cert_file: app.cert, key_file: other.key },
        }),
      );
      const expected = new RegExp(
        `mismatched\\.toml: proxies\\[0\\] \\("app"\\)\\.terminate_tls\\.key_file: the key in ${other.key.replaceAll('.', '\\.')} does not match the certificate in ${app.cert.replaceAll('.', '\\.')}`,
      );
      const started = await run(clientBin, ['--config', mismatched], { timeoutMs: 15_000 });
      assert.equal(started.code, 2, started.stderr);
      assert.match(started.stderr, expected);
      const checked = await run(clientBin, ['check', '--config', mismatched], { timeoutMs: 15_000 });
      assert.equal(checked.code, 2, checked.stderr);
      assert.match(checked.stderr, expected);

      await chmod(other.key, 0o644);
      const uncovered = await h.file(
        'uncovered.toml',
        config({
          name: 'app',
          type: 'tls',
          local: '127.0.0.1:8080',
          hosts: ['app.test', 'www.app.test'],
          terminate_tls: { cert_file: other.cert, key_file: other.key },
        }),
      );
      const warned = await run(clientBin, ['check', '--config', uncovered], { timeoutMs: 15_000 });
      const said = `${warned.stdout}${warned.stderr}`;
      assert.equal(warned.code, 0, said);
      assert.match(
        said,
        /proxies\[0\] \("app"\)\.terminate_tls\.cert_file: the certificate in .* names other\.test, not app\.test, www\.app\.test/,
      );
      assert.match(said, /proxies\[0\] \("app"\)\.terminate_tls\.key_file: .* is open to other users/);
    }),
);

test(
  "proxy_protocol with terminate_tls: the PROXY header reaches HAProxy before the plaintext, with the visitor's address",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const pair = await makeCert(h, ca, 'pp.test', ['pp.test']);
      const [haproxyPort] = (await freePorts(1)) as [number];
      await startReportingHaproxy(h, [
        {
          name: 'plain',
          bind: `127.0.0.1:${haproxyPort} accept-proxy`,
          answer: `plain ${PEER_REPORT}`,
          at: { port: haproxyPort },
        },
      ]);
      const { server, httpsPort } = await startServerWithOwnCert(h, ca);
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['pp.test'] });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          {
            name: 'pp',
            type: 'tls',
            local: `127.0.0.1:${haproxyPort}`,
            hosts: ['pp.test'],
            proxy_protocol: 'v2',
            terminate_tls: { cert_file: pair.cert, key_file: pair.key },
          },
        ],
      });
      const r = await curlFromSecondLoopback(
        ['--resolve', `pp.test:${httpsPort}:127.0.0.1`, '--cacert', ca.cert],
        `https://pp.test:${httpsPort}/`,
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.body, `plain src=127.0.0.2 sport=${r.localPort} dst=127.0.0.1 dport=${httpsPort}`);
    }),
);
