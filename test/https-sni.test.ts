// The TLS port with real TLS peers: openssl s_client reaches a tls proxy by SNI and sees the LOCAL
// service's certificate (passthrough, the server holds no key for it); curl reaches an http proxy over
// https terminated by the server; the client itself dials wss:// on the same port; unknown names are
// closed and a ClientHello without SNI goes to default_host.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import net, { type AddressInfo, type Socket } from 'node:net';
import { test } from 'node:test';
import tls from 'node:tls';
import { type ClientOptions, WebSocket } from 'ws';
import { curl } from './lib/curl.js';
import { startHttpBackend } from './lib/http-backend.js';
import {
  clientBin,
  eventually,
  freePort,
  type Harness,
  run,
  sleep,
  withHarness,
  withTimeout,
} from './lib/processes.js';
import {
  type CertFiles,
  issueRoutedToken,
  makeCa,
  makeCert,
  makeSelfSignedCert,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  sClient,
  servedCertificate,
  startRoutedClient,
  startRoutedServer,
  type TomlValue,
} from './lib/routing.js';

/**
 * A local TLS service with its own certificate that answers each line with "<tag>:<line>". `rawReads`:
 * what each connection's raw socket read (all the visitor sent, the ClientHello included), once closed.
 */
async function startTlsLineService(
  h: Harness,
  pair: CertFiles,
  tag: string,
): Promise<{ port: number; rawReads: number[] }> {
  const service = tls.createServer(
    { cert: await readFile(pair.cert), key: await readFile(pair.key) },
    (socket) => {
      socket.on('error', () => {});
      socket.setEncoding('utf8');
      let buffered = '';
      socket.on('data', (d: string) => {
        buffered += d;
        let nl = buffered.indexOf('\n');
        while (nl >= 0) {
          socket.write(`${tag}:${buffered.slice(0, nl)}\n`);
          buffered = buffered.slice(nl + 1);
          nl = buffered.indexOf('\n');
        }
      });
    },
  );
  const rawReads: number[] = [];
  service.on('connection', (raw: Socket) => raw.on('close', () => rawReads.push(raw.bytesRead)));
  await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
  h.onCleanup(() => new Promise((resolve) => service.close(resolve)));
  return { port: (service.address() as AddressInfo).port, rawReads };
}

/**
 * A server whose TLS port terminates with a CA-signed "porthole edge" certificate for `edgeNames` (with
 * these [https] keys), and a client whose http proxy "app" serves app.edge.test from a test backend ("app").
 */
