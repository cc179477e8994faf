// The operator's cap on one client: its token's bandwidth limit, else the server's client_bandwidth_limit.
// Every public connection of the client (tcp, http, tls, udp, and visits to its private services) shares
// one budget per direction, so together they keep to it.
import {
  type BandwidthBudgets,
  type BandwidthLimit,
  bandwidthBudgets,
  type PipeLimits,
  parseBandwidthLimit,
  setBandwidthRate,
  towardsServiceLimits,
} from '@porthole/protocol';

/** Where a client's cap comes from, as the admin API and the log say it. */
export type BandwidthLimitSource = 'token' | 'server';

export class ClientBandwidth {
  private readonly tokenLimit: BandwidthLimit | undefined;
  private shared: BandwidthBudgets | undefined;
  private pipeLimits: PipeLimits | undefined;

  /**
   * `tokenClaim`: the token's bandwidth_limit (verifyToken checked its syntax); `serverDefault`: the running
   * config's client_bandwidth_limit, read when asked, so that a reload applies.
   */
  constructor(
    tokenClaim: string | undefined,
    private readonly serverDefault: () => BandwidthLimit | undefined,
  ) {
    const parsed = tokenClaim === undefined ? undefined : parseBandwidthLimit(tokenClaim);
    this.tokenLimit = parsed === undefined || 'problem' in parsed ? undefined : parsed;
  }

  /** The cap in force now (the token's wins over the server's), or undefined for none. */
  get limit(): (BandwidthLimit & { source: BandwidthLimitSource }) | undefined {
    if (this.tokenLimit) return { ...this.tokenLimit, source: 'token' };
    const fallback = this.serverDefault();
    return fallback === undefined ? undefined : { ...fallback, source: 'server' };
  }

  /**
   * The budgets a new connection shares (visitor side first), or undefined while there is no cap. As a
   * proxy's bandwidth_limit on the client: connections opened without a cap stay without one.
   */
  limits(): PipeLimits | undefined {
    return this.budgets() === undefined ? undefined : this.pipeLimits;
  }

  /** The two budgets themselves (udp spends them datagram by datagram), or undefined without a cap. */
  budgets(): BandwidthBudgets | undefined {
    const limit = this.limit;
    if (limit === undefined) return undefined;
    if (this.shared === undefined) {
      this.shared = bandwidthBudgets(limit);
      this.pipeLimits = towardsServiceLimits(this.shared);
    }
    return this.shared;
  }

  /** After a reload: the open connections keep to the cap now in force (Infinity once there is none). */
  apply(): void {
    if (this.shared === undefined) return;
    setBandwidthRate(this.shared, this.limit?.bytesPerSecond ?? Number.POSITIVE_INFINITY);
  }
}
