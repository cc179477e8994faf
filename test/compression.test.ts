// A proxy's `compression = true` (frp's transport.useCompression) through the real CLIs: the client's
// WebSocket to the server runs through a relay that counts its bytes, so what the tunnel hop carried is
// measured, not assumed. Text shrinks on that hop and random bytes pass intact, both ways; the same text
// through a proxy without compression crosses whole; a keystroke is answered without more input; http
// bodies and WebSocket upgrades, tcpmux and private services work compressed.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { curl } from './lib/curl.js';
import { startHttpBackend } from './lib/http-backend.js';
import { ADMIN_TOKEN, adminApi, issue, startPrivateClient, startPrivateServer } from './lib/private.js';
import { clientBin, freePorts, type Harness, run, runOk, withHarness, withTimeout } from './lib/processes.js';
import {
  issueRoutedToken,
  makeCa,
  makeCert,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  sClient,
  startRoutedClient,
  startRoutedServer,
  startSServer,
} from './lib/routing.js';
import { startEchoServer } from './lib/services.js';
import { patternBytes, sha256Hex } from './lib/sha-stream.js';
import { sshRun, startSshd } from './lib/sshd.js';
import {
  connected,
  downloadFile,
  MIB,
  startTransferService,
  type Transfer,
  upload,
} from './lib/transfers.js';

const FILE_BYTES = 20 * MIB;

/** 20 MiB of text like a log or a JSON dump: lines that repeat in shape, with numbers that change. */
function textFile(bytes: number): Buffer {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < bytes; i++) {
    const line = `2026-11-26T13:${String(i % 60).padStart(2, '0')}:00Z info {"conn":${i},"proxy":"web-${i % 7}","bytes_in":${(i * 7919) % 100_000},"path":"/api/items?page=${i % 113}"}\n`;
    lines.push(line);
    size += line.length;
  }
  return Buffer.from(lines.join('')).subarray(0, bytes);
}

/**
 * A TCP relay in front of the server's control port that counts the bytes it carries, both ways together;
 * `url` is the control endpoint through it, for the client whose tunnel hop is measured.
 */
