// Bulk and concurrent TCP through one real server + client pair on loopback, every byte verified.
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { freePort, withHarness, withTimeout } from './lib/processes.js';
import { echoRoundTrip } from './lib/services.js';
import { HashSink, PatternSource, rate } from './lib/sha-stream.js';
import { startTunnel } from './lib/tunnel.js';

const BULK = 256 * 1024 * 1024;
const DIGEST_BYTES = 32;

interface UploadSeen {
  bytes: number;
  digest: string;
  ms: number;
  replyStarted: number;
}

/**
 * The service behind the tunnel: reads everything the peer sends until its FIN, then replies with the
 * sha256 of what it got (32 bytes) followed by BULK pattern bytes, then FIN. It sends nothing before the
 * peer's FIN, so the whole reply travels after the half-close.
 */
function startBulkService(onUpload: (u: UploadSeen) => void, replySeed: string) {
  const sources: PatternSource[] = [];
  const server = net.createServer({ allowHalfOpen: true }, (sock) => {
    const started = Date.now();
    const sink = new HashSink();
    sock.on('error', () => {});
    sock.pipe(sink);
    sink.on('finish', () => {
      const digest = sink.digest();
      const replyStarted = Date.now();
      onUpload({ bytes: sink.bytes, digest, ms: replyStarted - started, replyStarted });
      sock.write(Buffer.from(digest, 'hex'));
      const reply = new PatternSource(BULK, replySeed);
      sources.push(reply);
      reply.pipe(sock);
    });
  });
  return { server, sources };
}

test(
  '256 MiB each way through a tcp proxy, sha256-verified, reply after half-close',
  { timeout: 170_000 },
  (t) =>
    withHarness(t, async (h) => {
      let upload: UploadSeen | undefined;
      const service = startBulkService((u) => {
        upload = u;
      }, 'bulk-down');
      await new Promise<void>((resolve) => service.server.listen(0, '127.0.0.1', resolve));
      h.onCleanup(() => service.server.close());
      const localPort = (service.server.address() as net.AddressInfo).port;

      const remotePort = await freePort();
      const { server, client, publicPort } = await startTunnel(h, [
        { name: 'bulk', local: `127.0.0.1:${localPort}`, remotePort },
      ]);

      const source = new PatternSource(BULK, 'bulk-up');
      const sink = new HashSink(DIGEST_BYTES);
      const sock = net.connect({ host: '127.0.0.1', port: publicPort, allowHalfOpen: true });
      const started = Date.now();
      let writeSideShut = 0;
      const downloaded = new Promise<void>((resolve, reject) => {
        sock.on('error', reject);
        sock.on('connect', () => {
          source.pipe(sock); // ends our write side (FIN) after the last byte
          sock.on('finish', () => {
            writeSideShut = Date.now();
          });
        });
        sock.pipe(sink);
        sink.on('finish', resolve);
      });
      await withTimeout(downloaded, 120_000, () =>
        upload
          ? `the reply stalled: ${sink.bytes} of ${BULK} bytes arrived after our half-close`
          : `the service never saw our FIN: ${source.bytes} bytes sent, write side ${writeSideShut ? 'shut' : 'still open'}`,
      );
      const done = Date.now();
      sock.destroy();

      assert.ok(upload, 'the service never saw our FIN (half-close not carried)');
      assert.ok(writeSideShut > 0, 'our write side was never shut');
      assert.equal(upload.bytes, BULK, 'bytes the service received');
      assert.equal(upload.digest, source.digest(), 'sha256 of the upload as received by the service');
      assert.equal(
        sink.prefix.toString('hex'),
        source.digest(),
        "the service's digest of our upload, as we received it",
      );
      assert.equal(sink.bytes, BULK, 'reply bytes received after our half-close');
      assert.equal(sink.digest(), service.sources[0]?.digest(), 'sha256 of the reply');
      assert.ok(upload.replyStarted >= writeSideShut - 5, 'the reply only started after our half-close');

      const upMs = upload.ms;
      const downMs = done - upload.replyStarted;
      t.diagnostic(`upload   256 MiB client -> service: ${rate(BULK, upMs)} (${upMs} ms)`);
      t.diagnostic(
        `download 256 MiB service -> client after half-close: ${rate(BULK, downMs)} (${downMs} ms)`,
      );
      t.diagnostic(`total ${done - started} ms`);

      // Contract: one log line per public connection closed, with bytes both ways.
      const closed = await server.proc.waitForMsg('connection closed', 10_000, { fields: { proxy: 'bulk' } });
      assert.deepEqual(
        [Number(closed.bytes_in), Number(closed.bytes_out)].sort((a, b) => a - b),
        [BULK, BULK + DIGEST_BYTES],
        `server's connection closed line: ${JSON.stringify(closed)}`,
      );
      await client.proc.waitForMsg('connection closed', 10_000, { fields: { proxy: 'bulk' } });
    }),
);

const CONCURRENT = 200;

