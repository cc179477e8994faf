// A Unix socket as a proxy's local service (`local = "unix:PATH"`), as `ssh -R 8080:/run/app.sock` and frp's
// unix_domain_socket plugin allow: a tcp proxy to socat on a socket (bytes both ways, half-close), an http
// proxy to a Node server on a socket (curl through the vhost, a reload moving it from a port to the socket),
// PROXY headers to HAProxy bound on sockets, a missing or stale socket, and what the config refuses.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, writeFileSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { assertVisitorReported, PEER_REPORT, startReportingHaproxy } from './lib/haproxy.js';
import { startTaggedHttp } from './lib/http-backend.js';
import { clientBin, freePort, freePorts, run, waitFor, withHarness } from './lib/processes.js';
import {
  issueRoutedToken,
  rewriteRoutedClientProxies,
  startRoutedClient,
  startRoutedServer,
} from './lib/routing.js';
import { waitUntilAccepting } from './lib/services.js';

/** What a visitor got back after sending `payload` and its FIN: the bytes, and whether the answer ended cleanly. */
interface Exchange {
  data: Buffer;
  ended: boolean;
  error?: string;
}

/**
 * Connects to the public port, sends `payload`, half-closes (unless `keepOpen`), and reads until the other
 * side closes. A `keepOpen` visitor checks an 'end' with an empty write, which a socket its peer reset
 * refuses: Node 20's libuv reports a reset that lands behind unread bytes as an end.
 */
function exchange(port: number, payload: Buffer, opts: { keepOpen?: boolean } = {}): Promise<Exchange> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    const chunks: Buffer[] = [];
    let ended = false;
    let error: string | undefined;
    const timer = setTimeout(() => socket.destroy(new Error('no close within 15 s')), 15_000);
    socket.on('connect', () => (opts.keepOpen ? socket.write(payload) : socket.end(payload)));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('end', () => {
      if (!opts.keepOpen) {
        ended = true;
        return;
      }
      socket.write(Buffer.alloc(0), (err?: NodeJS.ErrnoException | null) => {
        if (err) error = err.code ?? err.message;
        else ended = true;
        socket.end();
      });
    });
    socket.on('error', (err: NodeJS.ErrnoException) => {
      error = err.code ?? err.message;
    });
    socket.on('close', () => {
      clearTimeout(timer);
      resolve({ data: Buffer.concat(chunks), ended, ...(error === undefined ? {} : { error }) });
    });
  });
}

test(
  'a tcp proxy to socat on a Unix socket carries bytes both ways with half-close; status shows the socket',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const socketPath = h.path('sha.sock');
      // sha256sum answers only once it has read to EOF: the visitor's FIN must reach the service as one.
      h.spawn('socat', 'socat', [`UNIX-LISTEN:${socketPath},fork`, 'SYSTEM:sha256sum']);
      await waitUntilAccepting({ path: socketPath }, 'socat');
      const [remotePort, adminPort] = (await freePorts(2)) as [number, number];
      const server = await startRoutedServer(h, { http: false });
      const token = await issueRoutedToken(server, { name: 'unix', ports: String(remotePort) });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        adminListen: `127.0.0.1:${adminPort}`,
        // Relative: resolved next to the config file, which the harness writes in its own directory.
        proxies: [{ name: 'sha', type: 'tcp', local: 'unix:sha.sock', remote_port: remotePort }],
      });
      assert.equal(client.registered.get('sha')?.local, `unix:${socketPath}`);

      const payload = randomBytes(1024 * 1024 + 7);
      const expected = `${createHash('sha256').update(payload).digest('hex')}  -\n`;
      for (let i = 0; i < 3; i++) {
        const got = await exchange(remotePort, payload);
        assert.equal(got.error, undefined);
        assert.equal(got.data.toString(), expected, `exchange ${i}`);
        assert.ok(got.ended, 'the service closed its side with a FIN');
      }
      t.diagnostic(`3 x ${payload.length} bytes in, sha256 out through unix:${socketPath}`);

      // The other way round: the service ends its side first, and the visitor's bytes still reach it.
      const bannerPath = h.path('banner.sock');
      let heard = -1;
      const banner = createServer({ allowHalfOpen: true }, (socket) => {
        let bytes = 0;
        socket.on('data', (chunk: Buffer) => {
          bytes += chunk.length;
        });
        socket.on('end', () => {
          heard = bytes;
          socket.destroy();
        });
        socket.end('banner\n');
      });
      await new Promise<void>((resolve) => banner.listen(bannerPath, resolve));
      h.onCleanup(() => banner.close());
      const bannerPort = await freePort();
      const bannerToken = await issueRoutedToken(server, { name: 'banner', ports: String(bannerPort) });
      await startRoutedClient(h, {
        server: server.url,
        token: bannerToken,
        name: 'banner-client',
        proxies: [{ name: 'banner', type: 'tcp', local: `unix:${bannerPath}`, remote_port: bannerPort }],
      });
      const upload = randomBytes(256 * 1024);
      const afterFin = await new Promise<{ got: string; error?: string }>((resolve) => {
        const socket = connect({ host: '127.0.0.1', port: bannerPort });
        let got = '';
        const timer = setTimeout(() => socket.destroy(new Error('no close within 15 s')), 15_000);
        socket.on('data', (chunk: Buffer) => {
          got += chunk.toString();
        });
        // Only once the service's FIN is here does the visitor send: the tunnel is half-closed by then.
        socket.on('end', () => socket.end(upload));
        socket.on('error', (err) => resolve({ got, error: err.message }));
        socket.on('close', () => {
          clearTimeout(timer);
          resolve({ got });
        });
      });
      assert.deepEqual(afterFin, { got: 'banner\n' });
      await waitFor('the service to read the upload to its end', () => heard !== -1, 10_000);
      assert.equal(heard, upload.length);

      const status = await run(clientBin, ['status', '--config', client.configPath], { timeoutMs: 15_000 });
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, new RegExp(`unix:${socketPath.replace(/[.]/g, '\\.')}`));
      const json = await run(clientBin, ['status', '--admin', `127.0.0.1:${adminPort}`, '--json'], {
        timeoutMs: 15_000,
      });
      const proxies = (JSON.parse(json.stdout) as { proxies: { name: string; local: string }[] }).proxies;
      assert.deepEqual(
        proxies.map((p) => [p.name, p.local]),
        [['sha', `unix:${socketPath}`]],
      );
    }),
);

