// The public port of a tcp or udp proxy registered with remote_port 0 (ssh -R 0:..., frp's remotePort = 0):
// one the client may hold, that no proxy holds, and that binds.
import { readFileSync } from 'node:fs';
import { PortRanges } from '@porthole/protocol';

/**
 * Binds tried for one proxy at most. A port no proxy holds can still be another program's; each such bind
 * fails at once, but a grant full of them must end in a refusal, not a walk through 28,000 ports.
 */
export const MAX_PICK_BINDS = 16;

/** Linux's default net.ipv4.ip_local_port_range, for a system that does not say. */
const DEFAULT_EPHEMERAL = '32768-60999';
let ephemeral: PortRanges | undefined;

/**
 * The kernel's ephemeral range, where bind(0) (and so `ssh -R 0`) takes its ports: by convention no service
 * listens there. Read once.
 */
function ephemeralPorts(): PortRanges {
  if (ephemeral) return ephemeral;
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/);
    ephemeral = PortRanges.parse(`${low}-${high}`);
  } catch {
    ephemeral = PortRanges.parse(DEFAULT_EPHEMERAL);
  }
  return ephemeral;
}

/** Where a port is picked from, and those words for a refusal. */
export interface PickablePorts {
  ports: PortRanges;
  /** e.g. "the token's grant (40000-40019) within the server's allow_ports (2000-2999,40000-49999)" */
  described: string;
}

/**
 * The ports a client may be given: its token's grant within the server's allow_ports. When neither narrows
 * it (a token without --ports, allow_ports left at any port), the kernel's ephemeral range instead: picked
 * from 1-65535, a proxy could take 22 or 5432 before the service that wants it starts.
 */
export function pickablePorts(grant: PortRanges | undefined, allowPorts: PortRanges): PickablePorts {
  const allowAll = allowPorts.size === PortRanges.all().size;
  const ports = grant ? grant.intersect(allowPorts) : allowPorts;
  if (ports.size === PortRanges.all().size) {
    const range = ephemeralPorts();
    return { ports: range, described: `the kernel's ephemeral range (${range})` };
  }
  const allow = `the server's allow_ports (${allowPorts})`;
  if (!grant) return { ports, described: allow };
  const granted = `the token's grant (${grant})`;
  return { ports, described: allowAll ? granted : `${granted} within ${allow}` };
}

/**
 * The ports of `set`, each once, in random order, drawn as they are asked for (a Fisher-Yates shuffle that
 * keeps only the swapped places): two clients picking at the same time start at different ports, and a
 * set of 28,000 costs nothing until it is walked.
 */
export function* randomOrder(set: PortRanges, random: () => number = Math.random): Generator<number> {
  const swapped = new Map<number, number>();
  for (let left = set.size; left > 0; left--) {
    const i = Math.floor(random() * left);
    const last = left - 1;
    const chosen = swapped.get(i) ?? i;
    swapped.set(i, swapped.get(last) ?? last);
    swapped.delete(last);
    yield set.at(chosen);
  }
}

/** A port that another program holds, or that the server may not bind: try the next. */
function portTaken(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException).code;
  return code === 'EADDRINUSE' || code === 'EACCES';
}

export interface PickedPort<T> {
  port: number;
  bound: T;
  /** Why the preferred port was not the one given; undefined when it was, or none was asked for. */
  preferredRefusal?: string;
}

/**
 * Binds a port of `from`: `preferred` first (the one the proxy had before) when it is one, then the others
 * in random order. `held`: a proxy of this server has it (skipped without a bind). `bind` rejects with the
 * errno `code` of the failed bind; one other than "in use" or "permission denied" (the proxy_bind address
 * is gone) is no better on another port, and is thrown as it is. Throws with the reason for the client
 * when no port is left.
 */
export async function pickPort<T>(opts: {
  from: PickablePorts;
  preferred?: number | undefined;
  held: (port: number) => boolean;
  bind: (port: number) => Promise<T>;
}): Promise<PickedPort<T>> {
  const { ports, described } = opts.from;
  if (ports.size === 0) throw new Error(`no port to pick: ${described} have no port in common`);
  let preferredRefusal: string | undefined;
  let held = 0;
  let taken = 0;
  let lastTaken = '';
  const preferred = opts.preferred;
  if (preferred !== undefined) {
    if (!ports.contains(preferred)) preferredRefusal = `port ${preferred} is outside ${described}`;
    else if (opts.held(preferred)) {
      held++;
      preferredRefusal = `port ${preferred} is held by another proxy`;
    } else {
      try {
        return { port: preferred, bound: await opts.bind(preferred) };
      } catch (err) {
        if (!portTaken(err)) throw err;
        taken++;
        lastTaken = preferredRefusal = (err as Error).message;
      }
    }
  }
  for (const port of randomOrder(ports)) {
    if (port === preferred) continue;
    if (opts.held(port)) {
      held++;
      continue;
    }
    try {
      return { port, bound: await opts.bind(port), ...(preferredRefusal ? { preferredRefusal } : {}) };
    } catch (err) {
      if (!portTaken(err)) throw err;
      lastTaken = (err as Error).message;
      if (++taken >= MAX_PICK_BINDS)
        throw new Error(
          `no free port to pick in ${described}: the ${taken} ports tried were in use on the server (the last: ${lastTaken})`,
        );
    }
  }
  const why = [
    `${held} held by proxies`,
    ...(taken > 0 ? [`${taken} in use on the server (${lastTaken})`] : []),
  ];
  throw new Error(`no free port to pick in ${described}: all ${ports.size} are in use (${why.join(', ')})`);
}
