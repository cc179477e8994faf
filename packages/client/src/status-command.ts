import {
  expandEnvironmentInTree,
  formatHostPort,
  type HostPort,
  hostPortField,
  humanAge,
  readTomlFile,
  UsageError,
  validateConfig,
} from '@porthole/protocol';
import { z } from 'zod';
import { askClientAdmin } from './admin-request.js';
import type { ClientStatus } from './session-status.js';

/** Exit statuses of `porthole-client status`. */
export const STATUS_EXIT = {
  established: 0,
  unreachable: 1,
  notEstablished: 3,
  proxiesNotServed: 5,
} as const;

/**
 * 0 only when the session is up, no proxy is refused or closed and every visitor listens: a monitoring check
 * that runs `status` must notice a proxy the server will not serve (a port taken, outside the token's grant),
 * or a visitor whose local port was taken, not just a session that is down.
 */
export function statusExitCode(status: ClientStatus): number {
  if (status.state !== 'established') return STATUS_EXIT.notEstablished;
  const unserved =
    status.proxies.some((p) => p.state === 'refused' || p.state === 'closed' || p.state === 'withdrawn') ||
    (status.visitors ?? []).some((v) => !v.listening);
  return unserved ? STATUS_EXIT.proxiesNotServed : STATUS_EXIT.established;
}

/**
 * The admin address from client.toml without validating the rest: `status` must work for a user who
 * cannot read the token (e.g. a config that points at ${CREDENTIALS_DIRECTORY}).
 */
export function adminAddressOf(file: string): HostPort {
  const raw = readTomlFile(file);
  const admin = typeof raw === 'object' && raw !== null ? (raw as { admin?: unknown }).admin : undefined;
  const config = validateConfig(
    file,
    // Only [admin] expanded: a ${CREDENTIALS_DIRECTORY} elsewhere is unset outside the service.
    { admin: expandEnvironmentInTree(file, admin, process.env, 'admin') },
    z.object({ admin: z.looseObject({ listen: hostPortField({ allowZero: false }) }).optional() }),
  );
  if (!config.admin) {
    throw new UsageError(
      `${file} has no [admin] table; add [admin] listen = "127.0.0.1:7401" and reload the client`,
    );
  }
  return config.admin.listen;
}

