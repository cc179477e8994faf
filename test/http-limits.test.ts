// Limits on the http vhost port against hostile visitors: slowloris (headers trickling in a byte a
// second) is cut at headers_timeout, silent connections at idle_timeout, oversize heads get 431, and a
// normal visitor is served throughout. And against a local service that never answers: 504 at
// response_timeout.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer, type ServerResponse } from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import tls from 'node:tls';
import { WebSocket } from 'ws';
import { curl, curlDownloadSize } from './lib/curl.js';
import { rawUpgradeRequest, startHttpBackend } from './lib/http-backend.js';
import { eventually, sleep, waitFor, withHarness } from './lib/processes.js';
import {
  issueRoutedToken,
  makeCa,
  makeCert,
  startAppTunnel,
  startRoutedClient,
  startRoutedServer,
} from './lib/routing.js';

interface Loris {
  socket: net.Socket;
  openedAt: number;
  closedAt: number | undefined;
  reply: string;
  bytesSent: number;
}

/** A connection that sends a request head one byte per second and never finishes it. */
function slowloris(port: number, silent: boolean): Loris {
  const socket = net.connect({ host: '127.0.0.1', port });
  const loris: Loris = { socket, openedAt: Date.now(), closedAt: undefined, reply: '', bytesSent: 0 };
  const head = Buffer.from(
    'GET / HTTP/1.1\r\nHost: app.test\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa',
  );
  let timer: NodeJS.Timeout | undefined;
  socket.on('connect', () => {
    if (silent) return;
    const send = () => {
      if (socket.destroyed || loris.bytesSent >= head.length) return;
      socket.write(head.subarray(loris.bytesSent, loris.bytesSent + 1));
      loris.bytesSent += 1;
    };
    send();
    timer = setInterval(send, 1000);
  });
  socket.on('data', (d: Buffer) => {
    loris.reply += d.toString('latin1');
  });
  socket.on('error', () => {});
  socket.on('close', () => {
    clearInterval(timer);
    loris.closedAt = Date.now();
  });
  return loris;
}

test(
  'slowloris and silent connections are closed at their timeouts while normal requests are served',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, {
        client: 'limits',
        server: {
          http: {
            headers_timeout: '3s',
            idle_timeout: '4s',
            keep_alive_timeout: '2s',
            request_timeout: '10s',
          },
        },
      });
      const port = server.httpPort!;
      // A WebSocket opened now must outlive idle_timeout and headers_timeout: once upgraded it is not
      // an idle HTTP connection any more.
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { Host: 'app.test' } });
      const wsMessages: string[] = [];
      ws.on('message', (d: Buffer) => wsMessages.push(d.toString()));
      ws.on('error', () => {});
      h.onCleanup(() => ws.terminate());
      const loris = Array.from({ length: 40 }, (_, i) => slowloris(port, i % 8 === 0));
      h.onCleanup(() => {
        for (const l of loris) l.socket.destroy();
      });
      await sleep(1500);
      // In the middle of the attack, an ordinary request is answered promptly.
      const started = Date.now();
      const normal = await curl(['-H', 'Host: app.test'], `http://127.0.0.1:${port}/during`);
      const normalMs = Date.now() - started;
      assert.equal(normal.status, 200, normal.stderr);
      assert.ok(normalMs < 2000, `a normal request took ${normalMs} ms during the attack`);
      t.diagnostic(`normal request during slowloris: ${normalMs} ms`);

      // Every attacker is cut off: trickling ones after headers_timeout (3 s, checked each 750 ms), silent
      // ones after idle_timeout (4 s). None lives to 8 s.
      const deadline = Date.now() + 8000;
      while (loris.some((l) => l.closedAt === undefined) && Date.now() < deadline) await sleep(200);
      const open = loris.filter((l) => l.closedAt === undefined);
      assert.equal(
        open.length,
        0,
        `${open.length} of ${loris.length} slow connections are still open after 8 s`,
      );
      const lifetimes = loris.map((l) => (l.closedAt ?? 0) - l.openedAt);
      t.diagnostic(`slow connections closed after ${Math.min(...lifetimes)}-${Math.max(...lifetimes)} ms`);
      const trickling = loris.filter((_, i) => i % 8 !== 0);
      for (const l of trickling) {
        assert.ok(l.bytesSent < 60, 'the head never completed');
        assert.ok((l.closedAt ?? 0) - l.openedAt >= 2500, 'not closed before headers_timeout');
        if (l.reply) assert.match(l.reply, /^HTTP\/1\.1 408 /, `reply: ${l.reply.slice(0, 80)}`);
      }
      assert.equal(
        backend.requests.filter((r) => r.url !== '/during').length,
        0,
        'no slow request reached the service',
      );

      // The WebSocket, silent for ~8 s (twice idle_timeout), still works.
      assert.equal(ws.readyState, WebSocket.OPEN, 'the WebSocket was closed by an HTTP timeout');
      ws.send('still here');
      const wsDeadline = Date.now() + 5000;
      while (wsMessages.length < 2 && Date.now() < wsDeadline) await sleep(20);
      assert.deepEqual(wsMessages.slice(1), ['echo:still here']);

      // Still responsive afterwards.
      const after = await curl(['-H', 'Host: app.test'], `http://127.0.0.1:${port}/after`);
      assert.equal(after.status, 200);
    }),
);

