// A udp flow drops what it would send while the tunnel's link seems stopped (nothing from the other end for a
// while a ping waits). A link that works must never look stopped: here a one-way flow (a visitor's metrics
// to a collector behind the client, nothing comes back) through the real CLIs, the client's WebSocket going
// through a relay that gives it a long round trip.

import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { test } from 'node:test';
import { startDelayRelay } from './lib/delay-relay.js';
import { freePort, sleep, withHarness } from './lib/processes.js';
import { issueToken, startClient, startServer } from './lib/tunnel.js';

const ADMIN_TOKEN = 'admin-token-for-udp-link-stopped';
const DATAGRAMS = 400;
const INTERVAL_MS = 20;

for (const [delayMs, jitterMs] of [
  [600, 0],
  [400, 300],
] as const) {
  test(`one-way udp flow over a working link (${delayMs} ms + up to ${jitterMs} ms each way): nothing dropped as link_stopped`, {
    timeout: 120_000,
  }, async (t) => {
    await withHarness(t, async (h) => {
      const collector = createSocket('udp4');
      let received = 0;
      collector.on('message', () => received++);
      await new Promise<void>((resolve) => collector.bind(0, '127.0.0.1', resolve));
      h.onCleanup(() => collector.close());
      const publicPort = await freePort();
      const server = await startServer(h, {
        allowPorts: [String(publicPort)],
        admin: { token: ADMIN_TOKEN },
      });
      const relay = await startDelayRelay(server.port, delayMs, jitterMs);
      h.onCleanup(() => relay.close());
      const token = await issueToken(server.config, { name: 'homelab', ports: String(publicPort) });
      const client = await startClient(
        h,
        {
          server: `ws://127.0.0.1:${relay.port}/_porthole`,
          token,
          proxies: [
            {
              name: 'metrics',
              type: 'udp',
              local: `127.0.0.1:${collector.address().port}`,
              remotePort: publicPort,
            },
          ],
        },
        { timeoutMs: 30_000 },
      );
      const visitor = createSocket('udp4');
      h.onCleanup(() => visitor.close());
      for (let i = 0; i < DATAGRAMS; i++) {
        visitor.send(`sample ${i}`, publicPort, '127.0.0.1');
        await sleep(INTERVAL_MS);
      }
      // Everything sent has had time to cross (a round trip is ~2 x delay + jitter).
      const deadline = Date.now() + 10_000;
      while (received < DATAGRAMS && Date.now() < deadline) await sleep(100);
      const metrics = await (
        await fetch(`${server.adminUrl}/metrics`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } })
      ).text();
      const linkStopped = /porthole_udp_datagrams_dropped_total\{[^}]*cause="link_stopped"[^}]*\} (\d+)/.exec(
        metrics,
      )?.[1];
      t.diagnostic(
        `${received} of ${DATAGRAMS} datagrams reached the collector; the server dropped ${linkStopped} as link_stopped`,
      );
      assert.equal(
        (await client.proc.settledLogsWithMsg('session established', 0)).length,
        1,
        'one session throughout',
      );
      assert.equal(received, DATAGRAMS, 'every datagram of the flow reached the collector');
    });
  });
}
