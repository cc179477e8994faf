// `npm run bench -- mux [--seconds 5] [--rounds 3] [--payload 64KiB] [--hwm 4MiB] [--window 256KiB,1MiB,4MiB,16MiB | sweep] [--quick]`
// @porthole/mux over a loopback WebSocket beside raw ws messages of the same size, in two processes
// (sender = ws client, receiver = ws server), every case in fresh processes so each peak RSS is its own.
// Rounds are interleaved (each round runs every case, in a rotated order) and the median is reported.
// Targets (issue 2): one stream >= 50% of raw ws, 16 streams >= 60%. Writes bench/results/mux-<date>.json.
import { type ChildProcess, fork } from 'node:child_process';
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import type { PeerConfig, PeerMessage } from './mux-peer.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SWEEP = [256 * KiB, MiB, 4 * MiB, 16 * MiB];
const TARGETS: Record<number, number> = { 1: 0.5, 16: 0.6 };

interface Options {
  seconds: number;
  rounds: number;
  payload: number;
  highWaterMark: number;
  /** undefined entry = the implementation's default window. */
  windows: (number | undefined)[];
}

interface Case {
  name: string;
  mode: 'raw' | 'mux';
  streams: number;
  window?: number;
}

interface Run {
  mibps: number;
  bytes: number;
  seconds: number;
  senderMaxRss: number;
  receiverMaxRss: number;
  senderCpu: number;
  receiverCpu: number;
}

export function parseSize(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?$/i.exec(text.trim());
  if (!m) throw new Error(`bad size "${text}" (e.g. 64KiB, 4MiB)`);
  const unit = (m[2] ?? 'b').toLowerCase()[0]!;
  const mult = unit === 'k' ? KiB : unit === 'm' ? MiB : unit === 'g' ? 1024 * MiB : 1;
  return Math.round(Number(m[1]) * mult);
}

function formatSize(bytes: number): string {
  if (bytes % MiB === 0) return `${bytes / MiB} MiB`;
  if (bytes % KiB === 0) return `${bytes / KiB} KiB`;
  return `${bytes} B`;
}

function parseOptions(args: string[]): Options {
  const opts: Options = {
    seconds: 5,
    rounds: 3,
    payload: 64 * KiB,
    highWaterMark: 4 * MiB,
    windows: [undefined],
  };
  for (let i = 0; i < args.length; i++) {
    const flag = args[i]!;
    const value = () => {
      const v = args[++i];
      if (v === undefined) throw new Error(`${flag} needs a value`);
      return v;
    };
    switch (flag) {
      case '--seconds':
        opts.seconds = Number(value());
        break;
      case '--rounds':
        opts.rounds = Number.parseInt(value(), 10);
        break;
      case '--payload':
        opts.payload = parseSize(value());
        break;
      case '--hwm':
        opts.highWaterMark = parseSize(value());
        break;
      case '--window': {
        const v = value();
        opts.windows = v === 'sweep' ? SWEEP : v.split(',').map(parseSize);
        break;
      }
      case '--quick':
        opts.seconds = 2;
        opts.rounds = 1;
        break;
      default:
        throw new Error(`unknown flag ${flag}`);
    }
  }
  if (!(opts.seconds > 0 && opts.seconds <= 60)) throw new Error('--seconds must be in (0, 60]');
  if (!(opts.rounds >= 1 && opts.rounds <= 10)) throw new Error('--rounds must be 1..10');
  return opts;
}

const peerScript = fileURLToPath(new URL('./mux-peer.js', import.meta.url));

function startPeer(
  role: 'sender' | 'receiver',
  cfg: PeerConfig,
): { child: ChildProcess; next: () => Promise<PeerMessage> } {
  const child = fork(peerScript, [role, JSON.stringify(cfg)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  });
  const inbox: PeerMessage[] = [];
  const waiters: ((m: PeerMessage) => void)[] = [];
  child.on('message', (m: PeerMessage) => {
    const waiter = waiters.shift();
    if (waiter) waiter(m);
    else inbox.push(m);
  });
  const exited = new Promise<never>((_, reject) =>
    child.once('exit', (code, signal) =>
      reject(new Error(`${role} exited (${code ?? signal}) before reporting`)),
    ),
  );
  exited.catch(() => {});
  const next = () =>
    Promise.race([
      inbox.length > 0
        ? Promise.resolve(inbox.shift()!)
        : new Promise<PeerMessage>((resolve) => waiters.push(resolve)),
      exited,
    ]);
  return { child, next };
}

function deadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

async function runCase(c: Case, opts: Options): Promise<Run> {
  const cfg: PeerConfig = {
    mode: c.mode,
    streams: c.streams,
    seconds: opts.seconds,
    payload: opts.payload,
    highWaterMark: opts.highWaterMark,
    ...(c.window !== undefined && { window: c.window }),
  };
  const limit = opts.seconds * 1000 + 20_000; // a stalled case fails instead of hanging the bench
  const receiver = startPeer('receiver', cfg);
  let sender: ReturnType<typeof startPeer> | undefined;
  try {
    const listening = await deadline(receiver.next(), 10_000, 'receiver start');
    if (listening.type !== 'listening') throw new Error(`receiver said ${JSON.stringify(listening)}`);
    sender = startPeer('sender', { ...cfg, port: listening.port });
    const [s, r] = await deadline(Promise.all([sender.next(), receiver.next()]), limit, c.name);
    if (s.type !== 'result' || s.role !== 'sender' || r.type !== 'result' || r.role !== 'receiver') {
      throw new Error(`unexpected reports ${JSON.stringify([s, r])}`);
    }
    const errors = [...s.errors, ...r.errors];
    if (errors.length > 0) throw new Error(`${c.name}: ${errors.join('; ')}`);
    if (r.received !== s.sent) throw new Error(`${c.name}: sent ${s.sent} bytes but ${r.received} arrived`);
    return {
      mibps: r.received / MiB / r.seconds,
      bytes: r.received,
      seconds: r.seconds,
      senderMaxRss: s.maxRss,
      receiverMaxRss: r.maxRss,
      senderCpu: s.cpuSeconds,
      receiverCpu: r.cpuSeconds,
    };
  } finally {
    for (const p of [sender, receiver]) if (p && p.child.exitCode === null) p.child.kill('SIGKILL');
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

function pad(text: string, width: number, right = false): string {
  return right ? text.padStart(width) : text.padEnd(width);
}

export async function main(args: string[]): Promise<void> {
  const opts = parseOptions(args);
  const cases: Case[] = [{ name: `raw ws (${formatSize(opts.payload)} messages)`, mode: 'raw', streams: 1 }];
  for (const window of opts.windows) {
    const w = window === undefined ? 'default window' : `window ${formatSize(window)}`;
    for (const streams of [1, 16]) {
      cases.push({
        name: `mux ${streams} stream${streams > 1 ? 's' : ''}, ${w}`,
        mode: 'mux',
        streams,
        ...(window !== undefined && { window }),
      });
    }
  }
  let bufferutil = false; // ws uses it when require('bufferutil') works (client masking ~4x faster)
  try {
    createRequire(import.meta.url)('bufferutil');
    bufferutil = true;
  } catch {}
  const load = os.loadavg()[0]!;
  console.log(
    `mux bench: ${cases.length} cases x ${opts.rounds} rounds x ${opts.seconds} s, payload ${formatSize(opts.payload)}, ` +
      `hwm ${formatSize(opts.highWaterMark)}, bufferutil ${bufferutil ? 'on' : 'OFF'}, ${os.cpus().length} cpus, load ${load.toFixed(2)}`,
  );
  const runs = new Map<Case, Run[]>(cases.map((c) => [c, []]));
  const failures = new Map<Case, string[]>(cases.map((c) => [c, []]));
  for (let round = 0; round < opts.rounds; round++) {
    const order = cases.map((_, i) => cases[(i + round) % cases.length]!);
    for (const c of order) {
      try {
        const run = await runCase(c, opts);
        runs.get(c)!.push(run);
        console.log(`  round ${round + 1}: ${pad(c.name, 40)} ${run.mibps.toFixed(1).padStart(8)} MiB/s`);
      } catch (err) {
        const message = err instanceof Error ? err.message : String(err);
        failures.get(c)!.push(message);
        console.log(`  round ${round + 1}: ${pad(c.name, 40)}   FAILED: ${message}`);
      }
    }
  }

  const rawRuns = runs.get(cases[0]!)!;
  if (rawRuns.length === 0) throw new Error('raw ws failed in every round: nothing to compare with');
  const rawMedian = median(rawRuns.map((r) => r.mibps));
  const rows = cases.map((c) => {
    const rs = runs.get(c)!;
    const errors = failures.get(c)!;
    const target = c.mode === 'mux' ? TARGETS[c.streams] : undefined;
    const base = {
      name: c.name,
      mode: c.mode,
      streams: c.streams,
      window: c.window ?? null,
      target: target ?? null,
      errors,
    };
    if (rs.length === 0) return { ...base, mibps: null, rounds: [], ratioToRaw: null, meetsTarget: false };
    const mibps = median(rs.map((r) => r.mibps));
    const ratio = mibps / rawMedian;
    return {
      ...base,
      mibps: Number(mibps.toFixed(1)),
      rounds: rs.map((r) => Number(r.mibps.toFixed(1))),
      ratioToRaw: Number(ratio.toFixed(3)),
      meetsTarget: target === undefined ? null : ratio >= target && errors.length === 0,
      senderPeakRssMiB: Number((Math.max(...rs.map((r) => r.senderMaxRss)) / MiB).toFixed(1)),
      receiverPeakRssMiB: Number((Math.max(...rs.map((r) => r.receiverMaxRss)) / MiB).toFixed(1)),
      senderCpuPerGiB: Number(median(rs.map((r) => (r.senderCpu / r.bytes) * 1024 * MiB)).toFixed(2)),
      receiverCpuPerGiB: Number(median(rs.map((r) => (r.receiverCpu / r.bytes) * 1024 * MiB)).toFixed(2)),
    };
  });

  const header = `${pad('case', 40)} ${pad('MiB/s', 8, true)} ${pad('vs raw', 7, true)} ${pad('target', 7, true)}  ${pad('RSS send/recv MiB', 18, true)}  ${pad('CPU s/GiB send/recv', 20, true)}  rounds`;
  console.log(`\n${header}\n${'-'.repeat(header.length + 10)}`);
  for (const r of rows) {
    const target = r.target === null ? '' : `${r.meetsTarget ? 'ok' : 'MISS'} ${Math.round(r.target * 100)}%`;
    const failed = r.errors.length > 0 ? `  (${r.errors.length} failed)` : '';
    if (r.mibps === null || r.ratioToRaw === null || !('senderPeakRssMiB' in r)) {
      console.log(
        `${pad(r.name, 40)} ${pad('FAILED', 8, true)} ${pad('', 7)} ${pad(target, 7, true)}  ${r.errors[0]}`,
      );
      continue;
    }
    console.log(
      `${pad(r.name, 40)} ${pad(r.mibps.toFixed(1), 8, true)} ${pad(`${(r.ratioToRaw * 100).toFixed(0)}%`, 7, true)} ${pad(target, 7, true)}  ` +
        `${pad(`${r.senderPeakRssMiB} / ${r.receiverPeakRssMiB}`, 18, true)}  ${pad(`${r.senderCpuPerGiB} / ${r.receiverCpuPerGiB}`, 20, true)}  ${r.rounds.join(' ')}${failed}`,
    );
  }

  const now = new Date();
  const stamp = now.toISOString().slice(0, 19).replace(/:/g, '');
  const dir = fileURLToPath(new URL('../results/', import.meta.url));
  mkdirSync(dir, { recursive: true });
  const file = `${dir}mux-${stamp}Z.json`;
  const report = {
    bench: 'mux',
    date: now.toISOString(),
    command: `node bench/dist/run.js mux ${args.join(' ')}`.trim(),
    node: process.version,
    cpus: os.cpus().length,
    cpuModel: os.cpus()[0]?.model ?? 'unknown',
    loadAverageAtStart: Number(load.toFixed(2)),
    bufferutil,
    options: { ...opts, windows: opts.windows.map((w) => w ?? 'default') },
    rawWsMiBps: Number(rawMedian.toFixed(1)),
    cases: rows,
  };
  writeFileSync(`${file}.tmp`, `${JSON.stringify(report, null, 2)}\n`);
  renameSync(`${file}.tmp`, file);
  console.log(`\nwrote ${file}`);
}
