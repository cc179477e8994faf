// A bandwidth limit: its syntax (frp's transport.bandwidthLimit), shared by a client proxy's
// bandwidth_limit, a token's bandwidth limit and the server's client_bandwidth_limit, and the budgets the
// connections under one limit share, one per direction.
import { z } from 'zod';
import { expected } from './config-file.js';
import type { PipeLimits } from './pipe-bidirectional.js';
import { TokenBucket } from './token-bucket.js';

export interface BandwidthLimit {
  /** As written ("1MB"), for status and logs. */
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

/** A rate as written ("1MB", "500KB"), or why it is not one (in words that fit after the key's name). */
export function parseBandwidthLimit(raw: string): BandwidthLimit | { problem: string } {
  const text = raw.trim();
  const match = RATE.exec(text);
  if (!match)
    return {
      problem: `"${raw}" is not a rate like "1MB" or "500KB" (bytes per second, "KB" or "MB" in capitals: 1MB = 1024KB = 1048576 bytes)`,
    };
  const bytesPerSecond = Math.floor(Number(match[1]) * UNIT_BYTES[match[2] as keyof typeof UNIT_BYTES]);
  if (bytesPerSecond < MIN_BYTES_PER_SECOND)
    return { problem: 'must be at least 1KB (leave the key out for no limit)' };
  if (!(bytesPerSecond <= MAX_BYTES_PER_SECOND))
    return {
      problem: `"${text}" is more than 102400MB (100 GiB/s), the most a limit may be (leave the key out for no limit)`,
    };
  return { text, bytesPerSecond };
}

export const bandwidthLimitField = z
  .string({ error: expected('a rate like "1MB" or "500KB"') })
  .transform((raw, ctx): BandwidthLimit => {
    const parsed = parseBandwidthLimit(raw);
    if ('problem' in parsed) {
      ctx.addIssue({ code: 'custom', message: parsed.problem });
      return z.NEVER;
    }
    return parsed;
  });

/**
 * The two budgets of one limit: towards the local service (bytes_in: visitor -> service) and back from it
 * (bytes_out), shared by every connection held to the limit.
 */
export interface BandwidthBudgets {
  in: TokenBucket;
  out: TokenBucket;
}

export function bandwidthBudgets(limit: BandwidthLimit): BandwidthBudgets {
  return { in: new TokenBucket(limit.bytesPerSecond), out: new TokenBucket(limit.bytesPerSecond) };
}

/** A new rate for both directions (Infinity: none); the connections holding the budgets keep to it at once. */
export function setBandwidthRate(budgets: BandwidthBudgets, bytesPerSecond: number): void {
  if (budgets.in.bytesPerSecond === bytesPerSecond) return;
  budgets.in.setRate(bytesPerSecond);
  budgets.out.setRate(bytesPerSecond);
}

/**
 * The budgets of a connection's pipe whose `a` side is towards the visitor and `b` side towards the local
 * service (the server: visitor socket, tunnel stream; the client: tunnel stream, local socket).
 */
export function towardsServiceLimits(budgets: BandwidthBudgets): PipeLimits {
  return { aToB: budgets.in, bToA: budgets.out };
}
