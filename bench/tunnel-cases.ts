// What is measured through each peer. A case runs one measurement through one peer and returns its
// figures (several metrics may come from one run, e.g. p50 and p99 of the same fixed-rate load).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run, sleep } from '@porthole/e2e/lib/processes';
import { closeAll, ensureOpenFiles, openIdleConnections } from './tunnel-idle.js';
import { iperfClient } from './tunnel-iperf.js';
import type { Peer, Service } from './tunnel-peers.js';
import { processTree, treeRssMiB, waitUntilQuiet } from './tunnel-proc-stats.js';

export interface Metric {
  id: string;
  title: string;
  unit: string;
  higherIsBetter: boolean;
  /** measured, but not a fair ratio between peers (e.g. they held different numbers of connections) */
  noRatio?: boolean;
}

export interface CaseResult {
  values: Record<string, number>;
  /** what else the tool reported (errors, extra percentiles), kept in the JSON */
  detail?: Record<string, unknown>;
}

export interface SuiteSettings {
  rounds: number;
  iperfSeconds: number;
  wrkSeconds: number;
  /** shortest fixed-rate run */
  rateSeconds: number;
  /** a fixed-rate run lasts long enough to schedule this many requests: p99 is its 1% worst, and 3000
   *  (2700 recorded after the warm-up) put 27 behind it where 1.5 s at 1k req/s put 13 (one stall decided) */
  rateRequests: number;
  fixedRates: number[];
  connectSeconds: number;
  udpSeconds: number;
  idleConnections: number;
  /** time allowed to open them (ssh -R slows down as its channels grow) */
  idleSeconds: number;
}

export interface CaseEnv {
  settings: SuiteSettings;
  /** pids whose open-files limit must allow the idle connections (the bench itself, the services) */
  endpoints: number[];
}

export interface BenchCase {
  id: string;
  title: string;
  service: Service;
  metrics: Metric[];
  /** 'rounds': once per round, interleaved with the others; 'once': once per peer, before the rounds */
  schedule: 'rounds' | 'once';
  /** why this case does not run through a peer that carries its service, or undefined if it does */
  skip?(peer: Peer): string | undefined;
  run(peer: Peer, env: CaseEnv): Promise<CaseResult>;
}

const loadScript = path.join(path.dirname(fileURLToPath(import.meta.url)), 'tunnel-load.js');

/**
 * V8 flags for the fixed-rate generator, whose figures are latencies: it must not disturb what it times.
 * Each run is a fresh process, and by default it optimises its own code during the measured seconds, on
 * helper threads that took a core for up to 2.9 ms at a time (`perf sched`) while the generator's own
 * thread, or a process of the path under test, waited behind them. Without the optimising compiler and
 * with garbage collection on its own thread (its heap is a few MiB), direct HTTP at 1k req/s went from
 * 1.5-2.5 ms to 0.33-0.54 ms at p99.9 counted from each request's issue, with p50 unchanged.
 * The connection-rate generator keeps the defaults: its figure is a throughput that needs the faster code.
 */
const QUIET_GENERATOR_FLAGS = ['--no-opt', '--single-threaded-gc'];

/** Run the load generator in its own process; its last stdout line is its JSON result. */
async function load(
  args: string[],
  seconds: number,
  nodeFlags: string[] = [],
): Promise<Record<string, unknown>> {
  const r = await run(process.execPath, [...nodeFlags, loadScript, ...args], {
    timeoutMs: (seconds + 30) * 1000,
  });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  if (r.code !== 0 || !last.startsWith('{'))
    throw new Error(`tunnel-load ${args.join(' ')} (exit ${r.code ?? r.signal}): ${r.stderr.trim()}`);
  return JSON.parse(last) as Record<string, unknown>;
}

function num(value: unknown, what: string): number {
  if (typeof value !== 'number' || !Number.isFinite(value)) throw new Error(`no ${what} in the result`);
  return value;
}

function port(peer: Peer, service: Service): number {
  const p = peer.ports[service];
  if (p === undefined) throw new Error(`${peer.id} does not carry ${service}`);
  return p;
}

function iperfCase(id: string, title: string, opts: { reverse?: boolean; parallel?: number }): BenchCase {
  return {
    id,
    title,
    service: 'iperf',
    schedule: 'rounds',
    metrics: [{ id, title, unit: 'Gbit/s', higherIsBetter: true }],
    async run(peer, env) {
      const r = await iperfClient(port(peer, 'iperf'), { seconds: env.settings.iperfSeconds, ...opts });
      return { values: { [id]: r.gbits }, detail: { bytes: r.bytes } };
    },
  };
}

/** wrk's "12.34ms" / "850.00us" / "1.02s" in milliseconds. */
function wrkMs(text: string | undefined): number | undefined {
  const m = /^([\d.]+)(us|ms|s)$/.exec(text ?? '');
  if (!m) return undefined;
  return Number(m[1]) * { us: 0.001, ms: 1, s: 1000 }[m[2] as 'us' | 'ms' | 's'];
}

