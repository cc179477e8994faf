// Load generators the bench runs as child processes (their own event loop, their own core time):
//
//   http-rate     open-loop HTTP/1.1 at a fixed request rate over keep-alive connections. Latency is
//                 counted from each request's *scheduled* time, so a stall that delays later requests
//                 shows in the percentiles (no coordinated omission, as in wrk2). autocannon was
//                 considered: its rate limit sends each second's quota back to back and then pauses,
//                 which measures bursts, not a fixed rate. Percentiles come from Node's built-in HDR
//                 histogram (perf_hooks.createHistogram).
//   connect-rate  new TCP connections per second: connect, one 1-byte round trip, close; several workers.
//
// Each prints one JSON line with its figures and exits 0 (1 with a message on stderr if it cannot run).
import net from 'node:net';
import { createHistogram, performance, type RecordableHistogram } from 'node:perf_hooks';
import { parseArgs } from 'node:util';

const HOST = '127.0.0.1';
const CONNECT_TIMEOUT_MS = 5000;
/** Requests whose scheduled time falls in the first part of a run warm things up and are not recorded. */
const WARMUP_FRACTION = 0.1;

function latencyHistogram(): RecordableHistogram {
  return createHistogram({ lowest: 1, highest: 60_000_000, figures: 3 });
}

/** Microseconds recorded; milliseconds reported. */
function recordMs(hist: RecordableHistogram, ms: number): void {
  hist.record(Math.max(1, Math.round(ms * 1000)));
}

function percentilesMs(hist: RecordableHistogram): Record<string, number> {
  if (hist.count === 0) return {};
  const ms = (us: number) => us / 1000;
  return {
    p50Ms: ms(hist.percentile(50)),
    p90Ms: ms(hist.percentile(90)),
    p99Ms: ms(hist.percentile(99)),
    p999Ms: ms(hist.percentile(99.9)),
    maxMs: ms(hist.max),
  };
}

function connect(port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ host: HOST, port, noDelay: true });
    const timer = setTimeout(
      () => sock.destroy(new Error(`connect to ${HOST}:${port} timed out`)),
      CONNECT_TIMEOUT_MS,
    );
    sock.once('connect', () => {
      clearTimeout(timer);
      resolve(sock);
    });
    sock.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
  });
}

/**
 * Length of the first complete HTTP response in `buf`, or undefined while it is incomplete. Bodies are
 * framed by Content-Length or chunked encoding (a proxy may re-frame the service's answer).
 */
function completeResponseLength(buf: Buffer): number | undefined {
  const headEnd = buf.indexOf('\r\n\r\n');
  if (headEnd < 0) return undefined;
  const head = buf.toString('latin1', 0, headEnd);
  const length = /\r\ncontent-length:\s*(\d+)/i.exec(head);
  if (length) {
    const total = headEnd + 4 + Number(length[1]);
    return buf.length >= total ? total : undefined;
  }
  if (/\r\ntransfer-encoding:\s*chunked/i.test(head)) {
    const last = buf.indexOf('\r\n0\r\n\r\n', headEnd + 2);
    return last < 0 ? undefined : last + 7;
  }
  throw new Error(`response without Content-Length or chunked body: ${JSON.stringify(head.slice(0, 200))}`);
}

interface InFlight {
  scheduledAt: number;
  /** when the generator got to it: later than scheduledAt by its own timer lateness */
  issuedAt: number;
  recorded: boolean;
}

/** One keep-alive connection carrying one request at a time. */
class KeepAlive {
  private buffer: Buffer = Buffer.alloc(0);
  inFlight: InFlight | undefined;

