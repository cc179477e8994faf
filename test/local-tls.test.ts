// A local service that speaks only TLS (Proxmox on 8006, UniFi on 8443, a NAS), behind `local_tls`: the
// client makes the TLS connection, so an http proxy (visitors see the server's side), a tcp proxy and a
// tcpmux one can front it. Real `openssl s_server` services with certificates made by `openssl req -x509`, curl as the
// visitor, HAProxy (`accept-proxy ssl`) for the PROXY header that must precede the ClientHello.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { assertVisitorReported, PEER_REPORT, startReportingHaproxy } from './lib/haproxy.js';
import { clientBin, freePort, freePorts, run, sleep, withHarness } from './lib/processes.js';
import {
  certificateFingerprint,
  issueRoutedToken,
  makeCa,
  makeCert,
  makeSelfSignedCert,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  startRoutedClient,
  startRoutedServer,
  startSServer,
  type TomlValue,
} from './lib/routing.js';

/** A line sent on a plain connection to the public `port`, and the first line that comes back. */
function lineThrough(port: number, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let got = '';
    const timer = setTimeout(
      () => socket.destroy(new Error(`no line back within 10 s (got "${got}")`)),
      10_000,
    );
    socket.setEncoding('utf8');
    socket.on('connect', () => socket.write(`${line}\n`));
    socket.on('data', (chunk: string) => {
      got += chunk;
      if (!got.includes('\n')) return;
      clearTimeout(timer);
      socket.end();
      resolve(got.slice(0, got.indexOf('\n')));
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * A CONNECT to `name` on the tcpmux `port`; after a 200, `line` and the first line that comes back. What the
 * server answered, up to that line or the connection's end (a reset too: what came before it is the answer).
 */
function connectThrough(port: number, name: string, line: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    let got = '';
    let head = true;
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(got);
    };
    const timer = setTimeout(done, 15_000);
    socket.setEncoding('latin1');
    socket.on('connect', () => socket.write(`CONNECT ${name}:443 HTTP/1.1\r\nHost: ${name}:443\r\n\r\n`));
    socket.on('data', (chunk: string) => {
      got += chunk;
      const end = got.indexOf('\r\n\r\n');
      if (head && end >= 0) {
        head = false;
        if (!got.startsWith('HTTP/1.1 200 ')) return;
        socket.write(`${line}\n`);
      }
      if (!head && got.slice(end + 4).includes('\n')) done();
    });
    socket.on('error', () => {});
    socket.on('close', done);
  });
}

const OTHER_FINGERPRINT = `sha256:${'AB:'.repeat(31)}AB`;