async function startCountingRelay(h: Harness, targetPort: number): Promise<{ url: string; bytes(): number }> {
  let bytes = 0;
  const server = net.createServer((from) => {
    const to = net.connect(targetPort, '127.0.0.1');
    for (const [a, b] of [
      [from, to],
      [to, from],
    ] as const) {
      a.on('data', (chunk: Buffer) => {
        bytes += chunk.length;
      });
      a.pipe(b);
      a.on('error', () => b.destroy());
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  h.onCleanup(() => server.close());
  const { port } = server.address() as net.AddressInfo;
  return { url: `ws://127.0.0.1:${port}/_porthole`, bytes: () => bytes };
}

interface Measured {
  /** sha256 matched */
  whole: boolean;
  /** bytes the relay carried (both ways) during the transfer */
  wire: number;
  ms: number;
}

async function measured(relay: { bytes(): number }, transfer: () => Promise<Transfer>): Promise<Measured> {
  const before = relay.bytes();
  const { sent, received, ms } = await transfer();
  return { whole: sent === received, wire: relay.bytes() - before, ms };
}

/**
 * A connection to an echo through `port` (`greeting` first: what the service wants before it echoes), whose
 * each line must come back within 3 s, before the next is sent.
 */
async function echoing(port: number, greeting = '') {
  const sock = await connected(port);
  let received = '';
  sock.setEncoding('utf8');
  sock.on('data', (text: string) => {
    received += text;
  });
  sock.write(greeting);
  return {
    sock,
    echo: (line: string, what: string) => {
      const expected = received + line;
      sock.write(line);
      return withTimeout(
        new Promise<void>((resolve, reject) => {
          const check = () => {
            if (received === expected) {
              sock.off('data', check);
              resolve();
            }
          };
          sock.on('data', check);
          sock.once('close', () => reject(new Error(`${what}: the connection closed`)));
          check();
        }),
        3000,
        () => `${what}: ${JSON.stringify(line)} was not echoed within 3 s (got ${JSON.stringify(received)})`,
      );
    },
  };
}

test(
  'a compressed tcp proxy carries 20 MiB of text in a fraction of the bytes and 20 MiB of random bytes intact, both ways; without compression the text crosses whole',
  { timeout: 300_000 },
  (t) =>
    withHarness(t, async (h) => {
      const text = textFile(FILE_BYTES);
      const random = patternBytes(FILE_BYTES, 'compression');
      const sums = { text: sha256Hex(text), random: sha256Hex(random) };
      const service = await startTransferService(h, { text, random });
      const [packedPort, plainPort] = await freePorts(2);
      const server = await startRoutedServer(h, {
        http: false,
        allowPorts: [`${packedPort}`, `${plainPort}`],
      });
      const relay = await startCountingRelay(h, server.port);
      const token = await issueRoutedToken(server, { name: 'homelab', ports: `${packedPort},${plainPort}` });
      const client = await startRoutedClient(h, {
        server: relay.url,
        token,
        proxies: [
          {
            name: 'packed',
            type: 'tcp',
            local: `127.0.0.1:${service}`,
            remote_port: packedPort!,
            compression: true,
          },
          { name: 'plain', type: 'tcp', local: `127.0.0.1:${service}`, remote_port: plainPort! },
        ],
      });
      assert.equal(client.registered.get('packed')?.compression, true, 'the server took compression');
      assert.equal(client.registered.get('plain')?.compression, undefined);

      const results: Record<string, Measured> = {
        'text down, compressed': await measured(relay, () => downloadFile(packedPort!, 'text', sums.text)),
        'text up, compressed': await measured(relay, () => upload(packedPort!, text)),
        'random down, compressed': await measured(relay, () =>
          downloadFile(packedPort!, 'random', sums.random),
        ),
        'random up, compressed': await measured(relay, () => upload(packedPort!, random)),
        'text down, plain': await measured(relay, () => downloadFile(plainPort!, 'text', sums.text)),
        'text up, plain': await measured(relay, () => upload(plainPort!, text)),
      };
      for (const [what, m] of Object.entries(results))
        t.diagnostic(`${what}: ${(m.wire / MIB).toFixed(2)} MiB on the tunnel hop, ${Math.round(m.ms)} ms`);
      for (const [what, m] of Object.entries(results)) assert.ok(m.whole, `${what}: the sha256 differs`);
      for (const what of ['text down, compressed', 'text up, compressed'])
        assert.ok(
          results[what]!.wire < FILE_BYTES / 4,
          `${what}: ${results[what]!.wire} bytes crossed the tunnel hop for ${FILE_BYTES}`,
        );
      for (const what of ['text down, plain', 'text up, plain'])
        assert.ok(results[what]!.wire >= FILE_BYTES, `${what}: only ${results[what]!.wire} bytes crossed`);
      // The counts stay the visitor's bytes, not the deflated ones.
      const closed = client.proc
        .logsWithMsg('connection closed')
        .filter((line) => line.proxy === 'packed' && line.bytes_out === FILE_BYTES);
      assert.ok(closed.length >= 2, 'no close line counted the 20 MiB downloads as 20 MiB');
    }),
);

test(
  'through a compressed proxy each line typed is echoed at once, and ssh logs in and runs commands',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const sshd = await startSshd(h);
      const [echoPort, sshPort] = await freePorts(2);
      const server = await startRoutedServer(h, { http: false, allowPorts: [`${echoPort}`, `${sshPort}`] });
      const token = await issueRoutedToken(server, { name: 'homelab', ports: `${echoPort},${sshPort}` });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          {
            name: 'echo',
            type: 'tcp',
            local: `127.0.0.1:${echo.port}`,
            remote_port: echoPort!,
            compression: true,
          },
          {
            name: 'ssh',
            type: 'tcp',
            local: `127.0.0.1:${sshd.port}`,
            remote_port: sshPort!,
            compression: true,
          },
        ],
      });

      // Nothing after each line until its echo is back: a deflater waiting for more input would hold it.
      const typed = await echoing(echoPort!);
      for (let i = 1; i <= 5; i++) await typed.echo(`keystroke ${i}\n`, `line ${i}`);
      typed.sock.destroy();

      const login = await sshRun(sshd, sshPort!, 'echo "login-ok $((6*7))"');
      assert.equal(login.code, 0, `ssh through the compressed proxy failed: ${login.stderr}`);
      assert.equal(login.stdout.trim(), 'login-ok 42');
    }),
);

