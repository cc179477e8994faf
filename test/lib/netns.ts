// A real NAT made of network namespaces the test creates and destroys:
//
//   ph-<id>-pub  eth0 198.18.0.1/24 --- pub0 198.18.0.2/24  ph-<id>-rtr  lan0 10.10.0.1/24 --- eth0 10.10.0.2/24  ph-<id>-lan
//   (the server, "the internet")          (MASQUERADE lan -> pub; inbound NEW dropped)          (client + local service)
//
// pub even has a route to 10.10.0.0/24 via the router, so "pub cannot reach lan" is the NAT's doing,
// not a missing route. Addresses exist only inside these namespaces.

import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import type { TestContext } from 'node:test';
import { type Harness, netprobeScript, onProcessExit, type Proc, run, runOk } from './processes.js';

export const PUB_ADDR = '198.18.0.1';
export const RTR_PUB_ADDR = '198.18.0.2';
export const RTR_LAN_ADDR = '10.10.0.1';
export const LAN_ADDR = '10.10.0.2';
export const LAN_NET = '10.10.0.0/24';

/** Why network namespaces cannot be used here, or undefined if they can. */
export async function netnsUnavailable(): Promise<string | undefined> {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'network namespace tests need root (CAP_NET_ADMIN); run as root';
  const probe = `ph-${randomBytes(3).toString('hex')}-probe`;
  const r = await run('ip', ['netns', 'add', probe], { timeoutMs: 10_000 });
  if (r.code !== 0) return `cannot create a network namespace (no CAP_NET_ADMIN?): ${r.stderr.trim()}`;
  await run('ip', ['netns', 'del', probe], { timeoutMs: 10_000 });
  const ipt = await run('iptables', ['--version'], { timeoutMs: 10_000 });
  if (ipt.code !== 0) return `iptables is not available: ${ipt.stderr.trim()}`;
  return undefined;
}

/** Skips `t`, saying why, where network namespaces cannot be used; true if it did (the test returns). */
export async function skippedWithoutNetns(t: TestContext): Promise<boolean> {
  const why = await netnsUnavailable();
  if (why) t.skip(why);
  return why !== undefined;
}

/** Start the netprobe helper (a compiled script of this suite) inside a namespace. */
export function spawnProbe(h: Harness, name: string, ns: string, args: string[]): Proc {
  return h.spawn(name, process.execPath, [netprobeScript, ...args], { netns: ns });
}

/** Run one netprobe command inside a namespace and return its JSON result line. */
export async function probe(
  ns: string,
  args: string[],
  timeoutMs = 30_000,
): Promise<Record<string, unknown>> {
  const r = await run(process.execPath, [netprobeScript, ...args], { netns: ns, timeoutMs });
  const last = r.stdout.trim().split('\n').pop() ?? '';
  try {
    return JSON.parse(last) as Record<string, unknown>;
  } catch {
    throw new Error(
      `netprobe ${args.join(' ')} in ${ns}: no JSON result (code ${r.code}): ${r.stdout} ${r.stderr}`,
    );
  }
}

/** The loopback address of `createLoopbackNamespace` that nothing can send to. */
export const UNREACHABLE_LOOPBACK_ADDR = '127.0.0.5';

/**
 * A namespace with only loopback, in which sending to UNREACHABLE_LOOPBACK_ADDR fails with EACCES (a
 * `prohibit` rule ahead of the local table) while datagrams from it still arrive: a visitor whose
 * replies cannot be sent. Destroyed like the NAT topology.
 */
export async function createLoopbackNamespace(h: Harness): Promise<string> {
  const ns = `ph-${randomBytes(3).toString('hex')}-lo`;
  const destroy = () => {
    try {
      execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10_000 });
    } catch {}
  };
  const removeExitHook = onProcessExit(destroy);
  h.onCleanup(() => {
    destroy();
    removeExitHook();
  });
  const ip = (...args: string[]) => runOk('ip', ['-n', ns, ...args]);
  await runOk('ip', ['netns', 'add', ns]);
  await ip('link', 'set', 'lo', 'up');
  // The local table is looked up at priority 0, before any rule can be; move it behind the prohibit.
  await ip('rule', 'add', 'pref', '100', 'lookup', 'local');
  await ip('rule', 'del', 'pref', '0');
  await ip('rule', 'add', 'pref', '10', 'to', UNREACHABLE_LOOPBACK_ADDR, 'prohibit');
  return ns;
}

export class NatTopology {
  readonly pub: string;
  readonly lan: string;
  readonly rtr: string;

  constructor(readonly id: string) {
    this.pub = `ph-${id}-pub`;
    this.lan = `ph-${id}-lan`;
    this.rtr = `ph-${id}-rtr`;
  }

  get namespaces(): string[] {
    return [this.pub, this.lan, this.rtr];
  }

  exec(ns: string, command: string, args: string[], timeoutMs = 15_000): Promise<string> {
    return runOk(command, args, { netns: ns, timeoutMs });
  }

  /** Cut the wire between the client's side (lan) and the router: the router's lan port goes down. */
  async linkDown(): Promise<void> {
    await runOk('ip', ['-n', this.rtr, 'link', 'set', 'lan0', 'down']);
  }

  async linkUp(): Promise<void> {
    await runOk('ip', ['-n', this.rtr, 'link', 'set', 'lan0', 'up']);
  }

  /**
   * Silently drop, in the router, every packet of the NATed TCP flow whose public-side port is `natPort`
   * (both directions, forever): the flow becomes truly half-open, no FIN or RST can ever get through,
   * while new flows pass.
   */
  async blackholeFlow(natPort: number): Promise<void> {
    await this.exec(this.rtr, 'iptables', [
      '-w',
      '-I',
      'FORWARD',
      '1',
      '-p',
      'tcp',
      '-m',
      'conntrack',
      '--ctrepldstport',
      String(natPort),
      '-j',
      'DROP',
    ]);
  }

