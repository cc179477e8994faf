// The printed report (Markdown, so the same text goes into BENCHMARKS.md): porthole/peer ratios first,
// then every figure with its spread, then what the tunnel processes cost; and the result files.
import { mkdir, rename, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { SuiteResult } from './tunnel-results.js';
import { formatFigure, formatRatio, formatSpread, ratio, spread } from './tunnel-stats.js';
import { renderChart } from './tunnel-svg.js';

function table(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

const isPorthole = (peerId: string) => peerId.startsWith('porthole');

function metricLabel(m: { title: string; unit: string; higherIsBetter: boolean }): string {
  return `${m.title} (${m.unit}, ${m.higherIsBetter ? 'higher' : 'lower'} is better)`;
}

function headline(r: SuiteResult): string {
  const references = r.peers.filter((p) => !isPorthole(p.id));
  const rows: string[][] = [];
  for (const c of r.cases) {
    for (const m of c.metrics.filter((x) => !x.noRatio)) {
      const figures = r.figures[m.id] ?? {};
      for (const p of r.peers.filter((peer) => isPorthole(peer.id) && figures[peer.id])) {
        const own = figures[p.id];
        rows.push([
          m.title,
          p.label,
          formatFigure(own!.median),
          ...references.map((ref) => formatRatio(ratio(own, figures[ref.id]))),
        ]);
      }
    }
  }
  return table(['metric', 'porthole', 'median', ...references.map((ref) => `÷ ${ref.label}`)], rows);
}

function allFigures(r: SuiteResult): string {
  const rows = r.cases.flatMap((c) =>
    c.metrics.map((m) => [metricLabel(m), ...r.peers.map((p) => formatSpread(r.figures[m.id]?.[p.id]))]),
  );
  return table(['metric', ...r.peers.map((p) => p.label)], rows);
}

/** The peers that run relay processes of their own: not direct, and the http proxy rows share porthole's. */
function tunnelPeers(r: SuiteResult): SuiteResult['peers'] {
  return r.peers.filter((p) => p.id !== 'direct' && !p.id.endsWith('-http'));
}

function costs(r: SuiteResult): string {
  const tunnels = tunnelPeers(r);
  const rows = r.cases.map((c) => [
    c.id,
    ...tunnels.map((p) => {
      const cost = r.costs[c.id]?.[p.id];
      if (!cost?.cpuSeconds) return '–';
      return `${formatFigure(cost.cpuSeconds.median)} s / ${formatFigure(cost.peakRssMiB ?? 0)} MiB`;
    }),
  ]);
  return table(['case (CPU s per run / peak RSS)', ...tunnels.map((p) => p.label)], rows);
}

/**
 * CPU seconds of the tunnel processes per GB they carried, for the cases that report bytes (iperf3 over
 * TCP). With both cores busy a relay's throughput follows this figure: a peer that needs less CPU per GB
 * moves more of them, so the throughput ratios can be read against it.
 */
function cpuPerGigabyteSection(r: SuiteResult): string[] {
  const tunnels = tunnelPeers(r);
  const rows: string[][] = [];
  for (const c of r.cases) {
    const perPeer = tunnels.map((p) => {
      const values = r.samples.flatMap((s) => {
        const bytes = s.detail?.bytes;
        if (s.caseId !== c.id || s.peerId !== p.id || !s.cost || typeof bytes !== 'number' || bytes <= 0)
          return [];
        return [s.cost.cpuSeconds / (bytes / 1e9)];
      });
      return formatSpread(spread(values));
    });
    if (perPeer.some((cell) => cell !== '–')) rows.push([c.id, ...perPeer]);
  }
  if (rows.length === 0) return [];
  return [
    '### Tunnel processes: CPU seconds per GB carried (median, min–max over the rounds)',
    '',
    table(['case (CPU s per GB)', ...tunnels.map((p) => p.label)], rows),
    '',
  ];
}

function notes(r: SuiteResult): string {
  const lines: string[] = [];
  if (r.warmUp)
    lines.push(
      `- porthole ws and wss: ${r.warmUp.passes} unrecorded warm-up pass of every case before round 1 ` +
        `(${Math.round(r.warmUp.seconds)} s; V8 compiles their code as they run), its figures in the JSON as warmUp`,
    );
  else if (r.mode === 'quick') lines.push('- porthole ws and wss: no warm-up pass (--quick), measured cold');
  const generatorFlags = r.samples.find((s) => Array.isArray(s.detail?.generatorNodeFlags))?.detail
    ?.generatorNodeFlags as string[] | undefined;
  if (generatorFlags)
    lines.push(
      `- fixed-rate HTTP generator: node ${generatorFlags.join(' ')} (a fresh process each run: ` +
        'no optimising compiles or GC helper threads taking a core while it times)',
    );
  for (const p of r.peers) for (const n of p.notes) lines.push(`- ${p.label}: ${n}`);
  for (const s of r.samples.filter((x) => x.caseId === 'idle' && x.detail)) {
    const d = s.detail as { attempted?: number; established?: number; errors?: Record<string, number> };
    const label = r.peers.find((p) => p.id === s.peerId)?.label ?? s.peerId;
    const errors = Object.entries(d.errors ?? {}).map(([why, n]) => `${n}× ${why}`);
    lines.push(
      `- idle, ${label}: ${d.established} of ${d.attempted} connections established${errors.length ? ` (${errors.join(', ')})` : ''}`,
    );
  }
  for (const [caseId, byPeer] of Object.entries(r.gaps)) {
    for (const [peerId, why] of Object.entries(byPeer)) {
      const label = r.peers.find((p) => p.id === peerId)?.label ?? peerId;
      lines.push(`- ${caseId}, ${label}: ${why.length > 300 ? `${why.slice(0, 300)}…` : why}`);
    }
  }
  return lines.join('\n');
}

export function renderReport(r: SuiteResult): string {
  const m = r.machine;
  return [
    `## porthole tunnel bench: ${r.startedAt} (${r.mode}, ${r.roundsRun} round${r.roundsRun === 1 ? '' : 's'}, ${Math.round(r.seconds)} s)`,
    '',
    `Machine: ${m.cpus} × ${m.cpuModel}, Linux ${m.kernel}, Node ${m.node}; load average ${m.loadBefore} before, ${m.loadAfter} after. ` +
      'The machine is shared with other work running at the same time: absolute figures move with it; ' +
      'the ratios, measured interleaved in the same run, are the headline.',
    '',
    '### porthole ÷ peer (median ÷ median; above 1x is better for throughput and rates, worse for latency, loss and memory)',
    '',
    headline(r),
    '',
    '### Every figure: median (min–max over the rounds)',
    '',
    allFigures(r),
    '',
    '### Tunnel processes: CPU seconds per measurement (median) and peak RSS (server + client, or relay)',
    '',
    costs(r),
    '',
    ...cpuPerGigabyteSection(r),
    '### Notes',
    '',
    notes(r),
    '',
  ].join('\n');
}

/** bench/results/<stamp>.{json,md,svg}; JSON written to .tmp first so a crash leaves no half file. */
export async function writeResults(r: SuiteResult, dir: string): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const stamp = r.startedAt.replace(/:/g, '-').replace(/\.\d+Z$/, 'Z');
  const base = path.join(dir, `${stamp}${r.mode === 'quick' ? '-quick' : ''}`);
  const json = `${base}.json`;
  await writeFile(`${json}.tmp`, `${JSON.stringify(r, null, 2)}\n`);
  await rename(`${json}.tmp`, json);
  await writeFile(`${base}.md`, renderReport(r));
  await writeFile(`${base}.svg`, renderChart(r));
  return [json, `${base}.md`, `${base}.svg`];
}
