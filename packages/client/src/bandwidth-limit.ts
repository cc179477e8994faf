// A proxy's bandwidth_limit (its syntax and budgets are @porthole/protocol's): the budgets each proxy's
// connections share.
import {
  type BandwidthBudgets,
  type BandwidthLimit,
  bandwidthBudgets,
  setBandwidthRate,
} from '@porthole/protocol';

/**
 * The budgets of the proxies with a bandwidth_limit, by name. A reload's new limit applies to the open
 * connections at once (they hold the same buckets); a removed limit frees them, and new connections of the
 * proxy run unlimited. Connections opened while a proxy had no limit stay unlimited.
 */
export class ProxyBandwidth {
  private readonly byProxy = new Map<string, BandwidthBudgets>();

  /** The budgets a new connection of `proxy` shares, or undefined for a proxy without a limit. */
  budgets(proxy: { name: string; bandwidthLimit?: BandwidthLimit }): BandwidthBudgets | undefined {
    const limit = proxy.bandwidthLimit;
    if (limit === undefined) return undefined;
    let budgets = this.byProxy.get(proxy.name);
    if (budgets === undefined) {
      budgets = bandwidthBudgets(limit);
      this.byProxy.set(proxy.name, budgets);
    }
    return budgets;
  }

  /** After a reload: each proxy's budgets take its new limit (Infinity: none); removed proxies' are dropped. */
  apply(proxies: ReadonlyMap<string, { bandwidthLimit?: BandwidthLimit }>): void {
    for (const [name, budgets] of this.byProxy) {
      const proxy = proxies.get(name);
      setBandwidthRate(budgets, proxy?.bandwidthLimit?.bytesPerSecond ?? Number.POSITIVE_INFINITY);
      if (proxy === undefined) this.byProxy.delete(name);
    }
  }
}
