import type { Session, Stream } from '@porthole/mux';
import { processResources } from '@porthole/protocol';

/** Label values are client and proxy names, reasons and versions; escaped per the text format anyway. */
function escapeLabel(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"');
}

function formatLabels(labels: Readonly<Record<string, string>>): string {
  const parts = Object.entries(labels).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length === 0 ? '' : `{${parts.join(',')}}`;
}

function formatValue(value: number): string {
  if (Number.isNaN(value)) return 'NaN';
  if (value === Number.POSITIVE_INFINITY) return '+Inf';
  if (value === Number.NEGATIVE_INFINITY) return '-Inf';
  return String(value);
}

export type MetricType = 'counter' | 'gauge' | 'histogram';

/**
 * Builds one Prometheus text exposition (format 0.0.4): HELP and TYPE once per family, then its samples.
 * Families are written in the order they are declared.
 */
export class Exposition {
  private readonly lines: string[] = [];

  family(name: string, type: MetricType, help: string): this {
    this.lines.push(`# HELP ${name} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`);
    this.lines.push(`# TYPE ${name} ${type}`);
    return this;
  }

  sample(name: string, value: number, labels: Readonly<Record<string, string>> = {}): this {
    this.lines.push(`${name}${formatLabels(labels)} ${formatValue(value)}`);
    return this;
  }

  /** A whole family with one sample (the common case for process-wide numbers). */
  single(name: string, type: MetricType, help: string, value: number): this {
    return this.family(name, type, help).sample(name, value);
  }

  histogram(name: string, help: string, histogram: Histogram): this {
    this.family(name, 'histogram', help);
    let cumulative = 0;
    histogram.bounds.forEach((bound, i) => {
      cumulative += histogram.counts[i]!;
      this.sample(`${name}_bucket`, cumulative, { le: formatValue(bound) });
    });
    this.sample(`${name}_bucket`, histogram.count, { le: '+Inf' });
    this.sample(`${name}_sum`, histogram.sum);
    this.sample(`${name}_count`, histogram.count);
    return this;
  }

  toString(): string {
    return `${this.lines.join('\n')}\n`;
  }
}

/** Seconds; from half a millisecond (loopback) to ten seconds (a client on a bad mobile link). */
export const LATENCY_BUCKETS = [
  0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** A fixed-bucket histogram (non-cumulative counts per bucket; the exposition accumulates them). */
export class Histogram {
  readonly counts: number[];
  count = 0;
  sum = 0;

  constructor(readonly bounds: readonly number[] = LATENCY_BUCKETS) {
    this.counts = bounds.map(() => 0);
  }

  observe(value: number): void {
    this.count += 1;
    this.sum += value;
    const i = this.bounds.findIndex((bound) => value <= bound);
    if (i >= 0) this.counts[i]! += 1;
  }
}

/**
 * Times every stream the server opens on `session`, from SYN to the client's ACK (the client ACKs as it
 * accepts the stream, so this is the tunnel's round trip plus the client's event-loop delay), into
 * `histogram`.
 */
export function timeStreamOpens(session: Session, histogram: Histogram): void {
  session.on('ack', (_stream: Stream, ms: number) => histogram.observe(ms / 1000));
}

/** The process_* and nodejs_* families every exporter has, written into `out`. */
export function writeProcessMetrics(out: Exposition): void {
  const { rss, heapUsed, openFds, resources } = processResources();
  out.single('process_resident_memory_bytes', 'gauge', 'Resident set size in bytes.', rss);
  out.single('process_open_fds', 'gauge', 'Open file descriptors.', openFds);
  out.single(
    'process_start_time_seconds',
    'gauge',
    'Start time of the process since the epoch, in seconds.',
    Math.round((Date.now() - process.uptime() * 1000) / 1000),
  );
  out.single('nodejs_heap_used_bytes', 'gauge', 'V8 heap in use, in bytes.', heapUsed);
  out.family('nodejs_active_resources', 'gauge', 'Resources keeping the event loop alive, by type.');
  for (const [type, count] of Object.entries(resources).sort()) {
    out.sample('nodejs_active_resources', count, { type });
  }
}