test('a request head over max_header_size gets 431 and the port keeps serving', { timeout: 30_000 }, (t) =>
  withHarness(t, async (h) => {
    const backend = await startHttpBackend('app');
    h.onCleanup(() => backend.close());
    const { server } = await startAppTunnel(h, backend.port, {
      client: 'big',
      server: { http: { max_header_size: 8192 } },
    });
    const url = `http://127.0.0.1:${server.httpPort}/`;
    const fits = await curl(['-H', 'Host: app.test', '-H', `X-Big: ${'a'.repeat(6000)}`], url);
    assert.equal(fits.status, 200, 'a 6 KB header fits in 8 KiB');
    for (const size of [9000, 64 * 1024]) {
      const big = await curl(['-H', 'Host: app.test', '-H', `X-Big: ${'a'.repeat(size)}`], url);
      assert.equal(big.status, 431, `a ${size}-byte header: status ${big.status} ${big.stderr}`);
    }
    const many = ['-H', 'Host: app.test'];
    for (let i = 0; i < 200; i++) many.push('-H', `X-Many-${i}: ${'b'.repeat(50)}`);
    assert.equal((await curl(many, url)).status, 431, '200 headers of 60 bytes');
    assert.equal(backend.requests.length, 1, 'only the request that fitted reached the service');
    assert.equal((await curl(['-H', 'Host: app.test'], url)).status, 200);
  }),
);

/**
 * A local service that takes request heads up to 2 MiB (Node's own 16 KiB would answer 431 itself) and
 * answers with the length of the Cookie it got; with `?set-cookie=N`, it sets a cookie of N bytes.
 */
async function startBigHeadService(h: Parameters<Parameters<typeof withHarness>[1]>[0]) {
  const service = createServer({ maxHeaderSize: 2 * 1024 * 1024 }, (req, res) => {
    const setCookie = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('set-cookie') ?? 0);
    if (setCookie > 0) res.setHeader('Set-Cookie', `sso=${'c'.repeat(setCookie)}`);
    res.end(`cookie ${req.headers.cookie?.length ?? 0}\n`);
  });
  service.listen(0, '127.0.0.1');
  await once(service, 'listening');
  h.onCleanup(() => service.close());
  return (service.address() as net.AddressInfo).port;
}

test(
  'a 24 KiB cookie passes at the default max_header_size (32 KiB) over http and https, a 40 KiB one gets 431 and a warn line, and passes at 64 KiB; at 1 MiB a 500 KiB cookie and a 90 KiB Set-Cookie pass',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const servicePort = await startBigHeadService(h);
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'porthole edge', ['app.test']);
      // From a file: one argument may hold at most 128 KiB (Linux's MAX_ARG_STRLEN).
      const cookie = async (bytes: number) => [
        '-H',
        `@${await h.file(`cookie-${bytes}`, `Cookie: session=${'s'.repeat(bytes - 'session='.length)}\n`)}`,
      ];
      const get = (port: number, args: string[], scheme = 'http', path = '/') =>
        curl(
          ['--cacert', ca.cert, '--resolve', `app.test:${port}:127.0.0.1`, ...args],
          `${scheme}://app.test:${port}${path}`,
        );

      // Before: Node's 16 KiB, and a big session cookie or SSO token got 431 on every page.
      const byDefault = await startAppTunnel(h, servicePort, {
        client: 'defaults',
        server: { https: { certs: [edge], keys: {} } },
      });
      const http = byDefault.server.httpPort!;
      const https = byDefault.server.httpsPort!;
      for (const [scheme, port] of [
        ['http', http],
        ['https', https],
      ] as const) {
        const r = await get(port, await cookie(24 * 1024), scheme);
        assert.equal(r.status, 200, `${scheme}: ${r.stderr} ${r.body}`);
        assert.equal(r.body, `cookie ${24 * 1024}\n`);
        const over = await get(port, await cookie(40 * 1024), scheme);
        assert.equal(over.status, 431, `${scheme}: ${over.stderr} ${over.body}`);
      }
      // The operator hears of it (a line per 10 s at most), with the key to raise.
      const line = await byDefault.server.proc.waitForMsg(
        'http request heads over max_header_size refused (431)',
        5000,
      );
      assert.equal(line.max_header_size, 32768);
      assert.match(String(line.remote_addr), /^127\.0\.0\.1:\d+$/);
      assert.ok(Number(line.refused) >= 1);

      const raised = await startAppTunnel(h, servicePort, {
        client: 'raised',
        server: { http: { max_header_size: 65536 }, https: { certs: [edge], keys: {} } },
      });
      for (const [scheme, port] of [
        ['http', raised.server.httpPort!],
        ['https', raised.server.httpsPort!],
      ] as const) {
        const r = await get(port, await cookie(40 * 1024), scheme);
        assert.equal(r.status, 200, `${scheme}: ${r.stderr} ${r.body}`);
      }
      assert.equal((await get(raised.server.httpPort!, await cookie(70 * 1024))).status, 431);

      // The most it may be; the service's answer may have as large a head (it was 64 KiB at most: 502).
      // 90 KiB: curl itself takes no response field over 100 KiB.
      const highest = await startAppTunnel(h, servicePort, {
        client: 'highest',
        server: { http: { max_header_size: 1024 * 1024 } },
      });
      const big = await get(highest.server.httpPort!, await cookie(500 * 1024));
      assert.equal(big.status, 200, `${big.stderr} ${big.body}`);
      assert.equal(big.body, `cookie ${500 * 1024}\n`);
      const setCookie = await get(highest.server.httpPort!, [], 'http', '/?set-cookie=92160');
      assert.equal(setCookie.status, 200, `${setCookie.stderr} ${setCookie.body.slice(0, 200)}`);
      assert.equal(setCookie.headers['set-cookie']?.length, 'sso='.length + 92160);
    }),
);