test(
  'a compressed http proxy: bodies both ways through curl, and a WebSocket upgrade, on fewer tunnel bytes',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('web');
      h.onCleanup(() => backend.close());
      const server = await startRoutedServer(h);
      const relay = await startCountingRelay(h, server.port);
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['app.test'] });
      const client = await startRoutedClient(h, {
        server: relay.url,
        token,
        proxies: [
          {
            name: 'web',
            type: 'http',
            local: `127.0.0.1:${backend.port}`,
            hosts: ['app.test'],
            compression: true,
          },
        ],
      });
      assert.equal(client.registered.get('web')?.compression, true);

      const body = textFile(4 * MIB);
      const bodyFile = await h.file('body.txt', body.toString('latin1'));
      const before = relay.bytes();
      const posted = await curl(
        ['-sS', '-f', '-H', 'Host: app.test', '--data-binary', `@${bodyFile}`],
        `http://127.0.0.1:${server.httpPort}/sha256`,
      );
      const wire = relay.bytes() - before;
      assert.equal(posted.status, 200, posted.stderr);
      const answer = JSON.parse(posted.body) as { bytes: number; sha256: string };
      assert.deepEqual([answer.bytes, answer.sha256], [body.length, sha256Hex(body)]);
      assert.ok(
        wire < body.length / 4,
        `${wire} bytes crossed the tunnel hop for a ${body.length}-byte body`,
      );

      // A download (the backend's pattern bytes, chunked) arrives whole.
      const downloaded = h.path('stream.bin');
      const streamed = await run('curl', [
        '-sS',
        '-f',
        '-H',
        'Host: app.test',
        '-o',
        downloaded,
        `http://127.0.0.1:${server.httpPort}/stream?bytes=${2 * MIB}&chunks=4`,
      ]);
      assert.equal(streamed.code, 0, streamed.stderr);
      assert.equal(sha256Hex(await readFile(downloaded)), sha256Hex(patternBytes(2 * MIB, 'stream')));

      const ws = new WebSocket(`ws://127.0.0.1:${server.httpPort}/ws`, { headers: { Host: 'app.test' } });
      const messages: string[] = [];
      ws.on('message', (data: Buffer) => messages.push(data.toString()));
      const received = (count: number, what: string) =>
        withTimeout(
          new Promise<void>((resolve, reject) => {
            const check = () => messages.length >= count && resolve();
            ws.on('message', check);
            ws.once('error', reject);
            check();
          }),
          5000,
          () => `${what} (got ${JSON.stringify(messages)})`,
        );
      // The backend greets first, then echoes each message as it comes.
      await received(1, 'no greeting over the WebSocket');
      for (const message of ['one', 'two', 'three']) {
        ws.send(message);
        await received(messages.length + 1, `no echo of ${message}`);
      }
      assert.deepEqual(messages, ['hello from web xff=127.0.0.1', 'echo:one', 'echo:two', 'echo:three']);
      ws.close();
    }),
);

test(
  'a compressed tcpmux proxy: curl -p -x gets its CONNECT answered and a body through it',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('mux');
      h.onCleanup(() => backend.close());
      const server = await startRoutedServer(h, { http: false, tcpmux: {} });
      const relay = await startCountingRelay(h, server.port);
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['web.test'] });
      await startRoutedClient(h, {
        server: relay.url,
        token,
        proxies: [
          {
            name: 'web',
            type: 'tcpmux',
            local: `127.0.0.1:${backend.port}`,
            hosts: ['web.test'],
            compression: true,
          },
        ],
      });
      // The client's confirmation of its local connect travels deflated, ahead of the service's bytes.
      const body = textFile(MIB);
      const bodyFile = await h.file('mux-body.txt', body.toString('latin1'));
      const proxy = ['-p', '-x', `http://127.0.0.1:${server.tcpmuxPort}`, '--suppress-connect-headers'];
      const before = relay.bytes();
      const posted = await curl([...proxy, '-f', '--data-binary', `@${bodyFile}`], 'http://web.test/sha256');
      assert.equal(posted.status, 200, posted.stderr);
      const answer = JSON.parse(posted.body) as { bytes: number; sha256: string };
      assert.deepEqual([answer.bytes, answer.sha256], [body.length, sha256Hex(body)]);
      const wire = relay.bytes() - before;
      assert.ok(
        wire < body.length / 4,
        `${wire} bytes crossed the tunnel hop for a ${body.length}-byte body`,
      );
    }),
);

