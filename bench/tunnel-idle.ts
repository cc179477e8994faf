// Many idle tunnelled connections, each proven end to end (one byte echoed by the service behind the
// tunnel) and then held open without traffic, and the open-files limits that allow them.
import net from 'node:net';
import { run } from '@porthole/e2e/lib/processes';
import { openFileLimit } from './tunnel-proc-stats.js';

/**
 * Make sure a process may hold `needed` open files: if its soft limit is lower, raise soft and hard
 * limits with prlimit (root, or CAP_SYS_RESOURCE, for a hard limit above the current one). Returns
 * the limit now in force.
 */
export async function ensureOpenFiles(pid: number, needed: number): Promise<number> {
  const current = openFileLimit(pid);
  if (current >= needed) return current;
  await run('prlimit', ['--pid', `${pid}`, `--nofile=${needed}:${needed}`], { timeoutMs: 10_000 });
  return openFileLimit(pid);
}

export interface IdleConnections {
  sockets: net.Socket[];
  failed: number;
  /** failure reasons and how often each happened */
  errors: Record<string, number>;
}

/** One connection, proven by a one-byte echo; resolves with the open socket or the reason it failed. */
function openProven(port: number, timeoutMs: number): Promise<net.Socket | string> {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    const fail = (reason: string) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(reason);
    };
    const timer = setTimeout(() => fail('no echo within the time limit'), timeoutMs);
    sock.once('connect', () => sock.write('x'));
    sock.once('data', () => {
      clearTimeout(timer);
      sock.removeAllListeners('close');
      sock.on('error', () => {});
      resolve(sock);
    });
    sock.once('error', (err: NodeJS.ErrnoException) => fail(err.code ?? err.message));
    sock.once('close', () => fail('closed before the echo'));
  });
}

/** Open `count` proven connections, `concurrency` at a time, within `deadlineMs` in all. */
export async function openIdleConnections(
  port: number,
  count: number,
  opts: { concurrency: number; deadlineMs: number },
): Promise<IdleConnections> {
  const result: IdleConnections = { sockets: [], failed: 0, errors: {} };
  const deadline = Date.now() + opts.deadlineMs;
  let next = 0;
  const worker = async () => {
    while (next < count && Date.now() < deadline) {
      next += 1;
      const outcome = await openProven(port, Math.max(1000, Math.min(10_000, deadline - Date.now())));
      if (typeof outcome === 'string') {
        result.failed += 1;
        result.errors[outcome] = (result.errors[outcome] ?? 0) + 1;
      } else {
        result.sockets.push(outcome);
      }
    }
  };
  await Promise.all(Array.from({ length: opts.concurrency }, worker));
  result.failed += count - next; // never attempted: out of time
  return result;
}

export function closeAll(sockets: net.Socket[]): void {
  for (const sock of sockets) sock.destroy();
}
