// `npm run bench` (and `-- --quick`): porthole over ws and wss beside direct loopback, a socat relay and
// ssh -R, every case interleaved across the peers for several rounds, within a fixed time budget.
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { Harness } from '@porthole/e2e/lib/processes';
import { type BenchCase, benchCases, type CaseEnv, type SuiteSettings } from './tunnel-cases.js';
import { startIperfDaemon } from './tunnel-iperf.js';
import {
  directPeer,
  type Peer,
  portholePeers,
  SSH_AES_CIPHER,
  SSH_DEFAULT_CIPHER,
  socatPeer,
  sshPeer,
  type Targets,
} from './tunnel-peers.js';
import { CostMeter } from './tunnel-proc-stats.js';
import { renderReport, writeResults } from './tunnel-report.js';
import { type Sample, type SuiteResult, summarise } from './tunnel-results.js';
import { formatFigure } from './tunnel-stats.js';

interface Mode {
  settings: SuiteSettings;
  /** unrecorded passes of every case through the peers that compile as they run, before round 1 */
  warmUpPasses: number;
  /** the whole run, set-up included, stays under this */
  budgetSeconds: number;
}

const FULL: Mode = {
  settings: {
    rounds: 3,
    iperfSeconds: 2,
    wrkSeconds: 1,
    rateSeconds: 1,
    rateRequests: 3000,
    fixedRates: [1000, 5000],
    connectSeconds: 1,
    udpSeconds: 1,
    idleConnections: 10_000,
    idleSeconds: 15,
  },
  warmUpPasses: 1,
  budgetSeconds: 355,
};

const QUICK: Mode = {
  settings: {
    rounds: 1,
    iperfSeconds: 1,
    wrkSeconds: 1,
    rateSeconds: 1,
    rateRequests: 1000,
    fixedRates: [1000],
    connectSeconds: 1,
    udpSeconds: 1,
    idleConnections: 1000,
    idleSeconds: 8,
  },
  // Under a minute leaves no time for one: --quick measures porthole cold.
  warmUpPasses: 0,
  budgetSeconds: 55,
};

const here = path.dirname(fileURLToPath(import.meta.url));
const resultsDir = path.join(here, '..', 'results');

function progress(text: string): void {
  process.stderr.write(`${text}\n`);
}

export async function startTargets(h: Harness): Promise<{ targets: Targets; pids: number[] }> {
  const iperf = await startIperfDaemon(h);
  const services = h.spawn('targets', process.execPath, [path.join(here, 'tunnel-targets.js')]);
  const line = await services.waitForMsg('targets listening', 10_000);
  return {
    targets: { iperf: iperf.port, http: Number(line.http), echo: Number(line.echo) },
    pids: [services.pid!],
  };
}

async function measure(c: BenchCase, peer: Peer, round: number, env: CaseEnv): Promise<Sample> {
  const sample: Sample = { round, caseId: c.id, peerId: peer.id, ms: 0 };
  const skipped = c.skip?.(peer);
  if (skipped) return { ...sample, skipped };
  const dead = peer.procs.find((p) => !p.alive);
  if (dead)
    return { ...sample, error: `${dead.name} is not running (exit ${dead.exitCode ?? dead.exitSignal})` };
  const meter = peer.roots.length > 0 ? new CostMeter(peer.roots.map((r) => r.pid)) : undefined;
  const started = performance.now();
  try {
    const result = await c.run(peer, env);
    const cost = meter?.stop();
    return { ...sample, ms: performance.now() - started, ...result, ...(cost ? { cost } : {}) };
  } catch (err) {
    meter?.stop();
    return { ...sample, ms: performance.now() - started, error: (err as Error).message };
  }
}

/** The peers that carry the service a case measures. */
function carriers(c: BenchCase, among: Peer[]): Peer[] {
  return among.filter((p) => p.ports[c.service] !== undefined);
}

