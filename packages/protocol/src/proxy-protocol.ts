// PROXY protocol headers (HAProxy's spec, versions 1 and 2) for TCP: the client writes one in front of a
// tunnelled connection so the local service (nginx, HAProxy, Postfix, ...) learns the visitor's real address
// instead of the client's loopback. Encoding only: porthole never receives these.
import { isIPv4, isIPv6 } from 'node:net';

/** The connection as the public side saw it. Any missing or unparseable part means "unknown". */
export interface ProxyEndpoints {
  /** The visitor: remote address and port of the public connection. */
  sourceAddress: string | undefined;
  sourcePort: number | undefined;
  /** Where the visitor connected to: the server's public address and port. */
  destinationAddress: string | undefined;
  destinationPort: number | undefined;
}

export type ProxyProtocolVersion = 'v1' | 'v2';

/** An address as bytes: 4 for IPv4 (IPv4-mapped IPv6 included), 16 for IPv6. */
export type IpBytes = { family: 4; bytes: Buffer } | { family: 6; bytes: Buffer };

/** The 12-byte signature that starts every v2 header. */
export const PROXY_V2_SIGNATURE = Buffer.from([
  0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
]);

const V2_VERSION_LOCAL = 0x20;
const V2_VERSION_PROXY = 0x21;
const V2_FAMILY_UNSPEC = 0x00;
const V2_TCP_OVER_IPV4 = 0x11;
const V2_TCP_OVER_IPV6 = 0x21;

/** The header for `version`; see encodeProxyV1 / encodeProxyV2. */
export function encodeProxyHeader(
  version: ProxyProtocolVersion,
  endpoints: ProxyEndpoints | undefined,
): Buffer {
  return version === 'v1' ? encodeProxyV1(endpoints) : encodeProxyV2(endpoints);
}

/**
 * A v1 (text) header: `PROXY TCP4 <src> <dst> <sport> <dport>\r\n`, TCP6 for IPv6, or `PROXY UNKNOWN\r\n`
 * when any part is unavailable (the receiver then uses the real connection's addresses).
 */
export function encodeProxyV1(endpoints: ProxyEndpoints | undefined): Buffer {
  const pair = resolvePair(endpoints);
  if (pair === undefined) return Buffer.from('PROXY UNKNOWN\r\n', 'latin1');
  const family = pair.source.family === 4 ? 'TCP4' : 'TCP6';
  const line = `PROXY ${family} ${formatIp(pair.source)} ${formatIp(pair.destination)} ${pair.sourcePort} ${pair.destinationPort}\r\n`;
  return Buffer.from(line, 'latin1');
}

/**
 * A v2 (binary) header: PROXY command with TCP over IPv4 (28 bytes) or IPv6 (52 bytes); the LOCAL command
 * with no addresses (16 bytes) when any part is unavailable (the receiver then uses the real connection's).
 */
export function encodeProxyV2(endpoints: ProxyEndpoints | undefined): Buffer {
  const pair = resolvePair(endpoints);
  if (pair === undefined) {
    const header = Buffer.alloc(16);
    PROXY_V2_SIGNATURE.copy(header, 0);
    header[12] = V2_VERSION_LOCAL;
    header[13] = V2_FAMILY_UNSPEC;
    header.writeUInt16BE(0, 14);
    return header;
  }
  const addressLength = pair.source.family === 4 ? 4 : 16;
  const header = Buffer.alloc(16 + 2 * addressLength + 4);
  PROXY_V2_SIGNATURE.copy(header, 0);
  header[12] = V2_VERSION_PROXY;
  header[13] = pair.source.family === 4 ? V2_TCP_OVER_IPV4 : V2_TCP_OVER_IPV6;
  header.writeUInt16BE(2 * addressLength + 4, 14);
  pair.source.bytes.copy(header, 16);
  pair.destination.bytes.copy(header, 16 + addressLength);
  header.writeUInt16BE(pair.sourcePort, 16 + 2 * addressLength);
  header.writeUInt16BE(pair.destinationPort, 16 + 2 * addressLength + 2);
  return header;
}

interface ResolvedPair {
  source: IpBytes;
  destination: IpBytes;
  sourcePort: number;
  destinationPort: number;
}

