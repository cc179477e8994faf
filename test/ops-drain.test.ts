// SIGTERM drain with real processes: stop accepting, GoAway, let open connections finish within
// shutdown_timeout, cut the rest when it runs out, and exit 0 either way.
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { curlDownloadSize } from './lib/curl.js';
import { startHttpBackend } from './lib/http-backend.js';
import {
  clientBin,
  freePort,
  freePorts,
  type Harness,
  run,
  waitFor,
  withHarness,
  withTimeout,
} from './lib/processes.js';
import { startAppTunnel } from './lib/routing.js';
import { EchoPinger, startEchoServer, tryConnect } from './lib/services.js';
import { patternBytes, sha256Hex } from './lib/sha-stream.js';
import { startTunnel } from './lib/tunnel.js';

const REPLY_BYTES = 1024 * 1024;

/** A service that answers a visitor's first bytes `delayMs` later with REPLY_BYTES pattern bytes, then FIN. */
async function startDelayedReplyService(h: Harness, delayMs: number) {
  const reply = patternBytes(REPLY_BYTES, 'drain-reply');
  const state = { accepted: 0, repliedAt: Number.POSITIVE_INFINITY };
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    state.accepted += 1;
    sock.on('error', () => {});
    sock.once('data', () => {
      const timer = setTimeout(() => {
        state.repliedAt = Date.now();
        sock.end(reply);
      }, delayMs);
      sock.on('close', () => clearTimeout(timer));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  h.onCleanup(() => new Promise((resolve) => server.close(resolve)));
  return { port: (server.address() as net.AddressInfo).port, state, sha: sha256Hex(reply) };
}

/** Connects, sends a request, and collects the reply until the service's FIN. */
function request(port: number) {
  const sock = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  const reply = new Promise<{ bytes: number; sha: string; error?: string }>((resolve) => {
    sock.on('data', (d: Buffer) => chunks.push(d));
    sock.on('end', () => {
      const all = Buffer.concat(chunks);
      resolve({ bytes: all.length, sha: sha256Hex(all) });
      sock.end();
    });
    sock.on('error', (err) => resolve({ bytes: -1, sha: '', error: err.message }));
  });
  sock.on('connect', () => sock.write('GO'));
  return { sock, reply };
}

test(
  'server SIGTERM: a connection that finishes within shutdown_timeout completes, new ones are refused, exit 0',
  {
    timeout: 60_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      const service = await startDelayedReplyService(h, 1500);
      const remotePort = await freePort();
      const { server, client, publicPort } = await startTunnel(
        h,
        [{ name: 'slow', local: `127.0.0.1:${service.port}`, remotePort }],
        { server: { shutdownTimeout: '6s' } },
      );
      const visitor = request(publicPort);
      await waitFor(
        'the service to accept the tunnelled connection',
        () => service.state.accepted === 1,
        10_000,
      );
      const clientMark = client.proc.mark();
      const sigtermAt = Date.now();
      server.proc.kill('SIGTERM');
      const shutting = await server.proc.waitForMsg('shutting down', 5000);
      assert.equal(shutting.open_connections, 1);
      // Draining: the public listener is closed at once, while the open connection carries on.
      await server.proc.waitForMsg('proxy closed', 5000, { fields: { proxy: 'slow' } });
      assert.equal(await tryConnect('127.0.0.1', publicPort, 2000), 'refused');
      const notice = await client.proc.waitForMsg('server notice', 5000, {
        from: clientMark,
        fields: { code: 'shutdown' },
      });
      assert.match(String(notice.reason), /shutting down/);

      const reply = await withTimeout(visitor.reply, 10_000, () => 'the delayed reply');
      assert.deepEqual(reply, { bytes: REPLY_BYTES, sha: service.sha });
      const exit = await withTimeout(server.proc.exited, 10_000, () => 'server exit');
      const exitedAt = Date.now();
      const elapsed = exitedAt - sigtermAt;
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.ok(
        exitedAt >= service.state.repliedAt,
        `the server waited for the open connection (exited ${exitedAt - service.state.repliedAt} ms after the reply)`,
      );
      assert.ok(
        elapsed < 5000,
        `the server exited once it was idle, well before shutdown_timeout (${elapsed} ms)`,
      );
      assert.equal(server.proc.logsWithMsg('shutdown timeout: closing open connections').length, 0);
      const closed = await server.proc.waitForMsg('connection closed', 1000, { fields: { proxy: 'slow' } });
      assert.equal(closed.reason, 'closed');
    }),
);

test(
  'server SIGTERM: a connection still open when shutdown_timeout runs out is closed, exit 0',
  {
    timeout: 60_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const remotePort = await freePort();
      const { server, publicPort } = await startTunnel(
        h,
        [{ name: 'idle', local: `127.0.0.1:${echo.port}`, remotePort }],
        { server: { shutdownTimeout: '2s' } },
      );
      const pinger = await EchoPinger.connect('127.0.0.1', publicPort);
      h.onCleanup(() => pinger.close());
      assert.ok(await pinger.ping());
      const sigtermAt = Date.now();
      server.proc.kill('SIGTERM');
      await server.proc.waitForMsg('shutting down', 5000);
      // Still carried during the drain.
      assert.ok(await pinger.ping(), 'the open connection keeps working while the server drains');
      const timeoutLine = await server.proc.waitForMsg('shutdown timeout: closing open connections', 5000);
      assert.equal(timeoutLine.open_connections, 1);
      const exit = await withTimeout(server.proc.exited, 10_000, () => 'server exit');
      const elapsed = Date.now() - sigtermAt;
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.ok(elapsed >= 1900 && elapsed < 6000, `exit after the 2 s shutdown_timeout (${elapsed} ms)`);
      await waitFor(
        'the visitor connection to be closed',
        () => pinger.failures.includes('socket closed'),
        5000,
      );
    }),
);

