// Hostnames that http and tls proxies claim, the patterns tokens grant (`--hosts`), and the names visitors
// send (Host header, SNI). Everything is compared lowercased without a trailing dot.
import { BlockList, isIP, isIPv6 } from 'node:net';
import { formatIp, parseIp } from './proxy-protocol.js';

const LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;
const MAX_HOST_LENGTH = 253;

function checkName(name: string, whole: string): void {
  if (name.length === 0 || name.length > MAX_HOST_LENGTH) {
    throw new Error(`invalid hostname "${whole}" (1-${MAX_HOST_LENGTH} characters)`);
  }
  for (const label of name.split('.')) {
    if (!LABEL.test(label)) {
      throw new Error(
        `invalid hostname "${whole}" (labels are letters, digits and "-", not starting or ending with "-")`,
      );
    }
  }
}

/**
 * An IPv6 address as names are compared: RFC 5952 text without brackets ("2001:db8::1"), so that a claim and
 * a Host header match however either writes it; undefined when it is not one.
 */
function canonicalIPv6(text: string): string | undefined {
  const ip = /^[0-9a-f:.]+$/.test(text) && isIPv6(text) ? parseIp(text) : undefined;
  return ip && formatIp(ip);
}

/**
 * Validates and normalizes a hostname pattern: an exact name ("app.example.com") or a wildcard
 * ("*.home.example.com", which matches names at any depth below home.example.com, not the name itself).
 * An IP address is taken as a Host header carries it (an IPv6 one in brackets, or bare as this returns it).
 */
export function parseHostPattern(text: string): string {
  const lower = text.trim().toLowerCase().replace(/\.$/, '');
  const ipv6 = canonicalIPv6(/^\[(.*)\]$/.exec(lower)?.[1] ?? lower);
  if (ipv6 !== undefined) return ipv6;
  if (lower.startsWith('*.')) {
    checkName(lower.slice(2), text);
    return lower;
  }
  checkName(lower, text);
  return lower;
}

/** Validates a `subdomain` (one or more labels, put in front of the server's subdomain_host). */
export function parseSubdomain(text: string): string {
  const lower = text.trim().toLowerCase();
  if (lower.includes('*')) throw new Error(`invalid subdomain "${text}" (no wildcards)`);
  checkName(lower, text);
  return lower;
}

export function isWildcardHost(pattern: string): boolean {
  return pattern.startsWith('*.');
}

/** True when the (exact, normalized) `host` is `pattern` or lies below a wildcard `pattern`. */
export function hostMatchesPattern(host: string, pattern: string): boolean {
  if (!isWildcardHost(pattern)) return host === pattern;
  return host.endsWith(pattern.slice(1)) && host.length > pattern.length - 1;
}

/**
 * Whether a token's host grant lets a client claim `requested` (an exact name or a wildcard). Absent
 * grant: any name (as an absent port grant means any port). A wildcard grant covers the names below it
 * and the narrower wildcards below it ("*.example.com" covers "a.example.com" and "*.home.example.com").
 */
export function hostGrantAllows(grant: readonly string[] | undefined, requested: string): boolean {
  if (grant === undefined) return true;
  for (const raw of grant) {
    let pattern: string;
    try {
      pattern = parseHostPattern(raw);
    } catch {
      continue;
    }
    if (pattern === requested) return true;
    if (!isWildcardHost(pattern)) continue;
    // An exact name below the wildcard, or a narrower wildcard: both end with ".suffix".
    const target = isWildcardHost(requested) ? requested.slice(2) : requested;
    if (hostMatchesPattern(target, pattern)) return true;
  }
  return false;
}

const LOOPBACK_ADDRESSES = new BlockList();
LOOPBACK_ADDRESSES.addSubnet('127.0.0.0', 8, 'ipv4');
LOOPBACK_ADDRESSES.addAddress('::1', 'ipv6');

/**
 * 127.0.0.0/8, ::1 and localhost (as normalizeRequestHost gives them, or as written in a listen address),
 * whichever way an address is written: "[::ffff:127.0.0.1]" or "[0:0:0:0:0:0:0:1]" in a Host header too.
 */
export function isLoopback(host: string): boolean {
  if (host === 'localhost') return true;
  const family = isIP(host);
  return family !== 0 && LOOPBACK_ADDRESSES.check(host, family === 4 ? 'ipv4' : 'ipv6');
}

/**
 * Whether a request's Host header names loopback. A web page that rebinds its own name to 127.0.0.1 reaches
 * a loopback listener too, but still sends that name: a loopback-only endpoint refuses other Hosts.
 */
export function requestHostIsLoopback(hostHeader: string | undefined): boolean {
  const host = normalizeRequestHost(hostHeader);
  return host !== undefined && isLoopback(host);
}

/**
 * True when an SNI value is an IP address ("1.2.3.4", "::1", "[::1]"). RFC 6066 3 allows only host names
 * there, yet old Java, some IoT stacks and `openssl s_client -servername 1.2.3.4` send the address they
 * dialled: the TLS port reads it as no SNI (default_host decides), since it names no proxy or certificate.
 */
export function isIpAddressSni(serverName: string): boolean {
  const bare = serverName.trim().replace(/^\[(.*)\]$/, '$1');
  return isIP(bare) !== 0;
}

/**
 * Why a tls proxy cannot be named `host` (a normalized pattern), or undefined. An IP address as SNI is read
 * as no SNI (isIpAddressSni), so a tls proxy named by one would never be reached.
 */
export function tlsNameRefusal(host: string): string | undefined {
  if (isIP(host) === 0) return undefined;
  return `${host} is an IP address, which SNI does not carry (RFC 6066): a tls proxy is found by a hostname`;
}

/** A Host value (RFC 9110 7.2: uri-host [":" port]): a name or IPv4 address, or an IPv6 literal in brackets. */
const HOST_FIELD = /^(?:\[([0-9a-f:.]+)\]|([a-z0-9._-]+))(?::\d{0,5})?$/;

/**
 * The hostname a visitor asked for, from a Host header ("App.Example.com:8080", "[::1]:80") or an SNI
 * name: lowercased, port and trailing dot removed. Undefined when it is not a usable name, and when anything
 * but a port follows it ("app.example.com:x@evil"): a service handed that Host may read another name in it.
 */
export function normalizeRequestHost(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const match = HOST_FIELD.exec(value.trim().toLowerCase());
  if (!match) return undefined;
  if (match[1] !== undefined) return canonicalIPv6(match[1]);
  const host = match[2]!.replace(/\.$/, '');
  if (host === '' || host.length > MAX_HOST_LENGTH) return undefined;
  return host;
}
