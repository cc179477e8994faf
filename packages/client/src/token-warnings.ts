// What can be said of the client's token before the server is asked: the client has no secret, so it reads
// the token unverified, and says only what the server would refuse (or end) for certain.
import {
  elementLabel,
  hostGrantRefusal,
  humanAge,
  PICKED_PORT,
  PortRanges,
  parseHostPattern,
  portGrantRefusal,
  readUnverifiedClaims,
  type TokenClaims,
  visitGrantAllows,
} from '@porthole/protocol';
import type { ProxyConfig } from './proxy-config.js';
import type { VisitorConfig } from './visitor-config.js';

/** A token this close to its expiry is worth a warning: the server ends the session when it expires. */
export const TOKEN_EXPIRY_WARNING_MS = 7 * 86_400_000;

const REISSUE = 'issue a new one with "porthole-server token issue"';

/** What `token` says of itself, or why the server will refuse it whatever it holds. */
function readToken(token: string, now: number): { claims: Partial<TokenClaims> } | { refusal: string } {
  const claims = readUnverifiedClaims(token);
  if (claims === undefined) {
    return {
      refusal: `is not a porthole token (a JWT: three base64url parts joined by dots, as "porthole-server token issue" prints it); the server will refuse it as "malformed token"`,
    };
  }
  if (claims.exp !== undefined && claims.exp * 1000 <= now) {
    const ago = humanAge(now - claims.exp * 1000);
    return {
      refusal: `expired at ${new Date(claims.exp * 1000).toISOString()}, ${ago} ago; the server will refuse it: ${REISSUE}`,
    };
  }
  return { claims };
}

/** Why the server will refuse `token` whatever it holds ("expired at ..."), or undefined. */
export function certainTokenRefusal(token: string, now = Date.now()): string | undefined {
  const read = readToken(token, now);
  return 'refusal' in read ? read.refusal : undefined;
}

/** Why a token's grant refuses some of a range's ports, in one line however many: "ports 27020-27030 are outside ...". */
function rangeGrantRefusal(grant: PortRanges | undefined, ports: PortRanges): string | undefined {
  if (ports.size === 1) return portGrantRefusal(grant, ports.at(0));
  const outside = grant === undefined ? '' : ports.outside(grant);
  if (outside === '') return undefined;
  if (outside === ports.toString()) return `ports ${ports} are all outside the token's grant (${grant})`;
  const which = /^\d+$/.test(outside) ? `port ${outside} is` : `ports ${outside} are`;
  return `${which} outside the token's grant (${grant}), of ${ports}`;
}

/**
 * Warnings about `token` (set by `tokenKey`: "token_file", "--token", ...) and what `proxies` ask of its
 * grants: not a JWT, expired or about to, a remote_port or hostname the server will refuse this token. `proxies`
 * are the [[proxies]] tables, a range's not yet expanded: its ports outside the grant are said in one line.
 * A subdomain is not checked: its full name depends on the server's subdomain_host. `labelOf` names a table
 * ("proxies[0] ("web")"; an included file's with its file).
 */
export function tokenWarnings(
  tokenKey: string,
  token: string,
  proxies: readonly ProxyConfig[],
  visitors: readonly VisitorConfig[] = [],
  labelOf: (kind: 'proxies' | 'visitors', index: number, table: unknown) => string = (kind, index, table) =>
    `${kind}${elementLabel(index, table)}`,
  now = Date.now(),
): string[] {
  const read = readToken(token, now);
  if ('refusal' in read) return [`${tokenKey}: the token ${read.refusal}`];
  const { claims } = read;
  const warnings: string[] = [];
  if (claims.exp !== undefined && claims.exp * 1000 - now <= TOKEN_EXPIRY_WARNING_MS) {
    const when = new Date(claims.exp * 1000).toISOString();
    warnings.push(
      `${tokenKey}: the token expires at ${when}, in ${humanAge(claims.exp * 1000 - now)}, and the server ends the session then: ${REISSUE}`,
    );
  }
  let portGrant: PortRanges | undefined;
  try {
    portGrant = claims.ports === undefined ? undefined : PortRanges.parse(claims.ports);
  } catch {
    // A grant the server cannot read refuses the whole token ("malformed token"), said at the dial.
  }
  for (const [index, proxy] of proxies.entries()) {
    const label = labelOf('proxies', index, proxy);
    // A port the server picks (0) is one the grant allows, or the server says there is none.
    const portRefused =
      proxy.remotePort === undefined || proxy.remotePort === PICKED_PORT
        ? undefined
        : proxy.portRange === undefined
          ? portGrantRefusal(portGrant, proxy.remotePort)
          : rangeGrantRefusal(portGrant, proxy.portRange.remote);
    const these = proxy.portRange === undefined ? 'this proxy' : 'the proxies of those ports';
    if (portRefused) warnings.push(`${label}.remote_port: ${portRefused}; the server will refuse ${these}`);
    for (const host of proxy.hosts ?? []) {
      let name: string;
      try {
        name = parseHostPattern(host);
      } catch {
        continue;
      }
      const refused = hostGrantRefusal(claims.hosts, name);
      if (refused) warnings.push(`${label}.hosts: ${refused}; the server will refuse this proxy`);
    }
  }
  for (const [index, visitor] of visitors.entries()) {
    if (visitGrantAllows(claims.visit, visitor.service)) continue;
    const granted = claims.visit?.length ? claims.visit.join(',') : 'no services: issue it with --visit';
    warnings.push(
      `${labelOf('visitors', index, visitor)}.service: ${visitor.service} is outside the token's visit grant (${granted}); the server will refuse its visits`,
    );
  }
  return warnings;
}