async function startEdgeApp(h: Harness, edgeNames: string[], httpsKeys: Record<string, TomlValue> = {}) {
  const ca = await makeCa(h);
  const edge = await makeCert(h, ca, 'porthole edge', edgeNames);
  const backend = await startHttpBackend('app');
  h.onCleanup(() => backend.close());
  const server = await startRoutedServer(h, { https: { certs: [edge], keys: httpsKeys } });
  const token = await issueRoutedToken(server, { name: 'edge', hosts: ['app.edge.test'] });
  const proxies: RoutedProxy[] = [
    { name: 'app', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.edge.test'] },
  ];
  const client = await startRoutedClient(h, { server: server.url, token, proxies });
  return { ca, server, port: server.httpsPort!, token, proxies, client };
}

test(
  'SNI decides: passthrough to a tls proxy, termination for http proxies and wss control, else closed',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'porthole edge', ['localhost', 'edge.test', '*.edge.test']);
      const vault = await makeCert(h, ca, 'vault.test', ['vault.test']);
      const caPem = await readFile(ca.cert);

      const { port: vaultPort, rawReads } = await startTlsLineService(h, vault, 'vault-service');
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());

      const server = await startRoutedServer(h, {
        https: { certs: [edge], keys: { default_host: 'app.edge.test' } },
      });
      const port = server.httpsPort!;
      const token = await issueRoutedToken(server, { name: 'edge', hosts: ['vault.test', 'app.edge.test'] });
      // The client dials the control endpoint over wss:// on the TLS port (terminated with the edge cert).
      const client = await startRoutedClient(h, {
        server: `wss://localhost:${port}/_porthole`,
        caFile: ca.cert,
        token,
        adminListen: `127.0.0.1:${await freePort()}`,
        proxies: [
          { name: 'vault', type: 'tls', local: `127.0.0.1:${vaultPort}`, hosts: ['vault.test'] },
          { name: 'app', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.edge.test'] },
        ],
      });
      assert.deepEqual(client.registered.get('vault')?.urls, [`tls://vault.test:${port}`]);
      assert.ok(
        ((client.registered.get('app')?.urls ?? []) as string[]).includes(`https://app.edge.test:${port}/`),
        JSON.stringify(client.registered.get('app')),
      );
      // `status` says where visitors reach each named proxy.
      const status = await run(clientBin, ['status', '--config', client.configPath], { timeoutMs: 15_000 });
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, new RegExp(`^vault .* registered +0 +tls://vault\\.test:${port}$`, 'm'));
      assert.match(
        status.stdout,
        new RegExp(`^app .* registered +0 +.*https://app\\.edge\\.test:${port}/`, 'm'),
      );
      // A client that dials this TLS port with ws:// is told what it most likely got wrong.
      const wrongScheme = await startRoutedClient(h, {
        server: `ws://127.0.0.1:${port}/_porthole`,
        token,
        name: 'wrong scheme',
        proxies: [],
        waitFor: [],
      });
      const failed = await wrongScheme.proc.waitForMsg('connect failed', 10_000);
      assert.match(String(failed.reason), /socket hang up \(.*does it expect wss:\/\/ here\?\)$/);
      await wrongScheme.proc.stop();

      // Passthrough: the certificate openssl sees is the local service's, verified against the CA.
      const pass = await sClient(
        [
          '-connect',
          `127.0.0.1:${port}`,
          '-servername',
          'vault.test',
          '-CAfile',
          ca.cert,
          '-verify_return_error',
        ],
        'Q\n',
      );
      assert.match(pass.out, /subject=CN\s?=\s?vault\.test/, pass.out);
      assert.match(pass.out, /Verify return code: 0 \(ok\)/);
      assert.doesNotMatch(pass.out, /porthole edge/, 'the server did not terminate this connection');
      // And bytes both ways through the passthrough (Node's TLS client, verifying the same way).
      const reply = await new Promise<string>((resolve, reject) => {
        const socket = tls.connect({
          host: '127.0.0.1',
          port,
          servername: 'vault.test',
          ca: caPem,
        });
        let text = '';
        const timer = setTimeout(() => reject(new Error(`no reply through passthrough: ${text}`)), 10_000);
        socket.setEncoding('utf8');
        socket.on('secureConnect', () => socket.write('hello through sni\n'));
        socket.on('data', (d: string) => {
          text += d;
          if (text.includes('\n')) {
            clearTimeout(timer);
            socket.end();
            resolve(text);
          }
        });
        socket.on('error', (err) => {
          clearTimeout(timer);
          reject(err);
        });
      });
      assert.equal(reply, 'vault-service:hello through sni\n');
      // The server counts every byte of it in bytes_in, the ClientHello it peeked at included.
      const closedLines = await eventually(
        'both passthrough connections closed and logged',
        async () => {
          const lines = server.proc.logsWithMsg('connection closed').filter((l) => l.proxy === 'vault');
          return lines.length === 2 && rawReads.length === 2 ? lines : undefined;
        },
        10_000,
      );
      assert.deepEqual(
        closedLines.map((l) => Number(l.bytes_in)).sort((a, b) => a - b),
        [...rawReads].sort((a, b) => a - b),
      );

      // Termination: an http proxy over https, with the server's certificate.
      const https = await curl(
        ['--resolve', `app.edge.test:${port}:127.0.0.1`, '--cacert', ca.cert],
        `https://app.edge.test:${port}/over-tls`,
      );
      assert.equal(https.status, 200, `${https.stderr} ${https.body}`);
      const seen = JSON.parse(https.body) as { headers: Record<string, string>; backend: string };
      assert.equal(seen.backend, 'app');
      assert.equal(seen.headers['x-forwarded-proto'], 'https');
      assert.equal(seen.headers['x-forwarded-for'], '127.0.0.1');
      // An HTTP/1.0 visitor offers ALPN "http/1.0" (curl --http1.0 does): served, not refused by a fatal alert.
      const http10 = await curl(
        ['--http1.0', '--resolve', `app.edge.test:${port}:127.0.0.1`, '--cacert', ca.cert],
        `https://app.edge.test:${port}/over-tls-http10`,
      );
      assert.equal(http10.status, 200, `${http10.stderr} ${http10.body}`);
      // A name the certificate covers but no proxy serves: TLS is terminated, then a plain 404.
      const noSite = await curl(
        ['--resolve', `nosite.edge.test:${port}:127.0.0.1`, '--cacert', ca.cert],
        `https://nosite.edge.test:${port}/`,
      );
      assert.equal(noSite.status, 404);

      // Unknown names are closed before any certificate is shown.
      const unknown = await sClient(['-connect', `127.0.0.1:${port}`, '-servername', 'unknown.test'], 'Q\n');
      assert.doesNotMatch(unknown.out, /subject=/, unknown.out);
      const curlUnknown = await curl(
        ['--resolve', `unknown.test:${port}:127.0.0.1`, '--cacert', ca.cert],
        `https://unknown.test:${port}/`,
      );
      assert.notEqual(curlUnknown.code, 0);
      assert.equal(curlUnknown.status, 0);

      // No SNI: default_host (app.edge.test) decides, so the edge certificate answers.
      const noSni = await sClient(
        ['-connect', `127.0.0.1:${port}`, '-noservername', '-CAfile', ca.cert],
        'Q\n',
      );
      assert.match(noSni.out, /subject=CN\s?=\s?porthole edge/, noSni.out);

      // Garbage instead of a ClientHello is closed, and the port keeps working.
      const garbage = await run('curl', ['-sS', '--max-time', '5', `http://127.0.0.1:${port}/`], {
        timeoutMs: 10_000,
      });
      assert.notEqual(garbage.code, 0);
      const again = await sClient(
        ['-connect', `127.0.0.1:${port}`, '-servername', 'vault.test', '-CAfile', ca.cert],
        'Q\n',
      );
      assert.match(again.out, /subject=CN\s?=\s?vault\.test/);
      assert.ok(server.proc.logsWithMsg('client connected').length >= 1);
    }),
);