/** GET /api/status from a running client. */
export async function fetchStatus(admin: HostPort): Promise<ClientStatus> {
  const { status, body } = await askClientAdmin(admin, 'GET', '/api/status');
  if (status !== 200) throw new Error(`HTTP ${status} from ${formatHostPort(admin.host, admin.port)}`);
  return body as ClientStatus;
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows
    .map((r) =>
      r
        .map((cellText, i) => (i === r.length - 1 ? cellText : cellText.padEnd(widths[i]!)))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** Where visitors reach a registered proxy: an http or tls proxy's URLs, else its public address. */
function registeredDetail(p: ClientStatus['proxies'][number]): string {
  if (p.service !== undefined) return `visitors ask for ${p.service}`;
  return p.urls?.length ? p.urls.join(' ') : `public ${p.remote_addr ?? '?'}`;
}

/** "on"; "off"; or "off (server older)" for one that asked and runs plain (its JSON says why). */
function compressionCell(p: ClientStatus['proxies'][number]): string {
  if (p.compression) return 'on';
  return p.compression_unavailable === undefined ? 'off' : 'off (server older)';
}

/**
 * http and tls proxies have names, not ports; 0 is a port the server has not picked yet. A proxy bound on an
 * address of its own (remote_bind) shows it: "127.0.0.1:8080" is not reached from outside.
 */
function remotePortCell(port: number | undefined, bind: string | undefined): string {
  if (port === undefined) return '-';
  const cell = port === 0 ? 'any (server picks)' : String(port);
  if (bind === undefined) return cell;
  return port === 0 ? `${cell} on ${bind}` : formatHostPort(bind, port);
}

/** "(via http://proxy.corp:3128, from env HTTPS_PROXY)", "(direct, from env NO_PROXY)": `status` and `check`. */
export function describeRoute(route: { via?: string; via_from?: string }): string {
  const from = route.via_from ? `, from ${route.via_from}` : '';
  return route.via === undefined || route.via === 'direct' ? `(direct${from})` : `(via ${route.via}${from})`;
}

/** The human form of a status: the session line, then one row per proxy. */
export function formatStatus(status: ClientStatus, now = Date.now()): string {
  const age = humanAge(now - Date.parse(status.since));
  // Through a proxy only: "direct" is what a user expects, and the proxy is what a failing dial may be about.
  const via = status.via === undefined || status.via === 'direct' ? '' : ` ${describeRoute(status)}`;
  const lines = [`server:   ${status.server}${via}`];
  if (status.state === 'established') {
    lines.push(`session:  established as "${status.client}" (session ${status.session_id}), for ${age}`);
  } else {
    // Between attempts the client waits (retry_at); without one, an attempt is under way or it is stopping.
    const retry =
      status.retry_at !== undefined
        ? `, next attempt in ${humanAge(Date.parse(status.retry_at) - now + 999)}`
        : status.state === 'stopping'
          ? ''
          : ', connecting now';
    lines.push(`session:  ${status.state} for ${age}${retry}`);
    if (status.last_error) lines.push(`last error: ${status.last_error}`);
  }
  if (status.token_expires_at !== undefined) {
    const left = Date.parse(status.token_expires_at) - now;
    lines.push(
      left > 0
        ? `token:    expires ${status.token_expires_at}, in ${humanAge(left)}`
        : `token:    expired ${status.token_expires_at}, ${humanAge(-left)} ago`,
    );
  }
  if (status.server_bandwidth_limit !== undefined)
    lines.push(
      `limit:    ${status.server_bandwidth_limit}/s each way, all proxies together (set by the server)`,
    );
  lines.push(`open connections: ${status.open_connections}`, '');
  if (status.proxies.length === 0) {
    lines.push('no proxies configured');
  } else {
    // A column for limits only where some proxy has one: most configs have none.
    const limits = status.proxies.some((p) => p.bandwidth_limit !== undefined);
    const groups = status.proxies.some((p) => p.group !== undefined);
    // Likewise compression: a column once some proxy runs compressed or asked to.
    const compression = status.proxies.some((p) => p.compression || p.compression_unavailable);
    const rows = [
      [
        'PROXY',
        'TYPE',
        'LOCAL',
        'REMOTE PORT',
        ...(groups ? ['GROUP'] : []),
        'STATE',
        'OPEN',
        ...(limits ? ['LIMIT'] : []),
        ...(compression ? ['COMPRESSION'] : []),
        'DETAIL',
      ],
    ];
    for (const p of status.proxies) {
      rows.push([
        p.name,
        p.type,
        p.local,
        p.private ? 'private' : remotePortCell(p.remote_port, p.remote_bind),
        ...(groups ? [p.group ?? '-'] : []),
        p.health === undefined ? p.state : `${p.state} (${p.health})`,
        String(p.open_connections),
        ...(limits ? [p.bandwidth_limit === undefined ? '-' : `${p.bandwidth_limit}/s`] : []),
        ...(compression ? [compressionCell(p)] : []),
        p.state === 'registered' ? registeredDetail(p) : (p.reason ?? ''),
      ]);
    }
    lines.push(table(rows));
  }
  // Older clients' answers have no visitors.
  if (status.visitors?.length) {
    const rows = [['VISITOR', 'TYPE', 'SERVICE', 'BIND', 'STATE', 'OPEN', 'DETAIL']];
    for (const v of status.visitors)
      rows.push([
        v.name,
        v.type ?? 'tcp',
        v.service,
        v.bind,
        v.listening ? 'listening' : 'not listening',
        String(v.open_connections),
        v.reason ?? '',
      ]);
    lines.push('', table(rows));
  }
  return `${lines.join('\n')}\n`;
}