/** One progress line per measurement: `[ 93 s] r2 http-1k    porthole ws  0.83 ms, 1.94 ms [...]`. */
function progressLine(elapsedS: number, tag: string, c: BenchCase, label: string, s: Sample): string {
  return `[${elapsedS.toFixed(0).padStart(3)} s] ${tag} ${c.id.padEnd(10)} ${label.padEnd(28)} ${describe(c, s)}`;
}

function describe(c: BenchCase, s: Sample): string {
  if (s.skipped) return `skipped: ${s.skipped}`;
  if (s.error) return `ERROR ${s.error.split('\n')[0]}`;
  const figures = c.metrics.map((m) => `${formatFigure(s.values?.[m.id] ?? Number.NaN)} ${m.unit}`);
  const cost = s.cost ? ` [${s.cost.cpuSeconds.toFixed(2)} CPU s, ${s.cost.peakRssMiB.toFixed(0)} MiB]` : '';
  return `${figures.join(', ')}${cost}`;
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}

/**
 * The peer order for one case in one round: a stride permutation (start + i * stride, with a stride coprime
 * to the count), the start moving with round and case and the stride with the round. So no peer always runs
 * first, and each round a peer follows a different one: a plain rotation kept every peer right after the
 * same neighbour (porthole ws always ran in the wake of ssh -R's teardown).
 */
function peerOrder<T>(items: T[], round: number, caseIndex: number): T[] {
  const n = items.length;
  if (n < 2) return [...items];
  const strides = [...Array(n).keys()].filter((s) => s > 0 && gcd(s, n) === 1);
  const stride = strides[(round - 1) % strides.length]!;
  const start = (round + caseIndex) % n;
  return items.map((_, i) => items[(start + i * stride) % n]!);
}

async function startPeers(targets: Targets, quick: boolean): Promise<Peer[]> {
  const peers = [directPeer(targets)];
  if (!quick) peers.push(await socatPeer(targets));
  peers.push(await sshPeer(targets, SSH_DEFAULT_CIPHER));
  if (!quick) peers.push(await sshPeer(targets, SSH_AES_CIPHER));
  peers.push(...(await portholePeers(targets, 'ws')));
  peers.push(...(await portholePeers(targets, 'wss')));
  return peers;
}

/** The warm-up's settings: the same cases, each as short as --quick makes it. */
function warmUpSettings(settings: SuiteSettings): SuiteSettings {
  return { ...settings, iperfSeconds: 1, rateRequests: Math.min(settings.rateRequests, 1000) };
}

/**
 * Porthole's server and client are Node programs: V8 compiles their hot code as it runs, and a load it has
 * not seen yet (a wrk burst, a fixed rate after it, connections closing) deoptimises some of it, which then
 * runs slower until it is compiled again. A tunnel that has been up for a while has been through all of
 * that. So before round 1, each case runs through them unrecorded (kept in the JSON as `warmUp`). The peers
 * that are native programs (ssh, sshd, socat) have nothing to warm up.
 */
async function warmUpPass(
  mode: Mode,
  roundCases: BenchCase[],
  peers: Peer[],
  env: CaseEnv,
  elapsedS: () => number,
): Promise<SuiteResult['warmUp']> {
  if (mode.warmUpPasses === 0) return undefined;
  const started = elapsedS();
  const warmEnv: CaseEnv = { ...env, settings: warmUpSettings(mode.settings) };
  const samples: Sample[] = [];
  for (let pass = 1; pass <= mode.warmUpPasses; pass++) {
    for (const c of roundCases) {
      for (const peer of carriers(c, peers).filter((p) => p.compilesAsItRuns)) {
        const sample = await measure(c, peer, 0, warmEnv);
        samples.push(sample);
        progress(progressLine(elapsedS(), 'warm-up', c, peer.label, sample));
      }
    }
  }
  return { passes: mode.warmUpPasses, seconds: elapsedS() - started, samples };
}

