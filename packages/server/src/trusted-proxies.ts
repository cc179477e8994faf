// trusted_proxies: the peers whose X-Forwarded-* headers are believed (appended to, not replaced).
import { NetworkList } from '@porthole/protocol';

/** The networks of trusted_proxies: their peers' forwarding headers are believed. */
export class TrustedProxies extends NetworkList {}

const NO_NETWORKS: readonly string[] = [];

/**
 * The server's trusted_proxies as a reload leaves them (the config is replaced as a whole, so a list that is
 * the same array is unchanged): rebuilt only when the list changes, not per connection.
 */
export function currentTrustedProxies(networks: () => readonly string[] | undefined): () => TrustedProxies {
  let list = networks() ?? NO_NETWORKS;
  let trusted = new TrustedProxies(list);
  return () => {
    const now = networks() ?? NO_NETWORKS;
    if (now !== list) {
      list = now;
      trusted = new TrustedProxies(now);
    }
    return trusted;
  };
}
