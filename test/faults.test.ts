// Faults: the server killed and restarted; the wire cut for longer (and for shorter) than the keepalive.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import net from 'node:net';
import { test } from 'node:test';
import { createNatTopology, LAN_ADDR, type NatTopology, PUB_ADDR, skippedWithoutNetns } from './lib/netns.js';
import { eventually, freePort, type Harness, sleep, withHarness } from './lib/processes.js';
import { echoRoundTrip, startEchoServer, tryConnect } from './lib/services.js';
import { PatternSource } from './lib/sha-stream.js';
import {
  issueToken,
  type RunningClient,
  type RunningServer,
  startClient,
  startServer,
  writeServerConfig,
} from './lib/tunnel.js';

test(
  'kill -9 the server and start it again on the same port: the tunnel serves again within 5 s',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const remotePort = await freePort();
      const first = await startServer(h, { allowPorts: [String(remotePort)] }, 'server#1');
      const token = await issueToken(first.config, { name: 'restart', ports: String(remotePort) });
      const client = await startClient(h, {
        server: first.url,
        token,
        proxies: [{ name: 'svc', local: `127.0.0.1:${echo.port}`, remotePort }],
        reconnectInitial: '100ms',
        reconnectMax: '500ms',
      });
      const publicPort = client.ports.get('svc')!;
      assert.equal(
        (await echoRoundTrip('127.0.0.1', publicPort, 10_000)).ok,
        true,
        'tunnel works before the kill',
      );

      const mark = client.proc.mark();
      first.proc.kill('SIGKILL');
      await first.proc.exited;
      assert.equal(
        await tryConnect('127.0.0.1', publicPort, 2000),
        'refused',
        'the public port died with the server',
      );
      const failed = await client.proc.waitForMsg('connect failed', 10_000, { from: mark });
      t.diagnostic(
        `client while the server is down: connect failed: ${failed.reason} (retry in ${failed.retry_ms} ms)`,
      );
      await sleep(1500); // let the client's backoff grow to its cap

      // Same secret, same ws port.
      const config = await writeServerConfig(h, {
        ...first.config.options,
        listen: `127.0.0.1:${first.port}`,
        secretFile: first.config.secretFile,
      });
      const second = await startServer(h, config, 'server#2');
      const upAt = Date.now();
      await eventually(
        'an echo through the restarted tunnel',
        async () => (await echoRoundTrip('127.0.0.1', publicPort, 10_000, { timeoutMs: 2000 })).ok,
        10_000,
        100,
      );
      const servedMs = Date.now() - upAt;
      t.diagnostic(`tunnel served again ${servedMs} ms after the restarted server was up`);
      assert.ok(servedMs < 5000, `served again after ${servedMs} ms (limit 5000)`);
      await client.proc.waitForMsg('session established', 1000, { from: mark });
      await second.proc.waitForMsg('proxy listening', 1000, { fields: { proxy: 'svc' } });
    }),
);

interface NatTunnel {
  topo: NatTopology;
  server: RunningServer;
  client: RunningClient;
  publicPort: number;
}

const PUBLIC_PORT = 8000;

async function natTunnel(
  h: Harness,
  heartbeat: { server: [string, string]; client: [string, string] },
  { udp = false } = {},
): Promise<NatTunnel> {
  const topo = await createNatTopology(h);
  const service = topo.spawnProbe(h, 'lan-service', topo.lan, [
    'echo-server',
    '--host',
    LAN_ADDR,
    '--port',
    '9000',
  ]);
  await service.waitForMsg('listening', 10_000);
  // With udp: a udp echo beside it, as proxy 'game' on the same public port number.
  if (udp) {
    const udpService = topo.spawnProbe(h, 'lan-udp-service', topo.lan, [
      'udp-echo-server',
      '--host',
      LAN_ADDR,
      '--port',
      '9001',
    ]);
    await udpService.waitForMsg('listening', 10_000);
  }
  const server = await startServer(h, {
    listen: `${PUB_ADDR}:7000`,
    proxyBind: '0.0.0.0',
    allowPorts: [String(PUBLIC_PORT)],
    heartbeatInterval: heartbeat.server[0],
    heartbeatTimeout: heartbeat.server[1],
    netns: topo.pub,
  });
  const token = await issueToken(server.config, { name: 'homelab', ports: String(PUBLIC_PORT) });
  const client = await startClient(h, {
    server: `ws://${PUB_ADDR}:7000/_porthole`,
    token,
    proxies: [
      { name: 'web', local: `${LAN_ADDR}:9000`, remotePort: PUBLIC_PORT },
      ...(udp
        ? [{ name: 'game', type: 'udp' as const, local: `${LAN_ADDR}:9001`, remotePort: PUBLIC_PORT }]
        : []),
    ],
    heartbeatInterval: heartbeat.client[0],
    heartbeatTimeout: heartbeat.client[1],
    reconnectInitial: '200ms',
    reconnectMax: '1s',
    netns: topo.lan,
  });
  return { topo, server, client, publicPort: client.ports.get('web')! };
}

