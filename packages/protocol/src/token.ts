import { randomUUID } from 'node:crypto';
import { decodeJwt, errors, jwtVerify, SignJWT } from 'jose';
import { parseBandwidthLimit } from './bandwidth-limit.js';
import { PROXY_NAME, PROXY_NAME_RULE } from './control-messages.js';
import { hostGrantAllows } from './host-names.js';
import { PortRanges } from './port-ranges.js';

/** Client names follow the same rule as proxy names (they appear in logs and in the admin API). */
export const CLIENT_NAME = PROXY_NAME;
export const MIN_SECRET_LENGTH = 32;

export interface TokenGrants {
  /** Ports the client may open, "2222,8000-8099"; absent: any port the server's allow_ports permits. */
  ports?: string;
  /** Hostnames (exact or "*.suffix") the client may claim for http/tls proxies. */
  hosts?: string[];
  /** Private services the client may visit. */
  visit?: string[];
  /**
   * The server's cap on all of the client's public proxies together, each direction, as written ("10MB");
   * absent: the server's client_bandwidth_limit, if any. A server older than this ignores the claim.
   */
  bandwidth_limit?: string;
}

export interface TokenClaims extends TokenGrants {
  /** Client name. */
  sub: string;
  /** Token id, what `revoked_tokens` lists. */
  jti: string;
  iat: number;
  /** Expiry (seconds since the epoch); absent for tokens issued with `--expires never`. */
  exp?: number;
}

export interface IssueOptions extends TokenGrants {
  name: string;
  /** Lifetime in ms; `null` for a token that never expires. */
  expiresInMs: number | null;
  /** For tests: the issue time in ms since the epoch. */
  now?: number;
}

/** Why a token's port grant refuses `port` (an absent grant: any port), as the server refuses the proxy. */
export function portGrantRefusal(grant: PortRanges | undefined, port: number): string | undefined {
  return grant && !grant.contains(port) ? `port ${port} is outside the token's grant (${grant})` : undefined;
}

/** Why a token's host grant refuses `host` (normalized; an absent grant: any name), as the server says it. */
export function hostGrantRefusal(grant: readonly string[] | undefined, host: string): string | undefined {
  if (hostGrantAllows(grant, host)) return undefined;
  return `hostname ${host} is outside the token's grant (${(grant ?? []).join(',') || 'no hostnames'})`;
}

/** A token was refused; `message` is the short reason sent to the client and logged ("token expired"). */
export class TokenError extends Error {
  override readonly name = 'TokenError';

  /**
   * `whose`: the client name and token id of a token whose signature checked out (expired, revoked, not
   * yet valid), for the operator's log; never for one that could be anybody's forgery.
   */
  constructor(
    message: string,
    readonly whose?: { client: string; jti: string },
  ) {
    super(message);
  }
}

/** The name and id a verified payload carries, when it carries both as strings. */
function whoseOf(payload: Record<string, unknown>): { client: string; jti: string } | undefined {
  const { sub, jti } = payload;
  return typeof sub === 'string' && typeof jti === 'string' ? { client: sub, jti } : undefined;
}

function keyOf(secret: string): Uint8Array {
  if (secret.length < MIN_SECRET_LENGTH)
    throw new Error(`secret must be at least ${MIN_SECRET_LENGTH} characters`);
  return new TextEncoder().encode(secret);
}

function checkName(name: string): void {
  if (!CLIENT_NAME.test(name))
    throw new Error(`invalid client name "${name}": must be ${PROXY_NAME_RULE} characters`);
}

/** Signs a client token (HS256) carrying its grants. */
export async function issueToken(secret: string, opts: IssueOptions): Promise<string> {
  checkName(opts.name);
  const nowSeconds = Math.floor((opts.now ?? Date.now()) / 1000);
  const grants: TokenGrants = {};
  if (opts.ports !== undefined) grants.ports = PortRanges.parse(opts.ports).toString();
  if (opts.hosts !== undefined) grants.hosts = opts.hosts;
  if (opts.visit !== undefined) grants.visit = opts.visit;
  if (opts.bandwidth_limit !== undefined) {
    const limit = parseBandwidthLimit(opts.bandwidth_limit);
    if ('problem' in limit) throw new Error(`--bandwidth-limit ${limit.problem}`);
    grants.bandwidth_limit = limit.text;
  }
  const jwt = new SignJWT({ ...grants })
    .setProtectedHeader({ alg: 'HS256', typ: 'JWT' })
    .setSubject(opts.name)
    .setJti(randomUUID())
    .setIssuedAt(nowSeconds);
  if (opts.expiresInMs !== null) jwt.setExpirationTime(nowSeconds + Math.ceil(opts.expiresInMs / 1000));
  return jwt.sign(keyOf(secret));
}