/** `--only tcp-1,tcp-8`: just those cases (for iterating on one figure; the full run is the record). */
function selectCases(all: BenchCase[], args: string[]): BenchCase[] {
  const at = args.indexOf('--only');
  if (at < 0) return all;
  const wanted = (args[at + 1] ?? '').split(',').filter(Boolean);
  const unknown = wanted.filter((id) => !all.some((c) => c.id === id));
  if (wanted.length === 0 || unknown.length > 0)
    throw new Error(
      `--only: unknown case ${unknown.join(', ') || '(none given)'}; cases: ${all.map((c) => c.id).join(', ')}`,
    );
  return all.filter((c) => wanted.includes(c.id));
}

export async function main(args: string[]): Promise<void> {
  const quick = args.includes('--quick');
  const mode = quick ? QUICK : FULL;
  const { settings } = mode;
  const startedAt = new Date();
  const t0 = performance.now();
  const elapsedS = () => (performance.now() - t0) / 1000;
  const loadBefore = os
    .loadavg()
    .map((l) => l.toFixed(2))
    .join(' ');
  const h = await Harness.create();
  const peers: Peer[] = [];
  try {
    const { targets, pids } = await startTargets(h);
    const env: CaseEnv = { settings, endpoints: [process.pid, ...pids] };
    const cases = selectCases(benchCases(settings), args);
    const roundCases = cases.filter((x) => x.schedule === 'rounds');
    const samples: Sample[] = [];
    const record = (c: BenchCase, s: Sample, round: number, among: Peer[]) => {
      samples.push(s);
      const label = among.find((p) => p.id === s.peerId)?.label ?? s.peerId;
      progress(progressLine(elapsedS(), `r${round}`, c, label, s));
    };

    // The cases that run once get tunnels of their own, fresh and then gone: 10,000 connections neither
    // meet memory shaped by throughput runs nor leave theirs behind for the rounds.
    const freshPeers = await startPeers(targets, quick);
    try {
      for (const c of cases.filter((x) => x.schedule === 'once')) {
        for (const peer of carriers(c, freshPeers)) record(c, await measure(c, peer, 0, env), 0, freshPeers);
      }
    } finally {
      await Promise.all(freshPeers.map((p) => p.harness?.cleanup()));
    }
    peers.push(...(await startPeers(targets, quick)));
    progress(`peers for the rounds up at ${elapsedS().toFixed(1)} s: ${peers.map((p) => p.id).join(', ')}`);
    const warmUp = await warmUpPass(mode, roundCases, peers, env, elapsedS);
    let roundsRun = 0;
    for (let round = 1; round <= settings.rounds; round++) {
      const roundStart = elapsedS();
      for (const [ci, c] of roundCases.entries()) {
        for (const peer of peerOrder(carriers(c, peers), round, ci))
          record(c, await measure(c, peer, round, env), round, peers);
      }
      roundsRun = round;
      const roundSeconds = elapsedS() - roundStart;
      if (elapsedS() + roundSeconds > mode.budgetSeconds && round < settings.rounds) {
        progress(`stopping after ${round} rounds: another would pass the ${mode.budgetSeconds} s budget`);
        break;
      }
    }
    const cpu = os.cpus();
    const result: SuiteResult = summarise(
      {
        startedAt: startedAt.toISOString(),
        seconds: elapsedS(),
        mode: quick ? 'quick' : 'full',
        settings,
        roundsRun,
        warmUp,
        machine: {
          cpus: cpu.length,
          cpuModel: cpu[0]?.model.trim(),
          kernel: os.release(),
          node: process.version,
          loadBefore,
          loadAfter: os
            .loadavg()
            .map((l) => l.toFixed(2))
            .join(' '),
        },
        peers: peers.map((p) => ({ id: p.id, label: p.label, notes: p.notes })),
        samples,
      },
      cases,
    );
    const files = await writeResults(result, resultsDir);
    process.stdout.write(`${renderReport(result)}\nwritten: ${files.join(', ')}\n`);
  } finally {
    await Promise.all(peers.map((p) => p.harness?.cleanup()));
    await h.cleanup();
  }
}