/**
 * A game's player in pub: a datagram every 20 ms for `seconds`, each echoed by the udp service in lan; when
 * each echoed one was sent and when it came back (Date.now(), comparable across the namespaces).
 */
async function udpPlayer(
  n: NatTunnel,
  seconds: number,
): Promise<{ sent: number; replies: [number, number][] }> {
  const args = ['--bind', PUB_ADDR, '--host', PUB_ADDR, '--port', String(PUBLIC_PORT), '--interval', '20'];
  const result = await n.topo.probe(
    n.topo.pub,
    ['udp-stream', ...args, '--seconds', String(seconds)],
    40_000,
  );
  return result as { sent: number; replies: [number, number][] };
}

async function echoFromPub(n: NatTunnel, what: string): Promise<void> {
  const r = await n.topo.probe(n.topo.pub, [
    'echo',
    '--host',
    PUB_ADDR,
    '--port',
    String(n.publicPort),
    '--bytes',
    '100000',
    '--timeout',
    '5000',
  ]);
  assert.equal(r.ok, true, `${what}: ${JSON.stringify(r)}`);
}

test('link cut longer than the heartbeat timeout: the server frees the port; the client comes back by itself', {
  timeout: 90_000,
}, async (t) => {
  if (await skippedWithoutNetns(t)) return;
  await withHarness(t, async (h) => {
    const n = await natTunnel(h, { server: ['500ms', '2s'], client: ['500ms', '2s'] });
    await echoFromPub(n, 'tunnel works before the cut');

    const serverMark = n.server.proc.mark();
    const clientMark = n.client.proc.mark();
    await n.topo.linkDown();
    const downAt = Date.now();
    const gone = await n.server.proc.waitForMsg('client disconnected', 8000, { from: serverMark });
    const goneMs = Date.now() - downAt;
    t.diagnostic(`server noticed the dead client after ${goneMs} ms: ${gone.reason}`);
    // The port is freed: a connection in pub to it is refused (not accepted and dropped).
    const refused = await eventually(
      'the public port refuses connections',
      async () =>
        (
          await n.topo.probe(n.topo.pub, [
            'connect',
            '--host',
            PUB_ADDR,
            '--port',
            String(n.publicPort),
            '--timeout',
            '1000',
          ])
        ).result === 'refused',
      3000,
      200,
    );
    assert.ok(refused);
    const freedMs = Date.now() - downAt;
    await sleep(Math.max(0, 5000 - (Date.now() - downAt))); // keep the wire cut for 5 s in all

    await n.topo.linkUp();
    const upAt = Date.now();
    await n.client.proc.waitForMsg('proxy registered', 20_000, {
      from: clientMark,
      fields: { proxy: 'web' },
    });
    const backMs = Date.now() - upAt;
    await n.server.proc.waitForMsg('proxy listening', 5000, { from: serverMark, fields: { proxy: 'web' } });
    await echoFromPub(n, 'tunnel works after the link returns');
    t.diagnostic(
      `port refused ${freedMs} ms after the cut; client re-registered ${backMs} ms after the link returned`,
    );
    assert.equal(
      (await n.client.proc.settledLogsWithMsg('proxy refused', clientMark)).length,
      0,
      'no "proxy refused" on the way back',
    );
  });
});