/**
 * A service on the Unix socket argv[1] that, once a visitor's bytes wait in its socket unread (select, no
 * read), answers "bye" and closes: the close of a Unix socket with bytes unread, which its peer reads as
 * ECONNRESET.
 */
const UNREAD_SERVICE = `
import select, socket, sys, threading
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(sys.argv[1])
server.listen(16)
def serve(conn):
    try:
        select.select([conn], [], [], 30)
        conn.sendall(b"bye\\n")
    except OSError:
        pass
    conn.close()
while True:
    conn, _ = server.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
`;

test(
  'a service on a Unix socket that answers and closes gets its whole answer to the visitor; one that closes on unread bytes resets it; a visitor reset closes it',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      // A Unix peer that closes (not a half-close) fails every write after it with EPIPE, an empty one
      // too: the tunnel took each such close for a reset and cut the answer short (5 of 5 here).
      const answer = Buffer.alloc(2 * 1024 * 1024, 'x');
      const closingPath = h.path('closing.sock');
      const closing = createServer({ pauseOnConnect: true }, (socket) => {
        socket.on('error', () => {});
        socket.write(answer, () => socket.destroy());
      });
      await new Promise<void>((resolve) => closing.listen(closingPath, resolve));
      h.onCleanup(() => closing.close());
      // The visitor says hello and the service closes without reading it: a Unix socket's reset. Python's
      // select tells when the bytes wait unread, which Node cannot without reading them.
      const unreadPath = h.path('unread.sock');
      h.spawn('unread-service', 'python3', ['-c', UNREAD_SERVICE, unreadPath]);
      await waitUntilAccepting({ path: unreadPath }, 'the unread service');
      // A service that holds its connections open, for a visitor that resets first.
      const holdingPath = h.path('holding.sock');
      const held = new Set<Socket>();
      const holding = createServer({ pauseOnConnect: true }, (socket) => {
        held.add(socket);
        socket.on('error', () => {});
      });
      await new Promise<void>((resolve) => holding.listen(holdingPath, resolve));
      h.onCleanup(() => {
        for (const socket of held) socket.destroy();
        holding.close();
      });
      const [closingPort, unreadPort, holdingPort] = (await freePorts(3)) as [number, number, number];
      const server = await startRoutedServer(h, { http: false });
      const token = await issueRoutedToken(server, {
        name: 'unix',
        ports: `${closingPort},${unreadPort},${holdingPort}`,
      });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'closing', type: 'tcp', local: `unix:${closingPath}`, remote_port: closingPort },
          { name: 'unread', type: 'tcp', local: `unix:${unreadPath}`, remote_port: unreadPort },
          { name: 'holding', type: 'tcp', local: `unix:${holdingPath}`, remote_port: holdingPort },
        ],
      });

      for (let i = 0; i < 5; i++) {
        const got = await exchange(closingPort, Buffer.alloc(0), { keepOpen: true });
        assert.deepEqual(
          { ...got, data: got.data.length },
          { data: answer.length, ended: true },
          `download ${i}`,
        );
      }
      const closed = () => client.proc.logsWithMsg('connection closed').filter((l) => l.proxy === 'closing');
      await waitFor('the client to log the five downloads', () => closed().length === 5, 10_000);
      assert.deepEqual(
        closed().map((l) => l.reason),
        Array(5).fill('closed'),
      );

      const reset = await exchange(unreadPort, Buffer.from('hello\n'), { keepOpen: true });
      assert.equal(reset.ended, false, 'not a clean end');
      assert.match(String(reset.error), /^(ECONNRESET|EPIPE)$/);
      await client.proc.waitForMsg('connection closed', 10_000, {
        fields: { proxy: 'unread', reason: 'local reset (ECONNRESET)' },
      });

      // The other way round: a visitor resets while the service's socket is open. A Unix socket has no
      // reset to pass on, and resetAndDestroy() threw on it in the pipe's error handler: the client exited.
      const visitor = connect({ host: '127.0.0.1', port: holdingPort });
      visitor.on('error', () => {});
      visitor.write('hello\n');
      await waitFor('the service to accept the visitor', () => held.size === 1, 10_000);
      visitor.resetAndDestroy();
      await client.proc.waitForMsg('connection closed', 10_000, { fields: { proxy: 'holding' } });
      const after = await exchange(closingPort, Buffer.alloc(0), { keepOpen: true });
      assert.deepEqual({ ...after, data: after.data.length }, { data: answer.length, ended: true });
      assert.ok(client.proc.alive, 'the client outlived the reset');
      t.diagnostic(
        `5 x ${answer.length} bytes whole with a clean end; a close on unread bytes reset the visitor; a visitor's reset left the client up`,
      );
    }),
);