test(
  'a compressed tls proxy: openssl s_client reaches openssl s_server through it by SNI, the certificate verified',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const vault = await makeCert(h, ca, 'vault.test', ['vault.test']);
      const edge = await makeCert(h, ca, 'porthole edge', ['edge.test']);
      const servicePort = await startSServer(h, vault, '-rev');
      const server = await startRoutedServer(h, { http: false, https: { certs: [edge] } });
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['vault.test'] });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          {
            name: 'vault',
            type: 'tls',
            local: `127.0.0.1:${servicePort}`,
            hosts: ['vault.test'],
            compression: true,
          },
        ],
      });
      assert.equal(client.registered.get('vault')?.compression, true);
      // The ClientHello the server peeked goes first, deflated like the rest; TLS itself does not shrink.
      const { out } = await sClient(
        [
          '-connect',
          `127.0.0.1:${server.httpsPort}`,
          '-servername',
          'vault.test',
          '-CAfile',
          ca.cert,
          '-ign_eof',
        ],
        'compressed hop\n',
      );
      assert.match(out, /subject=CN\s?=\s?vault\.test/, out);
      assert.match(out, /Verify return code: 0 \(ok\)/, out);
      assert.match(out, /^poh desserpmoc$/m, out);
    }),
);

test(
  'a compressed private service is reached by a visitor (compressed on the owner hop only)',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const server = await startPrivateServer(h);
      const ownerToken = await issue(server, 'nas');
      const visitorToken = await issue(server, 'laptop', 'nas/files');
      // The owner's session runs through the counting relay: its hop is the one compressed.
      const relay = await startCountingRelay(h, server.port);
      const viaRelay = { ...server, url: relay.url };
      await startPrivateClient(h, 'nas', viaRelay, ownerToken, {
        proxies: [{ name: 'files', local: `127.0.0.1:${echo.port}`, compression: true }],
      });
      const [bind] = await freePorts(1);
      await startPrivateClient(h, 'laptop', server, visitorToken, {
        visitors: [{ name: 'files', service: 'nas/files', bind: `127.0.0.1:${bind}` }],
      });
      const text = textFile(MIB);
      const before = relay.bytes();
      const sock = await connected(bind!);
      const hash = createHash('sha256');
      sock.on('data', (chunk: Buffer) => hash.update(chunk));
      sock.end(text);
      await withTimeout(
        new Promise<void>((resolve, reject) => {
          sock.on('end', resolve);
          sock.on('error', reject);
        }),
        20_000,
        () => 'the echo through the visitor did not end',
      );
      assert.equal(hash.digest('hex'), sha256Hex(text));
      const wire = relay.bytes() - before;
      assert.ok(wire < text.length / 2, `${wire} bytes on the owner's hop for ${2 * text.length} echoed`);
    }),
);

test(
  'porthole-client check refuses compression on a udp proxy, naming the key and why',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const config = await h.file(
        'udp-compressed.toml',
        [
          'server = "wss://vps.example.com/_porthole"',
          'token = "not.checked.here"',
          '[[proxies]]',
          'name = "game"',
          'type = "udp"',
          'local = "127.0.0.1:27015"',
          'remote_port = 27015',
          'compression = true',
          '',
        ].join('\n'),
      );
      const checked = await run(clientBin, ['check', '--config', config]);
      assert.equal(checked.code, 2, checked.stdout + checked.stderr);
      assert.match(checked.stderr, /compression/);
      assert.match(checked.stderr, /udp datagrams are too small/);
    }),
);