test(
  'an http proxy fronts an HTTPS-only service: ca_file, fingerprint and insecure_skip_verify reach it; a self-signed certificate, a wrong pin or a wrong name get 502 and a reason',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const pve = await makeSelfSignedCert(h, 'pve.lan');
      const servicePort = await startSServer(h, pve, '-www');
      const local = `127.0.0.1:${servicePort}`;
      const server = await startRoutedServer(h);
      const names = ['right', 'none', 'pin', 'wrongpin', 'skip', 'name'];
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: names.map((n) => `${n}.test`) });
      const proxy = (name: string, localTls: TomlValue): RoutedProxy => ({
        name,
        type: 'http',
        local,
        hosts: [`${name}.test`],
        local_tls: localTls,
      });
      const proxies = [
        proxy('right', { server_name: 'pve.lan', ca_file: pve.cert }),
        proxy('none', { server_name: 'pve.lan' }),
        proxy('pin', { fingerprint: await certificateFingerprint({ file: pve.cert }) }),
        proxy('wrongpin', { fingerprint: OTHER_FINGERPRINT }),
        proxy('skip', { insecure_skip_verify: true }),
        proxy('name', { server_name: 'nas.lan', ca_file: pve.cert }),
      ];
      const adminListen = `127.0.0.1:${await freePort()}`;
      const client = await startRoutedClient(h, { server: server.url, token, proxies, adminListen });
      const visit = (name: string) =>
        curl(['-H', `Host: ${name}.test`], `http://127.0.0.1:${server.httpPort}/`);

      for (const name of ['right', 'pin', 'skip']) {
        const r = await visit(name);
        assert.equal(r.status, 200, `${name}: ${r.stderr} ${r.body}`);
        assert.match(r.body, /s_server -www/, name);
      }
      const warning = await client.proc.waitForMsg('config warning', 5_000);
      assert.match(String(warning.reason), /^proxies\[4\] \("skip"\)\.local_tls\.insecure_skip_verify: /);

      const refusals: [name: string, reason: RegExp][] = [
        [
          'none',
          /^local TLS: self-signed certificate \(set local_tls\.ca_file or local_tls\.fingerprint, see README\)$/,
        ],
        [
          'wrongpin',
          /^local TLS: the certificate's SHA-256 fingerprint is [0-9A-F:]{95}, not local_tls\.fingerprint's (AB:){31}AB/,
        ],
        [
          'name',
          /^local TLS: .*nas\.lan.* \(local_tls\.server_name must be one of the certificate's names\)$/,
        ],
      ];
      for (const [name, reason] of refusals) {
        const from = client.proc.mark();
        const r = await visit(name);
        assert.equal(r.status, 502, `${name}: ${r.stderr} ${r.body}`);
        const line = await client.proc.waitForMsg('local connect failed', 10_000, {
          from,
          fields: { proxy: name },
        });
        assert.match(String(line.reason), reason, name);
        assert.equal(line.local, `${local} (tls)`);
      }

      const status = await run(clientBin, ['status', '--config', client.configPath], { timeoutMs: 15_000 });
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, new RegExp(`right +http +${local.replaceAll('.', '\\.')} \\(tls\\)`));

      // A reload that gives "none" the certificate to trust serves its next visitor.
      proxies[1] = proxy('none', { server_name: 'pve.lan', ca_file: pve.cert });
      await rewriteRoutedClientProxies(client.configPath, proxies);
      const from = client.proc.mark();
      client.proc.kill('SIGHUP');
      await client.proc.waitForMsg('proxy registered', 15_000, { from, fields: { proxy: 'none' } });
      const again = await visit('none');
      assert.equal(again.status, 200, `${again.stderr} ${again.body}`);
    }),
);

test(
  'a tcp proxy speaks TLS to the service for plain visitors; a PROXY header goes first, in clear, as HAProxy reads it',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const pve = await makeSelfSignedCert(h, 'pve.lan');
      const revPort = await startSServer(h, pve, '-rev');
      const haproxyCert = await makeCert(h, ca, 'haproxy.test', ['haproxy.test']);
      const combined = h.path('haproxy.pem');
      await writeFile(
        combined,
        Buffer.concat([await readFile(haproxyCert.cert), await readFile(haproxyCert.key)]),
      );
      const [haproxyPort, remoteRev, remotePp] = (await freePorts(3)) as [number, number, number];
      await startReportingHaproxy(h, [
        {
          name: 'tls',
          bind: `127.0.0.1:${haproxyPort} accept-proxy ssl crt ${combined}`,
          answer: `tls ${PEER_REPORT}`,
          at: { port: haproxyPort },
        },
      ]);
      const server = await startRoutedServer(h, { http: false });
      const token = await issueRoutedToken(server, { name: 'homelab', ports: `${remoteRev},${remotePp}` });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          {
            name: 'rev',
            type: 'tcp',
            local: `127.0.0.1:${revPort}`,
            remote_port: remoteRev,
            local_tls: { server_name: 'pve.lan', ca_file: pve.cert },
          },
          {
            name: 'pp',
            type: 'tcp',
            local: `127.0.0.1:${haproxyPort}`,
            remote_port: remotePp,
            proxy_protocol: 'v2',
            local_tls: { server_name: 'haproxy.test', ca_file: ca.cert },
          },
        ],
      });
      assert.equal(await lineThrough(remoteRev, 'hello porthole'), 'elohtrop olleh');
      t.diagnostic(`haproxy says "${await assertVisitorReported(remotePp, 'tls ')}"`);
    }),
);

