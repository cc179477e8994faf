// A list of IP networks written "10.0.0.0/8", "192.168.1.7", "fd00::/8": the server's trusted_proxies and a
// socks5 proxy's socks_allow (the destinations it may connect to) on the client.
import { BlockList, isIPv4, isIPv6 } from 'node:net';
import { plainAddress } from './host-port.js';

/** Parses "10.0.0.0/8", "192.168.1.7", "fd00::/8" into `list`; throws with the reason. */
function addEntry(list: BlockList, text: string): void {
  const [address = '', prefixText, extra] = text.trim().split('/');
  if (extra !== undefined) throw new Error(`invalid network "${text}"`);
  const family = isIPv4(address) ? 'ipv4' : isIPv6(address) ? 'ipv6' : undefined;
  if (family === undefined) throw new Error(`invalid network "${text}" (expected an IP address or CIDR)`);
  const max = family === 'ipv4' ? 32 : 128;
  if (prefixText === undefined) {
    list.addAddress(address, family);
    return;
  }
  if (!/^\d{1,3}$/.test(prefixText) || Number(prefixText) > max)
    throw new Error(`invalid prefix length in "${text}" (0-${max})`);
  list.addSubnet(address, Number(prefixText), family);
}

export class NetworkList {
  private readonly list = new BlockList();
  readonly size: number;

  constructor(networks: readonly string[]) {
    for (const network of networks) addEntry(this.list, network);
    this.size = networks.length;
  }

  /** Validates one entry (for config checking); throws with the reason. */
  static check(network: string): void {
    addEntry(new BlockList(), network);
  }

  /** True when `address` (IPv4, IPv6 or IPv4-mapped IPv6) is in one of the networks. */
  contains(address: string | undefined): boolean {
    if (this.size === 0 || address === undefined) return false;
    const plain = plainAddress(address);
    if (isIPv4(plain)) return this.list.check(plain, 'ipv4');
    if (isIPv6(plain)) return this.list.check(plain, 'ipv6');
    return false;
  }
}