test(
  'an http proxy reaches a Node server on a Unix socket through the vhost, also after a reload moves it there from a port',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const socketPath = h.path('web.sock');
      const tcpPort = await freePort();
      await startTaggedHttp(h, 'tcp', tcpPort);
      const onSocket = await startTaggedHttp(h, 'socket', socketPath);
      let connections = 0;
      onSocket.on('connection', () => connections++);
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, { name: 'unix', hosts: ['app.test'] });
      const proxy = { name: 'app', type: 'http' as const, hosts: ['app.test'] };
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [{ ...proxy, local: `127.0.0.1:${tcpPort}` }],
      });
      const url = `http://127.0.0.1:${server.httpPort}`;
      const before = await curl(['-H', 'Host: app.test'], `${url}/before`);
      assert.equal(before.body, 'tcp GET /before xff=127.0.0.1\n');

      const mark = client.proc.mark();
      await rewriteRoutedClientProxies(client.configPath, [{ ...proxy, local: `unix:${socketPath}` }]);
      client.proc.kill('SIGHUP');
      await client.proc.waitForMsg('config reloaded', 10_000, { from: mark });
      const registered = await client.proc.waitForMsg('proxy registered', 10_000, {
        from: mark,
        fields: { proxy: 'app' },
      });
      assert.equal(registered.local, `unix:${socketPath}`);

      // Two requests on one curl connection: the server's pooled tunnel stream to the socket serves both.
      const r = await run(
        'curl',
        ['-sS', '--max-time', '10', '-H', 'Host: app.test', `${url}/one`, `${url}/two`],
        { timeoutMs: 15_000 },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, 'socket GET /one xff=127.0.0.1\nsocket GET /two xff=127.0.0.1\n');
      t.diagnostic(`socket server saw ${connections} connection(s) for 2 requests`);
      assert.ok(connections >= 1 && connections <= 2);
      const post = await curl(['-H', 'Host: app.test', '--data-binary', 'x'.repeat(100_000)], `${url}/post`);
      assert.equal(post.status, 200);
      assert.equal(post.body, 'socket POST /post xff=127.0.0.1\n');
    }),
);

test(
  "PROXY v1 and v2 headers reach HAProxy bound on Unix sockets with the visitor's address",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const v1Socket = h.path('v1.sock');
      const v2Socket = h.path('v2.sock');
      await startReportingHaproxy(h, [
        {
          name: 'v1',
          bind: `unix@${v1Socket} accept-proxy`,
          answer: `v1 ${PEER_REPORT}`,
          at: { path: v1Socket },
        },
        {
          name: 'v2',
          bind: `unix@${v2Socket} accept-proxy`,
          answer: `v2 ${PEER_REPORT}`,
          at: { path: v2Socket },
        },
      ]);
      const [remoteV1, remoteV2] = (await freePorts(2)) as [number, number];
      const server = await startRoutedServer(h, { http: false });
      const token = await issueRoutedToken(server, { name: 'pp', ports: `${remoteV1},${remoteV2}` });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'v1', type: 'tcp', local: `unix:${v1Socket}`, remote_port: remoteV1, proxy_protocol: 'v1' },
          { name: 'v2', type: 'tcp', local: `unix:${v2Socket}`, remote_port: remoteV2, proxy_protocol: 'v2' },
        ],
      });
      for (const [name, port] of [
        ['v1', remoteV1],
        ['v2', remoteV2],
      ] as const) {
        t.diagnostic(`${name}: haproxy says "${await assertVisitorReported(port, `${name} `)}"`);
      }
    }),
);