/** What one wrk run at saturation reported. */
export interface WrkFigures {
  rps: number;
  p50Ms: number | undefined;
  p99Ms: number | undefined;
  non2xx: number;
  /** wrk's "Socket errors: connect 0, read 3, ..." line, when it printed one */
  socketErrorsLine: string | undefined;
  /** the sum of that line's counts */
  socketErrors: number;
}

/** `wrk -t1 -c<conns> -d<seconds>s --latency` to `peer`'s HTTP port (with its Host, for a vhost). */
export async function runWrk(peer: Peer, conns: number, seconds: number): Promise<WrkFigures> {
  const args = ['-t1', `-c${conns}`, `-d${seconds}s`, '--latency'];
  if (peer.httpHost) args.push('-H', `Host: ${peer.httpHost}`);
  args.push(`http://127.0.0.1:${port(peer, 'http')}/`);
  const r = await run('wrk', args, { timeoutMs: (seconds + 30) * 1000 });
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(r.stdout);
  if (r.code !== 0 || !rps)
    throw new Error(`wrk ${args.join(' ')} (exit ${r.code}): ${r.stderr || r.stdout}`);
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(r.stdout);
  return {
    rps: Number(rps[1]),
    p50Ms: wrkMs(/^\s+50%\s+(\S+)/m.exec(r.stdout)?.[1]),
    p99Ms: wrkMs(/^\s+99%\s+(\S+)/m.exec(r.stdout)?.[1]),
    non2xx: Number(/Non-2xx or 3xx responses:\s+(\d+)/.exec(r.stdout)?.[1] ?? 0),
    socketErrorsLine: /Socket errors:[^\n]*/.exec(r.stdout)?.[0],
    socketErrors: errors ? errors.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0,
  };
}

const WRK_CONNECTIONS = 32;

const httpSaturation: BenchCase = {
  id: 'http-rps',
  title: `HTTP req/s at saturation (wrk, ${WRK_CONNECTIONS} keep-alive conns)`,
  service: 'http',
  schedule: 'rounds',
  metrics: [{ id: 'http-rps', title: 'HTTP req/s (wrk)', unit: 'req/s', higherIsBetter: true }],
  async run(peer, env) {
    const wrk = await runWrk(peer, WRK_CONNECTIONS, env.settings.wrkSeconds);
    if (wrk.non2xx > 0) throw new Error(`wrk through ${peer.id}: ${wrk.non2xx} non-2xx responses`);
    return {
      values: { 'http-rps': wrk.rps },
      detail: {
        p50Ms: wrk.p50Ms,
        p99Ms: wrk.p99Ms,
        ...(wrk.socketErrorsLine ? { socketErrors: wrk.socketErrorsLine } : {}),
      },
    };
  },
};

const RATE_CONNECTIONS = 16;

function httpFixedRate(rate: number): BenchCase {
  const k = `${rate / 1000}k`;
  return {
    id: `http-${k}`,
    title: `HTTP latency at ${rate} req/s (open loop, ${RATE_CONNECTIONS} keep-alive conns)`,
    service: 'http',
    schedule: 'rounds',
    metrics: [
      { id: `http-${k}-p50`, title: `HTTP p50 @ ${k} req/s`, unit: 'ms', higherIsBetter: false },
      { id: `http-${k}-p99`, title: `HTTP p99 @ ${k} req/s`, unit: 'ms', higherIsBetter: false },
    ],
    async run(peer, env) {
      const seconds = Math.max(env.settings.rateSeconds, env.settings.rateRequests / rate);
      const args = ['http-rate', '--port', `${port(peer, 'http')}`, '--rate', `${rate}`];
      args.push('--seconds', `${seconds}`, '--connections', `${RATE_CONNECTIONS}`);
      if (peer.httpHost) args.push('--host', peer.httpHost);
      const r = await load(args, seconds, QUIET_GENERATOR_FLAGS);
      const lost = num(r.failed, 'failed') + num(r.dropped, 'dropped') + num(r.unanswered, 'unanswered');
      if (lost > 0.01 * num(r.scheduled, 'scheduled'))
        throw new Error(
          `${lost} of ${r.scheduled} requests failed or were not answered: ${JSON.stringify(r)}`,
        );
      return {
        values: { [`http-${k}-p50`]: num(r.p50Ms, 'p50'), [`http-${k}-p99`]: num(r.p99Ms, 'p99') },
        detail: { ...r, generatorNodeFlags: QUIET_GENERATOR_FLAGS },
      };
    },
  };
}

const CONNECT_CONCURRENCY = 8;

const connectRate: BenchCase = {
  id: 'conn-rate',
  title: `new connections/s (connect, 1-byte echo, close; ${CONNECT_CONCURRENCY} at a time)`,
  service: 'echo',
  schedule: 'rounds',
  metrics: [{ id: 'conn-rate', title: 'new conns/s', unit: 'conn/s', higherIsBetter: true }],
  async run(peer, env) {
    const seconds = env.settings.connectSeconds;
    const r = await load(
      ['connect-rate', '--port', `${port(peer, 'echo')}`, '--seconds', `${seconds}`, '--concurrency', '8'],
      seconds,
    );
    if (num(r.failed, 'failed') > 0.01 * num(r.connections, 'connections'))
      throw new Error(`too many failed connections: ${JSON.stringify(r)}`);
    return { values: { 'conn-rate': num(r.perSecond, 'perSecond') }, detail: r };
  },
};