export interface VerifyOptions {
  /** Token ids (`jti`) that are no longer accepted. */
  revoked?: ReadonlySet<string>;
  /** For tests: the current time in ms since the epoch. */
  now?: number;
}

const JWT_SHAPE = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/;

function isStringArray(value: unknown): value is string[] {
  return Array.isArray(value) && value.every((v) => typeof v === 'string');
}

/**
 * What a token says of itself, read without checking its signature (a client has no secret): enough to
 * warn before the server refuses it. Undefined when it is not a JWT at all; a claim of the wrong type is
 * left out, as the server would refuse it anyway.
 */
export function readUnverifiedClaims(jwt: string): Partial<TokenClaims> | undefined {
  const text = jwt.trim();
  if (!JWT_SHAPE.test(text)) return undefined;
  let payload: Record<string, unknown>;
  try {
    payload = decodeJwt(text);
  } catch {
    return undefined;
  }
  const claims: Partial<TokenClaims> = {};
  if (typeof payload.sub === 'string') claims.sub = payload.sub;
  if (typeof payload.jti === 'string') claims.jti = payload.jti;
  if (typeof payload.iat === 'number') claims.iat = payload.iat;
  if (typeof payload.exp === 'number') claims.exp = payload.exp;
  if (typeof payload.ports === 'string') claims.ports = payload.ports;
  if (isStringArray(payload.hosts)) claims.hosts = payload.hosts;
  if (isStringArray(payload.visit)) claims.visit = payload.visit;
  if (typeof payload.bandwidth_limit === 'string') claims.bandwidth_limit = payload.bandwidth_limit;
  return claims;
}

/**
 * Verifies a client token and returns its claims. Throws a TokenError whose message is one of:
 * "missing token", "malformed token", "bad signature", "token expired", "token not yet valid",
 * "token algorithm not accepted (HS256 only)", "token revoked".
 */
export async function verifyToken(
  secret: string,
  jwt: string | undefined,
  opts: VerifyOptions = {},
): Promise<TokenClaims> {
  if (jwt === undefined || jwt.trim() === '') throw new TokenError('missing token');
  if (!JWT_SHAPE.test(jwt.trim())) throw new TokenError('malformed token');
  let payload: Record<string, unknown>;
  try {
    const verified = await jwtVerify(jwt.trim(), keyOf(secret), {
      algorithms: ['HS256'],
      ...(opts.now === undefined ? {} : { currentDate: new Date(opts.now) }),
    });
    payload = verified.payload;
  } catch (err) {
    // A claim check comes after the signature's: its payload is the signer's.
    if (err instanceof errors.JWTExpired) throw new TokenError('token expired', whoseOf(err.payload));
    if (err instanceof errors.JWSSignatureVerificationFailed) throw new TokenError('bad signature');
    // Tokens signed elsewhere with the secret (a script, another JWT library) may carry nbf or another alg:
    // "malformed" would send their user to the token's format instead of a clock or the signing call.
    // Fixed texts only: the reason is a metrics label, so nothing from the token goes into it.
    if (err instanceof errors.JWTClaimValidationFailed && err.claim === 'nbf')
      throw new TokenError('token not yet valid', whoseOf(err.payload));
    if (err instanceof errors.JOSEAlgNotAllowed)
      throw new TokenError('token algorithm not accepted (HS256 only)');
    throw new TokenError('malformed token');
  }
  const { sub, jti, iat, exp, ports, hosts, visit, bandwidth_limit } = payload;
  if (typeof sub !== 'string' || !CLIENT_NAME.test(sub)) throw new TokenError('malformed token');
  if (typeof jti !== 'string' || typeof iat !== 'number') throw new TokenError('malformed token');
  if (exp !== undefined && typeof exp !== 'number') throw new TokenError('malformed token');
  if (ports !== undefined) {
    if (typeof ports !== 'string') throw new TokenError('malformed token');
    try {
      PortRanges.parse(ports);
    } catch {
      throw new TokenError('malformed token');
    }
  }
  if (hosts !== undefined && !isStringArray(hosts)) throw new TokenError('malformed token');
  if (visit !== undefined && !isStringArray(visit)) throw new TokenError('malformed token');
  if (
    bandwidth_limit !== undefined &&
    (typeof bandwidth_limit !== 'string' || 'problem' in parseBandwidthLimit(bandwidth_limit))
  )
    throw new TokenError('malformed token');
  if (opts.revoked?.has(jti)) throw new TokenError('token revoked', { client: sub, jti });
  const claims: TokenClaims = { sub, jti, iat };
  if (exp !== undefined) claims.exp = exp;
  if (ports !== undefined) claims.ports = ports;
  if (hosts !== undefined) claims.hosts = hosts;
  if (visit !== undefined) claims.visit = visit;
  if (bandwidth_limit !== undefined) claims.bandwidth_limit = bandwidth_limit as string;
  return claims;
}