test(
  'a request with more than a thousand header fields, within max_header_size, reaches the service with every one; past 2,048 it gets 431',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      // The service keeps every field too (Node's own default would drop them past a thousand).
      backend.server.maxHeadersCount = 0;
      const { server } = await startAppTunnel(h, backend.port, { client: 'fields' });
      const url = `http://127.0.0.1:${server.httpPort}/many-fields`;
      // 1,200 short fields (11 KB, under the default 64 KiB), the last one after them.
      const lines = Array.from({ length: 1200 }, (_, i) => `f${i}:v`);
      const file = await h.file('fields.txt', `${[...lines, 'X-Last: here'].join('\n')}\n`);
      const r = await curl(['-H', 'Host: app.test', '-H', `@${file}`], url);
      assert.equal(r.status, 200, `${r.stderr} ${r.body}`);
      const seen = backend.requests.at(-1)!;
      const kept = Object.keys(seen.headers).filter((name) => /^f\d+$/.test(name)).length;
      t.diagnostic(
        `the service got ${kept} of the 1200 fields, x-last ${JSON.stringify(seen.headers['x-last'])}`,
      );
      assert.equal(kept, 1200, 'every field reached the service');
      assert.equal(seen.headers['x-last'], 'here');

      // Past one field per 8 bytes of max_header_size (2,048 here) a request gets 431, not passed on cut
      // short: Node keeps only the first fields. Empty ones fit the size 4 to 1 (Node counts names and
      // values only), and 16,000 of them cost ~390 KB each while held, which is what this bounds.
      const requestsBefore = backend.requests.length;
      // "Name;" is curl's way to send a field with no value (a bare "Name:" would remove it); with Host,
      // User-Agent and Accept: 2,049 fields.
      const empty = Array.from({ length: 2049 - 3 }, (_, i) => `e${i};`);
      const tooMany = await h.file('too-many.txt', `${empty.join('\n')}\n`);
      const refused = await curl(['-H', 'Host: app.test', '-H', `@${tooMany}`], url);
      assert.equal(refused.status, 431, `${refused.stderr} ${refused.body}`);
      assert.match(refused.body, /at most 2048 header fields/);
      assert.equal(backend.requests.length, requestsBefore, 'the service never saw it');
    }),
);

interface StuckRequest {
  method: string;
  url: string;
  /** Which TCP connection (1, 2, ...) of the service carried it. */
  conn: number;
  bodyBytes: number;
  /** When the head and the last byte of the body arrived (Date.now()). */
  headAt: number;
  endedAt: number;
}