test(
  'an IP address as SNI is read as no SNI: default_host decides, as for a ClientHello without one',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const { ca, port } = await startEdgeApp(h, ['*.edge.test'], { default_host: 'app.edge.test' });
      // RFC 6066 allows only host names in SNI, but old Java, some IoT stacks and openssl send the address
      // they dialled; such a client must get what one sending no SNI gets (before: closed, "no tls proxy
      // or certificate for this name").
      const request = 'GET /by-ip HTTP/1.1\r\nHost: app.edge.test\r\nConnection: close\r\n\r\n';
      for (const sni of ['127.0.0.1', '::1']) {
        const r = await sClient(
          ['-connect', `127.0.0.1:${port}`, '-servername', sni, '-CAfile', ca.cert, '-ign_eof'],
          request,
        );
        assert.match(r.out, /subject=CN\s?=\s?porthole edge/, `${sni}: ${r.out}`);
        assert.match(r.out, /^HTTP\/1\.1 200 /m, `${sni}: ${r.out}`);
        assert.match(r.out, /"backend":\s*"app"/, `${sni}: ${r.out}`);
      }
    }),
);

test(
  'an SNI name in capitals or fully qualified (trailing dot) is served like the name itself, passed through or terminated',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'porthole edge', ['*.edge.test']);
      const vault = await makeCert(h, ca, 'vault.test', ['vault.test']);
      const { port: vaultPort } = await startTlsLineService(h, vault, 'vault-service');
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const server = await startRoutedServer(h, { https: { certs: [edge] } });
      const port = server.httpsPort!;
      const token = await issueRoutedToken(server, { name: 'edge' });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'vault', type: 'tls', local: `127.0.0.1:${vaultPort}`, hosts: ['vault.test'] },
          { name: 'app', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.edge.test'] },
        ],
      });
      // openssl sends -servername as written; RFC 6066 wants it without the dot, but the TLS port reads the
      // name as a Host header is read, so the dot must not change where the connection goes, or whether
      // it gets there.
      const request = 'GET /fqdn HTTP/1.1\r\nHost: app.edge.test\r\nConnection: close\r\n\r\n';
      for (const name of ['vault.test.', 'VAULT.TEST', 'app.edge.test.', 'APP.EDGE.TEST.']) {
        const passthrough = name.toLowerCase().startsWith('vault');
        const r = await sClient(
          ['-connect', `127.0.0.1:${port}`, '-servername', name, '-CAfile', ca.cert, '-ign_eof'],
          passthrough ? 'ping\n' : request,
        );
        if (passthrough) {
          assert.match(r.out, /subject=CN\s?=\s?vault\.test/, `${name}: ${r.out}`);
          assert.match(r.out, /^vault-service:ping$/m, `${name}: ${r.out}`);
        } else {
          assert.match(r.out, /subject=CN\s?=\s?porthole edge/, `${name}: ${r.out}`);
          assert.match(r.out, /^HTTP\/1\.1 200 /m, `${name}: ${r.out}`);
        }
        assert.match(r.out, /Verify return code: 0 \(ok\)/, `${name}: ${r.out}`);
      }
    }),
);

