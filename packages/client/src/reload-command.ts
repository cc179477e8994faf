// `porthole-client reload`: what SIGHUP does, asked of the running client over its [admin] endpoint, with
// the answer a signal cannot give: what changed, or why the running configuration was kept.
import type { HostPort } from '@porthole/protocol';
import { type AdminAnswer, askClientAdmin } from './admin-request.js';
import { describeConnectError } from './connect-error.js';
import type { ReloadSummary } from './reload.js';

/** Exit statuses of `porthole-client reload`, as `check`'s and `status`'s. */
export const RELOAD_EXIT = { reloaded: 0, unreachable: 1, invalid: 2 } as const;

type ReloadAnswer = ReloadSummary & { reloaded: true; warnings: string[] };

/** The answer's lists, each with what its names are. */
const CHANGES: [keyof ReloadSummary, string][] = [
  ['added', 'proxies added'],
  ['removed', 'proxies removed'],
  ['changed', 'proxies changed (registered again)'],
  ['local_changed', 'proxies with a new local service'],
  ['bandwidth_limit_changed', 'proxies with a new bandwidth_limit'],
  ['visitors_added', 'visitors added'],
  ['visitors_removed', 'visitors removed'],
  ['visitors_changed', 'visitors changed'],
  ['dial_proxy_changed', 'changed, for the next dial'],
];

/** The human form of a reload that was applied. */
export function formatReload(answer: ReloadAnswer): string {
  const lines = CHANGES.flatMap(([key, what]) => {
    const names = answer[key] as string[];
    return names.length === 0 ? [] : [`  ${what}: ${names.join(', ')}`];
  });
  if (answer.reconnect) lines.push('  server, token or CA changed: the session is dialled again');
  const head = lines.length === 0 ? 'reloaded: nothing changed' : 'reloaded:';
  const warnings = answer.warnings.map((w) => `warning: ${w}`);
  return `${[head, ...lines, ...warnings].join('\n')}\n`;
}

/** Asks the client at `admin` to reload; returns the exit status, having printed what happened. */
export async function requestReload(admin: HostPort, where: string, program: string): Promise<number> {
  let answer: AdminAnswer;
  try {
    answer = await askClientAdmin(admin, 'POST', '/api/reload');
  } catch (err) {
    process.stderr.write(
      `${program} reload: cannot reach the client at ${where}: ${describeConnectError(err as Error)}\n`,
    );
    return RELOAD_EXIT.unreachable;
  }
  const body = answer.body as Partial<ReloadAnswer> & { reason?: string; error?: string };
  if (answer.status === 200 && body.reloaded === true) {
    process.stdout.write(formatReload(body as ReloadAnswer));
    return RELOAD_EXIT.reloaded;
  }
  if (answer.status === 422) {
    process.stderr.write(`${program} reload: ${body.reason}\nthe running configuration is kept\n`);
    return RELOAD_EXIT.invalid;
  }
  // A client from before `reload` answers 404, or 405 to the POST.
  const hint =
    answer.status === 404 || answer.status === 405
      ? ' (a client older than this command: send it SIGHUP, e.g. systemctl reload porthole-client)'
      : '';
  process.stderr.write(
    `${program} reload: the client at ${where} answered HTTP ${answer.status}: ${body.reason ?? body.error ?? ''}${hint}\n`,
  );
  return RELOAD_EXIT.unreachable;
}
