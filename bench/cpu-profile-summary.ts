// Reads V8 .cpuprofile files (from `node --cpu-prof`) and aggregates self time per function and per
// script, so a profile can be read as a table: `node bench/dist/run.js cpu-profile-summary FILE...`.
import { readFile } from 'node:fs/promises';
import path from 'node:path';

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}

interface ProfileNode {
  id: number;
  callFrame: CallFrame;
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

export interface SelfTime {
  name: string;
  ms: number;
  /** share of all sampled time */
  percent: number;
}

export interface ProfileSummary {
  totalMs: number;
  /** sampled time not spent idle */
  busyMs: number;
  functions: SelfTime[];
  scripts: SelfTime[];
}

/** Shorten a script URL to what identifies it: node:internal/..., ws/lib/x.js, mux/dist/src/y.js. */
function scriptName(url: string): string {
  if (!url) return '(native/V8)';
  if (url.startsWith('node:')) return url;
  const nm = url.lastIndexOf('node_modules/');
  if (nm >= 0) return url.slice(nm + 'node_modules/'.length);
  const packages = url.indexOf('/packages/');
  if (packages >= 0) return url.slice(packages + '/packages/'.length);
  return path.basename(url);
}

function top(totals: Map<string, number>, totalMs: number, limit: number): SelfTime[] {
  return [...totals.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([name, ms]) => ({ name, ms, percent: (100 * ms) / totalMs }));
}

export function summariseProfile(profile: CpuProfile, limit = 25): ProfileSummary {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const selfUs = new Map<number, number>();
  // A sample's time is the gap to the next sample (timeDeltas[i + 1]), as Chrome DevTools counts it.
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i]!;
    selfUs.set(id, (selfUs.get(id) ?? 0) + (profile.timeDeltas[i + 1] ?? 0));
  }
  const functions = new Map<string, number>();
  const scripts = new Map<string, number>();
  let totalUs = 0;
  let idleUs = 0;
  for (const [id, us] of selfUs) {
    const frame = byId.get(id)?.callFrame;
    if (!frame) continue;
    totalUs += us;
    if (frame.functionName === '(idle)') idleUs += us;
    const script = scriptName(frame.url);
    const fn = frame.url
      ? `${frame.functionName || '(anonymous)'} ${script}:${frame.lineNumber + 1}`
      : frame.functionName || '(anonymous)';
    functions.set(fn, (functions.get(fn) ?? 0) + us / 1000);
    scripts.set(script, (scripts.get(script) ?? 0) + us / 1000);
  }
  const totalMs = totalUs / 1000;
  return {
    totalMs,
    busyMs: (totalUs - idleUs) / 1000,
    functions: top(functions, totalMs, limit),
    scripts: top(scripts, totalMs, limit),
  };
}

export function renderProfileSummary(title: string, s: ProfileSummary): string {
  const rows = (items: SelfTime[]) =>
    items.map((f) => `  ${f.ms.toFixed(0).padStart(7)} ms ${f.percent.toFixed(1).padStart(5)}%  ${f.name}`);
  return [
    `${title}: ${(s.totalMs / 1000).toFixed(2)} s sampled, ${(s.busyMs / 1000).toFixed(2)} s busy`,
    '  self time by function:',
    ...rows(s.functions),
    '  self time by script:',
    ...rows(s.scripts.slice(0, 12)),
  ].join('\n');
}

export async function summariseProfileFile(file: string, limit?: number): Promise<ProfileSummary> {
  return summariseProfile(JSON.parse(await readFile(file, 'utf8')) as CpuProfile, limit);
}

export async function main(args: string[]): Promise<void> {
  if (args.length === 0) throw new Error('usage: cpu-profile-summary FILE.cpuprofile...');
  for (const file of args) {
    process.stdout.write(`${renderProfileSummary(file, await summariseProfileFile(file))}\n\n`);
  }
}
