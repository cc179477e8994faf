import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The reference Go yamux peer (../shared/tools/yamuxpeer next to the repository, built from Debian's
 * hashicorp/yamux). YAMUXPEER=/path/to/binary skips the build.
 */

let cachedBinary: string | undefined;

/** The repository root: the nearest ancestor of this file holding turbo.json. */
export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 10; i++) {
    if (existsSync(path.join(dir, 'turbo.json'))) return dir;
    dir = path.dirname(dir);
  }
  throw new Error(`cannot find the repository root (turbo.json) above ${fileURLToPath(import.meta.url)}`);
}

/** Path of the yamuxpeer binary, building it once per process (build.sh is idempotent and offline). */
export function yamuxPeerBinary(): string {
  if (cachedBinary) return cachedBinary;
  const fromEnv = process.env.YAMUXPEER;
  if (fromEnv) {
    if (!existsSync(fromEnv)) throw new Error(`YAMUXPEER=${fromEnv} does not exist`);
    cachedBinary = fromEnv;
    return fromEnv;
  }
  const buildScript = path.resolve(repoRoot(), '../shared/tools/yamuxpeer/build.sh');
  if (!existsSync(buildScript)) {
    throw new Error(
      `the Go yamux interop peer is missing: ${buildScript} not found. The tests expect the shared/ ` +
        'checkout next to the repository (CI has it); or set YAMUXPEER to a built yamuxpeer binary.',
    );
  }
  const out = execFileSync('bash', [buildScript, '/tmp/yamuxpeer/yamuxpeer'], {
    encoding: 'utf8',
    timeout: 300_000,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const binary = out.trim().split('\n').pop() ?? '';
  if (!binary || !existsSync(binary))
    throw new Error(`build.sh printed no usable binary path: ${JSON.stringify(out)}`);
  cachedBinary = binary;
  return binary;
}

export interface PeerServer {
  port: number;
  proc: ChildProcess;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code once the process has exited (null if killed by a signal). */
  exited: Promise<number | null>;
  stop(): Promise<void>;
}

/** Starts `yamuxpeer <mode> -listen 127.0.0.1:0 ...args` and waits for its "listening ADDR" line. */
export async function startPeerServer(mode: string, args: string[], timeoutMs = 20_000): Promise<PeerServer> {
  const proc = spawn(yamuxPeerBinary(), [mode, '-listen', '127.0.0.1:0', ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  proc.stdout!.setEncoding('utf8').on('data', (s: string) => {
    out += s;
  });
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => {
    err = (err + s).slice(-20_000);
  });
  const exited = new Promise<number | null>((resolve) => proc.once('exit', (code) => resolve(code)));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(
        new Error(`yamuxpeer ${mode} printed no "listening" line within ${timeoutMs} ms; stderr: ${err}`),
      );
    }, timeoutMs);
    const check = () => {
      const match = /^listening .*:(\d+)$/m.exec(out);
      if (match) {
        clearTimeout(timer);
        proc.stdout!.off('data', check);
        resolve(Number(match[1]));
      }
    };
    proc.stdout!.on('data', check);
    void exited.then((code) => {
      clearTimeout(timer);
      reject(new Error(`yamuxpeer ${mode} exited (${code}) before listening; stdout: ${out} stderr: ${err}`));
    });
  });
  return {
    port,
    proc,
    stdout: () => out,
    stderr: () => err,
    exited,
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) {
        proc.kill('SIGKILL');
        await exited;
      }
    },
  };
}

export interface PeerRun {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `yamuxpeer <mode> ...args` to completion, killing it after `timeoutMs`. */
export function runPeer(mode: string, args: string[], timeoutMs: number): Promise<PeerRun> {
  const proc = spawn(yamuxPeerBinary(), [mode, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  proc.stdout!.setEncoding('utf8').on('data', (s: string) => {
    stdout += s;
  });
  proc.stderr!.setEncoding('utf8').on('data', (s: string) => {
    stderr = (stderr + s).slice(-20_000);
  });
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      stderr += `\n[test] killed after ${timeoutMs} ms`;
      proc.kill('SIGKILL');
    }, timeoutMs);
    proc.once('exit', (code) => {
      clearTimeout(timer);
      // stdio may still hold a last line; give it one turn.
      setImmediate(() => resolve({ code, stdout, stderr }));
    });
  });
}

/** A peer run's outcome, for assertion messages. */
export function describeRun(run: PeerRun): string {
  return `exit=${run.code}\nstdout: ${run.stdout.trim()}\nstderr: ${run.stderr.trim()}`;
}