test(
  'client SIGTERM: unregisters, lets an open connection finish, exit 0; the server frees the port',
  {
    timeout: 60_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      const service = await startDelayedReplyService(h, 2500);
      const [remotePort, adminPort] = (await freePorts(2)) as [number, number];
      const { server, client, publicPort } = await startTunnel(
        h,
        [{ name: 'slow', local: `127.0.0.1:${service.port}`, remotePort }],
        { client: { shutdownTimeout: '6s', adminListen: `127.0.0.1:${adminPort}` } },
      );
      const visitor = request(publicPort);
      await waitFor(
        'the service to accept the tunnelled connection',
        () => service.state.accepted === 1,
        10_000,
      );
      const serverMark = server.proc.mark();
      const sigtermAt = Date.now();
      client.proc.kill('SIGTERM');
      await client.proc.waitForMsg('shutting down', 5000);
      await server.proc.waitForMsg('proxy closed', 5000, {
        from: serverMark,
        fields: { proxy: 'slow', reason: 'unregistered by client' },
      });
      assert.equal(await tryConnect('127.0.0.1', publicPort, 2000), 'refused');
      // What `status` says while the open connection finishes: stopping, and the proxy no longer served
      // (it said "registered" until the client exited).
      const status = await run(clientBin, ['status', '--admin', `127.0.0.1:${adminPort}`, '--json'], {
        timeoutMs: 5000,
      });
      assert.equal(status.code, 3, status.stdout + status.stderr);
      const stopping = JSON.parse(status.stdout) as {
        state: string;
        proxies: { state: string; reason?: string }[];
      };
      assert.equal(stopping.state, 'stopping');
      assert.deepEqual(
        stopping.proxies.map((p) => [p.state, p.reason]),
        [['closed', 'unregistered: the client is shutting down']],
      );
      assert.ok(service.state.repliedAt === Number.POSITIVE_INFINITY, 'status was asked before the reply');
      const reply = await withTimeout(visitor.reply, 10_000, () => 'the delayed reply');
      assert.deepEqual(reply, { bytes: REPLY_BYTES, sha: service.sha });
      const exit = await withTimeout(client.proc.exited, 10_000, () => 'client exit');
      const exitedAt = Date.now();
      const elapsed = exitedAt - sigtermAt;
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.ok(
        exitedAt >= service.state.repliedAt && elapsed < 5000,
        `the client waited for its open connection, and no longer (exited ${elapsed} ms after SIGTERM, ${exitedAt - service.state.repliedAt} ms after the reply)`,
      );
      await server.proc.waitForMsg('client disconnected', 5000, { from: serverMark });
      assert.ok(server.proc.alive);
    }),
);