test(
  'certificates renewed in place and a SIGHUP: new handshakes get them (the TLS port and the wss endpoint), open connections stay; a half-written pair or other names are not taken',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'porthole edge', ['*.edge.test']);
      const control = await makeCert(h, ca, 'porthole control', ['control.test']);
      // default_host: a handshake without SNI is terminated with the fallback certificate.
      const server = await startRoutedServer(h, {
        https: { certs: [edge], keys: { default_host: 'x.edge.test' } },
        tls: control,
      });
      const servedSerial = async (port: number, servername: string | undefined) =>
        new X509Certificate(await servedCertificate(port, servername)).serialNumber;
      const serialOf = async (files: { cert: string }) =>
        new X509Certificate(await readFile(files.cert)).serialNumber;
      const edgeSerial = () => servedSerial(server.httpsPort!, 'x.edge.test');
      const controlSerial = () => servedSerial(server.port, 'control.test');
      assert.equal(await edgeSerial(), await serialOf(edge));
      assert.equal(await controlSerial(), await serialOf(control));
      // A connection open across the reload.
      const open = tls.connect({
        host: '127.0.0.1',
        port: server.httpsPort!,
        servername: 'x.edge.test',
        ca: await readFile(ca.cert),
      });
      open.on('error', () => {});
      await once(open, 'secureConnect');
      const restartWarning = 'reload: these settings take effect after a restart';
      const reload = async (outcome: string) => {
        const mark = server.proc.mark();
        server.proc.kill('SIGHUP');
        return { line: await server.proc.waitForMsg(outcome, 10_000, { from: mark }), mark };
      };

      // A renewal, as certbot does it: new files for the same names, written over the old paths.
      const renewFiles = async (files: { cert: string; key: string }, by: { cert: string; key: string }) => {
        await writeFile(files.cert, await readFile(by.cert));
        await writeFile(files.key, await readFile(by.key));
      };
      const newEdge = await makeCert(h, ca, 'porthole edge', ['*.edge.test']);
      const newControl = await makeCert(h, ca, 'porthole control', ['control.test']);
      await renewFiles(edge, newEdge);
      await renewFiles(control, newControl);
      const renewed = await reload('reload: certificates renewed');
      await server.proc.waitForMsg('config reloaded', 10_000, { from: renewed.mark });
      assert.deepEqual(
        (renewed.line.certs as { key: string; notAfter: string }[]).map((c) => c.key),
        ['tls', 'https.certs[0]'],
      );
      assert.equal(server.proc.logsWithMsg(restartWarning, renewed.mark).length, 0);
      assert.equal(
        await edgeSerial(),
        await serialOf(newEdge),
        'the TLS port serves the renewed certificate',
      );
      assert.equal(await controlSerial(), await serialOf(newControl), 'the wss endpoint serves it too');
      assert.equal(
        await servedSerial(server.httpsPort!, undefined),
        await serialOf(newEdge),
        'and so does a handshake without SNI',
      );
      // The connection opened before the reload still works (the router answers its request).
      const answer = new Promise<string>((resolve) =>
        open.once('data', (d: Buffer) => resolve(d.toString())),
      );
      open.write('GET / HTTP/1.1\r\nHost: x.edge.test\r\nConnection: close\r\n\r\n');
      assert.match(await withTimeout(answer, 5000, () => 'an answer on the open connection'), /^HTTP\/1\.1 /);
      open.destroy();

      // Half a renewal (a new certificate beside the running key): refused, naming the file; still served.
      const half = await makeCert(h, ca, 'porthole edge', ['*.edge.test']);
      await writeFile(edge.cert, await readFile(half.cert));
      const failed = await reload('reload failed: keeping the running configuration');
      assert.match(String(failed.line.reason), new RegExp(`does not match the certificate in ${edge.cert}`));
      assert.equal(await edgeSerial(), await serialOf(newEdge), 'the running certificate is kept');

      // Other names: routes were decided by the old ones, so that takes a restart.
      const other = await makeCert(h, ca, 'porthole edge', ['*.edge.test', 'more.test']);
      await renewFiles(edge, other);
      const restart = await reload(restartWarning);
      assert.deepEqual(restart.line.keys, ['https.certs']);
      assert.equal(server.proc.logsWithMsg('reload: certificates renewed', restart.mark).length, 0);
      assert.equal(await edgeSerial(), await serialOf(newEdge), 'served until a restart');
    }),
);

