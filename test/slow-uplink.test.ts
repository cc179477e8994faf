// A slow home uplink full of downloads: what else goes through the tunnel must not queue behind them.
// The client's side of a NAT the test builds gets 2 Mbit/s out (tbf) and the kernel setting the README
// recommends for such a link (tcp_notsent_lowat); 8, then 200, visitors download from the homelab meanwhile.

import assert from 'node:assert/strict';
import type { TestContext } from 'node:test';
import { test } from 'node:test';
import { createNatTopology, LAN_ADDR, PUB_ADDR, skippedWithoutNetns, slowLanUplink } from './lib/netns.js';
import { sleep, withHarness } from './lib/processes.js';
import { issueToken, startClient, startServer } from './lib/tunnel.js';

const RATE_BYTES_PER_S = 2_000_000 / 8;
/**
 * How long the downloads run. With 200, a round of turns (up to 16 KiB each, the WebSocket's least
 * allowance) is 3.2 MB, 13 s of the link: the last download's first bytes come that late, so the 200 run
 * long enough for every one of them to have had a turn with time to spare.
 */
const DOWNLOAD_SECONDS = { 8: 14, 200: 24 } as const;
/**
 * What a probe may wait at most: the link's own queues (tbf's 200 ms, the kernel's 16 KiB) and a margin; with
 * 200 downloads starting, 0.9-1.3 s while they start (tbf drops and TCP recovers).
 */
const LIMIT_MS = { 8: 1500, 200: 2500 } as const;

test(
  'slow uplink (2 Mbit/s) under 8 downloads: new connections, echoes and datagrams pass within 1.5 s',
  { timeout: 120_000 },
  (t) => underDownloads(t, 8),
);

// 200 streams each with a frame waiting: served by start alone, an echo tied with the bulk frames of the
// round under way and waited for all of them (5-14 s); the downloads must still all get their share.
test(
  'slow uplink (2 Mbit/s) under 200 downloads: every download moves, and echoes still pass within 2.5 s',
  { timeout: 120_000 },
  (t) => underDownloads(t, 200),
);

function underDownloads(t: TestContext, downloads: keyof typeof LIMIT_MS): Promise<void> {
  const limitMs = LIMIT_MS[downloads];
  const seconds = DOWNLOAD_SECONDS[downloads];
  return withHarness(t, async (h) => {
    if (await skippedWithoutNetns(t)) return;
    const topo = await createNatTopology(h);
    if (!(await slowLanUplink(t, topo))) return;

    const services = [
      ['echo-server', '9000'],
      ['udp-echo-server', '9001'],
      ['source-server', '9002'],
    ];
    for (const [mode, port] of services) {
      const service = topo.spawnProbe(h, mode!, topo.lan, [mode!, '--host', LAN_ADDR, '--port', port!]);
      await service.waitForMsg('listening', 10_000);
    }
    const server = await startServer(h, {
      listen: `${PUB_ADDR}:7000`,
      proxyBind: '0.0.0.0',
      allowPorts: ['8000-8002'],
      netns: topo.pub,
    });
    const token = await issueToken(server.config, { name: 'homelab', ports: '8000-8002' });
    await startClient(h, {
      server: `ws://${PUB_ADDR}:7000/_porthole`,
      token,
      proxies: [
        { name: 'echo', local: `${LAN_ADDR}:9000`, remotePort: 8000 },
        { name: 'game', type: 'udp', local: `${LAN_ADDR}:9001`, remotePort: 8001 },
        { name: 'files', local: `${LAN_ADDR}:9002`, remotePort: 8002 },
      ],
      netns: topo.lan,
    });

    const visitor = (args: string[]) => ['--host', PUB_ADDR, ...args];
    const sink = topo.probe(
      topo.pub,
      ['sink', ...visitor(['--port', '8002', '--seconds', String(seconds), '--count', String(downloads)])],
      60_000,
    );
    await sleep(4000); // the downloads fill every queue on the way
    const rttArgs = ['--count', '24', '--interval', '250', '--timeout', '15000'];
    const [tcp, udp, fresh] = await Promise.all([
      topo.probe(topo.pub, ['rtt', '--proto', 'tcp', ...visitor(['--port', '8000', ...rttArgs])], 60_000),
      topo.probe(topo.pub, ['rtt', '--proto', 'udp', ...visitor(['--port', '8001', ...rttArgs])], 60_000),
      sleep(3000).then(() =>
        topo.probe(
          topo.pub,
          ['rtt', '--proto', 'tcp', ...visitor(['--port', '8000', '--count', '1', '--timeout', '15000'])],
          60_000,
        ),
      ),
    ]);
    const done = await sink;
    const bytes = Number(done.bytes);
    t.diagnostic(`tcp echo through the busy tunnel: ${JSON.stringify(tcp)}`);
    t.diagnostic(`udp echo: ${JSON.stringify(udp)}`);
    t.diagnostic(`a new connection's connect and first echo: ${JSON.stringify(fresh)}`);
    t.diagnostic(
      `downloads: ${bytes} bytes in ${seconds} s, ${Math.round((bytes / seconds / RATE_BYTES_PER_S) * 100)}% of the link, the least one ${done.least} bytes`,
    );

    assert.equal(tcp.answered, 24, `every tcp echo answered: ${JSON.stringify(tcp)}`);
    assert.equal(udp.answered, 24, `every datagram answered: ${JSON.stringify(udp)}`);
    assert.ok(Number(tcp.max_ms) < limitMs, `tcp echo waited up to ${tcp.max_ms} ms`);
    assert.ok(Number(udp.max_ms) < limitMs, `udp echo waited up to ${udp.max_ms} ms`);
    assert.equal(fresh.answered, 1, `the new connection echoed: ${JSON.stringify(fresh)}`);
    assert.ok(Number(fresh.first_ms) < limitMs, `a new connection took ${fresh.first_ms} ms to echo`);
    // The bulk data did not pay for it: the downloads still fill the link.
    assert.ok(bytes > 0.7 * RATE_BYTES_PER_S * seconds, `downloads moved ${bytes} bytes in ${seconds} s`);
    assert.ok(Number(done.least) > 0, `every download moved; the least one ${done.least} bytes`);
  });
}