test('link cut shorter than the heartbeat timeout: both ends log the stall, the session carries on', {
  timeout: 90_000,
}, async (t) => {
  if (await skippedWithoutNetns(t)) return;
  await withHarness(t, async (h) => {
    // 10 s timeouts: a stall is reported past min(3 s, half of 9.5 s), and a 4.5 s cut ends no session.
    const n = await natTunnel(h, { server: ['500ms', '10s'], client: ['500ms', '10s'] });
    await echoFromPub(n, 'tunnel works before the cut');
    const serverMark = n.server.proc.mark();
    const clientMark = n.client.proc.mark();
    await n.topo.linkDown();
    await sleep(4500);
    await n.topo.linkUp();
    const clientStall = await n.client.proc.waitForMsg(
      'session stalled: nothing from the server, then back',
      15_000,
      {
        from: clientMark,
      },
    );
    const serverStall = await n.server.proc.waitForMsg(
      'session stalled: nothing from the client, then back',
      15_000,
      {
        from: serverMark,
        fields: { client: 'homelab' },
      },
    );
    t.diagnostic(
      `a 4.5 s cut: the client heard nothing for ${clientStall.ms} ms, the server for ${serverStall.ms} ms`,
    );
    for (const [who, line] of [
      ['client', clientStall],
      ['server', serverStall],
    ] as const) {
      assert.ok(Number(line.ms) >= 3000 && Number(line.ms) < 10_000, `${who}: ${JSON.stringify(line)}`);
    }
    await echoFromPub(n, 'tunnel works after the link returns');
    assert.equal(
      (await n.client.proc.settledLogsWithMsg('session established', clientMark)).length,
      0,
      'no new session',
    );
    assert.equal(
      (await n.server.proc.settledLogsWithMsg('client disconnected', serverMark)).length,
      0,
      'no disconnect',
    );
  });
});

test('link cut shorter than the heartbeat timeout: a udp flow drops what it would send into the stopped link, instead of a stale burst after it', {
  timeout: 90_000,
}, async (t) => {
  if (await skippedWithoutNetns(t)) return;
  await withHarness(t, async (h) => {
    const n = await natTunnel(h, { server: ['10s', '30s'], client: ['10s', '30s'] }, { udp: true });
    // A game's player in pub: a datagram every 20 ms for 16 s, echoed by the service in lan. The link is
    // cut from 3 s to 8 s; TCP under the tunnel may take seconds more to send again after it returns.
    const player = udpPlayer(n, 16);
    await sleep(3000);
    const downAt = Date.now();
    await n.topo.linkDown();
    await sleep(5000);
    await n.topo.linkUp();
    const upAt = Date.now();
    const { sent, replies } = await player;
    const sentInCut = replies.filter(([sentAt]) => sentAt >= downAt && sentAt < upAt);
    const stale = sentInCut.filter(([, arrivedAt]) => arrivedAt >= upAt);
    const before = replies.filter(([sentAt]) => sentAt < downAt - 500);
    const last = replies.filter(([sentAt]) => sentAt >= upAt + 6000);
    const worstLate = Math.max(...stale.map(([sentAt, arrivedAt]) => arrivedAt - sentAt), 0);
    t.diagnostic(
      `${sent} sent, ${replies.length} echoed: ${before.length} before the cut, ${stale.length} of those sent during the 5 s cut ` +
        `came back after it (the latest ${worstLate} ms late), ${last.length} of those sent 6-8 s after it`,
    );
    // Counted from the player's first echoed datagram: a probe that starts late on a busy machine has less
    // time before the cut, which says nothing about the flow.
    const firstSent = replies[0]?.[0] ?? downAt;
    const couldSend = Math.floor((downAt - 500 - firstSent) / 20);
    assert.ok(
      couldSend >= 25 && before.length >= 0.8 * couldSend,
      `the flow worked before the cut: ${before.length} of the ${couldSend} sent from its first echo on came back`,
    );
    // Sent during the cut and carried at all: at most what went before the tunnel saw the link stopped
    // (1 s of silence, and a probe at most 0.5 s before it). Every one of them (~250) came back before.
    assert.ok(stale.length <= 100, `${stale.length} stale datagrams came back after the cut`);
    assert.ok(last.length >= 50, 'the flow works again after the link returns');
    assert.equal(
      (await n.client.proc.settledLogsWithMsg('session established', 0)).length,
      1,
      'one session throughout',
    );
  });
});