test(
  'a WebSocket over the https port whose client is lost ends for its visitor alone: the server keeps serving',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const { ca, server, port, token, proxies, client } = await startEdgeApp(h, ['app.edge.test']);

      // A WebSocket through the TLS the server terminates, working both ways.
      // (ws passes servername on to tls.connect; its types leave it out.)
      const options: ClientOptions & Pick<tls.ConnectionOptions, 'servername'> = {
        ca: await readFile(ca.cert),
        servername: 'app.edge.test',
        headers: { Host: 'app.edge.test' },
      };
      const ws = new WebSocket(`wss://127.0.0.1:${port}/ws`, options);
      h.onCleanup(() => ws.terminate());
      ws.on('error', () => {});
      const closed = new Promise<number>((resolve) => ws.once('close', (code: number) => resolve(code)));
      // The service greets first, then echoes.
      const messages: string[] = [];
      const echoed = new Promise<void>((resolve) =>
        ws.on('message', (d: Buffer) => {
          messages.push(d.toString());
          if (messages.length === 2) resolve();
        }),
      );
      ws.once('open', () => ws.send('over tls'));
      await withTimeout(echoed, 10_000, () => `the echo over wss (got ${JSON.stringify(messages)})`);
      assert.equal(messages[1], 'echo:over tls');

      // The client is gone at once (killed: its session, and the WebSocket's tunnel stream, fail). Only the
      // visitor's connection is cut; it used to take the server down (resetAndDestroy threw on a TLS socket).
      const mark = server.proc.mark();
      client.proc.kill('SIGKILL');
      const code = await withTimeout(closed, 10_000, () => 'the WebSocket to close once its client was lost');
      t.diagnostic(`the visitor's WebSocket closed with ${code} once its client was killed`);
      assert.equal(code, 1006, 'closed without a close frame: cut short, not ended');
      const line = await server.proc.waitForMsg('connection closed', 10_000, {
        from: mark,
        fields: { proxy: 'app', upgrade: 'websocket' },
      });
      assert.match(String(line.reason), /^tunnel /, `reason ${line.reason}`);
      await sleep(500);
      assert.ok(server.proc.alive, `the server exited:\n${server.proc.tail(20)}`);

      // It still serves: the client comes back and the name answers over https again.
      await startRoutedClient(h, { server: server.url, token, proxies, name: 'client again' });
      const again = await curl(
        ['--resolve', `app.edge.test:${port}:127.0.0.1`, '--cacert', ca.cert],
        `https://app.edge.test:${port}/after`,
      );
      assert.equal(again.status, 200, `${again.stderr} ${again.body}`);
    }),
);

