// The address a tcp or udp proxy's public port is bound to when its client asks for one (`remote_bind`,
// ssh -R's bind_address): "127.0.0.1" to reach it only from the server itself (nginx in front, `ssh -L`),
// "0.0.0.0" for everyone. Both ends compare addresses in one spelling, so "0:0:0:0:0:0:0:1" asks for "::1".
import { isIPv4, isIPv6 } from 'node:net';

/**
 * An IP address as the server compares and binds it: IPv4 as written, IPv6 in its shortest form ("::1").
 * Throws with the reason for anything else: a bind address is what the kernel binds, so a host name (which
 * may resolve to several) or a zone id is not one.
 */
export function parseBindAddress(text: string): string {
  if (isIPv4(text)) return text;
  const unbracketed = /^\[(.*)\]$/.exec(text)?.[1] ?? text;
  if (isIPv6(unbracketed) && !unbracketed.includes('%'))
    return new URL(`http://[${unbracketed}]/`).hostname.slice(1, -1);
  if (text === 'localhost') return fail(text, 'write the loopback address itself: "127.0.0.1" or "::1"');
  if (text === '*' || text === '')
    return fail(text, 'write the address for every interface: "0.0.0.0" (IPv4) or "::" (IPv6)');
  return fail(text, 'must be an IP address such as "127.0.0.1", "::1" or "0.0.0.0"');
}

function fail(text: string, why: string): never {
  throw new Error(`bind address "${text}": ${why}`);
}
