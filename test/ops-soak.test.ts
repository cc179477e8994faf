// Resource discipline, bounded (~2 minutes): connections open and close continuously through a real
// tunnel (some aborted mid-transfer), and the client's session is cut three times under load. Afterwards
// RSS, file descriptors, listeners, timers and mux streams of both processes are back near the baseline
// taken after a warm-up of the same load.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { get } from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import { eventually, freePort, type Harness, procMemory, sleep, withHarness } from './lib/processes.js';
import { startEchoServer } from './lib/services.js';
import { patternBytes } from './lib/sha-stream.js';
import { issueToken, startClient, startServer } from './lib/tunnel.js';

const ADMIN_TOKEN = 'soak-admin-token-0123456789abcdef';
const WORKERS = 4;
/** Pause between a worker's connections: ~80 connections/s in all, so TIME_WAIT stays far from the port range. */
const PAUSE_MS = 40;
const WARMUP_MS = 12_000;
/** PORTHOLE_SOAK_MS shortens (or lengthens) the soak phase when investigating. */
const SOAK_MS = Number(process.env.PORTHOLE_SOAK_MS ?? 72_000);
const MIB = 1024 * 1024;

/** One GET with a fresh connection that closes after the answer (keeps the admin side free of pooled sockets). */
function getJson(url: string, token?: string): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = get(
      url,
      {
        agent: false,
        headers: { Connection: 'close', ...(token ? { Authorization: `Bearer ${token}` } : {}) },
        timeout: 5000,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          body += d;
        });
        res.on('end', () => {
          try {
            resolve(res.headers['content-type']?.startsWith('text/plain') ? body : JSON.parse(body));
          } catch (err) {
            reject(err);
          }
        });
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
  });
}