test(
  "another client's wildcard tls proxy does not take an http proxy's name on the TLS port, online or offline",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'porthole edge', ['*.edge.test']);
      const vault = await makeCert(h, ca, 'vault.edge.test', ['*.edge.test']);
      const vaultService = await startTlsLineService(h, vault, 'vault-service');
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const server = await startRoutedServer(h, { https: { certs: [edge] } });
      const port = server.httpsPort!;
      await startRoutedClient(h, {
        server: server.url,
        token: await issueRoutedToken(server, { name: 'web' }),
        name: 'web',
        proxies: [
          { name: 'app', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.edge.test'] },
        ],
      });
      const wild = await startRoutedClient(h, {
        server: server.url,
        token: await issueRoutedToken(server, { name: 'wild' }),
        name: 'wild',
        proxies: [
          { name: 'all', type: 'tls', local: `127.0.0.1:${vaultService.port}`, hosts: ['*.edge.test'] },
        ],
      });
      const appOverHttps = async () => {
        const r = await curl(
          ['--resolve', `app.edge.test:${port}:127.0.0.1`, '--cacert', ca.cert],
          `https://app.edge.test:${port}/mine`,
        );
        assert.equal(r.status, 200, `${r.stderr} ${r.body}`);
        assert.equal((JSON.parse(r.body) as { backend: string }).backend, 'app');
      };
      // The most specific name wins: app.edge.test is terminated here for the http proxy...
      await appOverHttps();
      // ...and the wildcard tls proxy gets the rest, passed through to its own service.
      const other = await sClient(
        ['-connect', `127.0.0.1:${port}`, '-servername', 'other.edge.test', '-CAfile', ca.cert],
        'Q\n',
      );
      assert.match(other.out, /subject=CN\s?=\s?vault\.edge\.test/, other.out);
      // With the wildcard's client gone (killed: its route offline), app.edge.test is still served.
      wild.proc.kill('SIGKILL');
      await server.proc.waitForMsg('client disconnected', 10_000, { fields: { client: 'wild' } });
      await appOverHttps();
      t.diagnostic('app.edge.test served over https beside and after a wildcard tls proxy');
    }),
);

