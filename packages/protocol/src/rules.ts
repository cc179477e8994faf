import { type HostPort, parseHostPort, parsePort } from './host-port.js';

export type ProxyType = 'tcp';
export const PROXY_TYPES: readonly ProxyType[] = ['tcp'];

export interface ProxyRule {
  type: ProxyType;
  remotePort: number;
  local: HostPort;
}

/**
 * Parses a quick-flag rule: "2222:127.0.0.1:22", "tcp:2222:127.0.0.1:22", "2222:[::1]:22".
 * The remote port comes first (the port opened on the server), then the local address it reaches.
 */
export function parseRule(text: string): ProxyRule {
  let rest = text.trim();
  let type: ProxyType = 'tcp';
  const typed = /^([a-z]+):/.exec(rest);
  if (typed) {
    if (!(PROXY_TYPES as readonly string[]).includes(typed[1]!)) {
      throw new Error(
        `unsupported proxy type "${typed[1]}" in rule "${text}" (supported: ${PROXY_TYPES.join(', ')})`,
      );
    }
    type = typed[1] as ProxyType;
    rest = rest.slice(typed[0].length);
  }
  const colon = rest.indexOf(':');
  if (colon < 0) throw new Error(`invalid rule "${text}" (expected [tcp:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT)`);
  try {
    return { type, remotePort: parsePort(rest.slice(0, colon)), local: parseHostPort(rest.slice(colon + 1)) };
  } catch (err) {
    throw new Error(`invalid rule "${text}": ${(err as Error).message}`);
  }
}
