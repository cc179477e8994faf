/**
 * Free ports for the programs under test to bind, picked below the kernel's ephemeral range. Every package's
 * tests and the end-to-end tests use it, as `@porthole/mux/test/free-port`.
 */
import { readFile } from 'node:fs/promises';
import net from 'node:net';

/** Lowest port picked at random for a test: above the usual services, below the kernel's ephemeral range. */
const LOWEST_PICKED_PORT = 10_000;
/** Ports this process has handed out: a random pick must not repeat one that is not bound yet. */
const handedOut = new Set<number>();

/** The lowest port the kernel picks for bind(0) and connect() (ip_local_port_range), or 0 if unknown. */
async function readEphemeralRangeStart(): Promise<number> {
  try {
    const low = Number(
      (await readFile('/proc/sys/net/ipv4/ip_local_port_range', 'utf8')).trim().split(/\s+/)[0],
    );
    return Number.isInteger(low) ? low : 0;
  } catch {
    return 0; // not Linux, or no /proc: freePort falls back to bind(0)
  }
}
/** Read once per process: freePorts asks for it once per port. */
let ephemeralRangeStart: Promise<number> | undefined;

/** Binds `port` (or 0: any) on `host` and closes again; resolves with the port, or undefined if taken. */
function bindAndRelease(port: number, host: string): Promise<number | undefined> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.once('error', (err: NodeJS.ErrnoException) =>
      port !== 0 && (err.code === 'EADDRINUSE' || err.code === 'EACCES') ? resolve(undefined) : reject(err),
    );
    srv.listen(port, host, () => {
      const bound = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(bound));
    });
  });
}

/**
 * A port that was free a moment ago, for a program under test to bind. Picked at random below the kernel's
 * ephemeral range: a port from bind(0) goes back into that range when released, and the next bind(0) or
 * connect() anywhere on the machine may take it before the program binds it (in CI a client's admin listener
 * once failed with EADDRINUSE on such a port). Outside the range only an explicit bind can take it.
 */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  ephemeralRangeStart ??= readEphemeralRangeStart();
  const low = await ephemeralRangeStart;
  for (let attempt = 0; low - LOWEST_PICKED_PORT >= 1000 && attempt < 100; attempt++) {
    const port = LOWEST_PICKED_PORT + Math.floor(Math.random() * (low - LOWEST_PICKED_PORT));
    if (handedOut.has(port) || (await bindAndRelease(port, host)) === undefined) continue;
    handedOut.add(port);
    return port;
  }
  const port = await bindAndRelease(0, host);
  if (port === undefined) throw new Error(`no free port on ${host}`);
  return port;
}

/** Several distinct free ports (each checked free at the time). */
export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const ports = new Set<number>();
  for (let i = 0; i < n * 10 && ports.size < n; i++) ports.add(await freePort(host));
  return [...ports];
}

/**
 * The first of `count` consecutive ports, each free a moment ago (a port range's public or local side), picked
 * as freePort picks one. Bounded: gives up after 100 tries.
 */
export async function freePortRun(count: number, host = '127.0.0.1'): Promise<number> {
  ephemeralRangeStart ??= readEphemeralRangeStart();
  const span = (await ephemeralRangeStart) - LOWEST_PICKED_PORT - count;
  for (let attempt = 0; span >= 1000 && attempt < 100; attempt++) {
    const first = LOWEST_PICKED_PORT + Math.floor(Math.random() * span);
    const run = Array.from({ length: count }, (_, i) => first + i);
    if (run.some((port) => handedOut.has(port))) continue;
    let free = true;
    for (const port of run) if (free) free = (await bindAndRelease(port, host)) !== undefined;
    if (!free) continue;
    for (const port of run) handedOut.add(port);
    return first;
  }
  throw new Error(`no run of ${count} free ports on ${host}`);
}