test(
  'compression is shown where proxies are listed: /api/proxies, /api/clients and porthole-client status say it of the compressed proxy, not of the plain one',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const [packedPort, plainPort, adminPort] = await freePorts(3);
      const server = await startRoutedServer(h, {
        http: false,
        allowPorts: [`${packedPort}`, `${plainPort}`],
        admin: { token: ADMIN_TOKEN },
      });
      const token = await issueRoutedToken(server, { name: 'homelab', ports: `${packedPort},${plainPort}` });
      const local = `127.0.0.1:${echo.port}`;
      await startRoutedClient(h, {
        server: server.url,
        token,
        adminListen: `127.0.0.1:${adminPort}`,
        proxies: [
          { name: 'packed', type: 'tcp', local, remote_port: packedPort!, compression: true },
          { name: 'plain', type: 'tcp', local, remote_port: plainPort! },
        ],
      });

      type Listed = { name: string; compression?: boolean };
      const compressionOf = (proxies: Listed[]) => proxies.map((p) => [p.name, p.compression]);
      const { proxies } = (await adminApi(server, '/api/proxies')) as { proxies: Listed[] };
      assert.deepEqual(compressionOf(proxies), [
        ['packed', true],
        ['plain', false],
      ]);
      const { clients } = (await adminApi(server, '/api/clients')) as { clients: { proxies: Listed[] }[] };
      assert.deepEqual(compressionOf(clients[0]?.proxies ?? []), [
        ['packed', true],
        ['plain', false],
      ]);

      const admin = ['--admin', `127.0.0.1:${adminPort}`];
      const json = await run(clientBin, ['status', ...admin, '--json'], { timeoutMs: 15_000 });
      assert.equal(json.code, 0, json.stdout + json.stderr);
      const status = JSON.parse(json.stdout) as {
        proxies: (Listed & { compression_unavailable?: string })[];
      };
      assert.deepEqual(
        status.proxies.map((p) => [p.name, p.compression, p.compression_unavailable]),
        [
          ['packed', true, undefined],
          ['plain', false, undefined],
        ],
      );
      const text = await run(clientBin, ['status', ...admin], { timeoutMs: 15_000 });
      assert.equal(text.code, 0, text.stdout + text.stderr);
      assert.match(text.stdout, /^PROXY .* OPEN +COMPRESSION +DETAIL$/m, text.stdout);
      assert.match(text.stdout, /^packed .* registered +0 +on +public /m, text.stdout);
      assert.match(text.stdout, /^plain .* registered +0 +off +public /m, text.stdout);
      t.diagnostic(text.stdout);
    }),
);

test(
  'a reload turns compression on, then off: the proxy is registered again with it, new connections follow it, and those opened before each reload keep echoing',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const text = textFile(4 * MIB);
      const sum = sha256Hex(text);
      const service = await startTransferService(h, { text });
      const [port] = await freePorts(1);
      const server = await startRoutedServer(h, { http: false, allowPorts: [`${port}`] });
      const relay = await startCountingRelay(h, server.port);
      const token = await issueRoutedToken(server, { name: 'homelab', ports: `${port}` });
      const logs: RoutedProxy = {
        name: 'logs',
        type: 'tcp',
        local: `127.0.0.1:${service}`,
        remote_port: port!,
      };
      const client = await startRoutedClient(h, {
        server: relay.url,
        token,
        proxies: [logs],
      });
      const reloadTo = async (proxy: RoutedProxy) => {
        const from = client.proc.mark();
        const serverFrom = server.proc.mark();
        await rewriteRoutedClientProxies(client.configPath, [proxy]);
        client.proc.kill('SIGHUP');
        const reloaded = await client.proc.waitForMsg('config reloaded', 15_000, { from });
        assert.deepEqual(reloaded.changed, ['logs'], 'compression is a change the server must hear of');
        // On its own port: the server gives the listener it has the new spec, for the connections to come.
        await server.proc.waitForMsg('proxy changed', 15_000, {
          from: serverFrom,
          fields: { proxy: 'logs' },
        });
        return client.proc.waitForMsg('proxy registered', 15_000, { from, fields: { proxy: 'logs' } });
      };
      const download = async (what: string) => {
        const m = await measured(relay, () => downloadFile(port!, 'text', sum));
        t.diagnostic(`${what}: ${m.wire} bytes on the tunnel hop for ${text.length}`);
        assert.ok(m.whole, `${what}: the sha256 differs`);
        return m.wire;
      };

      const plainBefore = await echoing(port!, 'echo\n');
      await plainBefore.echo('plain\n', 'before any reload');
      assert.ok((await download('plain')) >= text.length);

      const on = await reloadTo({ ...logs, compression: true });
      assert.equal(on.compression, true, 'registered again, compressed');
      await plainBefore.echo('still plain\n', 'a connection from before compression was turned on');
      assert.ok((await download('compressed')) < text.length / 4);
      const packedBefore = await echoing(port!, 'echo\n');
      await packedBefore.echo('packed\n', 'a compressed connection');

      const off = await reloadTo(logs);
      assert.equal(off.compression, undefined, 'registered again, plain');
      await plainBefore.echo('plain to the end\n', 'a connection from before both reloads');
      await packedBefore.echo('still packed\n', 'a connection from before compression was turned off');
      assert.ok((await download('plain again')) >= text.length);
      plainBefore.sock.destroy();
      packedBefore.sock.destroy();
    }),
);

