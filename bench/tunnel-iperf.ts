// iperf3 for the bench: one long-lived server (every peer forwards to the same port for the whole run,
// so it cannot be the e2e suite's one-shot `-s -1`), and a client run that also knows -P and -u.
import { freePort, type Harness, type Proc, run, sleep } from '@porthole/e2e/lib/processes';

const BUSY_RETRIES = 20;
const BUSY_RETRY_MS = 250;

export interface IperfDaemon {
  proc: Proc;
  port: number;
}

/** `iperf3 -s` on 127.0.0.1 (TCP and, for -u tests, UDP on the same port); serves tests one at a time. */
export async function startIperfDaemon(h: Harness): Promise<IperfDaemon> {
  const failures: string[] = [];
  for (let attempt = 1; attempt <= 5; attempt++) {
    const port = await freePort();
    const proc = h.spawn(`iperf3-daemon#${attempt}`, 'iperf3', [
      '-s',
      '-B',
      '127.0.0.1',
      '-p',
      `${port}`,
      '--forceflush',
    ]);
    try {
      await proc.waitForOutput(/Server listening on/, 10_000);
      return { proc, port };
    } catch (err) {
      failures.push((err as Error).message);
      await proc.stop(1000);
    }
  }
  throw new Error(`iperf3 -s did not start: ${failures.join('; ')}`);
}

export interface IperfRun {
  seconds: number;
  reverse?: boolean;
  parallel?: number;
  /** UDP at this rate, e.g. "200M" (datagrams of 1400 bytes, a typical tunnelled MTU) */
  udpBitrate?: string;
}

export interface IperfFigures {
  /** what the receiving side got, Gbit/s */
  gbits: number;
  /** and in all, bytes */
  bytes: number;
  /** UDP only */
  lostPercent?: number;
  jitterMs?: number;
}

interface IperfSum {
  bits_per_second: number;
  bytes: number;
  lost_percent?: number;
  jitter_ms?: number;
}

export async function iperfClient(port: number, opts: IperfRun): Promise<IperfFigures> {
  const args = [
    '-c',
    '127.0.0.1',
    '-p',
    `${port}`,
    '-t',
    `${opts.seconds}`,
    '-J',
    '--connect-timeout',
    '5000',
  ];
  if (opts.reverse) args.push('-R');
  if (opts.parallel) args.push('-P', `${opts.parallel}`);
  if (opts.udpBitrate) args.push('-u', '-b', opts.udpBitrate, '-l', '1400');
  const attempt = async () => {
    const result = await run('iperf3', args, { timeoutMs: (opts.seconds + 20) * 1000 });
    let report: { error?: string; end?: { sum_received?: IperfSum } } = {};
    try {
      report = JSON.parse(result.stdout);
    } catch {}
    return { result, report };
  };
  let { result, report } = await attempt();
  // The daemon takes a moment to wind down the previous test; until then it answers "busy".
  for (let retry = 1; retry <= BUSY_RETRIES && report.error?.includes('busy'); retry++) {
    await sleep(BUSY_RETRY_MS);
    ({ result, report } = await attempt());
  }
  const sum = report.end?.sum_received;
  if (result.code !== 0 || !sum) {
    const why = report.error ?? (result.stderr.trim() || result.stdout.slice(0, 300));
    throw new Error(`iperf3 ${args.join(' ')} (exit ${result.code ?? result.signal}): ${why}`);
  }
  return {
    gbits: sum.bits_per_second / 1e9,
    bytes: sum.bytes,
    lostPercent: sum.lost_percent,
    jitterMs: sum.jitter_ms,
  };
}