test('200 concurrent connections through one proxy, each echo verified', { timeout: 120_000 }, (t) =>
  withHarness(t, async (h) => {
    // The service holds every connection until all 200 are open at once, then echoes them all.
    const held: net.Socket[] = [];
    let open = 0;
    let peak = 0;
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      for (const s of held) s.pipe(s);
    };
    const service = net.createServer({ allowHalfOpen: true }, (sock) => {
      open += 1;
      peak = Math.max(peak, open);
      sock.on('close', () => {
        open -= 1;
      });
      sock.on('error', () => {});
      if (released) sock.pipe(sock);
      else held.push(sock);
      if (held.length >= CONCURRENT) release();
    });
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', 1024, resolve));
    h.onCleanup(() => service.close());
    // Do not wait forever for the 200th: release after 30 s so the test reports instead of hanging.
    const releaseTimer = setTimeout(release, 30_000);
    h.onCleanup(() => clearTimeout(releaseTimer));
    const localPort = (service.address() as net.AddressInfo).port;

    const remotePort = await freePort();
    const { server, client, publicPort } = await startTunnel(h, [
      { name: 'many', local: `127.0.0.1:${localPort}`, remotePort },
    ]);

    // Sizes from 0 bytes (a bare FIN) to 512 KiB, deterministic.
    const sizes = Array.from({ length: CONCURRENT }, (_, i) =>
      i === 0 ? 0 : 1 + ((i * 2_654_435_761) % (512 * 1024)),
    );
    const total = sizes.reduce((a, b) => a + b, 0);
    const started = Date.now();
    const results = await Promise.all(
      sizes.map((n, i) =>
        echoRoundTrip('127.0.0.1', publicPort, n, { seed: `conn-${i}`, timeoutMs: 90_000 }),
      ),
    );
    const ms = Date.now() - started;
    const failed = results.map((r, i) => ({ i, ...r })).filter((r) => !r.ok);
    assert.deepEqual(failed, [], 'every connection echoes exactly what it sent');
    assert.equal(peak, CONCURRENT, 'all connections were open at the service at the same time');
    t.diagnostic(
      `${CONCURRENT} concurrent connections, ${(total / 1048576).toFixed(1)} MiB each way in ${ms} ms (${rate(2 * total, ms)} both ways)`,
    );

    // Contract: one "connection closed" line per public connection.
    const deadline = Date.now() + 15_000;
    while (server.proc.logsWithMsg('connection closed').length < CONCURRENT && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(
      server.proc.logsWithMsg('connection closed').length,
      CONCURRENT,
      'server "connection closed" lines',
    );

    // SIGTERM drains and exits 0 on both sides (contract).
    await client.proc.stop(5000);
    assert.equal(
      client.proc.exitCode,
      0,
      `client exit after SIGTERM: ${client.proc.exitCode ?? client.proc.exitSignal}`,
    );
    await server.proc.stop(5000);
    assert.equal(
      server.proc.exitCode,
      0,
      `server exit after SIGTERM: ${server.proc.exitCode ?? server.proc.exitSignal}`,
    );
  }),
);

/**
 * How a connection ended for a reader, as the kernel knows it: 'end' for a FIN, else the error's code. An
 * 'end' is checked with an empty write, which a socket its peer reset refuses: Node 20's libuv reports a
 * reset that landed behind unread bytes as an ordinary end.
 */
function howItEnded(sock: net.Socket): Promise<string> {
  return new Promise((resolve) => {
    sock.on('data', () => {});
    sock.on('end', () =>
      sock.write(Buffer.alloc(0), (err?: NodeJS.ErrnoException | null) =>
        resolve(err ? String(err.code) : 'end'),
      ),
    );
    sock.on('error', (err: NodeJS.ErrnoException) => resolve(String(err.code)));
    sock.on('close', () => setImmediate(() => resolve('closed without end or error')));
  });
}

const ROUNDS = 10;
/** Less than one 64 KiB read, sent with the reset right behind it: they land together, unread. */
const CUT = 50_000;

test(
  'an upload the visitor resets and a download the service resets reach the other end as resets, never as a FIN',
  { timeout: 150_000 },
  (t) =>
    withHarness(t, async (h) => {
      // 'U': answer 'k', then read the upload to its end and report how it ended. 'D': send CUT bytes and
      // reset at once.
      const uploadEnds: ((outcome: string) => void)[] = [];
      const service = net.createServer({ allowHalfOpen: true }, (sock) => {
        sock.on('error', () => {});
        sock.once('data', (first: Buffer) => {
          if (first[0] === 0x55) {
            const report = uploadEnds.shift();
            void howItEnded(sock).then((outcome) => report?.(outcome));
            sock.write('k');
            return;
          }
          sock.write(Buffer.alloc(CUT, 1));
          sock.resetAndDestroy();
        });
      });
      await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
      h.onCleanup(() => service.close());
      const localPort = (service.address() as net.AddressInfo).port;
      const remotePort = await freePort();
      const { publicPort } = await startTunnel(h, [
        { name: 'aborts', local: `127.0.0.1:${localPort}`, remotePort },
      ]);
      const dial = async () => {
        const sock = net.connect({ host: '127.0.0.1', port: publicPort, allowHalfOpen: true });
        sock.on('error', () => {});
        await new Promise((resolve) => sock.once('connect', resolve));
        return sock;
      };

      const uploads: string[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const seen = new Promise<string>((resolve) => uploadEnds.push(resolve));
        const visitor = await dial();
        visitor.write('U');
        await withTimeout(
          new Promise((resolve) => visitor.once('data', resolve)),
          10_000,
          () => `upload ${i}: the service never answered`,
        );
        visitor.write(Buffer.alloc(CUT, 2));
        visitor.resetAndDestroy();
        uploads.push(await withTimeout(seen, 10_000, () => `upload ${i}: the service never saw it end`));
      }
      const downloads: string[] = [];
      for (let i = 0; i < ROUNDS; i++) {
        const visitor = await dial();
        const ended = howItEnded(visitor);
        visitor.write('D');
        downloads.push(await withTimeout(ended, 10_000, () => `download ${i}: the visitor never saw it end`));
        visitor.destroy();
      }
      t.diagnostic(`uploads: ${uploads.join(' ')}; downloads: ${downloads.join(' ')}`);
      assert.ok(!uploads.includes('end'), `the service saw a reset upload as finished: ${uploads.join(' ')}`);
      assert.ok(
        !downloads.includes('end'),
        `the visitor saw a reset download as finished: ${downloads.join(' ')}`,
      );
    }),
);
