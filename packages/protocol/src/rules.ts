import { parseBindAddress } from './bind-address.js';
import { isPortRangeText, parseHostPorts, parsePort } from './host-port.js';
import { type LocalAddress, parseLocalAddress } from './local-address.js';
import { PortRanges } from './port-ranges.js';

/**
 * tcp and udp proxies own a public port; http, tls and tcpmux proxies are reached by hostname on shared
 * ports (tcpmux: a TCP service chosen by an HTTP CONNECT request on the server's [tcpmux] port).
 */
export type ProxyType = 'tcp' | 'udp' | 'http' | 'tls' | 'tcpmux';
export const PROXY_TYPES: readonly ProxyType[] = ['tcp', 'udp', 'http', 'tls', 'tcpmux'];
/** The types a quick-flag rule (REMOTE_PORT:LOCAL) can express. */
export type PortProxyType = 'tcp' | 'udp';
export const PORT_PROXY_TYPES: readonly PortProxyType[] = ['tcp', 'udp'];

export function isPortProxyType(type: string): type is PortProxyType {
  return (PORT_PROXY_TYPES as readonly string[]).includes(type);
}

export interface ProxyRule {
  type: PortProxyType;
  /** The address the server binds the port on (ssh -R's bind_address); absent: the server's proxy_bind. */
  remoteBind?: string;
  /** 0: the server picks the port. */
  remotePort: number;
  local: LocalAddress;
  /**
   * A port range rule ("27015-27030:127.0.0.1:27015-27030"): its public and local ports as written (remotePort
   * and local are the first of each), for the client to pair and check.
   */
  ranges?: { remote: PortRanges; local: PortRanges };
}

/**
 * Parses a quick-flag rule, ssh -R's `[bind_address:]port:host:hostport` with an optional type in front:
 * "2222:127.0.0.1:22", "0:127.0.0.1:22" (remote port 0: the server picks one), "tcp:2222:127.0.0.1:22",
 * "udp:5353:127.0.0.1:53", "2222:[::1]:22", "8080:unix:/run/app.sock", with the address the server binds:
 * "127.0.0.1:8080:localhost:80", "[::1]:5353:localhost:53", and port ranges: "27015-27030:127.0.0.1:27015-27030". The remote side comes first (the port
 * opened on the server), then the local address.
 */
export function parseRule(text: string, defaultType: PortProxyType = 'tcp'): ProxyRule {
  let rest = text.trim();
  let type: PortProxyType = defaultType;
  const typed = /^([a-z]+):/.exec(rest);
  if (typed) {
    if (typed[1] === 'localhost') throw new Error(`invalid rule "${text}": ${bindRefusal('localhost')}`);
    if (!isPortProxyType(typed[1]!)) {
      // "myhost:8080:..." is a host name where ssh -R takes a bind address, not a type: say what it is not.
      const portFollows = /^\d+:/.test(rest.slice(typed[0].length));
      if (portFollows && !(PROXY_TYPES as readonly string[]).includes(typed[1]!)) {
        const what = `a proxy type (${PORT_PROXY_TYPES.join(', ')})`;
        throw new Error(`invalid rule "${text}": ${bindRefusal(typed[1]!, '', what)}`);
      }
      throw new Error(
        `unsupported proxy type "${typed[1]}" in rule "${text}" (supported: ${PORT_PROXY_TYPES.join(', ')})`,
      );
    }
    type = typed[1];
    rest = rest.slice(typed[0].length);
  }
  const usage = () => {
    const socket = type === 'tcp' ? ' or [tcp:][BIND_ADDRESS:]REMOTE_PORT:unix:PATH' : '';
    return `invalid rule "${text}" (expected [${type}:][BIND_ADDRESS:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT${socket})`;
  };
  // The remote side is a port, or an address and a port: an address is the first field when that is not
  // all digits (a port never is anything else), in brackets for IPv6, as ssh -R writes it.
  let remoteBind: string | undefined;
  const first = rest.startsWith('[') ? /^\[[^\]]*\]/.exec(rest)?.[0] : rest.slice(0, rest.indexOf(':'));
  if (first === undefined || rest[first.length] !== ':') throw new Error(usage());
  if (!/^\d+$/.test(first) && !isPortRangeText(first)) {
    try {
      remoteBind = parseBindAddress(first);
    } catch {
      throw new Error(`invalid rule "${text}": ${bindRefusal(first, rest)}`);
    }
    rest = rest.slice(first.length + 1);
  }
  const colon = rest.indexOf(':');
  if (colon < 0) throw new Error(usage());
  try {
    const remote = rest.slice(0, colon);
    if (isPortRangeText(remote)) {
      const local = parseHostPorts(rest.slice(colon + 1));
      const ranges = { remote: PortRanges.parse(remote), local: local.ports };
      const first = { host: local.host, port: local.ports.at(0) };
      return {
        type,
        ...(remoteBind === undefined ? {} : { remoteBind }),
        remotePort: ranges.remote.at(0),
        local: first,
        ranges,
      };
    }
    return {
      type,
      ...(remoteBind === undefined ? {} : { remoteBind }),
      remotePort: parsePort(rest.slice(0, colon), true),
      local: parseLocalAddress(rest.slice(colon + 1)),
    };
  } catch (err) {
    throw new Error(`invalid rule "${text}": ${(err as Error).message}`);
  }
}

/** Why `remote` cannot start a rule: neither a port (or whatever `isNot` names) nor an address to bind. */
function bindRefusal(remote: string, rest = '', isNot = 'a port'): string {
  let why: string;
  if (remote === '' && rest.startsWith('::')) why = 'an IPv6 address is written in brackets, e.g. [::1]';
  else
    try {
      parseBindAddress(remote);
      why = 'not an address';
    } catch (err) {
      why = (err as Error).message;
    }
  return `"${remote}" is neither ${isNot} nor an address to bind (${why}); a rule starts with the remote port, or with the address the server binds it on and then the port, e.g. 2222:[::1]:22 or 127.0.0.1:2222:[::1]:22`;
}