test(
  "a wss:// server whose certificate the client refuses: connect failed says what to check (ca_file, or the URL's host)",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const otherCa = await makeCa(h, 'another CA');
      const selfSigned = await makeSelfSignedCert(h, 'localhost');
      const privateCa = await startRoutedServer(h, {
        http: false,
        tls: await makeCert(h, ca, 'vps.test', ['localhost']),
      });
      const selfSignedServer = await startRoutedServer(h, { http: false, tls: selfSigned, name: 'server 2' });
      const token = await issueRoutedToken(privateCa, { name: 'homelab' });
      const reasonFor = async (name: string, server: string, caFile?: string) => {
        const client = await startRoutedClient(h, {
          server,
          token,
          name,
          proxies: [],
          waitFor: [],
          ...(caFile === undefined ? {} : { caFile }),
        });
        const failed = await client.proc.waitForMsg('connect failed', 10_000);
        await client.proc.stop();
        return String(failed.reason);
      };
      const wss = (host: string, port: number) => `wss://${host}:${port}/_porthole`;
      // Before, each was Node's reason alone: nothing said that a private CA needs ca_file.
      const noCaFile =
        " (the server's certificate is not signed by a CA this machine trusts: for a private CA, set ca_file (--ca-file) to the CA's certificate)";
      assert.equal(
        await reasonFor('no ca_file', wss('localhost', privateCa.port)),
        `unable to verify the first certificate${noCaFile}`,
      );
      assert.equal(
        await reasonFor('self-signed', wss('localhost', selfSignedServer.port)),
        `self-signed certificate${noCaFile}`,
      );
      assert.equal(
        await reasonFor('wrong ca_file', wss('localhost', privateCa.port), otherCa.cert),
        "unable to verify the first certificate (the server's certificate is not signed by the CA in ca_file: is that the CA that issued it?)",
      );
      assert.equal(
        await reasonFor('by address', wss('127.0.0.1', privateCa.port), ca.cert),
        "Hostname/IP does not match certificate's altnames: IP: 127.0.0.1 is not in the cert's list: (the server URL's host must be one of the certificate's names: dial it by one of them, or give it a certificate for this one)",
      );
      // With the right CA and a name the certificate holds, it connects.
      const right = await startRoutedClient(h, {
        server: wss('localhost', privateCa.port),
        token,
        caFile: ca.cert,
        name: 'right',
        proxies: [],
        waitFor: [],
      });
      await right.proc.waitForMsg('session established', 10_000);
    }),
);

test(
  "a wildcard tls proxy its client removes (reload, SIGTERM) gives the name back to the server's certificate at once; a killed client's keeps it closed",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'porthole edge', ['*.edge.test']);
      const vault = await makeCert(h, ca, 'vault.edge.test', ['*.edge.test']);
      const vaultService = await startTlsLineService(h, vault, 'vault-service');
      const server = await startRoutedServer(h, { https: { certs: [edge] } });
      const port = server.httpsPort!;
      const token = await issueRoutedToken(server, { name: 'wild' });
      const all: RoutedProxy = {
        name: 'all',
        type: 'tls',
        local: `127.0.0.1:${vaultService.port}`,
        hosts: ['*.edge.test'],
      };
      const startWild = (name: string) =>
        startRoutedClient(h, { server: server.url, token, name, proxies: [all] });
      /** Whose certificate foo.edge.test shows: the tls proxy's service, the server's, or none (closed). */
      const certOfFoo = async () => {
        const r = await sClient(
          ['-connect', `127.0.0.1:${port}`, '-servername', 'foo.edge.test', '-CAfile', ca.cert],
          'Q\n',
        );
        return /subject=CN\s?=\s?vault\.edge\.test/.test(r.out)
          ? 'proxy'
          : /subject=CN\s?=\s?porthole edge/.test(r.out)
            ? 'server'
            : 'closed';
      };
      const unregistered = async (from: number) =>
        server.proc.waitForMsg('proxy closed', 10_000, {
          from,
          fields: { proxy: 'all', reason: 'unregistered by client' },
        });

      let client = await startWild('wild');
      assert.equal(await certOfFoo(), 'proxy');
      // Killed: the client is gone, not done; its name stays its own (closed) until it comes back.
      let mark = server.proc.mark();
      client.proc.kill('SIGKILL');
      await server.proc.waitForMsg('client disconnected', 10_000, { from: mark, fields: { client: 'wild' } });
      assert.equal(await certOfFoo(), 'closed');
      client = await startWild('wild again');
      assert.equal(await certOfFoo(), 'proxy');

      // A reload that drops the proxy: the server's wildcard certificate serves the name again at once.
      mark = server.proc.mark();
      await rewriteRoutedClientProxies(client.configPath, []);
      client.proc.kill('SIGHUP');
      await unregistered(mark);
      assert.equal(await certOfFoo(), 'server');
      const https = await curl(
        ['--resolve', `foo.edge.test:${port}:127.0.0.1`, '--cacert', ca.cert],
        `https://foo.edge.test:${port}/`,
      );
      assert.equal(https.status, 404, `${https.stderr} ${https.body}`);

      // Added back, then the client stopped with SIGTERM: the same.
      const clientMark = client.proc.mark();
      await rewriteRoutedClientProxies(client.configPath, [all]);
      client.proc.kill('SIGHUP');
      await client.proc.waitForMsg('proxy registered', 10_000, {
        from: clientMark,
        fields: { proxy: 'all' },
      });
      assert.equal(await certOfFoo(), 'proxy');
      mark = server.proc.mark();
      await client.proc.stop();
      await unregistered(mark);
      assert.equal(await certOfFoo(), 'server');
      t.diagnostic(
        'foo.edge.test: the proxy, closed while its client was killed, the certificate once removed',
      );
    }),
);

