import type { IncomingMessage } from 'node:http';
import { formatIp, parseIp, type TokenClaims, TokenError, verifyToken } from '@porthole/protocol';

export interface AuthSettings {
  secret: string;
  revoked: ReadonlySet<string>;
  /** Failed attempts one source address may make per window before it gets 429s. */
  failureLimit: number;
  failureWindow: number;
}

export type AuthOutcome =
  | { ok: true; claims: TokenClaims }
  | {
      ok: false;
      status: 401 | 429;
      reason: string;
      /** Whose failures count together (failureSource). */
      source: string;
      /** False once this source is over its limit (its first 429 is logged, the rest are counted). */
      log: boolean;
      /** A 429's Retry-After: whole seconds until this source's window ends and it may try again. */
      retryAfterSeconds?: number;
      /** A token whose signature checked out (expired, revoked): whose it is, for the log. */
      whose: { client: string; jti: string } | undefined;
    };

/** How many source addresses we remember; beyond it the oldest are forgotten (memory stays bounded). */
const MAX_TRACKED_SOURCES = 10_000;

/**
 * Whose failures count together: an IPv4 address, or an IPv6 address's /64 (one host or site usually holds
 * a whole /64, so counting per address would let it rotate through 2^64 fresh limits). Written as logs and
 * the 429 text show it: an IPv4-mapped address as IPv4, an IPv6 prefix in RFC 5952 form ("2001:db8::/64").
 */
export function failureSource(address: string): string {
  const ip = parseIp(address);
  // Not an address (a socket already gone): counted under what was given.
  if (ip === undefined) return address;
  if (ip.family === 4) return formatIp(ip);
  const prefix = Buffer.alloc(16);
  ip.bytes.copy(prefix, 0, 0, 8);
  return `${formatIp({ family: 6, bytes: prefix })}/64`;
}

/**
 * Counts failed attempts per source address in fixed windows. A source over its limit is answered 429
 * without its failures being logged one by one; a valid token from the same address still gets in
 * (verifying HS256 costs microseconds, so refusing good clients would protect nothing).
 */
export class FailureLimiter {
  private readonly windows = new Map<string, { start: number; count: number }>();

  constructor(
    private readonly limit: number,
    private readonly windowMs: number,
  ) {}

  /** Records a failure; returns true while the source is within its limit. */
  fail(source: string, now = Date.now()): boolean {
    let entry = this.windows.get(source);
    if (!entry || now - entry.start >= this.windowMs) {
      this.windows.delete(source);
      if (this.windows.size >= MAX_TRACKED_SOURCES) this.windows.delete(this.windows.keys().next().value!);
      entry = { start: now, count: 0 };
      this.windows.set(source, entry);
    }
    entry.count += 1;
    return entry.count <= this.limit;
  }

  /**
   * Whole seconds until `source`'s window ends and its failures count from zero again (at least 1): what a
   * 429 tells it in Retry-After. Rounded up, so a client that waits that long is not refused again for
   * coming a fraction of a second early.
   */
  retryAfterSeconds(source: string, now = Date.now()): number {
    const entry = this.windows.get(source);
    const leftMs = entry ? entry.start + this.windowMs - now : 0;
    return Math.max(1, Math.ceil(leftMs / 1000));
  }

  /** True when this failure is the first one over the limit (worth one log line). */
  justExceeded(source: string): boolean {
    return this.windows.get(source)?.count === this.limit + 1;
  }
}

/** The token from "Authorization: Bearer <jwt>"; undefined when absent; other schemes come back whole (malformed). */
export function bearerToken(req: IncomingMessage): string | undefined {
  const header = req.headers.authorization;
  if (!header) return undefined;
  const match = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return match ? match[1] : header;
}

/**
 * Whether the server accepts `jwt` under the settings `current()` returns: its claims, or a TokenError whose
 * message is the reason the server gives ("token expired"), the one both a sign-in and `token show` report.
 */
export async function acceptToken(
  jwt: string | undefined,
  current: () => Pick<AuthSettings, 'secret' | 'revoked'>,
): Promise<TokenClaims> {
  try {
    const claims = await verifyToken(current().secret, jwt, { revoked: current().revoked });
    // Verification is asynchronous: a reload may have revoked the token meanwhile, after its sessions
    // were checked, so the current list is asked again.
    if (current().revoked.has(claims.jti))
      throw new TokenError('token revoked', { client: claims.sub, jti: claims.jti });
    return claims;
  } catch (err) {
    throw err instanceof TokenError ? err : new TokenError('malformed token');
  }
}

/** Verifies the Bearer token of an upgrade request before the WebSocket is accepted. */
export class UpgradeAuthenticator {
  private settings: AuthSettings;
  private limiter: FailureLimiter;
  /** Refused attempts by reason ("token expired", ...), for the metrics. */
  readonly failures = new Map<string, number>();

  constructor(settings: AuthSettings) {
    this.settings = settings;
    this.limiter = new FailureLimiter(settings.failureLimit, settings.failureWindow);
  }

  /** SIGHUP: new revocations and limits apply to the next attempt (the failure counts start over). */
  update(settings: AuthSettings): void {
    const limitsChanged =
      settings.failureLimit !== this.settings.failureLimit ||
      settings.failureWindow !== this.settings.failureWindow;
    this.settings = settings;
    if (limitsChanged) this.limiter = new FailureLimiter(settings.failureLimit, settings.failureWindow);
  }

  async authenticate(req: IncomingMessage): Promise<AuthOutcome> {
    const source = failureSource(req.socket.remoteAddress ?? 'unknown');
    try {
      return { ok: true, claims: await acceptToken(bearerToken(req), () => this.settings) };
    } catch (err) {
      const refusal = err instanceof TokenError ? err : new TokenError('malformed token');
      const { message: reason, whose } = refusal;
      this.failures.set(reason, (this.failures.get(reason) ?? 0) + 1);
      if (this.limiter.fail(source)) return { ok: false, status: 401, reason, source, log: true, whose };
      return {
        ok: false,
        whose,
        status: 429,
        reason: `${reason} (too many failed attempts from ${source}, slow down)`,
        source,
        log: this.limiter.justExceeded(source),
        retryAfterSeconds: this.limiter.retryAfterSeconds(source),
      };
    }
  }
}