/** A local HTTP service that reads every request in full and answers only while `answering` is set. */
async function startStuckService() {
  const state = {
    answering: false,
    requests: [] as StuckRequest[],
    connections: 0,
    closedConnections: 0,
    port: 0,
    held: [] as ServerResponse[],
  };
  const server = createServer((req, res) => {
    const seen: StuckRequest = {
      method: req.method ?? '',
      url: req.url ?? '',
      conn: (req.socket as unknown as { conn: number }).conn,
      bodyBytes: 0,
      headAt: Date.now(),
      endedAt: 0,
    };
    state.requests.push(seen);
    req.on('data', (d: Buffer) => {
      seen.bodyBytes += d.length;
    });
    req.on('end', () => {
      seen.endedAt = Date.now();
      if (!state.answering) {
        state.held.push(res);
        return;
      }
      res.writeHead(200, { 'Content-Type': 'application/json' });
      res.end(JSON.stringify(seen));
    });
  });
  server.on('connection', (socket) => {
    state.connections += 1;
    (socket as unknown as { conn: number }).conn = state.connections;
    socket.on('close', () => {
      state.closedConnections += 1;
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.port = (server.address() as net.AddressInfo).port;
  const close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return Object.assign(state, { close });
}

test(
  'a local service that never answers: 504 at response_timeout, its stream is dropped, other requests are served',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [app, stuck] = await Promise.all([startHttpBackend('app'), startStuckService()]);
      h.onCleanup(() => Promise.all([app.close(), stuck.close()]));
      const server = await startRoutedServer(h, { http: { response_timeout: '1s' } });
      const token = await issueRoutedToken(server, { name: 'slow', hosts: ['app.test', 'stuck.test'] });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'app', type: 'http', local: `127.0.0.1:${app.port}`, hosts: ['app.test'] },
          { name: 'stuck', type: 'http', local: `127.0.0.1:${stuck.port}`, hosts: ['stuck.test'] },
        ],
      });
      const base = `http://127.0.0.1:${server.httpPort}`;
      const timed = async (args: string[], path: string) => {
        const started = Date.now();
        const r = await curl(args, `${base}${path}`);
        return { ...r, ms: Date.now() - started };
      };

      // A GET the service reads and never answers; meanwhile another route answers at once.
      const mark = server.proc.mark();
      const hung = timed(['-H', 'Host: stuck.test'], '/hang');
      await waitFor('the service to receive /hang', () => stuck.requests.length === 1, 5000);
      const during = await timed(['-H', 'Host: app.test'], '/during');
      assert.equal(during.status, 200, during.stderr);
      // The server's own time for it: curl's start-up on a loaded machine is not the proxy's doing.
      const duringLine = await server.proc.waitForMsg('http request', 5000, {
        from: mark,
        fields: { path: '/during' },
      });
      assert.ok(Number(duringLine.ms) < 900, `app.test took ${duringLine.ms} ms while stuck.test hung`);
      const first = await hung;
      assert.equal(first.status, 504, `${first.status} ${first.stderr}`);
      assert.match(first.body, /did not answer within 1 s\./);
      assert.ok(first.ms >= 1000 && first.ms < 10_000, `504 after ${first.ms} ms`);
      t.diagnostic(`504 after ${first.ms} ms`);
      const failed = await server.proc.waitForMsg('http forward failed', 5000, {
        from: mark,
        fields: { proxy: 'stuck' },
      });
      assert.equal(failed.reason, 'no response head within 1000 ms');
      assert.equal(failed.client, 'slow');
      assert.match(String(failed.remote_addr), /^127\.0\.0\.1:\d+$/);
      const logged = await server.proc.waitForMsg('http request', 5000, {
        from: mark,
        fields: { path: '/hang' },
      });
      assert.equal(logged.status, 504);
      // The tunnel stream was reset, so the service's connection (with the answer still owed) is closed.
      await waitFor('the stuck connection to close', () => stuck.closedConnections === 1, 5000);

      // With a body, the time counts from its last byte: 60 KB uploaded at 20 KB/s (longer than the
      // timeout, so a timer counted from the head would cut it) is read in full, and the 504 comes a second
      // after its end.
      const posted = await timed(
        [
          '-H',
          'Host: stuck.test',
          '--limit-rate',
          '20K',
          '--data-binary',
          `@${await h.file('body', 'x'.repeat(60_000))}`,
        ],
        '/upload',
      );
      const postedAt = Date.now();
      assert.equal(posted.status, 504, `${posted.status} ${posted.stderr}`);
      const upload = stuck.requests.find((r) => r.url === '/upload')!;
      assert.equal(upload.bodyBytes, 60_000, 'the service read the whole body');
      const uploadMs = upload.endedAt - upload.headAt;
      assert.ok(uploadMs >= 1200, `the upload took only ${uploadMs} ms`);
      // The server's timer starts before the service sees the last byte (it still crosses the tunnel and
      // the client), so the bound below 1 s leaves room for a stall on the way.
      const afterBody = postedAt - upload.endedAt;
      assert.ok(afterBody >= 500 && afterBody < 5000, `504 ${afterBody} ms after the body's end`);
      t.diagnostic(`504 ${afterBody} ms after a ${uploadMs} ms upload`);

      // A head in time and a body slower than the timeout (100 chunks 20 ms apart): passed on whole.
      const slowStarted = Date.now();
      const slowBody = await curlDownloadSize('app.test', `${base}/stream?bytes=4000&chunks=100`);
      const slowMs = Date.now() - slowStarted;
      assert.equal(slowBody.code, 0, slowBody.stderr);
      assert.equal(slowBody.stdout, '200 4000', `after ${slowMs} ms`);
      assert.ok(slowMs >= 1500, `the body took ${slowMs} ms`);

      // The service answers again: the next request gets through on a fresh connection, none of the
      // timed-out exchanges' streams was handed out again.
      stuck.answering = true;
      const after = await timed(['-H', 'Host: stuck.test'], '/after');
      assert.equal(after.status, 200, `${after.status} ${after.stderr}`);
      const seen = JSON.parse(after.body) as StuckRequest;
      assert.equal(seen.url, '/after');
      assert.ok(
        stuck.requests.filter((r) => r.url !== '/after').every((r) => r.conn !== seen.conn),
        `/after came on connection ${seen.conn}, which carried a timed-out request`,
      );
      assert.equal(stuck.held.length, 2, 'both timed-out requests had reached the service');

      // Like the other [http] limits, response_timeout is fixed at start: a reload says so and the
      // running value stays.
      const reloadMark = server.proc.mark();
      const text = await readFile(server.config.configPath, 'utf8');
      assert.match(text, /response_timeout = "1s"/);
      await writeFile(server.config.configPath, text.replace('"1s"', '"30s"'));
      server.proc.kill('SIGHUP');
      const restart = await server.proc.waitForMsg(
        'reload: these settings take effect after a restart',
        10_000,
        {
          from: reloadMark,
        },
      );
      assert.deepEqual(restart.keys, ['http limits']);
      stuck.answering = false;
      const again = await timed(['-H', 'Host: stuck.test'], '/again');
      assert.equal(again.status, 504, `${again.status} ${again.stderr}`);
      assert.ok(again.ms >= 1000 && again.ms < 5000, `504 after ${again.ms} ms: still the running 1 s`);
    }),
);

