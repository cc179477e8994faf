// A proxy's bandwidth_limit: its syntax (frp's transport.bandwidthLimit) and the budgets its connections
// share, one per direction.
import { expected, type PipeLimits, TokenBucket } from '@porthole/protocol';
import { z } from 'zod';

export interface BandwidthLimit {
  /** As written in the config ("1MB"), for status and logs. */
  text: string;
  bytesPerSecond: number;
}

/** frp's units: binary, so "1MB" moves the same in porthole as in frp. */
const UNIT_BYTES = { KB: 1024, MB: 1024 * 1024 } as const;
/**
 * Below this, one read of a socket (up to 64 KiB) is paid for with more than a minute of silence: of no use
 * to anyone, so more likely a slip of the unit.
 */
const MIN_BYTES_PER_SECOND = 1024;
/**
 * 100 GiB/s, past anything one client's socket reads do: more is a slip of the unit or of a finger
 * ("99999999MB"), and far enough past it the rate stops being a number the token bucket can count in (the
 * spent bytes vanish in the rounding of a double; a long enough number of digits reads as Infinity).
 */
const MAX_BYTES_PER_SECOND = 102_400 * UNIT_BYTES.MB;
/**
 * Capitals only, as frp: "mb" or "Mb" reads as megabits to many, and 8 times the intended rate is a
 * mistake worth an error rather than a guess.
 */
const RATE = /^(\d+(?:\.\d+)?)(KB|MB)$/;

export const bandwidthLimitField = z
  .string({ error: expected('a rate like "1MB" or "500KB"') })
  .transform((raw, ctx): BandwidthLimit => {
    const text = raw.trim();
    const match = RATE.exec(text);
    if (!match) {
      ctx.addIssue({
        code: 'custom',
        message: `"${raw}" is not a rate like "1MB" or "500KB" (bytes per second, "KB" or "MB" in capitals: 1MB = 1024KB = 1048576 bytes)`,
      });
      return z.NEVER;
    }
    const bytesPerSecond = Math.floor(Number(match[1]) * UNIT_BYTES[match[2] as keyof typeof UNIT_BYTES]);
    if (bytesPerSecond < MIN_BYTES_PER_SECOND) {
      ctx.addIssue({ code: 'custom', message: 'must be at least 1KB (leave the key out for no limit)' });
      return z.NEVER;
    }
    if (!(bytesPerSecond <= MAX_BYTES_PER_SECOND)) {
      ctx.addIssue({
        code: 'custom',
        message: `"${text}" is more than 102400MB (100 GiB/s), the most a limit may be (leave the key out for no limit)`,
      });
      return z.NEVER;
    }
    return { text, bytesPerSecond };
  });

/** The two budgets of one proxy: towards the local service (bytes_in) and back from it (bytes_out). */
export interface ProxyBudgets {
  in: TokenBucket;
  out: TokenBucket;
}

/** The budgets of a stream's pipe, tunnel side first (a = tunnel, b = local). */
export function tunnelToLocalLimits(budgets: ProxyBudgets): PipeLimits {
  return { aToB: budgets.in, bToA: budgets.out };
}

/**
 * The budgets of the proxies with a bandwidth_limit, by name. A reload's new limit applies to the open
 * connections at once (they hold the same buckets); a removed limit frees them, and new connections of the
 * proxy run unlimited. Connections opened while a proxy had no limit stay unlimited.
 */
export class ProxyBandwidth {
  private readonly byProxy = new Map<string, ProxyBudgets>();

  /** The budgets a new connection of `proxy` shares, or undefined for a proxy without a limit. */
  budgets(proxy: { name: string; bandwidthLimit?: BandwidthLimit }): ProxyBudgets | undefined {
    const limit = proxy.bandwidthLimit;
    if (limit === undefined) return undefined;
    let budgets = this.byProxy.get(proxy.name);
    if (budgets === undefined) {
      budgets = { in: new TokenBucket(limit.bytesPerSecond), out: new TokenBucket(limit.bytesPerSecond) };
      this.byProxy.set(proxy.name, budgets);
    }
    return budgets;
  }

  /** After a reload: each proxy's budgets take its new limit (Infinity: none); removed proxies' are dropped. */
  apply(proxies: ReadonlyMap<string, { bandwidthLimit?: BandwidthLimit }>): void {
    for (const [name, budgets] of this.byProxy) {
      const proxy = proxies.get(name);
      const rate = proxy?.bandwidthLimit?.bytesPerSecond ?? Number.POSITIVE_INFINITY;
      if (budgets.in.bytesPerSecond !== rate) {
        budgets.in.setRate(rate);
        budgets.out.setRate(rate);
      }
      if (proxy === undefined) this.byProxy.delete(name);
    }
  }
}