/** The ClientHello Node's TLS client sends for `servername`, caught by a plain TCP listener. */
async function capturedClientHello(servername: string): Promise<Buffer> {
  const catcher = net.createServer();
  await new Promise<void>((resolve) => catcher.listen(0, '127.0.0.1', resolve));
  try {
    const hello = new Promise<Buffer>((resolve) =>
      catcher.once('connection', (socket) => socket.once('data', (d: Buffer) => resolve(d))),
    );
    const client = tls.connect({
      host: '127.0.0.1',
      port: (catcher.address() as AddressInfo).port,
      servername,
      rejectUnauthorized: false,
    });
    client.on('error', () => {});
    const bytes = await hello;
    client.destroy();
    return bytes;
  } finally {
    catcher.close();
  }
}

/**
 * Sends `bytes` to the port and leaves in the middle of the handshake: at once, or with a reset at the first
 * answer (a FIN alone would leave the server waiting for the rest until its handshake timeout).
 */
function abortHandshake(port: number, bytes: Buffer, waitForAnswer: boolean): Promise<void> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port }, () => {
      socket.write(bytes);
      if (!waitForAnswer) socket.destroy();
    });
    socket.on('error', () => {});
    socket.once('data', () => socket.resetAndDestroy());
    socket.once('close', () => resolve());
  });
}

test(
  "a handshake the peer aborts is logged with the peer's address, on the control endpoint's [tls] and the https port",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'porthole edge', ['localhost', '*.edge.test']);
      const server = await startRoutedServer(h, { tls: edge, https: { certs: [edge] }, logLevel: 'debug' });
      const failures = () => server.proc.logsWithMsg('tls handshake failed');
      // The control endpoint: the first bytes of a handshake record, then gone.
      await abortHandshake(server.port, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), false);
      await server.proc.waitForLog(() => failures().length >= 1, 10_000, 0, 'the control endpoint’s line');
      // The https port: a whole ClientHello for a name it terminates, then gone when the server answers.
      await abortHandshake(server.httpsPort!, await capturedClientHello('app.edge.test'), true);
      await server.proc.waitForLog(() => failures().length >= 2, 10_000, 0, 'the https port’s line');
      for (const line of failures())
        assert.match(String(line.remote_addr), /^127\.0\.0\.1:\d+$/, JSON.stringify(line));
      t.diagnostic(
        failures()
          .map((l) => `${l.remote_addr}: ${l.reason}`)
          .join('; '),
      );
    }),
);
