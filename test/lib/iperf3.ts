// iperf3 as a real peer: a one-shot server (-1) on a loopback port, a client with JSON output.
import { freePort, type Harness, type Proc, run } from './processes.js';

export interface IperfServer {
  proc: Proc;
  port: number;
}

/** `iperf3 -s -1`: serves exactly one test, then exits. Start one per measurement. */
export async function startIperfServer(h: Harness, name = 'iperf3-server'): Promise<IperfServer> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const proc = h.spawn(`${name}#${attempt}`, 'iperf3', [
      '-s',
      '-1',
      '-B',
      '127.0.0.1',
      '-p',
      String(port),
      '--forceflush',
    ]);
    try {
      await proc.waitForOutput(/Server listening on/, 10_000);
      return { proc, port };
    } catch (err) {
      lastError = err;
      await proc.stop(1000);
    }
  }
  throw new Error(`iperf3 server did not start: ${(lastError as Error).message}`);
}

export interface IperfResult {
  /** receiver-side throughput, bits per second */
  bitsPerSecond: number;
  bytes: number;
  seconds: number;
  gbits: number;
}

/** `iperf3 -c host -p port -t seconds -J [-R]`; throws with iperf3's own error text if it fails. */
export async function runIperfClient(
  port: number,
  opts: { host?: string; seconds?: number; reverse?: boolean } = {},
): Promise<IperfResult> {
  const seconds = opts.seconds ?? 3;
  const args = [
    '-c',
    opts.host ?? '127.0.0.1',
    '-p',
    String(port),
    '-t',
    String(seconds),
    '-J',
    '--connect-timeout',
    '5000',
  ];
  if (opts.reverse) args.push('-R');
  const r = await run('iperf3', args, { timeoutMs: (seconds + 20) * 1000 });
  let json: {
    error?: string;
    end?: { sum_received?: { bits_per_second: number; bytes: number; seconds: number } };
  };
  try {
    json = JSON.parse(r.stdout);
  } catch {
    throw new Error(
      `iperf3 ${args.join(' ')}: no JSON (code ${r.code}, signal ${r.signal}): ${r.stderr} ${r.stdout.slice(0, 500)}`,
    );
  }
  if (json.error || r.code !== 0)
    throw new Error(`iperf3 ${args.join(' ')} failed (code ${r.code}): ${json.error}`);
  const sum = json.end?.sum_received;
  if (!sum) throw new Error(`iperf3 ${args.join(' ')}: no end.sum_received in its JSON`);
  return {
    bitsPerSecond: sum.bits_per_second,
    bytes: sum.bytes,
    seconds: sum.seconds,
    gbits: sum.bits_per_second / 1e9,
  };
}