test(
  'a tcpmux proxy speaks TLS to the service; the visitor gets 200 only once the handshake passed, 502 when it failed',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const pve = await makeSelfSignedCert(h, 'pve.lan');
      const local = `127.0.0.1:${await startSServer(h, pve, '-rev')}`;
      const server = await startRoutedServer(h, { http: false, tcpmux: {} });
      assert.ok(server.tcpmuxPort, 'the server logged no "tcpmux listening" line');
      const token = await issueRoutedToken(server, {
        name: 'homelab',
        hosts: ['rev.test', 'untrusted.test'],
      });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          {
            name: 'rev',
            type: 'tcpmux',
            local,
            hosts: ['rev.test'],
            local_tls: { server_name: 'pve.lan', ca_file: pve.cert },
          },
          {
            name: 'untrusted',
            type: 'tcpmux',
            local,
            hosts: ['untrusted.test'],
            local_tls: { server_name: 'pve.lan' },
          },
        ],
      });
      const answer = await connectThrough(server.tcpmuxPort, 'rev.test', 'hello porthole');
      assert.match(answer, /^HTTP\/1\.1 200 Connection established\r\n\r\nelohtrop olleh\n/);

      const from = client.proc.mark();
      const refused = await connectThrough(server.tcpmuxPort, 'untrusted.test', 'hello porthole');
      assert.match(refused, /^HTTP\/1\.1 502 Bad Gateway\r\n/);
      assert.doesNotMatch(refused, /200 Connection established/);
      const line = await client.proc.waitForMsg('local connect failed', 10_000, {
        from,
        fields: { proxy: 'untrusted' },
      });
      assert.match(String(line.reason), /^local TLS: self-signed certificate \(set local_tls\.ca_file/);
      assert.equal(line.local, `${local} (tls)`);
    }),
);

test(
  "health checks make the proxy's TLS handshake: a trusted service is healthy, a self-signed one withdrawn",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const pve = await makeSelfSignedCert(h, 'pve.lan');
      const local = `127.0.0.1:${await startSServer(h, pve, '-www')}`;
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['good.test', 'bad.test'] });
      const check = { type: 'http', path: '/healthz', interval: '200ms', timeout: '2s', max_failed: 1 };
      const adminListen = `127.0.0.1:${await freePort()}`;
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        adminListen,
        logLevel: 'debug',
        // "bad" may be withdrawn by its first check before the session would register it.
        waitFor: ['good'],
        proxies: [
          {
            name: 'good',
            type: 'http',
            local,
            hosts: ['good.test'],
            local_tls: { server_name: 'pve.lan', ca_file: pve.cert },
            health_check: check,
          },
          {
            name: 'bad',
            type: 'http',
            local,
            hosts: ['bad.test'],
            local_tls: { server_name: 'pve.lan' },
            health_check: check,
          },
        ],
      });
      const withdrawn = await client.proc.waitForMsg(
        'health check failed: proxy withdrawn from the server',
        10_000,
        {
          fields: { proxy: 'bad' },
        },
      );
      assert.match(
        String(withdrawn.reason),
        /^http check of .* \(tls\)\/healthz failed: local TLS: self-signed certificate/,
      );
      // Checks of "good" every 200 ms meanwhile and for a second more: one failure would withdraw it.
      await sleep(1_000);
      const failures = () =>
        client.proc.logs.filter((l) => l.msg === 'health check failed' && l.proxy === 'good').length;
      const r = await curl(['-H', 'Host: good.test'], `http://127.0.0.1:${server.httpPort}/`);
      assert.equal(r.status, 200, `${r.stderr} ${r.body}`);
      const status = await run(clientBin, ['status', '--admin', adminListen, '--json'], {
        timeoutMs: 15_000,
      });
      const good = (
        JSON.parse(status.stdout) as { proxies: { name: string; health?: string }[] }
      ).proxies.find((p) => p.name === 'good');
      assert.equal(good?.health, 'healthy');
      assert.equal(failures(), 0);
    }),
);
