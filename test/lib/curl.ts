// curl as the visitor: status, headers and body of one request (never throws on HTTP errors).
import { run } from './processes.js';

export interface CurlResult {
  code: number | null;
  status: number;
  headers: Record<string, string>;
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
  const text = r.stdout;
  // With 100-continue or upgrades curl prints several heads; the last one precedes the body.
  let headEnd = text.indexOf('\r\n\r\n');
  let start = 0;
  while (headEnd >= 0 && /^HTTP\/[\d.]+ 1\d\d/.test(text.slice(start, headEnd))) {
    start = headEnd + 4;
    headEnd = text.indexOf('\r\n\r\n', start);
  }
  const head = headEnd >= 0 ? text.slice(start, headEnd) : '';
  const body = headEnd >= 0 ? text.slice(headEnd + 4) : '';
  const [statusLine = '', ...lines] = head.split('\r\n');
  const headers: Record<string, string> = {};
  for (const line of lines) {
    const colon = line.indexOf(':');
    if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
  }
  const status = Number(/^HTTP\/[\d.]+ (\d{3})/.exec(statusLine)?.[1] ?? 0);
  return { code: r.code, status, headers, body, stderr: r.stderr };
}
