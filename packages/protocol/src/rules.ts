import { parsePort } from './host-port.js';
import { type LocalAddress, parseLocalAddress } from './local-address.js';

/** tcp and udp proxies own a public port; http and tls proxies are reached by hostname on shared ports. */
export type ProxyType = 'tcp' | 'udp' | 'http' | 'tls';
export const PROXY_TYPES: readonly ProxyType[] = ['tcp', 'udp', 'http', 'tls'];
/** The types a quick-flag rule (REMOTE_PORT:LOCAL) can express. */
export type PortProxyType = 'tcp' | 'udp';
export const PORT_PROXY_TYPES: readonly PortProxyType[] = ['tcp', 'udp'];

export function isPortProxyType(type: string): type is PortProxyType {
  return (PORT_PROXY_TYPES as readonly string[]).includes(type);
}

export interface ProxyRule {
  type: PortProxyType;
  /** 0: the server picks the port. */
  remotePort: number;
  local: LocalAddress;
}

/**
 * Parses a quick-flag rule: "2222:127.0.0.1:22", "0:127.0.0.1:22" (remote port 0: the server picks one), "tcp:2222:127.0.0.1:22", "udp:5353:127.0.0.1:53",
 * "2222:[::1]:22", "8080:unix:/run/app.sock". The remote port comes first (the port opened on the server), then
 * the local address.
 */
export function parseRule(text: string, defaultType: PortProxyType = 'tcp'): ProxyRule {
  let rest = text.trim();
  let type: PortProxyType = defaultType;
  const typed = /^([a-z]+):/.exec(rest);
  if (typed) {
    if (!isPortProxyType(typed[1]!)) {
      throw new Error(
        `unsupported proxy type "${typed[1]}" in rule "${text}" (supported: ${PORT_PROXY_TYPES.join(', ')})`,
      );
    }
    type = typed[1];
    rest = rest.slice(typed[0].length);
  }
  const colon = rest.indexOf(':');
  if (colon < 0) {
    const socket = type === 'tcp' ? ' or [tcp:]REMOTE_PORT:unix:PATH' : '';
    throw new Error(`invalid rule "${text}" (expected [${type}:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT${socket})`);
  }
  // An address before the port, as ssh -R's [bind_address:]port takes ("[::]:2222:...", "0.0.0.0:2222:..."),
  // would otherwise read as 'invalid port "["': the server picks that address itself.
  const remote = rest.startsWith('[') ? rest.slice(0, rest.indexOf(']') + 1) || rest : rest.slice(0, colon);
  if (!/^\d+$/.test(remote))
    throw new Error(
      `invalid rule "${text}": "${remote}" is not a port; a rule starts with the remote port alone (the server binds it on its proxy_bind address), e.g. ${type}:2222:[::1]:22`,
    );
  try {
    return {
      type,
      remotePort: parsePort(rest.slice(0, colon), true),
      local: parseLocalAddress(rest.slice(colon + 1)),
    };
  } catch (err) {
    throw new Error(`invalid rule "${text}": ${(err as Error).message}`);
  }
}
