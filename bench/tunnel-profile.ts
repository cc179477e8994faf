// `node bench/dist/run.js tunnel-profile [--reverse] [--wss] [--http] [--seconds N]`: the single-stream iperf3 case
// (or, with --http, wrk with 32 keep-alive connections through the http proxy) through porthole over ws (or wss), with
// porthole-server and porthole-client under V8's CPU profiler (cpu-profile-preload, through NODE_OPTIONS), then a
// self-time summary of both profiles. The .cpuprofile files stay in a temp dir for flame graphs
// (Chrome DevTools or speedscope open them).
import { mkdtemp, readdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Harness } from '@porthole/e2e/lib/processes';
import { renderProfileSummary, summariseProfileFile } from './cpu-profile-summary.js';
import { runWrk } from './tunnel-cases.js';
import { iperfClient } from './tunnel-iperf.js';
import { portholePeers } from './tunnel-peers.js';
import { startTargets } from './tunnel-suite.js';

const preload = fileURLToPath(new URL('./cpu-profile-preload.js', import.meta.url));

/** Run `start` with the profiler preloaded into every process the harness spawns meanwhile. */
async function withProfiler<T>(dir: string, start: () => Promise<T>): Promise<T> {
  const saved = { options: process.env.NODE_OPTIONS, dir: process.env.PORTHOLE_CPU_PROF_DIR };
  process.env.NODE_OPTIONS = `${saved.options ?? ''} --import=${preload}`.trim();
  process.env.PORTHOLE_CPU_PROF_DIR = dir;
  try {
    return await start();
  } finally {
    for (const [key, value] of [
      ['NODE_OPTIONS', saved.options],
      ['PORTHOLE_CPU_PROF_DIR', saved.dir],
    ] as const) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }
}

export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      reverse: { type: 'boolean' },
      wss: { type: 'boolean' },
      http: { type: 'boolean' },
      seconds: { type: 'string' },
    },
  });
  const seconds = Number(values.seconds ?? 8);
  const transport = values.wss ? 'wss' : 'ws';
  const profileDir = await mkdtemp(path.join(os.tmpdir(), 'porthole-cpuprof-'));
  const h = await Harness.create();
  const peerHarnesses: Harness[] = [];
  try {
    const { targets } = await startTargets(h);
    const peers = await withProfiler(profileDir, () => portholePeers(targets, transport));
    const [peer, httpPeer] = peers;
    if (!peer || !httpPeer) throw new Error('porthole did not start');
    if (peer.harness) peerHarnesses.push(peer.harness);
    if (values.http) {
      const figures = await runWrk(httpPeer, 32, seconds);
      process.stdout.write(
        `wrk -c32 -d${seconds}s through porthole ${transport}'s http proxy: ${figures.rps.toFixed(0)} req/s\n\n`,
      );
    } else {
      const figures = await iperfClient(peer.ports.iperf!, { seconds, reverse: values.reverse });
      process.stdout.write(
        `iperf3 ${values.reverse ? '-R ' : ''}-t ${seconds} through porthole ${transport}: ${figures.gbits.toFixed(2)} Gbit/s\n\n`,
      );
    }
    // SIGTERM: both drain and exit 0, which is when V8 writes the profile.
    for (const proc of peer.procs) await proc.stop(10_000);
    const files = await readdir(profileDir);
    for (const proc of peer.procs) {
      const file = files.find((f) => f === `CPU.${proc.pid}.cpuprofile` && f.endsWith('.cpuprofile'));
      if (!file) {
        process.stdout.write(`${proc.name}: no profile written (exit ${proc.exitCode ?? proc.exitSignal})\n`);
        continue;
      }
      const summary = await summariseProfileFile(path.join(profileDir, file));
      process.stdout.write(`${renderProfileSummary(`${proc.name} (${file})`, summary)}\n\n`);
    }
    process.stdout.write(`profiles kept in ${profileDir}\n`);
  } finally {
    await Promise.all(peerHarnesses.map((ph) => ph.cleanup()));
    await h.cleanup();
  }
}
