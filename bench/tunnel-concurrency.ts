// `node bench/dist/run.js http-concurrency [--conns 32,64,128,1000] [--seconds 3] [--wss]`: wrk at saturation
// through porthole's tcp proxy and its http (vhost) proxy, and to the service directly, at several connection
// counts: where the suite's 32 connections would hide a cliff (a pool that reopens streams past an idle cap,
// a burst of connects or of unrouted connections reset past a per-proxy or per-source cap). Prints one table
// row per count and peer: req/s, p50, p99, wrk's socket errors and non-2xx responses. Peers run one after
// another; repeat the command for a spread, and compare rows of one run.
import { parseArgs } from 'node:util';
import { Harness } from '@porthole/e2e/lib/processes';
import { runWrk, type WrkFigures } from './tunnel-cases.js';
import { ensureOpenFiles } from './tunnel-idle.js';
import { directPeer, portholePeers } from './tunnel-peers.js';
import { startTargets } from './tunnel-suite.js';

interface Row extends WrkFigures {
  conns: number;
  peer: string;
}

function renderRows(rows: Row[]): string {
  const ms = (v: number | undefined) => (v === undefined ? '–' : v.toFixed(2));
  const lines = [
    '| conns | peer | req/s | p50 ms | p99 ms | socket errors | non-2xx |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...rows.map(
      (r) =>
        `| ${r.conns} | ${r.peer} | ${Math.round(r.rps)} | ${ms(r.p50Ms)} | ${ms(r.p99Ms)} | ${r.socketErrors} | ${r.non2xx} |`,
    ),
  ];
  return lines.join('\n');
}

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: { conns: { type: 'string' }, seconds: { type: 'string' }, wss: { type: 'boolean' } },
  });
  const counts = (values.conns ?? '32,64,128,1000').split(',').map(Number);
  if (counts.some((n) => !Number.isInteger(n) || n < 1 || n > 4000))
    throw new Error(`--conns: connection counts from 1 to 4000, comma-separated (got "${values.conns}")`);
  const seconds = Number(values.seconds ?? 3);
  const h = await Harness.create();
  const peerHarnesses: Harness[] = [];
  try {
    const { targets, pids } = await startTargets(h);
    const porthole = await portholePeers(targets, values.wss ? 'wss' : 'ws');
    for (const peer of porthole) if (peer.harness) peerHarnesses.push(peer.harness);
    // Each connection is a socket in wrk and in the service, two in each tunnel process.
    const needed = 2 * Math.max(...counts) + 1024;
    for (const pid of [process.pid, ...pids, ...porthole.flatMap((p) => p.roots.map((r) => r.pid))])
      await ensureOpenFiles(pid, needed);
    const peers = [directPeer(targets), ...porthole];
    const rows: Row[] = [];
    for (const conns of counts) {
      for (const peer of peers) {
        const row: Row = { conns, peer: peer.label, ...(await runWrk(peer, conns, seconds)) };
        rows.push(row);
        process.stderr.write(`c=${conns} ${peer.label}: ${Math.round(row.rps)} req/s\n`);
      }
    }
    process.stdout.write(`${renderRows(rows)}\n`);
  } finally {
    await Promise.all(peerHarnesses.map((ph) => ph.cleanup()));
    await h.cleanup();
  }
}
