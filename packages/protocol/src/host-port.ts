import { isIPv6 } from 'node:net';
import { PortRanges } from './port-ranges.js';

export interface HostPort {
  host: string;
  port: number;
}

/** Parses a TCP/UDP port number (1-65535, or 0 when `allowZero`). */
export function parsePort(text: string, allowZero = false): number {
  if (!/^\d{1,5}$/.test(text)) throw new Error(`invalid port "${text}"`);
  const port = Number(text);
  if (port > 65535 || (port === 0 && !allowZero))
    throw new Error(`port ${port} is outside ${allowZero ? 0 : 1}-65535`);
  return port;
}

/** Parses "127.0.0.1:22", "localhost:22", "[::1]:22"; throws with the reason. */
export function parseHostPort(text: string, opts: { allowZeroPort?: boolean } = {}): HostPort {
  const bracketed = /^\[([0-9A-Fa-f:.%\w]+)\]:([^:]*)$/.exec(text);
  const plain = /^([^:[\]\s]+):([^:]*)$/.exec(text);
  const match = bracketed ?? plain;
  if (!match) {
    throw new Error(`invalid address "${text}" (expected host:port, e.g. 127.0.0.1:22 or [::1]:22)`);
  }
  const host = match[1]!;
  // Brackets are for IPv6; what else they hold must pass as a name (the pattern above let
  // "[127.0.0.1:80]:7000" through, and the listen then failed: getaddrinfo ENOTFOUND 127.0.0.1:80).
  if (!(bracketed && isIPv6(host)) && !/^[A-Za-z0-9.-]+$/.test(host))
    throw new Error(`invalid host "${host}" in "${text}"`);
  return { host, port: parsePort(match[2]!, opts.allowZeroPort) };
}

/**
 * "127.0.0.1:27015-27030", "[::1]:8000,8002-8004" (a single port too): a host and a set of ports, for port range
 * proxies; the host is checked as parseHostPort checks one. Throws with the reason.
 */
export function parseHostPorts(text: string): { host: string; ports: PortRanges } {
  const colon = text.lastIndexOf(':');
  if (colon < 0)
    throw new Error(`invalid address "${text}" (expected host:ports, e.g. 127.0.0.1:27015-27030)`);
  const ports = PortRanges.parse(text.slice(colon + 1));
  return { host: parseHostPort(`${text.slice(0, colon)}:${ports.at(0)}`).host, ports };
}

/** "27015-27030", "8000,8002-8004": ports written as a range or a list, not one port. */
export function isPortRangeText(text: string): boolean {
  return /^[\d\s,-]+$/.test(text) && /[-,]/.test(text);
}

/** Formats a host and port (or ports) for humans and for `parseHostPort` (`parseHostPorts`), bracketing IPv6 literals. */
export function formatHostPort(host: string, port: number | PortRanges): string {
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
}

/**
 * A peer's address as headers and log lines give it: an IPv4-mapped IPv6 address ("::ffff:127.0.0.1", as Node
 * reports an IPv4 peer of a dual-stack socket) as the IPv4 address it is.
 */
export function plainAddress(address: string | undefined): string {
  if (address === undefined) return 'unknown';
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  return mapped ? mapped[1]! : address;
}

/**
 * A visitor as every log line of both programs writes it ("127.0.0.1:40312", "[2001:db8::7]:40312"), so one
 * visitor reads the same on the server and on the client, whatever the listener it came in on.
 */
export function formatPeerAddress(address: string, port: number): string {
  return formatHostPort(plainAddress(address), port);
}
