// curl as the visitor: status, headers and body of one request (never throws on HTTP errors).
import { type RunResult, run } from './processes.js';

export interface CurlResult {
  code: number | null;
  status: number;
  headers: Record<string, string>;
  /** The final head's fields in order, as sent: repeated ones kept, names in their own case. */
  fields: [string, string][];
  body: string;
  stderr: string;
}

/** `curl -sS -i ARGS URL`; the status and headers of the last response are parsed out. */
export async function curl(args: string[], url: string, timeoutMs = 20_000): Promise<CurlResult> {
  const r = await run(
    'curl',
    ['-sS', '-i', '--max-time', String(Math.ceil(timeoutMs / 1000)), ...args, url],
    {
      timeoutMs: timeoutMs + 5000,
    },
  );
  const heads = parseCurlHeads(r.stdout);
  const body = r.stdout.slice(heads.bodyStart);
  return {
    code: r.code,
    status: heads.status,
    headers: Object.fromEntries(heads.headers),
    fields: heads.fields,
    body,
    stderr: r.stderr,
  };
}

/**
 * A download counted, not kept: `curl -sS -o /dev/null -w '%{http_code} %{size_download}'` with `Host: host`,
 * so its stdout reads "200 4000" (status and body bytes) once the body has ended.
 */
export function curlDownloadSize(host: string, url: string, timeoutMs?: number): Promise<RunResult> {
  return run(
    'curl',
    ['-sS', '-o', '/dev/null', '-w', '%{http_code} %{size_download}', '-H', `Host: ${host}`, url],
    timeoutMs === undefined ? {} : { timeoutMs },
  );
}

export interface CurlHeads {
  /** every status line, 1xx included */
  statusLines: string[];
  /** the final (non-1xx) head's status, 0 when there is none */
  status: number;
  /** the final head's fields, names lowercased (of a repeated one, its last value) */
  headers: Map<string, string>;
  /** the final head's fields in order, repeated ones kept, names as sent */
  fields: [string, string][];
  /** where the body starts (the length of the text when no head was found) */
  bodyStart: number;
}

/**
 * The heads curl wrote (`-i` before the body, or `-D` into a file): with 100-continue or an upgrade there
 * are several, and the last one, the first that is not 1xx, precedes the body.
 */
export function parseCurlHeads(text: string): CurlHeads {
  const statusLines: string[] = [];
  let start = 0;
  let final = '';
  for (;;) {
    const end = text.indexOf('\r\n\r\n', start);
    if (end < 0 || !text.startsWith('HTTP/', start)) break;
    const head = text.slice(start, end);
    statusLines.push(head.split('\r\n')[0]!);
    start = end + 4;
    if (!/^HTTP\/[\d.]+ 1\d\d/.test(head)) {
      final = head;
      break;
    }
  }
  const fields: [string, string][] = [];
  for (const line of final.split('\r\n').slice(1)) {
    const colon = line.indexOf(':');
    if (colon > 0) fields.push([line.slice(0, colon), line.slice(colon + 1).trim()]);
  }
  const headers = new Map(fields.map(([name, value]) => [name.toLowerCase(), value]));
  const status = Number(/^HTTP\/[\d.]+ (\d{3})/.exec(final)?.[1] ?? 0);
  return { statusLines, status, headers, fields, bodyStart: statusLines.length > 0 ? start : text.length };
}