test(
  'a missing or stale socket: the visitor is reset (tcp) or answered 502 (http), and the log names the path and why',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const missing = h.path('missing.sock');
      // A file where a socket should be, as a service that stopped leaves its socket: connect is refused.
      const stale = h.path('stale.sock');
      writeFileSync(stale, '');
      const [remoteMissing, remoteStale] = (await freePorts(2)) as [number, number];
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, {
        name: 'gone',
        ports: `${remoteMissing},${remoteStale}`,
        hosts: ['gone.test'],
      });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'missing', type: 'tcp', local: `unix:${missing}`, remote_port: remoteMissing },
          { name: 'stale', type: 'tcp', local: `unix:${stale}`, remote_port: remoteStale },
          { name: 'web', type: 'http', local: `unix:${missing}`, hosts: ['gone.test'] },
        ],
      });

      for (const [proxy, port, reason] of [
        ['missing', remoteMissing, `ENOENT: no socket at ${missing} `],
        ['stale', remoteStale, `ECONNREFUSED: nothing accepts connections on ${stale} `],
      ] as const) {
        const mark = client.proc.mark();
        const got = await exchange(port, Buffer.from('hello\n'));
        assert.equal(got.data.length, 0, `${proxy}: no bytes come back`);
        assert.equal(got.error, 'ECONNRESET', `${proxy}: the visitor is reset`);
        const line = await client.proc.waitForMsg('local connect failed', 10_000, {
          from: mark,
          fields: { proxy },
        });
        t.diagnostic(
          `${proxy}: visitor ${got.error ?? (got.ended ? 'FIN' : 'closed')}; log reason "${line.reason}"`,
        );
        assert.equal(line.local, `unix:${proxy === 'missing' ? missing : stale}`);
        assert.ok(String(line.reason).startsWith(reason), String(line.reason));
      }

      const mark = client.proc.mark();
      const r = await curl(['-H', 'Host: gone.test'], `http://127.0.0.1:${server.httpPort}/`);
      assert.equal(r.status, 502);
      const line = await client.proc.waitForMsg('local connect failed', 10_000, {
        from: mark,
        fields: { proxy: 'web' },
      });
      assert.ok(String(line.reason).startsWith(`ENOENT: no socket at ${missing} `), String(line.reason));
      assert.ok(existsSync(stale));
    }),
);

test(
  'the config refuses a socket for udp, a bare path, and a path too long for a socket address',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const base = ['--server', 'ws://127.0.0.1:9/_porthole', '--token', 'a.b.c'];
      const cases: [string[], RegExp][] = [
        [
          ['--udp', '5353:unix:/run/dns.sock'],
          /command line: --udp: "5353:unix:\/run\/dns.sock": a udp proxy cannot reach a Unix socket/,
        ],
        [
          ['--tcp', '8080:/run/app.sock'],
          /"\/run\/app.sock" looks like a path: a Unix socket is written "unix:\/run\/app.sock"/,
        ],
        [
          ['--tcp', `8080:unix:/run/${'d'.repeat(110)}.sock`],
          /command line: --tcp: the socket path \/run\/d+\.sock is 120 bytes, and a Unix socket's path holds at most 107/,
        ],
      ];
      for (const [flags, message] of cases) {
        const r = await run(clientBin, ['check', ...base, ...flags], { timeoutMs: 15_000 });
        assert.equal(r.code, 2, `${flags.join(' ')}: ${r.stdout}${r.stderr}`);
        assert.match(r.stderr, message);
      }
      const file = await h.file(
        'udp.toml',
        [
          'server = "ws://127.0.0.1:9/_porthole"',
          'token = "a.b.c"',
          '[[proxies]]',
          'name = "dns"',
          'type = "udp"',
          'local = "unix:/run/dns.sock"',
          'remote_port = 5353',
          '',
        ].join('\n'),
      );
      const r = await run(clientBin, ['check', '--config', file], { timeoutMs: 15_000 });
      assert.equal(r.code, 2);
      assert.match(
        r.stderr,
        /proxies\[0\] \("dns"\)\.local: a udp proxy cannot reach a Unix socket: give its service as "host:port"/,
      );
    }),
);