/** Opens a WebSocket through the vhost port; resolves "open" (and the socket) or the refusal's status. */
function openWebSocket(port: number): Promise<{ outcome: string; ws: WebSocket }> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { Host: 'app.test' } });
  return new Promise((resolve) => {
    ws.once('open', () => resolve({ outcome: 'open', ws }));
    ws.once('unexpected-response', (_req, res) => {
      resolve({ outcome: String(res.statusCode), ws });
      res.resume();
    });
    ws.once('error', (err) => resolve({ outcome: err.message, ws }));
  });
}

/** Tries WebSockets until one opens (the last refusal's status in the error), or `timeoutMs` passes. */
function webSocketOnceOpen(port: number, what: string, timeoutMs: number) {
  return eventually(
    what,
    async () => {
      const attempt = await openWebSocket(port);
      if (attempt.outcome !== 'open') throw new Error(attempt.outcome);
      return attempt;
    },
    timeoutMs,
  );
}

test(
  "an http proxy's streams cannot be held: a visitor that stops reading or stops uploading is cut at idle_timeout, a queued request times out, upgrades stop at max_connections",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, {
        client: 'held',
        server: { http: { idle_timeout: '2s', response_timeout: '1500ms', max_streams_per_proxy: 1 } },
        proxyKeys: { max_connections: 1 },
      });
      const port = server.httpPort!;
      const base = `http://127.0.0.1:${port}`;

      // 1. Two slow downloads hold the only stream and the one place for a held request (max_connections)
      // for ~6 s (long enough that a POST started by a slow curl still queues behind them). The POST is not
      // read (so its body never ends) and still gets its 504 at response_timeout, counted from when it arrived.
      const slow = curlDownloadSize('app.test', `${base}/stream?bytes=6000&chunks=300`, 30_000);
      const slowToo = curlDownloadSize('app.test', `${base}/stream?bytes=6000&chunks=300`, 30_000);
      await waitFor(
        'both slow downloads to start',
        () => backend.requests.filter((r) => r.url.startsWith('/stream')).length === 2,
        5000,
      );
      const queuedAt = Date.now();
      const queued = await curl(['-H', 'Host: app.test', '--data-binary', 'queued body'], `${base}/sha256`);
      const queuedMs = Date.now() - queuedAt;
      t.diagnostic(`queued POST: ${queued.status} after ${queuedMs} ms`);
      assert.equal(queued.status, 504, `queued POST: ${queued.status} ${queued.body}`);
      assert.equal(backend.requests.filter((r) => r.url === '/sha256').length, 0);
      assert.equal((await slow).stdout, '200 6000', 'the download that held the stream finished whole');
      assert.equal((await slowToo).stdout, '200 6000', 'the held download finished whole');

      // 2. A visitor asks for 64 MiB and reads none of it: once no byte has moved for idle_timeout its
      // connection is closed, and the stream it held serves the next visitor.
      const stalled = net.connect({ host: '127.0.0.1', port });
      h.onCleanup(() => stalled.destroy());
      stalled.on('error', () => {});
      stalled.pause();
      const mark = server.proc.mark();
      stalled.write(`GET /stream?bytes=${64 * 1024 * 1024}&chunks=4 HTTP/1.1\r\nHost: app.test\r\n\r\n`);
      // (A paused socket does not notice its reset, so the cut is read from the server's log.)
      const cut = await server.proc.waitForMsg('http request', 20_000, {
        from: mark,
        fields: { path: '/stream', reason: 'visitor closed early' },
      });
      t.diagnostic(`the visitor that stopped reading was cut after ${cut.ms} ms`);
      assert.ok(Number(cut.ms) >= 2000, `cut after ${cut.ms} ms, before idle_timeout`);
      const next = await curl(['-H', 'Host: app.test'], `${base}/next`);
      assert.equal(next.status, 200, `the next visitor: ${next.status} ${next.body}`);

      // 2b. A visitor starts an upload the service reads whole before answering, and stops sending
      // mid-body: cut at idle_timeout too (not at request_timeout, minutes later), freeing the stream.
      const uploader = net.connect({ host: '127.0.0.1', port });
      h.onCleanup(() => uploader.destroy());
      uploader.on('error', () => {});
      const uploadMark = server.proc.mark();
      uploader.write(
        'POST /sha256 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\nthe first bytes',
      );
      const uploadCut = await server.proc.waitForMsg('http request', 20_000, {
        from: uploadMark,
        fields: { path: '/sha256', reason: 'visitor closed early' },
      });
      t.diagnostic(`the upload that stopped was cut after ${uploadCut.ms} ms`);
      assert.ok(Number(uploadCut.ms) >= 2000, `cut after ${uploadCut.ms} ms, before idle_timeout`);
      const afterUpload = await curl(['-H', 'Host: app.test'], `${base}/after-upload`);
      assert.equal(afterUpload.status, 200, `after the upload: ${afterUpload.status} ${afterUpload.body}`);

      // 3. Upgrades count against the proxy's max_connections (1): a second WebSocket gets 503 while the
      // first is open, and a third opens once it has closed.
      const first = await openWebSocket(port);
      assert.equal(first.outcome, 'open');
      const second = await openWebSocket(port);
      assert.equal(second.outcome, '503', 'a WebSocket over max_connections');
      first.ws.close();
      await once(first.ws, 'close');
      const third = await webSocketOnceOpen(port, 'a WebSocket after the first closed', 5000);
      third.ws.close();
      await once(third.ws, 'close');

      // 4. An upgrade the service turns down (its 400 passed on) from a visitor that keeps its side open
      // and never closes: the socket, and with it the one upgrade place, is let go all the same.
      const stubborn = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      h.onCleanup(() => stubborn.destroy());
      await once(stubborn, 'connect');
      stubborn.write(rawUpgradeRequest('/not-a-websocket', 'app.test'));
      let turnedDown = '';
      stubborn.on('data', (d: Buffer) => {
        turnedDown += d.toString('latin1');
      });
      await once(stubborn, 'end');
      assert.match(turnedDown, /^HTTP\/1\.1 400 /);
      const fourth = await webSocketOnceOpen(
        port,
        'a WebSocket once the turned-down upgrade let go of its place',
        8000,
      );
      fourth.ws.close();
    }),
);

