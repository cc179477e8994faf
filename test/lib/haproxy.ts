// HAProxy as a local service that says what it was told of each connection: behind `accept-proxy`, the
// addresses of the PROXY header the client wrote in front of the visitor's bytes.
import assert from 'node:assert/strict';
import type { Harness } from './processes.js';
import { run } from './processes.js';
import { waitUntilAccepting } from './services.js';

/** What a reporting frontend answers, HAProxy's log-format words for the connection's two ends. */
export const PEER_REPORT = 'src=%[src] sport=%[src_port] dst=%[dst] dport=%[dst_port]';

export interface ReportingFrontend {
  name: string;
  /** The `bind` line's arguments: "127.0.0.1:PORT accept-proxy", "unix@PATH accept-proxy ssl crt FILE". */
  bind: string;
  /** The answer's body (a line), in HAProxy's log-format: usually some words and PEER_REPORT. */
  answer: string;
  /** Where it is ready: its port on 127.0.0.1 or its socket's path. */
  at: { port: number } | { path: string };
}

/** Runs haproxy with an HTTP frontend per entry, each answering 200 with its `answer`; waits for all of them. */
export async function startReportingHaproxy(h: Harness, frontends: ReportingFrontend[]): Promise<void> {
  const lines = [
    'defaults',
    '  mode http',
    '  timeout connect 5s',
    '  timeout client 10s',
    '  timeout server 10s',
  ];
  for (const frontend of frontends)
    lines.push(
      `frontend ${frontend.name}`,
      `  bind ${frontend.bind}`,
      `  http-request return status 200 content-type text/plain lf-string "${frontend.answer}\\n"`,
    );
  h.spawn('haproxy', 'haproxy', ['-db', '-f', await h.file('haproxy.cfg', `${lines.join('\n')}\n`)]);
  for (const { name, at } of frontends)
    await waitUntilAccepting('path' in at ? at : { host: '127.0.0.1', port: at.port }, `haproxy ${name}`);
}

/**
 * curl from 127.0.0.2, so the visitor's address differs from the client's own loopback connection: its exit
 * code and stderr, the body, and the port it connected from.
 */
export async function curlFromSecondLoopback(
  args: string[],
  url: string,
): Promise<{ code: number | null; stderr: string; body: string; localPort: string }> {
  const r = await run(
    'curl',
    ['-sS', '--max-time', '10', '--interface', '127.0.0.2', '-w', '|%{local_port}', ...args, url],
    {
      timeoutMs: 15_000,
    },
  );
  const [body = '', localPort = ''] = r.stdout.split('|');
  return { code: r.code, stderr: r.stderr, body: body.trim(), localPort };
}

/**
 * A visit from 127.0.0.2 to a reporting frontend behind the public `port`: asserts HAProxy was told that
 * visitor and that port (the answer starting with `prefix`), and gives the answer.
 */
export async function assertVisitorReported(port: number, prefix = ''): Promise<string> {
  const r = await curlFromSecondLoopback([], `http://127.0.0.1:${port}/`);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.body, `${prefix}src=127.0.0.2 sport=${r.localPort} dst=127.0.0.1 dport=${port}`);
  return r.body;
}