  constructor(
    readonly sock: net.Socket,
    private readonly request: Buffer,
    onResponse: (conn: KeepAlive, req: InFlight, ok: boolean) => void,
    onBroken: (conn: KeepAlive, reason: string) => void,
  ) {
    sock.on('data', (chunk: Buffer) => {
      this.buffer = this.buffer.length === 0 ? chunk : Buffer.concat([this.buffer, chunk]);
      let total: number | undefined;
      try {
        total = completeResponseLength(this.buffer);
      } catch (err) {
        onBroken(this, (err as Error).message);
        return;
      }
      if (total === undefined || !this.inFlight) return;
      const ok = this.buffer.toString('latin1', 9, 12) === '200';
      this.buffer = this.buffer.subarray(total);
      const req = this.inFlight;
      this.inFlight = undefined;
      onResponse(this, req, ok);
    });
    sock.on('error', (err) => onBroken(this, err.message));
    sock.on('close', () => onBroken(this, 'connection closed'));
  }

  send(req: InFlight): void {
    this.inFlight = req;
    this.sock.write(this.request);
  }
}

interface HttpRateOptions {
  port: number;
  host: string;
  rate: number;
  seconds: number;
  connections: number;
}

async function httpRate(opts: HttpRateOptions): Promise<Record<string, unknown>> {
  const request = Buffer.from(`GET / HTTP/1.1\r\nHost: ${opts.host}\r\nUser-Agent: porthole-bench\r\n\r\n`);
  const sockets = await Promise.all(Array.from({ length: opts.connections }, () => connect(opts.port)));
  const hist = latencyHistogram();
  // Beside the headline (from the scheduled time): the same requests from the moment the generator issued
  // them, and the generator's own lateness. On a busy 2-core machine its timers fire up to ~1.5 ms late;
  // these two tell that part of a percentile from what the path under test added.
  const fromIssue = latencyHistogram();
  const generatorLate = latencyHistogram();
  const total = Math.max(1, Math.round(opts.rate * opts.seconds));
  const warmup = Math.floor(total * WARMUP_FRACTION);
  const intervalMs = 1000 / opts.rate;
  const maxQueued = Math.max(100, opts.rate); // one second of backlog: beyond that the target is saturated
  const counts = { issued: 0, ok: 0, failed: 0, dropped: 0, broken: 0 };
  const queue: InFlight[] = [];
  const idle: KeepAlive[] = [];
  const live = new Set<KeepAlive>();
  const start = performance.now() + 20;
  let finish: () => void = () => {};
  const finished = new Promise<void>((resolve) => {
    finish = resolve;
  });

  const settledAll = () => counts.ok + counts.failed + counts.dropped >= total;
  const dispatch = (conn: KeepAlive) => {
    const next = queue.shift();
    if (next) conn.send(next);
    else idle.push(conn);
  };
  const onResponse = (conn: KeepAlive, req: InFlight, ok: boolean) => {
    if (ok) counts.ok += 1;
    else counts.failed += 1;
    if (ok && req.recorded) {
      const now = performance.now();
      recordMs(hist, now - req.scheduledAt);
      recordMs(fromIssue, now - req.issuedAt);
      recordMs(generatorLate, req.issuedAt - req.scheduledAt);
    }
    if (settledAll()) finish();
    else dispatch(conn);
  };
  const onBroken = (conn: KeepAlive, _reason: string) => {
    if (!live.delete(conn)) return;
    counts.broken += 1;
    if (conn.inFlight) counts.failed += 1;
    conn.inFlight = undefined;
    conn.sock.destroy();
    const at = idle.indexOf(conn);
    if (at >= 0) idle.splice(at, 1);
    if (live.size === 0 || settledAll()) finish();
  };
  for (const sock of sockets) {
    const conn = new KeepAlive(sock, request, onResponse, onBroken);
    live.add(conn);
    idle.push(conn);
  }

  const tick = () => {
    const now = performance.now();
    while (counts.issued < total && start + counts.issued * intervalMs <= now) {
      const req = {
        scheduledAt: start + counts.issued * intervalMs,
        issuedAt: now,
        recorded: counts.issued >= warmup,
      };
      counts.issued += 1;
      const conn = idle.pop();
      if (conn) conn.send(req);
      else if (queue.length < maxQueued) queue.push(req);
      else counts.dropped += 1;
    }
    if (settledAll()) finish();
    else if (counts.issued < total) setTimeout(tick, Math.max(0, start + counts.issued * intervalMs - now));
  };
  setTimeout(tick, 20);
  const deadline = setTimeout(finish, (opts.seconds + 10) * 1000);
  await finished;
  clearTimeout(deadline);
  const elapsedS = (performance.now() - start) / 1000;
  for (const conn of live) conn.sock.destroy();
  return {
    rate: opts.rate,
    connections: opts.connections,
    scheduled: total,
    ...counts,
    unanswered: total - counts.ok - counts.failed - counts.dropped,
    achievedPerSecond: counts.ok / elapsedS,
    recorded: hist.count,
    ...percentilesMs(hist),
    fromIssue: percentilesMs(fromIssue),
    generatorLate: percentilesMs(generatorLate),
  };
}

