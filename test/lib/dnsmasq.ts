// dnsmasq as a real UDP service, and dig as its real client (Debian's dnsmasq-base and dnsutils, in .ci/run).
import { freePort, type Harness, run } from './processes.js';

/** One try of `dig` for `name` at 127.0.0.1:`port`; `+short` unless asked for the whole answer. */
export function dig(port: number, name: string, opts: { timeSeconds: number; short?: boolean }) {
  const short = opts.short ?? true;
  return run('dig', [
    '@127.0.0.1',
    '-p',
    String(port),
    ...(short ? ['+short'] : []),
    '+tries=1',
    `+time=${opts.timeSeconds}`,
    name,
  ]);
}

/**
 * dnsmasq answering every name under `zone` with `ip` (nothing else: no upstream, no hosts file); resolves
 * with its port once it answered `ok.<zone>` itself.
 */
export async function startDnsmasq(h: Harness, zone = 'test.example', ip = '10.1.2.3'): Promise<number> {
  let lastError = '';
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const proc = h.spawn(`dnsmasq#${attempt}`, 'dnsmasq', [
      '--no-daemon',
      `--port=${port}`,
      '--listen-address=127.0.0.1',
      '--bind-interfaces',
      '--no-resolv',
      '--no-hosts',
      `--address=/${zone}/${ip}`,
      '--conf-file=/dev/null',
      `--pid-file=${h.path(`dnsmasq-${attempt}.pid`)}`,
      '--log-queries',
    ]);
    try {
      await proc.waitForOutput(/started, version/, 10_000);
      // Ask it directly once, so a failure later is the tunnel's.
      const direct = await dig(port, `ok.${zone}`, { timeSeconds: 2 });
      if (direct.stdout.trim() === ip) return port;
      lastError = `direct dig answered ${JSON.stringify(direct.stdout)} ${direct.stderr}`;
    } catch (err) {
      lastError = (err as Error).message;
    }
    await proc.stop(1000);
  }
  throw new Error(`dnsmasq did not start: ${lastError}`);
}
