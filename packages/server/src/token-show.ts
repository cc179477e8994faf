// `porthole-server token show`: what a token grants and whether this server would accept it, decided by the
// sign-in's own check (acceptToken) against the config file as it is now. Only claims under a signature that
// checked out are shown: a forgery's say whatever its writer wanted.
import { humanAge, PortRanges, readUnverifiedClaims, type TokenClaims, TokenError } from '@porthole/protocol';
import { acceptToken } from './auth.js';
import { ClientBandwidth } from './client-bandwidth.js';
import type { ServerConfig } from './config.js';

/** What `token show --json` prints. Claims and the server's view of them only when `verified`. */
export interface TokenReport {
  accepted: boolean;
  /** Why the server would refuse it, in its sign-in's words ("token expired"); null when accepted. */
  reason: string | null;
  /** The signature checked out with the server's secret, so the claims below are the issuer's. */
  verified: boolean;
  client?: string;
  id?: string;
  issued_at?: string | null;
  /** null: never. */
  expires_at?: string | null;
  /** Negative once expired; null: never. */
  expires_in_seconds?: number | null;
  /** The grants as the token writes them; null: the claim is absent (any port, any name, no visits). */
  ports?: string | null;
  hosts?: string[] | null;
  visit?: string[] | null;
  bandwidth_limit?: string | null;
  /** What this server's config makes of them. */
  server?: {
    /** The ports it may open here: its grant within allow_ports. */
    ports: string;
    /** Ports of its grant that allow_ports refuses; null: none. */
    ports_refused: string | null;
    /** False: no [http] or [https] port, so no name it claims is served here. */
    vhost_ports: boolean;
    /** The cap the server holds it to (the token's wins over client_bandwidth_limit); null: none. */
    bandwidth_limit: { rate: string; source: 'token' | 'server' } | null;
  };
}

/** The claims of a token the server verified, whether it then refused it (expired, revoked) or not. */
async function verifiedClaims(
  config: ServerConfig,
  jwt: string,
): Promise<{ claims: Partial<TokenClaims> | undefined; reason: string | null }> {
  try {
    return { claims: await acceptToken(jwt, () => config.auth), reason: null };
  } catch (err) {
    const refusal = err instanceof TokenError ? err : new TokenError('malformed token');
    // `whose` is set only once the signature checked out, so what the token says of itself is the issuer's.
    return { claims: refusal.whose ? readUnverifiedClaims(jwt) : undefined, reason: refusal.message };
  }
}

const isoOf = (seconds: number | undefined) =>
  seconds === undefined ? null : new Date(seconds * 1000).toISOString();

export async function showToken(config: ServerConfig, jwt: string, now = Date.now()): Promise<TokenReport> {
  const { claims, reason } = await verifiedClaims(config, jwt);
  const report: TokenReport = { accepted: reason === null, reason, verified: claims !== undefined };
  if (claims === undefined) return report;
  let grant: PortRanges | undefined;
  try {
    grant = claims.ports === undefined ? undefined : PortRanges.parse(claims.ports);
  } catch {
    // Only an expired or not yet valid token gets here with a grant the sign-in would call malformed.
  }
  const limit = new ClientBandwidth(claims.bandwidth_limit, () => config.clientBandwidthLimit).limit;
  const routing = config.routing;
  return {
    ...report,
    client: claims.sub ?? '',
    id: claims.jti ?? '',
    issued_at: isoOf(claims.iat),
    expires_at: isoOf(claims.exp),
    expires_in_seconds: claims.exp === undefined ? null : Math.round(claims.exp - now / 1000),
    ports: claims.ports ?? null,
    hosts: claims.hosts ?? null,
    visit: claims.visit ?? null,
    bandwidth_limit: claims.bandwidth_limit ?? null,
    server: {
      ports: (grant ? grant.intersect(config.allowPorts) : config.allowPorts).toString(),
      ports_refused: grant?.outside(config.allowPorts) || null,
      vhost_ports: routing?.httpListen !== undefined || routing?.https !== undefined,
      bandwidth_limit: limit === undefined ? null : { rate: limit.text, source: limit.source },
    },
  };
}

/** The report as a person reads it: a verdict line, then one line per claim (none for an unverified token). */
export function formatTokenReport(report: TokenReport): string {
  const lines = [report.accepted ? 'accepted: this server would accept it' : `refused: ${report.reason}`];
  const { server } = report;
  if (!report.verified || server === undefined) {
    if (report.reason === 'bad signature')
      lines.push("(not signed with this server's secret: its claims are unverified and not shown)");
    return `${lines.join('\n')}\n`;
  }
  const row = (label: string, value: string) => lines.push(`${`${label}:`.padEnd(11)}${value}`);
  row('client', report.client ?? '');
  const revoked = report.reason === 'token revoked';
  row(
    'id',
    `${report.id} (${revoked ? 'listed in' : 'what'} [auth] revoked_tokens${revoked ? '' : ' lists to revoke it'})`,
  );
  row('issued', report.issued_at ?? 'unknown');
  row('expires', expiry(report));
  row('ports', portsLine(report.ports ?? null, server));
  const vhostNote = server.vhost_ports ? '' : ' (this server has no [http] or [https] port to route them on)';
  row('hosts', `${report.hosts?.join(', ') ?? 'any name'}${vhostNote}`);
  row('visit', report.visit?.join(', ') || 'none');
  row('bandwidth', bandwidthLine(server.bandwidth_limit));
  return `${lines.join('\n')}\n`;
}

function expiry(report: TokenReport): string {
  const seconds = report.expires_in_seconds;
  if (report.expires_at === null || seconds === undefined || seconds === null) return 'never';
  const span = humanAge(Math.abs(seconds) * 1000);
  return `${report.expires_at} (${seconds > 0 ? `in ${span}` : `${span} ago`})`;
}

function portsLine(ports: string | null, server: NonNullable<TokenReport['server']>): string {
  if (ports === null) return `any port allow_ports permits (${server.ports})`;
  if (server.ports_refused === null) return ports;
  const left = server.ports === '' ? 'none' : server.ports;
  return `${ports}; allow_ports refuses ${server.ports_refused}, which leaves ${left}`;
}

function bandwidthLine(limit: NonNullable<TokenReport['server']>['bandwidth_limit']): string {
  if (limit === null) return 'none';
  return limit.source === 'token'
    ? `${limit.rate}/s each way, all proxies together (the token's)`
    : `${limit.rate}/s each way, all proxies together (the server's client_bandwidth_limit; the token sets none)`;
}