  spawnProbe(h: Harness, name: string, ns: string, args: string[]): Proc {
    return spawnProbe(h, name, ns, args);
  }

  probe(ns: string, args: string[], timeoutMs = 30_000): Promise<Record<string, unknown>> {
    return probe(ns, args, timeoutMs);
  }

  destroySync(): void {
    for (const ns of this.namespaces) {
      try {
        execFileSync('ip', ['netns', 'del', ns], { stdio: 'ignore', timeout: 10_000 });
      } catch {}
    }
  }
}

/**
 * Holds the lan's uplink to 2 Mbit/s (a tbf qdisc on its eth0, as a home DSL or LTE upload), with the
 * tcp_notsent_lowat the README recommends for such a link. Skips the test, returning false, where tc cannot
 * add the qdisc.
 *
 * A modem sends no faster than its line rate, hence the peakrate: without it tbf lets its 16 KiB bucket out
 * at the veth's speed after every lull, BBR (the congestion control of these machines) measured those
 * bursts as a 0.4-1.1 Gbit/s link, sent far past 2 Mbit/s and lost 30-110 segments at a time, and
 * everything behind their retransmissions in the tunnel's one TCP connection waited 1-2.5 s: what any
 * single-connection tunnel would suffer there, not what the tests measure (2 failures in 17 runs beside
 * 3 busy loops; with the peakrate, none in 12).
 */
export async function slowLanUplink(t: TestContext, topo: NatTopology): Promise<boolean> {
  const qdisc =
    'qdisc add dev eth0 root tbf rate 2mbit burst 16kb latency 200ms peakrate 2200kbit minburst 1540';
  const tbf = await run('tc', qdisc.split(' '), { netns: topo.lan, timeoutMs: 10_000 });
  if (tbf.code !== 0) {
    t.skip(`tc cannot add a tbf qdisc here: ${tbf.stderr.trim()}`);
    return false;
  }
  await topo.exec(topo.lan, 'sh', ['-c', 'echo 16384 > /proc/sys/net/ipv4/tcp_notsent_lowat']);
  return true;
}

/**
 * Create pub / rtr / lan with veth pairs, routes and the NAT rules. Destroyed by the harness's cleanup
 * (after its processes are stopped) and, failing that, when the test process exits.
 */
export async function createNatTopology(h: Harness): Promise<NatTopology> {
  const topo = new NatTopology(randomBytes(3).toString('hex'));
  const removeExitHook = onProcessExit(() => topo.destroySync());
  h.onCleanup(() => {
    topo.destroySync();
    removeExitHook();
  });
  const ip = (...args: string[]) => runOk('ip', args);
  for (const ns of topo.namespaces) {
    await ip('netns', 'add', ns);
    await ip('-n', ns, 'link', 'set', 'lo', 'up');
  }
  // veth pairs created directly inside their namespaces: no names in the root namespace to collide on.
  await ip(
    'link',
    'add',
    'eth0',
    'netns',
    topo.pub,
    'type',
    'veth',
    'peer',
    'name',
    'pub0',
    'netns',
    topo.rtr,
  );
  await ip(
    'link',
    'add',
    'eth0',
    'netns',
    topo.lan,
    'type',
    'veth',
    'peer',
    'name',
    'lan0',
    'netns',
    topo.rtr,
  );
  await ip('-n', topo.pub, 'addr', 'add', `${PUB_ADDR}/24`, 'dev', 'eth0');
  await ip('-n', topo.rtr, 'addr', 'add', `${RTR_PUB_ADDR}/24`, 'dev', 'pub0');
  await ip('-n', topo.rtr, 'addr', 'add', `${RTR_LAN_ADDR}/24`, 'dev', 'lan0');
  await ip('-n', topo.lan, 'addr', 'add', `${LAN_ADDR}/24`, 'dev', 'eth0');
  for (const [ns, dev] of [
    [topo.pub, 'eth0'],
    [topo.rtr, 'pub0'],
    [topo.rtr, 'lan0'],
    [topo.lan, 'eth0'],
  ] as const) {
    await ip('-n', ns, 'link', 'set', dev, 'up');
  }
  await ip('-n', topo.lan, 'route', 'add', 'default', 'via', RTR_LAN_ADDR);
  await ip('-n', topo.pub, 'route', 'add', LAN_NET, 'via', RTR_PUB_ADDR);
  // /proc/sys/net belongs to the namespace of the process that writes it (no dependency on procps).
  await topo.exec(topo.rtr, 'sh', ['-c', 'echo 1 > /proc/sys/net/ipv4/ip_forward']);
  const ipt = (...args: string[]) => topo.exec(topo.rtr, 'iptables', ['-w', ...args]);
  await ipt('-t', 'nat', '-A', 'POSTROUTING', '-s', LAN_NET, '-o', 'pub0', '-j', 'MASQUERADE');
  await ipt('-A', 'FORWARD', '-i', 'lan0', '-o', 'pub0', '-j', 'ACCEPT');
  await ipt(
    '-A',
    'FORWARD',
    '-i',
    'pub0',
    '-o',
    'lan0',
    '-m',
    'conntrack',
    '--ctstate',
    'ESTABLISHED,RELATED',
    '-j',
    'ACCEPT',
  );
  await ipt('-A', 'FORWARD', '-i', 'pub0', '-o', 'lan0', '-j', 'DROP');
  return topo;
}
