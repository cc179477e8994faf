// Real child processes for the end-to-end tests: spawn the CLIs (optionally inside a network namespace),
// parse their pino JSON lines, wait for log lines, and always kill them when a test ends.
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import type { TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { LOG_FLUSH_DELAY_MS } from '@porthole/protocol';

/** /work/main (the repository root), from test/dist/lib/processes.js. */
export const repoRoot = fileURLToPath(new URL('../../../', import.meta.url));
export const binDir = path.join(repoRoot, 'node_modules', '.bin');
export const serverBin = path.join(binDir, 'porthole-server');
export const clientBin = path.join(binDir, 'porthole-client');
/** The compiled helper CLI that runs probes and services inside network namespaces. */
export const netprobeScript = fileURLToPath(new URL('./netprobe.js', import.meta.url));

export type LogLine = Record<string, unknown> & { msg?: string };

export interface OutputLine {
  /** ms since the process started */
  at: number;
  stream: 'out' | 'err';
  text: string;
}

interface Waiter {
  predicate: (line: LogLine) => boolean;
  from: number;
  resolve: (line: LogLine) => void;
  reject: (err: Error) => void;
  timer: NodeJS.Timeout;
  what: string;
}

const liveChildren = new Set<ChildProcess>();
const exitHooks = new Set<() => void>();
// Last line of defence: a test that crashed or timed out must not leave daemons or namespaces behind.
process.on('exit', () => {
  for (const child of liveChildren) {
    try {
      child.kill('SIGKILL');
    } catch {}
  }
  for (const hook of exitHooks) {
    try {
      hook();
    } catch {}
  }
});
/** Run fn (synchronously) if the test process exits before the owner removed it. */
export function onProcessExit(fn: () => void): () => void {
  exitHooks.add(fn);
  return () => exitHooks.delete(fn);
}

const MAX_KEPT_LINES = 20_000;
/**
 * Beyond the batching, how late a line may reach us on a loaded machine: the program's timer firing late, the
 * pipe, our own turn.
 */
const DELIVERY_MARGIN_MS = 250;

export class Proc {
  readonly output: OutputLine[] = [];
  /** pino JSON lines from stdout, in order */
  readonly logs: LogLine[] = [];
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  exitCode: number | null = null;
  exitSignal: NodeJS.Signals | null = null;
  closed = false;
  private readonly started = Date.now();
  private waiters: Waiter[] = [];
  private collecting = true;
  private uncollectedLines = 0;

  constructor(
    readonly name: string,
    readonly child: ChildProcess,
    readonly commandLine: string,
  ) {
    liveChildren.add(child);
    const onLine = (stream: 'out' | 'err') => (text: string) => this.addLine(stream, text);
    if (child.stdout)
      createInterface({ input: child.stdout, crlfDelay: Number.POSITIVE_INFINITY }).on('line', onLine('out'));
    if (child.stderr)
      createInterface({ input: child.stderr, crlfDelay: Number.POSITIVE_INFINITY }).on('line', onLine('err'));
    this.exited = new Promise((resolve) => {
      child.on('error', (err) => {
        this.addLine('err', `spawn error: ${err.message}`);
      });
      child.on('close', (code, signal) => {
        liveChildren.delete(child);
        this.closed = true;
        this.exitCode = code;
        this.exitSignal = signal;
        for (const w of this.waiters) {
          clearTimeout(w.timer);
          w.reject(
            new Error(
              `${this.name} exited (code ${code}, signal ${signal}) while waiting for ${w.what}\n${this.tail(30)}`,
            ),
          );
        }
        this.waiters = [];
        resolve({ code, signal });
      });
    });
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  get alive(): boolean {
    return !this.closed;
  }

  /**
   * From now on stdout lines are still read (the program never blocks on a full pipe) and counted, but
   * neither parsed nor kept. For long runs of programs that log a line per request (the bench's tunnels):
   * parsing and keeping every line grew this process's heap by hundreds of thousands of objects, and its
   * garbage collections took CPU from the programs being measured. stderr is still kept.
   */
  stopCollectingLogs(): void {
    this.collecting = false;
  }

  /** Index to pass as `from` to wait only for log lines that arrive after this moment. */
  mark(): number {
    return this.logs.length;
  }

  /** All JSON log lines (from index `from`) whose msg equals `msg`. */
  logsWithMsg(msg: string, from = 0): LogLine[] {
    return this.logs.slice(from).filter((l) => l.msg === msg);
  }

  /**
   * logsWithMsg once the lines the process logged before this call have had time to arrive: the programs
   * write their lines in batches, up to LOG_FLUSH_DELAY_MS late. For asserting that a line was not logged.
   */
  async settledLogsWithMsg(msg: string, from = 0): Promise<LogLine[]> {
    await sleep(LOG_FLUSH_DELAY_MS + DELIVERY_MARGIN_MS);
    return this.logsWithMsg(msg, from);
  }

  waitForLog(
    predicate: (line: LogLine) => boolean,
    timeoutMs: number,
    from = 0,
    what = 'a log line',
  ): Promise<LogLine> {
    for (let i = from; i < this.logs.length; i++) {
      const line = this.logs[i]!;
      if (predicate(line)) return Promise.resolve(line);
    }
    if (this.closed) {
      return Promise.reject(
        new Error(`${this.name} already exited while waiting for ${what}\n${this.tail(30)}`),
      );
    }
    if (!this.collecting) {
      return Promise.reject(
        new Error(`${this.name}: its logs are no longer collected, so ${what} cannot be awaited`),
      );
    }
    return new Promise((resolve, reject) => {
      const waiter: Waiter = {
        predicate,
        from,
        resolve,
        reject,
        what,
        timer: setTimeout(() => {
          this.waiters = this.waiters.filter((w) => w !== waiter);
          reject(
            new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${what}\n${this.tail(30)}`),
          );
        }, timeoutMs),
      };
      this.waiters.push(waiter);
    });
  }

  /** Wait for a pino line with this msg whose fields equal `fields` (string compare). */
  waitForMsg(msg: string, timeoutMs: number, opts: { from?: number; fields?: Record<string, unknown> } = {}) {
    const fields = opts.fields ?? {};
    const desc = `{"msg":${JSON.stringify(msg)}${Object.entries(fields)
      .map(([k, v]) => `,${JSON.stringify(k)}:${JSON.stringify(v)}`)
      .join('')}}`;
    return this.waitForLog(
      (l) => l.msg === msg && Object.entries(fields).every(([k, v]) => String(l[k]) === String(v)),
      timeoutMs,
      opts.from ?? 0,
      desc,
    );
  }

  /** Wait for a raw output line (stdout or stderr) matching re; for non-JSON programs such as sshd. */
  async waitForOutput(re: RegExp, timeoutMs: number): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const hit = this.output.find((l) => re.test(l.text));
      if (hit) return hit.text;
      if (this.closed) throw new Error(`${this.name} exited while waiting for ${re}\n${this.tail(30)}`);
      if (Date.now() > deadline)
        throw new Error(`${this.name}: timed out waiting for ${re}\n${this.tail(30)}`);
      await sleep(25);
    }
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void {
    if (!this.closed) this.child.kill(signal);
  }

  /** SIGTERM, then SIGKILL after graceMs. Resolves when the process is gone. */
  async stop(graceMs = 3000): Promise<void> {
    if (this.closed) return;
    this.kill('SIGTERM');
    const timer = setTimeout(() => this.kill('SIGKILL'), graceMs);
    await this.exited;
    clearTimeout(timer);
  }

  tail(n: number): string {
    const lines = this.output.slice(-n).map((l) => `  [${this.name} +${l.at}ms ${l.stream}] ${l.text}`);
    if (this.uncollectedLines > 0)
      lines.push(
        `  [${this.name}] (${this.uncollectedLines} stdout lines read since stopCollectingLogs, not kept)`,
      );
    return lines.join('\n');
  }

  /** True if any output line contains the given text (used to prove secrets are never logged). */
  outputContains(text: string): boolean {
    return this.output.some((l) => l.text.includes(text));
  }

  private addLine(stream: 'out' | 'err', text: string): void {
    if (stream === 'out' && !this.collecting) {
      this.uncollectedLines++;
      return;
    }
    if (this.output.length < MAX_KEPT_LINES)
      this.output.push({ at: Date.now() - this.started, stream, text });
    if (stream !== 'out' || !text.startsWith('{')) return;
    let parsed: unknown;
    try {
      parsed = JSON.parse(text);
    } catch {
      return;
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return;
    const line = parsed as LogLine;
    const index = this.logs.push(line) - 1;
    for (const w of [...this.waiters]) {
      if (index < w.from) continue;
      let hit = false;
      try {
        hit = w.predicate(line);
      } catch {}
      if (hit) {
        clearTimeout(w.timer);
        this.waiters = this.waiters.filter((x) => x !== w);
        w.resolve(line);
      }
    }
  }
}

/** Free function form of Proc.waitForLog. */
export function waitForLog(
  proc: Proc,
  predicate: (line: LogLine) => boolean,
  timeoutMs: number,
  from = 0,
): Promise<LogLine> {
  return proc.waitForLog(predicate, timeoutMs, from);
}

/**
 * The client dials through the proxy the environment names (https_proxy, http_proxy, all_proxy), as curl does
 * (and `check` refuses one it cannot read): one set where the tests run must not send every tunnel and curl of
 * the suite to it. A test sets its own in `env`.
 */
function withoutProxyVariables(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(env).filter(([name]) => !/^(https?|all|no)_proxy$/i.test(name)));
}

export interface SpawnOptions {
  /** run inside this network namespace (via `ip netns exec`, which execs in place: same pid) */
  netns?: string;
  env?: Record<string, string>;
  cwd?: string;
}

/**
 * One test's world: a temp dir, the processes it started and the things to undo. Cleanup runs in
 * reverse order of registration; it is idempotent, so both `finally` and `t.after` may call it.
 */
export class Harness {
  readonly procs: Proc[] = [];
  private cleanups: Array<() => unknown> = [];
  private cleaned = false;

  private constructor(readonly dir: string) {}

  static async create(t?: TestContext): Promise<Harness> {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'porthole-e2e-'));
    const h = new Harness(dir);
    h.onCleanup(() => rm(dir, { recursive: true, force: true }));
    t?.after(() => h.cleanup());
    return h;
  }

  onCleanup(fn: () => unknown): void {
    this.cleanups.push(fn);
  }

  path(name: string): string {
    return path.join(this.dir, name);
  }

  async file(name: string, content: string, mode = 0o600): Promise<string> {
    const p = this.path(name);
    await writeFile(p, content, { mode });
    return p;
  }

  spawn(name: string, command: string, args: string[], opts: SpawnOptions = {}): Proc {
    const [cmd, argv] = opts.netns
      ? ['ip', ['netns', 'exec', opts.netns, command, ...args]]
      : [command, args];
    const child = spawn(cmd, argv, {
      cwd: opts.cwd ?? this.dir,
      env: { ...withoutProxyVariables(process.env), NO_COLOR: '1', ...opts.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    const proc = new Proc(name, child, [cmd, ...argv].join(' '));
    this.procs.push(proc);
    return proc;
  }

  /** Everything every process printed, for a failing test's report. */
  dumpLogs(linesPerProc = 80): string {
    return this.procs
      .map(
        (p) =>
          `--- ${p.name} (pid ${p.pid}, ${p.alive ? 'running' : `exit ${p.exitCode ?? p.exitSignal}`}): ${p.commandLine}\n${p.tail(linesPerProc)}`,
      )
      .join('\n');
  }

  async cleanup(): Promise<void> {
    if (this.cleaned) return;
    this.cleaned = true;
    await Promise.all(this.procs.map((p) => p.stop(2000)));
    for (const fn of this.cleanups.reverse()) {
      try {
        await fn();
      } catch (err) {
        process.stderr.write(`cleanup step failed: ${(err as Error).message}\n`);
      }
    }
  }
}

/**
 * Run a test body with a fresh Harness: on failure print every process's recent output to stderr (it
 * shows in the test report), and always stop the processes and undo the set-up.
 */
export async function withHarness(t: TestContext, body: (h: Harness) => Promise<void>): Promise<void> {
  const h = await Harness.create(t);
  try {
    await body(h);
  } catch (err) {
    process.stderr.write(
      `\n=== ${t.name} failed; process output follows ===\n${h.dumpLogs()}\n=== end ===\n`,
    );
    throw err;
  } finally {
    await h.cleanup();
  }
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Run a command to completion (bounded by timeoutMs; killed after it). Never throws on a non-zero exit. */
export function run(
  command: string,
  args: string[],
  opts: SpawnOptions & { timeoutMs?: number; input?: string | Buffer } = {},
): Promise<RunResult> {
  const [cmd, argv] = opts.netns ? ['ip', ['netns', 'exec', opts.netns, command, ...args]] : [command, args];
  return new Promise((resolve) => {
    const child = execFile(
      cmd,
      argv,
      {
        cwd: opts.cwd,
        env: { ...withoutProxyVariables(process.env), NO_COLOR: '1', ...opts.env },
        timeout: opts.timeoutMs ?? 30_000,
        killSignal: 'SIGKILL',
        maxBuffer: 64 * 1024 * 1024,
        encoding: 'utf8',
      },
      (err, stdout, stderr) => {
        liveChildren.delete(child);
        const e = err as (Error & { code?: number | string; signal?: NodeJS.Signals }) | null;
        resolve({
          code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
          signal: e?.signal ?? null,
          stdout,
          stderr: e && typeof e.code !== 'number' && !stderr ? `${e.message}` : stderr,
        });
      },
    );
    liveChildren.add(child);
    if (opts.input !== undefined) child.stdin?.end(opts.input);
    else child.stdin?.end();
  });
}

/** Like run(), but throws with the command's output unless it exits 0. */
export async function runOk(
  command: string,
  args: string[],
  opts: Parameters<typeof run>[2] = {},
): Promise<string> {
  const r = await run(command, args, opts);
  if (r.code !== 0) {
    throw new Error(
      `${opts.netns ? `[netns ${opts.netns}] ` : ''}${command} ${args.join(' ')} failed (code ${r.code}, signal ${r.signal}): ${r.stderr.trim()} ${r.stdout.trim()}`,
    );
  }
  return r.stdout;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A process's resident memory now (VmRSS) or at its peak so far (VmHWM), in bytes, from /proc. */
export function procMemory(field: 'VmRSS' | 'VmHWM', pid: number): number {
  const line = readFileSync(`/proc/${pid}/status`, 'utf8')
    .split('\n')
    .find((l) => l.startsWith(`${field}:`));
  const kib = /(\d+)/.exec(line ?? '')?.[1];
  if (kib === undefined) throw new Error(`no ${field} in /proc/${pid}/status`);
  return Number(kib) * 1024;
}

/** Polls `check` every 20 ms until it holds; throws naming `what` after `timeoutMs`. */
export async function waitFor(what: string, check: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}

export { freePort, freePortRun, freePorts } from '@porthole/mux/test/free-port';

/** Poll fn until it returns a truthy value or timeoutMs elapses (bounded loop). */
export async function eventually<T>(
  what: string,
  fn: () => Promise<T | undefined | null | false>,
  timeoutMs: number,
  intervalMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (let attempt = 0; attempt < 100_000; attempt++) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() >= deadline) break;
    await sleep(intervalMs);
  }
  throw new Error(
    `timed out after ${timeoutMs} ms: ${what}${lastError ? ` (last error: ${(lastError as Error).message})` : ''}`,
  );
}

/** Await p, but fail after ms with the message what() (called late, so it can report progress). */
export async function withTimeout<T>(p: Promise<T>, ms: number, what: () => string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      p,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what()}`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}