test(
  'long-held responses (event streams) do not stall a site at max_streams_per_proxy: held ones are bounded by max_connections',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, {
        client: 'held',
        server: { http: { response_timeout: '3s', max_streams_per_proxy: 2 } },
        proxyKeys: { max_connections: 3 },
      });
      const base = `http://127.0.0.1:${server.httpPort!}`;
      const streams = () => backend.requests.filter((r) => r.url.startsWith('/stream')).length;
      // ~12 s each: 600 chunks, one per 20 ms.
      const hold = () => curlDownloadSize('app.test', `${base}/stream?bytes=6000&chunks=600`, 40_000);

      // 1. Three downloads, more than max_streams_per_proxy (2), as many as max_connections (3): all
      // start, and ordinary requests are answered meanwhile, not queued behind them until a 504.
      const held = [hold(), hold(), hold()];
      await waitFor('three held downloads at the service', () => streams() === 3, 5000);
      for (let i = 0; i < 5; i++) {
        const startedAt = Date.now();
        const r = await curl(['-H', 'Host: app.test'], `${base}/ordinary-${i}`);
        const ms = Date.now() - startedAt;
        t.diagnostic(`ordinary request ${i} beside 3 held streams: ${r.status} after ${ms} ms`);
        assert.equal(r.status, 200, `ordinary request ${i}: ${r.status} ${r.body}`);
        assert.ok(ms < 2500, `ordinary request ${i} waited ${ms} ms`);
      }

      // 2. Held streams are bounded: with max_connections (3) held and both streams of the cap taken by two
      // more downloads, the next request waits, and gets its 504 at response_timeout.
      const more = [hold(), hold()];
      await waitFor('two more downloads at the service', () => streams() === 5, 5000);
      const queued = await curl(['-H', 'Host: app.test'], `${base}/queued`);
      assert.equal(queued.status, 504, `a request past both bounds: ${queued.status} ${queued.body}`);
      // Waiting requests are worth a warn line, naming the limits to raise.
      const waited = await server.proc.waitForMsg('http requests wait for a free tunnel stream', 5000);
      assert.equal(waited.proxy, 'app');
      assert.equal(waited.max_streams_per_proxy, 2);
      assert.equal(waited.max_connections, 3);
      for (const r of await Promise.all([...held, ...more]))
        assert.equal(r.stdout, '200 6000', 'every held download finished whole');
    }),
);

