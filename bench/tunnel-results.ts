// The suite's record: every sample as measured, and the summaries (median and spread per metric and
// peer, tunnel-process cost per case and peer) that the report, the JSON file and the chart are made of.
import type { BenchCase, Metric, SuiteSettings } from './tunnel-cases.js';
import type { ProcessCost } from './tunnel-proc-stats.js';
import { type Spread, spread } from './tunnel-stats.js';

export interface Sample {
  round: number;
  caseId: string;
  peerId: string;
  /** wall time of the measurement */
  ms: number;
  values?: Record<string, number>;
  detail?: Record<string, unknown>;
  /** CPU seconds and peak RSS of the tunnel processes during this measurement (none for direct) */
  cost?: ProcessCost;
  error?: string;
  skipped?: string;
}

export interface PeerInfo {
  id: string;
  label: string;
  notes: string[];
}

export interface CaseInfo {
  id: string;
  title: string;
  metrics: Metric[];
}

export interface CostSummary {
  cpuSeconds?: Spread;
  /** the highest peak over the rounds */
  peakRssMiB?: number;
}

export interface SuiteResult {
  startedAt: string;
  seconds: number;
  mode: 'full' | 'quick';
  settings: SuiteSettings;
  roundsRun: number;
  /** the unrecorded warm-up before round 1 (full mode): its samples are not in the figures */
  warmUp?: { passes: number; seconds: number; samples: Sample[] };
  machine: Record<string, unknown>;
  peers: PeerInfo[];
  cases: CaseInfo[];
  samples: Sample[];
  /** metric id -> peer id -> spread over rounds */
  figures: Record<string, Record<string, Spread>>;
  /** case id -> peer id -> cost */
  costs: Record<string, Record<string, CostSummary>>;
  /** case id -> peer id -> why there is no figure (skip reason or the errors) */
  gaps: Record<string, Record<string, string>>;
}

export function summarise(
  base: Omit<SuiteResult, 'figures' | 'costs' | 'gaps' | 'cases'>,
  cases: BenchCase[],
): SuiteResult {
  const figures: SuiteResult['figures'] = {};
  const costs: SuiteResult['costs'] = {};
  const gaps: SuiteResult['gaps'] = {};
  for (const c of cases) {
    costs[c.id] = {};
    gaps[c.id] = {};
    for (const peer of base.peers) {
      const samples = base.samples.filter((s) => s.caseId === c.id && s.peerId === peer.id);
      if (samples.length === 0) continue;
      for (const m of c.metrics) {
        const values = samples.flatMap((s) => (s.values?.[m.id] === undefined ? [] : [s.values[m.id]!]));
        const summary = spread(values);
        if (summary) {
          figures[m.id] ??= {};
          figures[m.id]![peer.id] = summary;
        }
      }
      const metered = samples.flatMap((s) => (s.cost ? [s.cost] : []));
      if (metered.length > 0) {
        costs[c.id]![peer.id] = {
          cpuSeconds: spread(metered.map((m) => m.cpuSeconds)),
          peakRssMiB: Math.max(...metered.map((m) => m.peakRssMiB)),
        };
      }
      const problems = [
        ...new Set(samples.flatMap((s) => [s.skipped, s.error].filter((x) => x !== undefined))),
      ];
      if (problems.length > 0) gaps[c.id]![peer.id] = problems.join('; ');
    }
  }
  return {
    ...base,
    cases: cases.map((c) => ({ id: c.id, title: c.title, metrics: c.metrics })),
    figures,
    costs,
    gaps,
  };
}