test(
  'a compressed dir: proxy serves plain curl and a wget -r mirror whole, on fewer tunnel bytes',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      // A small site of text: a log, and pages of it in a subdirectory (reached through the listings).
      const share = h.path('share');
      await mkdir(path.join(share, 'pages'), { recursive: true });
      const files: Record<string, Buffer> = {
        'app.log': textFile(2 * MIB),
        'pages/one.json': textFile(256 * 1024),
        'pages/two.json': textFile(512 * 1024),
      };
      for (const [name, bytes] of Object.entries(files)) await writeFile(path.join(share, name), bytes);
      const total = Object.values(files).reduce((sum, bytes) => sum + bytes.length, 0);
      const server = await startRoutedServer(h);
      const relay = await startCountingRelay(h, server.port);
      const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['files.test'] });
      const client = await startRoutedClient(h, {
        server: relay.url,
        token,
        proxies: [
          { name: 'files', type: 'http', local: `dir:${share}`, hosts: ['files.test'], compression: true },
        ],
      });
      assert.equal(client.registered.get('files')?.compression, true);
      const base = `http://127.0.0.1:${server.httpPort}`;

      // Plain curl: no Accept-Encoding, so the directory server sends the file as it is and only the
      // tunnel hop compresses.
      let before = relay.bytes();
      const got = await run('curl', [
        '-sS',
        '-f',
        '-H',
        'Host: files.test',
        '-D',
        '-',
        '-o',
        h.path('app.log'),
        `${base}/app.log`,
      ]);
      const curlWire = relay.bytes() - before;
      assert.equal(got.code, 0, got.stderr);
      assert.doesNotMatch(got.stdout, /^content-encoding:/im, 'the file itself is not encoded');
      assert.equal(sha256Hex(await readFile(h.path('app.log'))), sha256Hex(files['app.log']!));
      t.diagnostic(`curl: ${curlWire} bytes on the tunnel hop for ${files['app.log']!.length}`);
      assert.ok(curlWire < files['app.log']!.length / 4, `${curlWire} bytes on the tunnel hop`);

      const mirror = h.path('mirror');
      before = relay.bytes();
      await runOk(
        'wget',
        ['-q', '-r', '-np', '-nH', '-P', mirror, '--header', 'Host: files.test', `${base}/`],
        {
          timeoutMs: 60_000,
        },
      );
      const wgetWire = relay.bytes() - before;
      for (const [name, bytes] of Object.entries(files))
        assert.equal(
          sha256Hex(await readFile(path.join(mirror, name))),
          sha256Hex(bytes),
          `${name} mirrored`,
        );
      t.diagnostic(`wget -r: ${wgetWire} bytes on the tunnel hop for ${total} in files`);
      assert.ok(wgetWire < total / 4, `${wgetWire} bytes on the tunnel hop for ${total}`);
    }),
);
