// A [[proxies]] table whose remote_port and local name port ranges (`remote_port = "27015-27030"`,
// `local = "127.0.0.1:27015-27030"`): what frp users stamp out with a template and parseNumberRangePair. It
// expands here, in the client, into one ordinary proxy per port (`game-27015` ...) before anything
// registers, so the server, status, logs and reloads see nothing new.
import { type HostPort, isPortRangeText, PortRanges, parseHostPorts } from '@porthole/protocol';
import type { ProxyConfig } from './proxy-config.js';

/**
 * The most ports one table may expand to. Each is a listener on the server and a line in its register
 * message, and a typo ("1000-60000" for "10000-10060") would otherwise ask for tens of thousands; 1024 holds
 * the ranges people forward (an FTP server's passive ports, a VoIP/RTP range, a game's port block). The
 * server's own max_proxies_per_client (default 256) still applies to them all together.
 */
export const MAX_RANGE_PORTS = 1024;

/** A range table's ports, paired in ascending order: the i-th remote port forwards to the i-th local port. */
export interface PortRangePair {
  remote: PortRanges;
  local: PortRanges;
}

/** `local = "127.0.0.1:27015-27030"` as written, before it is paired with remote_port. */
export interface LocalPortRange {
  host: string;
  ports: PortRanges;
}

function isHostPort(local: unknown): local is HostPort {
  return typeof local === 'object' && local !== null && 'host' in local && 'port' in local;
}

export function isLocalPortRange(local: unknown): local is LocalPortRange {
  return typeof local === 'object' && local !== null && 'ports' in local;
}

/**
 * "127.0.0.1:27015-27030", "[::1]:8000,8002-8004": a local address whose port is a range or a list; undefined
 * for a single port (or no port at all), which `local`'s other forms read. Throws with the reason.
 */
export function parseLocalPortRange(text: string): LocalPortRange | undefined {
  return isPortRangeText(text.slice(text.lastIndexOf(':') + 1)) ? parseHostPorts(text) : undefined;
}

/** `remote_port = "27015-27030"` (or "8000,8002-8004"); throws with the reason. */
export function parseRemotePortRange(text: string): PortRanges {
  if (text.split(',').some((part) => /^\s*0+\s*(-|$)/.test(part)))
    throw new Error(
      `"${text}": 0 (a port the server picks) cannot be part of a range; the server picks one port per proxy, so write remote_port = 0 in a table of its own`,
    );
  return PortRanges.parse(text);
}

/** "16 ports", "1 port". */
function counted(ports: PortRanges): string {
  return `${ports.size} ${ports.size === 1 ? 'port' : 'ports'}`;
}

/** A table's keys as the schema has read them, before its ranges are paired. */
interface RangeTable {
  type: string;
  local: unknown;
  remote_port?: number | PortRanges | undefined;
  private?: boolean | undefined;
  bandwidth_limit?: unknown;
}

/** Why a table's ranges cannot pair: the key to name and the reason. */
export interface PortRangeProblem {
  key: 'local' | 'remote_port' | 'bandwidth_limit';
  message: string;
}

/** The pair of ranges `table` names, why they cannot pair (lengths, types, the cap), or undefined for one port. */
export function readPortRange(table: RangeTable): PortRangePair | PortRangeProblem | undefined {
  const remote = table.remote_port instanceof PortRanges ? table.remote_port : undefined;
  if (remote === undefined && !isLocalPortRange(table.local)) return undefined;
  // One local port pairs with a remote_port of one written as a string ("6000"), as a range of one.
  const local = isLocalPortRange(table.local)
    ? table.local.ports
    : isHostPort(table.local)
      ? PortRanges.parse(String(table.local.port))
      : undefined;
  const issue = (key: PortRangeProblem['key'], message: string) => ({ key, message });
  const rangeKey = remote === undefined ? 'local' : 'remote_port';
  if (table.type !== 'tcp' && table.type !== 'udp')
    return issue(rangeKey, `a port range is for tcp and udp proxies, not ${table.type}`);
  if (table.private === true)
    return issue(rangeKey, 'a private proxy has no port on the server to make a range of');
  if (remote === undefined) {
    const written = typeof table.remote_port === 'number' ? ` (${table.remote_port})` : '';
    return issue(
      'remote_port',
      `local's ${local} is ${counted(local!)}, so remote_port${written} must be a range of as many, e.g. "${local}"`,
    );
  }
  if (local === undefined)
    return issue(
      'local',
      `remote_port's ${remote} is ${counted(remote)}, so local must be "host:PORTS" with as many, e.g. "127.0.0.1:${remote}"`,
    );
  if (remote.size !== local.size)
    return issue(
      'remote_port',
      `${remote} is ${counted(remote)} and local's ${local} is ${counted(local)}: the two pair port by port, so they must be as many`,
    );
  if (remote.size > MAX_RANGE_PORTS)
    return issue(
      'remote_port',
      `${remote} is ${counted(remote)}, more than the ${MAX_RANGE_PORTS} one table may expand to: split it over several tables`,
    );
  // Per port it would multiply the cap by the range's length, which is not what a cap on a table reads as.
  if (table.bandwidth_limit !== undefined)
    return issue(
      'bandwidth_limit',
      `a port range expands to ${remote.size} proxies, and the limit would apply to each of them, ${remote.size} times what it says: write the ports that need a cap as tables of their own`,
    );
  return { remote, local };
}

/**
 * tableMembers of a table as written, not validated yet (a quick flag's rule is checked against the file's
 * tables before they are): what can be read of its name and remote_port.
 */
export function writtenMembers(
  table: Record<string, unknown>,
): { name: string; remotePort: number | undefined }[] {
  const name = typeof table.name === 'string' ? table.name : '';
  if (typeof table.remote_port !== 'string')
    return tableMembers({
      name,
      remote_port: typeof table.remote_port === 'number' ? table.remote_port : undefined,
    });
  try {
    return tableMembers({ name, port_range: { remote: parseRemotePortRange(table.remote_port) } });
  } catch {
    return []; // refused where the table is validated
  }
}

/** A member's name: the table's name and its remote port, as frp's templates name them ("game-27015"). */
export function rangeMemberName(tableName: string, remotePort: number): string {
  return `${tableName}-${remotePort}`;
}

/** The names and public ports a table stands for: its members' for a range, its own otherwise. */
export function tableMembers(table: {
  name: string;
  remote_port?: number | undefined;
  port_range?: Pick<PortRangePair, 'remote'> | undefined;
}): { name: string; remotePort: number | undefined }[] {
  const range = table.port_range;
  if (range === undefined) return [{ name: table.name, remotePort: table.remote_port }];
  return Array.from({ length: range.remote.size }, (_, i) => {
    const remotePort = range.remote.at(i);
    return { name: rangeMemberName(table.name, remotePort), remotePort };
  });
}

/** The first member's address: what a range table's checks of `local` read, as a single port's would be. */
export function firstLocal(local: LocalPortRange): HostPort {
  return { host: local.host, port: local.ports.at(0) };
}

/** A table's proxies: itself, or one per pair of its range, each with every other key of the table. */
export function expandPortRange(table: ProxyConfig): ProxyConfig[] {
  const { portRange, ...proxy } = table;
  if (portRange === undefined) return [proxy];
  const local = proxy.local as HostPort;
  return Array.from({ length: portRange.remote.size }, (_, i) => {
    const remotePort = portRange.remote.at(i);
    return {
      ...proxy,
      name: rangeMemberName(table.name, remotePort),
      remotePort,
      local: { host: local.host, port: portRange.local.at(i) },
    };
  });
}