/** A TCP relay between the client and the server: cut() drops the session's connection mid-flight. */
async function startRelay(h: Harness, targetPort: number) {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((inbound) => {
    const outbound = net.connect({ host: '127.0.0.1', port: targetPort });
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.on('error', () => {});
      s.on('close', () => {
        sockets.delete(s);
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  h.onCleanup(() => {
    for (const s of sockets) s.destroy();
    return new Promise((resolve) => server.close(resolve));
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    cut: () => {
      const n = sockets.size;
      for (const s of sockets) s.destroy();
      return n;
    },
  };
}

interface LoadStats {
  ok: number;
  aborted: number;
  failed: number;
  bytes: number;
}

/** One visitor connection: send `size` bytes, read the echo, close; every 8th is aborted after sending. */
function visit(
  port: number,
  size: number,
  abort: boolean,
  payload: Buffer,
): Promise<'ok' | 'aborted' | 'failed'> {
  return new Promise((resolve) => {
    let received = 0;
    let done = false;
    const sock = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
    const finish = (result: 'ok' | 'aborted' | 'failed') => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(result);
    };
    const timer = setTimeout(() => finish('failed'), 10_000);
    sock.on('connect', () => {
      if (abort) {
        sock.write(payload.subarray(0, size), () => setTimeout(() => finish('aborted'), 5));
      } else sock.end(payload.subarray(0, size));
    });
    sock.on('data', (d: Buffer) => {
      received += d.length;
    });
    sock.on('end', () => finish(received === size ? 'ok' : 'failed'));
    sock.on('error', () => finish('failed'));
  });
}

/** WORKERS loops of visits until `until`; every loop bounded by count and time. */
async function load(port: number, until: number, stats: LoadStats): Promise<void> {
  const payload = patternBytes(128 * 1024, 'soak');
  let serial = 0;
  await Promise.all(
    Array.from({ length: WORKERS }, async () => {
      for (let i = 0; i < 100_000 && Date.now() < until; i++) {
        serial += 1;
        const size = 1024 + ((serial * 7919) % (127 * 1024));
        const result = await visit(port, size, serial % 8 === 0, payload);
        stats[result] += 1;
        if (result === 'ok') stats.bytes += 2 * size;
        await sleep(PAUSE_MS);
      }
    }),
  );
}

interface Snapshot {
  rss: number;
  fds: number;
  resources: Record<string, number>;
  streams: number;
  open: number;
}

function procFds(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

function metric(text: string, name: string): number {
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  assert.ok(line, `metric ${name}`);
  return Number(line.slice(name.length + 1));
}

function resourcesFromMetrics(text: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of text.matchAll(/^nodejs_active_resources\{type="([^"]+)"\} (\d+)$/gm))
    out[m[1]!] = Number(m[2]);
  return out;
}

function fmt(s: Snapshot): string {
  return `rss ${(s.rss / MIB).toFixed(1)} MiB, fds ${s.fds}, streams ${s.streams}, open ${s.open}, ${JSON.stringify(s.resources)}`;
}

test(
  'soak: connections open and close continuously with forced reconnects; memory, descriptors, listeners, timers and streams return to baseline',
  {
    timeout: 170_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const remotePort = await freePort();
      const clientAdmin = await freePort();
      const server = await startServer(h, {
        allowPorts: [String(remotePort)],
        admin: { token: ADMIN_TOKEN },
      });
      const relay = await startRelay(h, server.port);
      const token = await issueToken(server.config, { name: 'soak', ports: String(remotePort) });
      const client = await startClient(h, {
        server: `ws://127.0.0.1:${relay.port}/_porthole`,
        token,
        proxies: [{ name: 'echo', local: `127.0.0.1:${echo.port}`, remotePort }],
        adminListen: `127.0.0.1:${clientAdmin}`,
        reconnectInitial: '100ms',
        reconnectMax: '1s',
      });
      const serverPid = server.proc.pid!;
      const clientPid = client.proc.pid!;

      const snapshots = async (): Promise<{ server: Snapshot; client: Snapshot }> => {
        const metrics = String(await getJson(`${server.adminUrl}/metrics`, ADMIN_TOKEN));
        const status = (await getJson(`http://127.0.0.1:${clientAdmin}/api/status`)) as {
          streams: number;
          open_connections: number;
          process: { resources: Record<string, number> };
        };
        return {
          server: {
            rss: procMemory('VmRSS', serverPid),
            fds: procFds(serverPid),
            resources: resourcesFromMetrics(metrics),
            streams: metric(metrics, 'porthole_session_streams'),
            open: metric(metrics, 'porthole_open_connections'),
          },
          client: {
            rss: procMemory('VmRSS', clientPid),
            fds: procFds(clientPid),
            resources: status.process.resources,
            streams: status.streams,
            open: status.open_connections,
          },
        };
      };
      /** Quiet: the client is registered again, nothing is open, only the control stream is left. */
      let last = '';
      const settled = () =>
        eventually(
          'both ends to settle (registered, no open connection, only the control stream)',
          async () => {
            const s = await snapshots();
            const status = (await getJson(`http://127.0.0.1:${clientAdmin}/api/status`)) as {
              state: string;
              proxies: { state: string }[];
            };
            last = `client ${status.state}/${status.proxies[0]?.state}; server: ${fmt(s.server)}; client: ${fmt(s.client)}`;
            const quiet =
              status.state === 'established' &&
              status.proxies[0]?.state === 'registered' &&
              s.server.open === 0 &&
              s.client.open === 0 &&
              s.server.streams === 1 &&
              s.client.streams === 1;
            return quiet ? s : undefined;
          },
          20_000,
          250,
        ).catch((err: Error) => {
          throw new Error(`${err.message}; last seen: ${last}`);
        });
      const cutAt = async (delayMs: number, until: number) => {
        await sleep(delayMs);
        if (Date.now() < until) {
          const n = relay.cut();
          t.diagnostic(`forced reconnect: cut ${n} relay sockets`);
        }
      };

      // Warm-up with the same load and one forced reconnect, so the baseline includes grown heaps and pools.
      const warm: LoadStats = { ok: 0, aborted: 0, failed: 0, bytes: 0 };
      const warmUntil = Date.now() + WARMUP_MS;
      await Promise.all([load(remotePort, warmUntil, warm), cutAt(WARMUP_MS / 2, warmUntil)]);
      const baseline = await settled();
      t.diagnostic(`warm-up: ${JSON.stringify(warm)}`);
      t.diagnostic(`baseline server: ${fmt(baseline.server)}`);
      t.diagnostic(`baseline client: ${fmt(baseline.client)}`);

      const soak: LoadStats = { ok: 0, aborted: 0, failed: 0, bytes: 0 };
      const soakUntil = Date.now() + SOAK_MS;
      const rssSamples: string[] = [];
      const sampler = (async () => {
        for (let i = 0; i < 100 && Date.now() < soakUntil; i++) {
          await sleep(8000);
          rssSamples.push(
            `${(procMemory('VmRSS', serverPid) / MIB).toFixed(0)}/${(procMemory('VmRSS', clientPid) / MIB).toFixed(0)}`,
          );
        }
      })();
      await Promise.all([
        load(remotePort, soakUntil, soak),
        cutAt(SOAK_MS * 0.25, soakUntil),
        cutAt(SOAK_MS * 0.5, soakUntil),
        cutAt(SOAK_MS * 0.75, soakUntil),
        sampler,
      ]);
      const final = await settled();
      t.diagnostic(`soak: ${JSON.stringify(soak)}; RSS server/client MiB every 8 s: ${rssSamples.join(' ')}`);
      t.diagnostic(`final server: ${fmt(final.server)}`);
      t.diagnostic(`final client: ${fmt(final.client)}`);

      // The load really happened, and only the forced cuts cost connections.
      assert.ok(soak.ok > 2000, `enough connections went through (${soak.ok})`);
      assert.ok(soak.aborted > 200, `aborted connections were exercised (${soak.aborted})`);
      const attempts = soak.ok + soak.aborted + soak.failed;
      assert.ok(
        soak.failed <= attempts * 0.05,
        `failures only around the cuts (${soak.failed} of ${attempts})`,
      );
      assert.equal(
        server.proc.logsWithMsg('client connected').length,
        1 + 1 + 3,
        'one session per cut, no more',
      );

      for (const side of ['server', 'client'] as const) {
        const before = baseline[side];
        const after = final[side];
        assert.ok(after.fds <= before.fds + 2, `${side}: file descriptors ${before.fds} -> ${after.fds}`);
        assert.ok(
          after.rss <= before.rss + 32 * MIB,
          `${side}: RSS ${(before.rss / MIB).toFixed(1)} -> ${(after.rss / MIB).toFixed(1)} MiB`,
        );
        // Listeners and sockets exactly as before; timers and other handles at most one or two apart.
        for (const type of ['TCPServerWrap', 'TCPSocketWrap']) {
          assert.equal(after.resources[type] ?? 0, before.resources[type] ?? 0, `${side}: ${type}`);
        }
        for (const type of new Set([...Object.keys(before.resources), ...Object.keys(after.resources)])) {
          assert.ok(
            (after.resources[type] ?? 0) <= (before.resources[type] ?? 0) + 2,
            `${side}: ${type} ${before.resources[type] ?? 0} -> ${after.resources[type] ?? 0}`,
          );
        }
        assert.equal(after.streams, 1, `${side}: only the control stream is left`);
      }
    }),
);