test(
  'pipelined requests of a visitor who leaves are all ended: logged, counted, their service requests stopped',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('slow');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, {
        client: 'pipeliner',
        proxy: 'web',
        server: { admin: { token: 'admin-token-for-e2e-0123456789abcdef' } },
      });
      // Three downloads of 2 s each in one write; Node answers them in order, so the second and third
      // wait queued behind the first when the visitor goes.
      const visitor = net.connect({ host: '127.0.0.1', port: server.httpPort! });
      await once(visitor, 'connect');
      const get = (n: number) =>
        `GET /stream?bytes=200000&chunks=100&n=${n} HTTP/1.1\r\nHost: app.test\r\n\r\n`;
      visitor.write(get(1) + get(2) + get(3));
      visitor.resume();
      await waitFor('the service to see all three', () => backend.requests.length === 3, 5000);
      await sleep(200);
      visitor.destroy();

      const lines = await eventually(
        'a line for each request',
        async () => {
          const logged = server.proc.logsWithMsg('http request').filter((l) => l.proxy === 'web');
          return logged.length === 3 ? logged : undefined;
        },
        5000,
      );
      assert.deepEqual(
        lines.map((l) => l.reason),
        ['visitor closed early', 'visitor closed early', 'visitor closed early'],
      );
      const api = async (path: string): Promise<Record<string, Record<string, number>[]>> => {
        const res = await fetch(`${server.adminUrl}${path}`, {
          headers: { Authorization: 'Bearer admin-token-for-e2e-0123456789abcdef' },
        });
        return (await res.json()) as Record<string, Record<string, number>[]>;
      };
      assert.deepEqual(await api('/api/connections'), { connections: [] });
      const web = (await api('/api/proxies')).proxies?.[0];
      assert.deepEqual([web?.open_connections, web?.connections_total], [0, 3]);
      // None of the three downloads ran to its end at the service.
      await waitFor('all three downloads cut at the service', () => backend.cutStreams === 3, 5000);
    }),
);

test(
  'a visitor may pipeline 32 requests served at once and 256 more waiting their turn; a flood closes its connection, and the service never sees the rest',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('slow');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, { client: 'pipeliner', proxy: 'web' });
      const pipeline = async (
        requests: string[],
      ): Promise<{ reply: string; closedBy: 'server' | 'test' }> => {
        const visitor = net.connect({ host: '127.0.0.1', port: server.httpPort! });
        await once(visitor, 'connect');
        let reply = '';
        visitor.on('data', (d: Buffer) => {
          reply += d.toString('latin1');
        });
        visitor.on('error', () => {});
        visitor.write(requests.join(''));
        const closed = new Promise<'server'>((resolve) => visitor.once('close', () => resolve('server')));
        const enough = eventually(
          'every answer',
          async () => (reply.split('HTTP/1.1 200').length - 1 === requests.length ? true : undefined),
          10_000,
        ).then(() => 'test' as const);
        const closedBy = await Promise.race([closed, enough.catch(() => 'test' as const)]);
        visitor.destroy();
        return { reply, closedBy };
      };
      // Within the limit (apt pipelines 10): every request answered, in order.
      const ten = Array.from(
        { length: 10 },
        (_, i) => `GET /anything?n=${i} HTTP/1.1\r\nHost: app.test\r\n\r\n`,
      );
      const polite = await pipeline(ten);
      assert.equal(polite.closedBy, 'test', 'ten pipelined requests are served');
      const order = [...polite.reply.matchAll(/"url":"\/anything\?n=(\d+)"/g)].map((m) => Number(m[1]));
      assert.deepEqual(order, [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
      // 50 in one write (past the 32 served at once): the rest wait their turn, and all are answered in order.
      const fifty = Array.from(
        { length: 50 },
        (_, i) => `GET /anything?n=${i} HTTP/1.1\r\nHost: app.test\r\n\r\n`,
      );
      const burst = await pipeline(fifty);
      assert.equal(burst.closedBy, 'test', 'fifty pipelined requests are served');
      const burstOrder = [...burst.reply.matchAll(/"url":"\/anything\?n=(\d+)"/g)].map((m) => Number(m[1]));
      assert.deepEqual(
        burstOrder,
        Array.from({ length: 50 }, (_, i) => i),
      );
      // 5,000 one-second downloads in one write: past 32 served and 256 waiting, the server closes the
      // connection.
      const before = backend.requests.length;
      const flood = Array.from(
        { length: 5000 },
        (_, i) => `GET /stream?bytes=5000&chunks=50&n=${i} HTTP/1.1\r\nHost: app.test\r\n\r\n`,
      );
      const flooded = await pipeline(flood);
      assert.equal(flooded.closedBy, 'server');
      await server.proc.waitForMsg(
        'http visitors closed for pipelining more unanswered requests than the limit',
        5000,
      );
      await sleep(500);
      const reached = backend.requests.length - before;
      assert.ok(reached <= 32, `${reached} of the flood's requests reached the service`);
      // The proxy serves the next visitor as usual.
      const after = await curl(['-H', 'Host: app.test'], `http://127.0.0.1:${server.httpPort}/anything`);
      assert.equal(after.status, 200, after.stderr);
      assert.match(after.body, /"url":"\/anything"/);
    }),
);