test(
  'SIGTERM to the server, or to the client, lets an http request under way finish whole, then exits 0',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      for (const stopping of ['server', 'client'] as const) {
        const { server, client } = await startAppTunnel(h, backend.port, {
          client: `drain-${stopping}`,
          proxy: 'web',
          server: { top: { shutdown_timeout: '10s' }, name: `server-${stopping}` },
          clientProcess: `client-${stopping}`,
        });
        // 200 kB in 100 chunks 20 ms apart: two seconds under way.
        const path = `/stream?bytes=200000&chunks=100&drain=${stopping}`;
        const download = curlDownloadSize('app.test', `http://127.0.0.1:${server.httpPort}${path}`, 30_000);
        await waitFor('the download to start', () => backend.requests.some((r) => r.url === path), 5000);
        const proc = stopping === 'server' ? server.proc : client.proc;
        const sigtermAt = Date.now();
        proc.kill('SIGTERM');
        const result = await download;
        const downloadedAt = Date.now();
        assert.equal(
          result.stdout,
          '200 200000',
          `the download with the ${stopping} stopping: ${result.stderr}`,
        );
        const exit = await withTimeout(proc.exited, 15_000, () => `${stopping} exit`);
        assert.deepEqual(exit, { code: 0, signal: null });
        const exitedAt = Date.now();
        assert.ok(
          exitedAt >= downloadedAt - 500 && exitedAt - sigtermAt < 8000,
          `the ${stopping} waited for the request, and no longer (exited ${exitedAt - sigtermAt} ms after SIGTERM, ${exitedAt - downloadedAt} ms after the download)`,
        );
        if (stopping === 'server') await client.proc.kill('SIGTERM');
        else await server.proc.kill('SIGTERM');
      }
    }),
);

test(
  'a second SIGTERM or SIGINT during the drain exits 1 at once, after a warn line saying what it did not wait for',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      // Before, the second signal ended the program with no line at all: the log just stopped.
      for (const [program, signal, openWork] of [
        ['server', 'SIGTERM', { open_connections: 1, open_http_requests: 0 }],
        ['client', 'SIGINT', { open_connections: 1 }],
      ] as const) {
        // A tunnel of its own each: either program's exit ends the other's connection.
        const remotePort = await freePort();
        const tunnel = await startTunnel(h, [{ name: 'held', local: `127.0.0.1:${echo.port}`, remotePort }], {
          server: { shutdownTimeout: '20s' },
          client: { shutdownTimeout: '20s' },
        });
        const pinger = await EchoPinger.connect('127.0.0.1', tunnel.publicPort);
        h.onCleanup(() => pinger.close());
        assert.ok(await pinger.ping());
        const proc = tunnel[program].proc;
        proc.kill(signal);
        await proc.waitForMsg('shutting down', 5000);
        const secondAt = Date.now();
        proc.kill(signal);
        const exit = await withTimeout(proc.exited, 5000, () => `${program} exit`);
        assert.deepEqual(exit, { code: 1, signal: null }, program);
        assert.ok(Date.now() - secondAt < 3000, `${program}: at once, not after shutdown_timeout`);
        const lines = proc.logsWithMsg('second signal: exiting without waiting for open connections');
        assert.equal(lines.length, 1, program);
        const line = lines[0]!;
        assert.equal(line.level, 'warn');
        assert.equal(line.signal, signal);
        for (const [key, value] of Object.entries(openWork))
          assert.equal(line[key], value, `${program}: ${key}`);
        pinger.close();
      }
    }),
);
