// Limits on the http vhost port against hostile visitors: slowloris (headers trickling in a byte a
// second) is cut at headers_timeout, silent connections at idle_timeout, oversize heads get 431, and a
// normal visitor is served throughout.
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { curl } from './lib/curl.js';
import { startHttpBackend } from './lib/http-backend.js';
import { sleep, withHarness } from './lib/processes.js';
import { issueRoutedToken, startRoutedClient, startRoutedServer } from './lib/routing.js';

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
      const server = await startRoutedServer(h, {
        http: { headers_timeout: '3s', idle_timeout: '4s', keep_alive_timeout: '2s', request_timeout: '10s' },
      });
      const token = await issueRoutedToken(server, { name: 'limits', hosts: ['app.test'] });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [{ name: 'app', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.test'] }],
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
    const server = await startRoutedServer(h, { http: { max_header_size: 8192 } });
    const token = await issueRoutedToken(server, { name: 'big', hosts: ['app.test'] });
    await startRoutedClient(h, {
      server: server.url,
      token,
      proxies: [{ name: 'app', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.test'] }],
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