test(
  "request_timeout, when set, ends an upload still arriving with 408 and Connection: close, logged as such; the service's stream is given up and the site serves on",
  { timeout: 45_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, {
        client: 'slow-upload',
        server: { http: { headers_timeout: '2s', request_timeout: '3s', idle_timeout: '30s' } },
      });
      const port = server.httpPort!;
      const uploader = net.connect({ host: '127.0.0.1', port });
      h.onCleanup(() => uploader.destroy());
      uploader.on('error', () => {});
      let reply = '';
      uploader.on('data', (d: Buffer) => {
        reply += d.toString('latin1');
      });
      await once(uploader, 'connect');
      const mark = server.proc.mark();
      const started = Date.now();
      uploader.write('POST /sha256 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\nfirst bytes');
      // Never idle, never whole: 100 bytes every 300 ms.
      const trickle = setInterval(() => uploader.write('x'.repeat(100)), 300);
      h.onCleanup(() => clearInterval(trickle));
      const line = await server.proc.waitForMsg('http request', 15_000, {
        from: mark,
        fields: { path: '/sha256' },
      });
      clearInterval(trickle);
      t.diagnostic(`cut after ${Date.now() - started} ms: ${JSON.stringify(line)}`);
      assert.equal(line.reason, 'request_timeout');
      assert.equal(line.status, 408);
      assert.ok(Number(line.ms) >= 2500, `cut after ${line.ms} ms, before request_timeout`);
      await eventually('the 408 reaches the visitor', async () => /\r\n\r\n/.test(reply), 5_000);
      assert.match(reply, /^HTTP\/1\.1 408 Request Timeout\r\n/);
      assert.match(reply, /\r\nConnection: close\r\n/i);
      assert.match(reply, /request_timeout/);
      assert.equal(
        backend.requests.filter((r) => r.url === '/sha256').length,
        1,
        'the service saw the request begin',
      );
      // The upload's stream was given up, not handed to the next request with a half body in it.
      const upload = await h.file('after.bin', 'y'.repeat(5000));
      const next = await curl(
        ['-H', 'Host: app.test', '--data-binary', `@${upload}`],
        `http://127.0.0.1:${port}/sha256`,
      );
      assert.equal(next.status, 200, next.body);
      assert.match(next.body, /"bytes":5000/);
    }),
);

test('slowloris over https (terminated here) is cut at headers_timeout too', { timeout: 30_000 }, (t) =>
  withHarness(t, async (h) => {
    const ca = await makeCa(h);
    const edge = await makeCert(h, ca, 'porthole edge', ['app.test']);
    const server = await startRoutedServer(h, {
      http: { headers_timeout: '2s', idle_timeout: '30s', request_timeout: '30s' },
      https: { certs: [edge], keys: {} },
    });
    const started = Date.now();
    const socket = tls.connect({
      host: '127.0.0.1',
      port: server.httpsPort!,
      servername: 'app.test',
      ca: await readFile(ca.cert),
    });
    h.onCleanup(() => socket.destroy());
    let reply = '';
    socket.on('data', (d: Buffer) => {
      reply += d.toString('latin1');
    });
    socket.on('error', () => {});
    await once(socket, 'secureConnect');
    socket.write('GET / HTTP/1.1\r\nHost: app.test\r\n');
    // A field every 400 ms: never idle, never a whole head.
    const trickle = setInterval(() => socket.write('X-Slow: a\r\n'), 400);
    h.onCleanup(() => clearInterval(trickle));
    const closed = await Promise.race([
      once(socket, 'close').then(() => Date.now() - started),
      sleep(8000).then(() => -1),
    ]);
    clearInterval(trickle);
    t.diagnostic(`closed after ${closed} ms`);
    assert.ok(closed > 0, 'the slow https head was still open after 8 s');
    assert.ok(closed >= 1500, `closed after ${closed} ms, before headers_timeout`);
    assert.match(reply, /^HTTP\/1\.1 408 /);
  }),
);