/** Both endpoints in one family (IPv4 where both are, IPv6 otherwise), or undefined when unknown. */
function resolvePair(endpoints: ProxyEndpoints | undefined): ResolvedPair | undefined {
  if (endpoints === undefined) return undefined;
  const source = parseIp(endpoints.sourceAddress);
  const destination = parseIp(endpoints.destinationAddress);
  const { sourcePort, destinationPort } = endpoints;
  if (source === undefined || destination === undefined || !isPort(sourcePort) || !isPort(destinationPort)) {
    return undefined;
  }
  // Both ends of one header share a family; a mixed pair (an IPv4 visitor on a dual-stack IPv6 listener
  // whose address is not IPv4-mapped) is carried as IPv6, the IPv4 side IPv4-mapped.
  if (source.family !== destination.family) {
    return { source: toIPv6(source), destination: toIPv6(destination), sourcePort, destinationPort };
  }
  return { source, destination, sourcePort, destinationPort };
}

function isPort(port: number | undefined): port is number {
  return typeof port === 'number' && Number.isInteger(port) && port >= 0 && port <= 0xffff;
}

const IPV4_MAPPED_PREFIX = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);

function toIPv6(ip: IpBytes): IpBytes {
  if (ip.family === 6) return ip;
  return { family: 6, bytes: Buffer.concat([IPV4_MAPPED_PREFIX, ip.bytes]) };
}

/**
 * Parses an IPv4 or IPv6 address (zone id ignored, e.g. `fe80::1%eth0`); IPv4-mapped IPv6 addresses
 * (`::ffff:1.2.3.4`, as Node reports IPv4 peers on dual-stack sockets) come back as IPv4.
 */
export function parseIp(text: string | undefined): IpBytes | undefined {
  if (typeof text !== 'string') return undefined;
  if (isIPv4(text)) return { family: 4, bytes: Buffer.from(text.split('.').map(Number)) };
  const percent = text.indexOf('%');
  const address = percent >= 0 ? text.slice(0, percent) : text;
  if (!isIPv6(address)) return undefined;
  const bytes = parseIPv6(address);
  if (bytes === undefined) return undefined;
  if (bytes.subarray(0, 12).equals(IPV4_MAPPED_PREFIX))
    return { family: 4, bytes: Buffer.from(bytes.subarray(12)) };
  return { family: 6, bytes };
}

/** 16 bytes from an address that net.isIPv6 accepted (so only the shape has to be handled here). */
function parseIPv6(address: string): Buffer | undefined {
  let text = address;
  const groups: number[] = [];
  // A trailing dotted quad stands for the last two groups.
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  let quad: number[] = [];
  if (tail.includes('.')) {
    if (!isIPv4(tail)) return undefined;
    quad = tail.split('.').map(Number);
    text = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const parse = (part: string): number[] =>
    part === '' ? [] : part.split(':').map((g) => Number.parseInt(g, 16));
  const head = parse(halves[0]!);
  const rest = halves.length === 2 ? parse(halves[1]!) : [];
  const zeros = 8 - head.length - rest.length;
  if (halves.length === 2 ? zeros < 1 : zeros !== 0) return undefined;
  groups.push(...head, ...new Array<number>(halves.length === 2 ? zeros : 0).fill(0), ...rest);
  const bytes = Buffer.alloc(16);
  for (let i = 0; i < 8; i++) {
    const group = groups[i]!;
    if (!Number.isInteger(group) || group < 0 || group > 0xffff) return undefined;
    bytes.writeUInt16BE(group, i * 2);
  }
  if (quad.length === 4) Buffer.from(quad).copy(bytes, 12);
  return bytes;
}

/** Text form: dotted quad, or RFC 5952 IPv6 (lowercase, longest run of 2+ zero groups as `::`). */
export function formatIp(ip: IpBytes): string {
  if (ip.family === 4) return Array.from(ip.bytes).join('.');
  const groups = Array.from({ length: 8 }, (_, i) => ip.bytes.readUInt16BE(i * 2));
  let bestStart = -1;
  let bestLength = 1; // a single zero group is not compressed
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = (list: number[]) => list.map((g) => g.toString(16)).join(':');
  if (bestStart < 0) return hex(groups);
  return `${hex(groups.slice(0, bestStart))}::${hex(groups.slice(bestStart + bestLength))}`;
}
