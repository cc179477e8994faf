// What the tunnel processes cost, read from /proc: resident memory (now and peak) and CPU seconds of a
// process and every descendant (sshd's per-session children, socat's per-connection forks).
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';
import { procMemory } from '@porthole/e2e/lib/processes';

/** USER_HZ: the unit of utime/stime in /proc/PID/stat; 100 on every mainstream Linux build. */
const CLOCK_TICKS_PER_SECOND = 100;
const KIB_PER_MIB = 1024;

function readText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined; // the process ended between listing and reading: it simply no longer counts
  }
}

/** pid and all its live descendants (children are listed per thread, so every thread is read). */
export function processTree(rootPid: number): number[] {
  const seen = new Set<number>();
  const queue = [rootPid];
  for (let i = 0; i < queue.length && seen.size < 100_000; i++) {
    const pid = queue[i]!;
    if (seen.has(pid)) continue;
    seen.add(pid);
    let tasks: string[] = [];
    try {
      tasks = readdirSync(`/proc/${pid}/task`);
    } catch {
      continue;
    }
    for (const tid of tasks) {
      const children = readText(`/proc/${pid}/task/${tid}/children`) ?? '';
      for (const child of children.split(' ')) if (child.trim()) queue.push(Number(child));
    }
  }
  return [...seen].filter((pid) => readText(`/proc/${pid}/stat`) !== undefined);
}

function statusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  try {
    return procMemory(field, pid) / 1024;
  } catch {
    return 0; // ended between listing and reading, or a zombie (no memory lines): it no longer counts
  }
}

/** utime + stime + cutime + cstime: its own CPU and that of children it already reaped. */
export function cpuSeconds(pid: number): number {
  const stat = readText(`/proc/${pid}/stat`);
  if (!stat) return 0;
  // Fields after the command name (which may hold spaces) start at state; utime is field 14 overall.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = [11, 12, 13, 14].reduce((sum, i) => sum + Number(fields[i] ?? 0), 0);
  return ticks / CLOCK_TICKS_PER_SECOND;
}

/** Sum over the trees rooted at `roots`. */
export function treeRssMiB(roots: number[]): number {
  return sumOverTrees(roots, (pid) => statusKiB(pid, 'VmRSS')) / KIB_PER_MIB;
}

export function treeCpuSeconds(roots: number[]): number {
  return sumOverTrees(roots, cpuSeconds);
}

function sumOverTrees(roots: number[], value: (pid: number) => number): number {
  let sum = 0;
  for (const root of roots) for (const pid of processTree(root)) sum += value(pid);
  return sum;
}

/** The soft limit on open files of a process ("Max open files" in /proc/PID/limits). */
export function openFileLimit(pid: number): number {
  const limits = readText(`/proc/${pid}/limits`) ?? '';
  const m = /^Max open files\s+(\d+|unlimited)/m.exec(limits);
  if (!m) return 0;
  return m[1] === 'unlimited' ? Number.POSITIVE_INFINITY : Number(m[1]);
}

export interface ProcessCost {
  cpuSeconds: number;
  /** the highest resident memory of the tunnel processes together during the measurement */
  peakRssMiB: number;
}

const SAMPLE_INTERVAL_MS = 100;

/**
 * Meters the tunnel processes over one measurement: CPU seconds used, and peak RSS as the larger of the
 * summed VmHWM (reset at the start through clear_refs) and the highest summed VmRSS sampled every 100 ms
 * (which also sees short-lived forks whose VmHWM dies with them).
 */
export class CostMeter {
  private readonly cpuAtStart: number;
  private sampledPeakMiB = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly roots: number[]) {
    for (const root of roots) {
      for (const pid of processTree(root)) {
        try {
          // "5" resets the peak RSS (VmHWM) to the current RSS (Linux >= 4.0; needs ptrace rights).
          writeFileSync(`/proc/${pid}/clear_refs`, '5');
        } catch {}
      }
    }
    this.cpuAtStart = treeCpuSeconds(roots);
    this.sample();
    this.timer = setInterval(() => this.sample(), SAMPLE_INTERVAL_MS);
  }

  private sample(): void {
    this.sampledPeakMiB = Math.max(this.sampledPeakMiB, treeRssMiB(this.roots));
  }

  stop(): ProcessCost {
    clearInterval(this.timer);
    this.sample();
    const hwmMiB = sumOverTrees(this.roots, (pid) => statusKiB(pid, 'VmHWM')) / KIB_PER_MIB;
    return {
      cpuSeconds: treeCpuSeconds(this.roots) - this.cpuAtStart,
      peakRssMiB: Math.max(hwmMiB, this.sampledPeakMiB),
    };
  }
}

const QUIET_INTERVAL_MS = 500;
/** CPU seconds per interval below which the processes count as quiet (10% of a core). */
const QUIET_CPU_SECONDS = 0.05;

/** Wait (at most timeoutMs) until the trees use less than 10% of a core, e.g. after closing connections. */
export async function waitUntilQuiet(roots: number[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last = treeCpuSeconds(roots);
  while (Date.now() < deadline) {
    await sleep(QUIET_INTERVAL_MS);
    const now = treeCpuSeconds(roots);
    if (now - last < QUIET_CPU_SECONDS) return;
    last = now;
  }
}