test("two link cuts 8 s apart: the second cut's datagrams are dropped too, not taken for slow answers after the first", {
  timeout: 90_000,
}, async (t) => {
  if (await skippedWithoutNetns(t)) return;
  await withHarness(t, async (h) => {
    const n = await natTunnel(h, { server: ['10s', '30s'], client: ['10s', '30s'] }, { udp: true });
    // A datagram every 20 ms for 25 s, echoed in lan; the link is cut for 5 s, back for 8 s (TCP under the
    // tunnel takes up to 3 s of them to send again), cut for 3 s.
    const player = udpPlayer(n, 25);
    await sleep(3000);
    await n.topo.linkDown();
    await sleep(5000);
    await n.topo.linkUp();
    await sleep(8000);
    const downAt = Date.now();
    await n.topo.linkDown();
    await sleep(3000);
    await n.topo.linkUp();
    const upAt = Date.now();
    const { sent, replies } = await player;
    const stale = replies.filter(
      ([sentAt, arrivedAt]) => sentAt >= downAt && sentAt < upAt && arrivedAt >= upAt,
    );
    const last = replies.filter(([sentAt]) => sentAt >= upAt + 2000);
    t.diagnostic(
      `${sent} sent, ${replies.length} echoed: ${stale.length} of those sent during the second cut (3 s, ~150) ` +
        `came back after it, ${last.length} of those sent from 2 s after it`,
    );
    assert.ok(last.length >= 50, 'the flow works again after the second cut');
    // The answers that waited out the first cut took 5 s and more: taken as the round trip to expect, they
    // made the second cut pass for a slow answer throughout (148 of ~150 came back stale; now 74-81 on a
    // quiet machine, those sent before the silence reached the limit, as in a single cut). The expectation
    // the first cut left decays with each probe answered in the 8 s between; a busy machine answers fewer
    // (104 once, while other builds ran): the bound sits between that and the failure.
    assert.ok(stale.length <= 125, `${stale.length} stale datagrams came back after the second cut`);
  });
});

test('half-open session: the reconnecting client takes its port over at once, no "already in use"', {
  timeout: 90_000,
}, async (t) => {
  if (await skippedWithoutNetns(t)) return;
  await withHarness(t, async (h) => {
    // The client notices a dead session within 2 s; the server would need 60 s. The old flow is
    // blackholed in the router (no FIN or RST can ever arrive), so when the client comes back on a new
    // flow the server still holds the old session: the new session must take the port over.
    const n = await natTunnel(h, { server: ['20s', '60s'], client: ['500ms', '2s'] });
    await echoFromPub(n, 'tunnel works before the blackhole');
    const peers = await n.topo.exec(n.topo.pub, 'ss', ['-Htn', 'state', 'established', '( sport = :7000 )']);
    const natPorts = [...peers.matchAll(/198\.18\.0\.2:(\d+)/g)].map((m) => Number(m[1]));
    assert.equal(natPorts.length, 1, `one control connection at the server:\n${peers}`);
    const serverMark = n.server.proc.mark();
    const clientMark = n.client.proc.mark();
    await n.topo.blackholeFlow(natPorts[0]!);
    const cutAt = Date.now();
    await n.client.proc.waitForMsg('session established', 15_000, { from: clientMark });
    await n.client.proc.waitForMsg('proxy registered', 5000, { from: clientMark, fields: { proxy: 'web' } });
    const backMs = Date.now() - cutAt;
    assert.equal(
      (await n.client.proc.settledLogsWithMsg('proxy refused', clientMark)).length,
      0,
      'no "proxy refused" on the way back',
    );
    await echoFromPub(n, 'tunnel works through the new session');
    t.diagnostic(
      `client took its port over ${backMs} ms after its old flow went dark (server heartbeat timeout 60 s)`,
    );
    assert.ok(backMs < 10_000, `took over after ${backMs} ms`);
    // The server had not noticed on its own: the takeover is what ended the old session.
    const disconnects = n.server.proc.logsWithMsg('client disconnected', serverMark);
    t.diagnostic(
      `server on the old session: ${disconnects.map((l) => l.reason).join('; ') || '(no disconnect logged)'}`,
    );
    assert.ok(
      disconnects.every((l) => !/keepalive|timeout/i.test(String(l.reason))),
      `the old session ended by takeover, not by the server's keepalive: ${JSON.stringify(disconnects)}`,
    );
  });
});