const UDP_RATE = '200M';

const udp: BenchCase = {
  id: 'udp',
  title: `UDP iperf3 -u -b ${UDP_RATE} -l 1400`,
  service: 'udp',
  schedule: 'rounds',
  metrics: [
    { id: 'udp-delivered', title: `UDP delivered @ ${UDP_RATE}`, unit: 'Mbit/s', higherIsBetter: true },
    // A ratio of two small loss figures (0.07% vs 2%) says little; the delivered rate carries it.
    { id: 'udp-loss', title: `UDP loss @ ${UDP_RATE}`, unit: '%', higherIsBetter: false, noRatio: true },
    { id: 'udp-jitter', title: `UDP jitter @ ${UDP_RATE}`, unit: 'ms', higherIsBetter: false },
  ],
  async run(peer, env) {
    const r = await iperfClient(port(peer, 'udp'), {
      seconds: env.settings.udpSeconds,
      udpBitrate: UDP_RATE,
    });
    return {
      values: {
        'udp-delivered': r.gbits * 1000,
        'udp-loss': num(r.lostPercent, 'lost_percent'),
        'udp-jitter': num(r.jitterMs, 'jitter_ms'),
      },
    };
  },
};

const KIB = 1024;

function rssByRole(peer: Peer): Record<string, number> {
  const out: Record<string, number> = {};
  for (const role of new Set(peer.roots.map((r) => r.role))) {
    out[role] = treeRssMiB(peer.roots.filter((r) => r.role === role).map((r) => r.pid));
  }
  return out;
}

const idle: BenchCase = {
  id: 'idle',
  title: 'idle tunnelled connections (each proven by a 1-byte echo, then held)',
  service: 'echo',
  schedule: 'once',
  metrics: [
    {
      id: 'idle-kib-per-conn',
      title: 'idle: KiB per conn (server + client)',
      unit: 'KiB',
      higherIsBetter: false,
    },
    {
      id: 'idle-server-kib-per-conn',
      title: 'idle: server KiB per conn',
      unit: 'KiB',
      higherIsBetter: false,
    },
    {
      id: 'idle-server-mib',
      title: 'idle: server RSS holding them',
      unit: 'MiB',
      higherIsBetter: false,
      noRatio: true,
    },
  ],
  skip(peer) {
    if (peer.roots.length === 0) return 'no tunnel processes to weigh';
    if (peer.forksPerConnection) return 'one process per connection: not run at this count';
    return undefined;
  },
  async run(peer, env) {
    const count = env.settings.idleConnections;
    const needed = count + 2048;
    const pids = [...env.endpoints, ...peer.roots.flatMap((r) => processTree(r.pid))];
    const limits = await Promise.all(pids.map((pid) => ensureOpenFiles(pid, needed)));
    const tooLow = limits.findIndex((limit) => limit < needed);
    if (tooLow >= 0)
      throw new Error(`pid ${pids[tooLow]} may open only ${limits[tooLow]} files (${needed} needed)`);
    await sleep(500);
    const before = rssByRole(peer);
    const held = await openIdleConnections(port(peer, 'echo'), count, {
      concurrency: 128,
      deadlineMs: env.settings.idleSeconds * 1000,
    });
    try {
      await sleep(1000);
      const after = rssByRole(peer);
      const established = held.sockets.length;
      if (established === 0) throw new Error(`no connection established: ${JSON.stringify(held.errors)}`);
      const grownMiB = Object.keys(after).reduce((sum, role) => sum + after[role]! - (before[role] ?? 0), 0);
      const serverGrownMiB = (after.server ?? 0) - (before.server ?? 0);
      return {
        values: {
          'idle-kib-per-conn': (grownMiB * KIB) / established,
          'idle-server-kib-per-conn': (serverGrownMiB * KIB) / established,
          'idle-server-mib': after.server ?? 0,
        },
        detail: { attempted: count, established, failed: held.failed, errors: held.errors, before, after },
      };
    } finally {
      closeAll(held.sockets);
      // Let the tunnel finish tearing them down before the next peer is measured.
      await waitUntilQuiet(
        peer.roots.map((r) => r.pid),
        20_000,
      );
    }
  },
};

export function benchCases(settings: SuiteSettings): BenchCase[] {
  return [
    iperfCase('tcp-1', 'TCP 1 stream, forward (iperf3)', {}),
    iperfCase('tcp-1-rev', 'TCP 1 stream, reverse (iperf3 -R)', { reverse: true }),
    iperfCase('tcp-8', 'TCP 8 streams (iperf3 -P 8)', { parallel: 8 }),
    httpSaturation,
    ...settings.fixedRates.map(httpFixedRate),
    connectRate,
    udp,
    idle,
  ];
}