interface ConnectRateOptions {
  port: number;
  seconds: number;
  concurrency: number;
  max: number;
}

/** Connect, send one byte, wait for its echo, close. Resolves with the time taken, or an error text. */
function oneRoundTrip(port: number): Promise<number | string> {
  const started = performance.now();
  return new Promise((resolve) => {
    const sock = net.connect({ host: HOST, port, noDelay: true });
    const done = (outcome: number | string) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(outcome);
    };
    const timer = setTimeout(() => done('timeout'), CONNECT_TIMEOUT_MS);
    sock.once('connect', () => sock.write('x'));
    sock.once('data', () => done(performance.now() - started));
    sock.once('error', (err: NodeJS.ErrnoException) => done(err.code ?? err.message));
    sock.once('close', () => done('closed before the echo'));
  });
}

async function connectRate(opts: ConnectRateOptions): Promise<Record<string, unknown>> {
  const hist = latencyHistogram();
  const errors = new Map<string, number>();
  const start = performance.now();
  const deadline = start + opts.seconds * 1000;
  let started = 0;
  let ok = 0;
  const worker = async () => {
    while (performance.now() < deadline && started < opts.max) {
      started += 1;
      const outcome = await oneRoundTrip(opts.port);
      if (typeof outcome === 'number') {
        ok += 1;
        recordMs(hist, outcome);
      } else {
        errors.set(outcome, (errors.get(outcome) ?? 0) + 1);
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, worker));
  const elapsedS = (performance.now() - start) / 1000;
  return {
    concurrency: opts.concurrency,
    connections: ok,
    failed: started - ok,
    errors: Object.fromEntries(errors),
    perSecond: ok / elapsedS,
    ...percentilesMs(hist),
  };
}

function positive(name: string, text: string | undefined, fallback?: number): number {
  const value = text === undefined ? fallback : Number(text);
  if (value === undefined || !Number.isFinite(value) || value <= 0)
    throw new Error(`--${name} must be a positive number (got ${text})`);
  return value;
}

async function main(argv: string[]): Promise<void> {
  const { positionals, values } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      port: { type: 'string' },
      host: { type: 'string' },
      rate: { type: 'string' },
      seconds: { type: 'string' },
      connections: { type: 'string' },
      concurrency: { type: 'string' },
      max: { type: 'string' },
    },
  });
  const port = positive('port', values.port);
  const seconds = positive('seconds', values.seconds, 2);
  let result: Record<string, unknown>;
  if (positionals[0] === 'http-rate') {
    result = await httpRate({
      port,
      seconds,
      host: values.host ?? `${HOST}:${port}`,
      rate: positive('rate', values.rate),
      connections: positive('connections', values.connections, 16),
    });
  } else if (positionals[0] === 'connect-rate') {
    result = await connectRate({
      port,
      seconds,
      concurrency: positive('concurrency', values.concurrency, 8),
      max: positive('max', values.max, 50_000),
    });
  } else {
    throw new Error(`usage: tunnel-load.js http-rate|connect-rate --port P [...] (got ${positionals[0]})`);
  }
  process.stdout.write(`${JSON.stringify(result)}\n`);
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`tunnel-load: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