/**
 * socat as a visitor (not Node: libuv reports a reset that follows a partial read as a clean end). It keeps
 * its side open (stdin stays open), as a browser or a game client would.
 */
function socatDownload(h: Harness, port: number, onBytes: (received: number) => void) {
  const proc = spawn('socat', ['-t', '0.2', `TCP:127.0.0.1:${port}`, 'STDIO'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  h.onCleanup(() => proc.kill('SIGKILL'));
  const state = { received: 0, stderr: '' };
  proc.stdout.on('data', (chunk: Buffer) => {
    state.received += chunk.length;
    onBytes(state.received);
  });
  proc.stderr.on('data', (chunk: Buffer) => {
    state.stderr += chunk;
  });
  const exited = new Promise<number | null>((resolve) => proc.once('close', (code) => resolve(code)));
  return { proc, state, exited };
}

test(
  'kill -9 the client during downloads: a download the server had whole reaches the visitor whole',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const total = 30 * 1024 * 1024;
      const service = net.createServer({ allowHalfOpen: true }, (sock) => {
        sock.on('error', () => {});
        sock.resume();
        new PatternSource(total, 'download').pipe(sock);
      });
      service.listen(0, '127.0.0.1');
      await once(service, 'listening');
      h.onCleanup(() => service.close());
      const servicePort = (service.address() as net.AddressInfo).port;
      const remotePort = await freePort();
      const server = await startServer(h, { allowPorts: [String(remotePort)] });
      const token = await issueToken(server.config, { name: 'downloads', ports: String(remotePort) });
      const rounds: string[] = [];
      let wholeRounds = 0;
      // The kill lands at a different point of each download; near the end the client may have sent it all,
      // and the server then holds the rest, whole.
      for (const killAt of [0.5, 0.8, 0.9, 0.95, 0.98]) {
        const client = await startClient(
          h,
          {
            server: server.url,
            token,
            proxies: [{ name: 'dl', local: `127.0.0.1:${servicePort}`, remotePort }],
          },
          { name: `client@${killAt}` },
        );
        const mark = server.proc.mark();
        let killed = false;
        const visitor = socatDownload(h, client.ports.get('dl')!, (received) => {
          if (!killed && received >= total * killAt) {
            killed = true;
            client.proc.kill('SIGKILL');
          }
        });
        const code = await visitor.exited;
        await client.proc.exited;
        const closed = await server.proc.waitForMsg('connection closed', 10_000, {
          from: mark,
          fields: { proxy: 'dl' },
        });
        const { received, stderr } = visitor.state;
        rounds.push(
          `${killAt}: visitor exit ${code} after ${received} bytes; server ${closed.reason}, ${closed.bytes_out} out`,
        );
        // (Whether a short download ended in a reset cannot be told here: socat, like libuv, reports a
        // reset that comes with the last bytes as a clean end.) The server had it whole once the client's
        // FIN came: a kill between the last bytes and the FIN (a turn apart) leaves the download unfinished
        // for the server, which resets the visitor, as it must not call it complete.
        if (closed.bytes_out === total && closed.reason === 'tunnel session closed after the end') {
          assert.equal(
            received,
            total,
            `the server had it all: ${killAt} (${rounds.join('; ')}) ${stderr.trim()}`,
          );
          wholeRounds += 1;
        }
      }
      t.diagnostic(`${wholeRounds} rounds where the server had it all: ${rounds.join('; ')}`);
      assert.ok(wholeRounds >= 1, `no round where the server had the whole download: ${rounds.join('; ')}`);
    }),
);
