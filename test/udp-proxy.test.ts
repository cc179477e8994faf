// UDP through the tunnel with real peers: dig against dnsmasq, iperf3 -u both ways, and a UDP echo with
// several senders (replies reach the right one), max_flows, and idle timeouts seen on both ends.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { dig, startDnsmasq } from './lib/dnsmasq.js';
import { startUdpEcho, udpClient } from './lib/http-backend.js';
import { startIperfServer } from './lib/iperf3.js';
import {
  createLoopbackNamespace,
  probe,
  skippedWithoutNetns,
  spawnProbe,
  UNREACHABLE_LOOPBACK_ADDR,
} from './lib/netns.js';
import { freePort, type LogLine, run, sleep, waitFor, withHarness } from './lib/processes.js';
import { issueRoutedToken, startRoutedClient, startRoutedServer, startUdpTunnel } from './lib/routing.js';
import { patternBytes, sha256Hex } from './lib/sha-stream.js';
import { portOf } from './lib/tunnel.js';

test(
  "dig through a udp proxy gets dnsmasq's answers; each query is a flow that ends when idle",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const dnsPort = await startDnsmasq(h);
      const { server, client, remotePort } = await startUdpTunnel(h, {
        client: 'dns',
        server: { top: { udp_idle_timeout: '1s' } },
        proxy: { name: 'dns', local: `127.0.0.1:${dnsPort}` },
      });
      assert.equal(portOf(client.registered.get('dns')?.remote_addr), remotePort);
      const names = ['a.test.example', 'b.c.test.example', 'test.example'];
      for (let i = 0; i < 12; i++) {
        const name = names[i % names.length]!;
        const r = await dig(remotePort, name, { timeSeconds: 3 });
        assert.equal(r.stdout.trim(), '10.1.2.3', `dig ${name}: ${r.stdout} ${r.stderr}`);
      }
      // A name dnsmasq has no answer for gets its NXDOMAIN/REFUSED, proving it is dnsmasq talking.
      const other = await dig(remotePort, 'example.org', { timeSeconds: 3, short: false });
      assert.match(other.stdout, /status: (REFUSED|NXDOMAIN)/, other.stdout);

      // Each dig's query is one datagram each way, ended by the 1 s idle timeout on both ends. Digs usually
      // get a source port each, so a flow each; when the kernel hands two digs the same port within the
      // idle timeout, both queries share one flow, so count datagrams, not flows.
      const datagramsIn = (lines: LogLine[]) => lines.reduce((sum, l) => sum + Number(l.datagrams_in), 0);
      for (const [side, proc] of [
        ['server', server.proc],
        ['client', client.proc],
      ] as const) {
        await proc.waitForLog(
          () => datagramsIn(proc.logsWithMsg('udp flow closed')) >= 13,
          10_000,
          0,
          `13 queries in "udp flow closed" lines on the ${side}`,
        );
      }
      const serverLines = server.proc.logsWithMsg('udp flow closed');
      assert.equal(datagramsIn(serverLines), 13);
      assert.ok(serverLines.length >= 7, `${serverLines.length} flows for 13 digs`);
      assert.ok(serverLines.every((l) => l.datagrams_in === l.datagrams_out && l.dropped === 0));
      assert.ok(serverLines.some((l) => l.reason === 'idle timeout' || l.reason === 'client ended the flow'));
      t.diagnostic(`server flow lines: ${serverLines.length}, first: ${JSON.stringify(serverLines[0])}`);
    }),
);

interface IperfUdp {
  bitsPerSecond: number;
  lostPercent: number;
  packets: number;
}

async function iperfUdp(port: number, reverse: boolean): Promise<IperfUdp> {
  const args = [
    '-c',
    '127.0.0.1',
    '-p',
    String(port),
    '-u',
    '-b',
    '20M',
    '-l',
    '1400',
    '-t',
    '3',
    '-J',
    '--connect-timeout',
    '5000',
  ];
  if (reverse) args.push('-R');
  const r = await run('iperf3', args, { timeoutMs: 30_000 });
  const json = JSON.parse(r.stdout || '{}') as {
    error?: string;
    end?: { sum?: { bits_per_second: number; lost_percent: number; packets: number } };
  };
  if (json.error || r.code !== 0 || !json.end?.sum)
    throw new Error(`iperf3 ${args.join(' ')}: code ${r.code} ${json.error ?? ''} ${r.stderr}`);
  return {
    bitsPerSecond: json.end.sum.bits_per_second,
    lostPercent: json.end.sum.lost_percent,
    packets: json.end.sum.packets,
  };
}

test('a pause of the server (256 game players opening their flows at once stalled it 200 ms) does not lose the datagrams sent meanwhile', {
  timeout: 60_000,
}, async (t) => {
  // The proxy socket asks for a 4 MiB receive buffer, which the kernel caps at net.core.rmem_max.
  const rmemMax = Number((await readFile('/proc/sys/net/core/rmem_max', 'utf8')).trim());
  if (rmemMax < 2 * 1024 * 1024) {
    t.skip(`net.core.rmem_max is ${rmemMax}: the kernel keeps the proxy socket's receive buffer small`);
    return;
  }
  await withHarness(t, async (h) => {
    const echo = await startUdpEcho('e');
    // The echo takes the burst at once, so what it misses is the tunnel's.
    echo.socket.setRecvBufferSize(8 * 1024 * 1024);
    const { server, remotePort } = await startUdpTunnel(h, {
      client: 'players',
      proxy: { name: 'game', local: `127.0.0.1:${echo.port}` },
    });
    const players = await Promise.all(Array.from({ length: 8 }, () => udpClient()));
    // Each player's flow is open before the pause: what follows is only the socket's buffer.
    for (const p of players) p.socket.send(Buffer.from('hello'), remotePort, '127.0.0.1');
    await waitFor('every flow answered', () => players.every((p) => p.replies.length === 1), 10_000);
    const pid = server.proc.pid!;
    const perPlayer = 250;
    process.kill(pid, 'SIGSTOP');
    try {
      for (let i = 0; i < perPlayer; i++) {
        for (const p of players) p.socket.send(patternBytes(100, `${i}`), remotePort, '127.0.0.1');
      }
      await sleep(200);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    const expected = players.length * (1 + perPlayer);
    await waitFor(`${expected} datagrams at the echo`, () => echo.received >= expected, 5_000).catch(
      () => {},
    );
    assert.equal(
      echo.received,
      expected,
      `${expected - echo.received} of ${players.length * perPlayer} datagrams sent while the server was paused were lost`,
    );
    for (const p of players) p.socket.close();
    await echo.close();
  });
});

test(
  'iperf3 -u (20 Mbit/s of 1400-byte datagrams, both directions) through udp + tcp proxies on one port',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const remotePort = await freePort();
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, { name: 'iperf', ports: String(remotePort) });
      for (const reverse of [false, true]) {
        const iperf = await startIperfServer(h, `iperf3-server${reverse ? ' -R' : ''}`);
        const iperfPort = iperf.port;
        // iperf3 runs its control connection over TCP and the test over UDP, on the same port number.
        const client = await startRoutedClient(h, {
          server: server.url,
          token,
          name: `client${reverse ? ' -R' : ''}`,
          proxies: [
            { name: 'ctl', type: 'tcp', local: `127.0.0.1:${iperfPort}`, remote_port: remotePort },
            { name: 'data', type: 'udp', local: `127.0.0.1:${iperfPort}`, remote_port: remotePort },
          ],
        });
        const result = await iperfUdp(remotePort, reverse);
        t.diagnostic(
          `iperf3 -u${reverse ? ' -R' : ''}: ${(result.bitsPerSecond / 1e6).toFixed(1)} Mbit/s, ${result.packets} packets, ${result.lostPercent.toFixed(2)}% lost`,
        );
        assert.ok(result.packets > 1000, `only ${result.packets} packets`);
        assert.ok(result.lostPercent < 5, `${result.lostPercent}% of UDP datagrams lost`);
        await iperf.proc.exited;
        await client.proc.stop();
      }
    }),
);

test(
  'replies go to the right sender; max_flows bounds flows; big datagrams keep their boundaries',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('echo');
      h.onCleanup(() => echo.close());
      const { server, client, remotePort } = await startUdpTunnel(h, {
        client: 'udp',
        proxy: { name: 'echo', local: `127.0.0.1:${echo.port}`, max_flows: 3, udp_idle_timeout: '1500ms' },
      });
      const senders = await Promise.all([udpClient(), udpClient(), udpClient(), udpClient()]);
      h.onCleanup(() => {
        for (const s of senders) s.socket.close();
      });
      const [a, b, c, d] = senders as [
        (typeof senders)[0],
        (typeof senders)[0],
        (typeof senders)[0],
        (typeof senders)[0],
      ];
      for (let round = 0; round < 5; round++) {
        for (const [i, s] of [a, b, c].entries()) s.socket.send(`s${i}-r${round}`, remotePort, '127.0.0.1');
        await waitFor(
          `round ${round} replies`,
          () => [a, b, c].every((s) => s.replies.length === round + 1),
          5000,
        );
      }
      for (const [i, s] of [a, b, c].entries()) {
        assert.deepEqual(
          s.replies.map((r) => r.toString()),
          [0, 1, 2, 3, 4].map((round) => `echo|s${i}-r${round}`),
          `sender ${i} got exactly its own replies, in order`,
        );
      }
      // A fourth sender is over max_flows: dropped (and counted), not queued.
      d.socket.send('over the limit', remotePort, '127.0.0.1');
      await sleep(500);
      assert.equal(d.replies.length, 0);
      await server.proc.waitForMsg('udp flow limit reached: datagrams from new senders dropped', 5000, {
        fields: { proxy: 'echo', max_flows: 3 },
      });

      // Once the three flows are idle for 1.5 s they end on both ends, and the fourth sender gets in.
      await server.proc.waitForLog(
        () => server.proc.logsWithMsg('udp flow closed').length >= 3,
        10_000,
        0,
        'flows end',
      );
      await client.proc.waitForLog(
        () => client.proc.logsWithMsg('udp flow closed').length >= 3,
        10_000,
        0,
        'flows end (client)',
      );
      const ended = [
        ...server.proc.logsWithMsg('udp flow closed'),
        ...client.proc.logsWithMsg('udp flow closed'),
      ];
      assert.ok(
        ended.some((l) => l.reason === 'idle timeout'),
        JSON.stringify(ended),
      );
      assert.ok(
        ended.every((l) => l.datagrams_in === 5 && l.datagrams_out === 5),
        JSON.stringify(ended),
      );
      d.socket.send('now there is room', remotePort, '127.0.0.1');
      await waitFor('the fourth sender is answered', () => d.replies.length === 1, 5000);
      assert.equal(d.replies[0]!.toString(), 'echo|now there is room');

      // Datagram boundaries survive, up to near the IPv4 maximum; zero-length datagrams too.
      const sizes = [1, 1400, 9000, 60_000, 0];
      for (const size of sizes) a.socket.send(patternBytes(size, `dgram-${size}`), remotePort, '127.0.0.1');
      await waitFor('big datagram replies', () => a.replies.length === 5 + sizes.length, 10_000);
      const got = a.replies.slice(5);
      for (const [i, size] of sizes.entries()) {
        assert.equal(got[i]!.length, size + 5, `datagram ${i} of ${size} bytes came back whole`);
        assert.equal(sha256Hex(got[i]!.subarray(5)), sha256Hex(patternBytes(size, `dgram-${size}`)));
      }
      // One local socket per flow: a's first flow ended, so its datagrams now come from a new flow's socket.
      // Usually 5 addresses; 4 when the kernel hands a new flow's socket a port an ended flow just freed.
      assert.ok(echo.senders.size >= 4, `the service saw ${echo.senders.size} local sockets`);
    }),
);

test(
  'a udp proxy whose local address cannot be connected ends each flow with a warning; one whose service is down warns once per flow; the client keeps serving',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('echo');
      h.onCleanup(() => echo.close());
      const [badPort, goodPort, downPort, closedLocalPort] = [
        await freePort(),
        await freePort(),
        await freePort(),
        await freePort(),
      ];
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, {
        name: 'udp-bad',
        ports: `${badPort},${goodPort},${downPort}`,
      });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          // connect() to a broadcast address without SO_BROADCAST fails (EACCES); nothing is sent.
          { name: 'bad', type: 'udp', local: '255.255.255.255:9', remote_port: badPort },
          { name: 'echo', type: 'udp', local: `127.0.0.1:${echo.port}`, remote_port: goodPort },
          // Nothing listens there: each datagram is answered by ICMP port unreachable.
          {
            name: 'down',
            type: 'udp',
            local: `127.0.0.1:${closedLocalPort}`,
            remote_port: downPort,
            udp_idle_timeout: '2s',
          },
        ],
      });
      const sender = await udpClient();
      h.onCleanup(() => sender.socket.close());
      sender.socket.send('to nowhere', badPort, '127.0.0.1');
      const failed = await client.proc.waitForMsg('local connect failed', 10_000, {
        fields: { proxy: 'bad' },
      });
      t.diagnostic(`local connect failed: ${failed.reason}`);
      const closed = await client.proc.waitForMsg('udp flow closed', 10_000, { fields: { proxy: 'bad' } });
      assert.match(String(closed.reason), /^local connect: /);
      sender.socket.send('still there?', goodPort, '127.0.0.1');
      await waitFor('the echo through the other proxy', () => sender.replies.length === 1, 5000);
      assert.equal(sender.replies[0]!.toString(), 'echo|still there?');

      for (let i = 0; i < 4; i++) {
        sender.socket.send(`anyone? ${i}`, downPort, '127.0.0.1');
        await sleep(100);
      }
      const refused = await client.proc.waitForMsg('local connect failed', 10_000, {
        fields: { proxy: 'down' },
      });
      assert.match(String(refused.reason), /^ECONNREFUSED/);
      assert.equal(refused.local, `127.0.0.1:${closedLocalPort}`);
      const downFlow = await client.proc.waitForMsg('udp flow closed', 10_000, { fields: { proxy: 'down' } });
      assert.equal(downFlow.datagrams_in, 4, 'every datagram was sent, the flow outlived the refusals');
      assert.ok(Number(downFlow.dropped) >= 1, `refusals counted: ${downFlow.dropped}`);
      assert.equal(
        (await client.proc.settledLogsWithMsg('local connect failed')).filter((l) => l.proxy === 'down')
          .length,
        1,
        'one line per flow, not per datagram',
      );
      assert.ok(client.proc.alive, 'the client is still running');
    }),
);

test(
  'at max_flows a new sender takes the place of a flow silent for a second (a resolver asks from a new port each time); busy flows keep theirs',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('echo');
      h.onCleanup(() => echo.close());
      const { server, remotePort } = await startUdpTunnel(h, {
        client: 'dns',
        proxy: { name: 'dns', local: `127.0.0.1:${echo.port}`, max_flows: 3, udp_idle_timeout: '60s' },
      });
      const senders = await Promise.all(Array.from({ length: 6 }, () => udpClient()));
      h.onCleanup(() => {
        for (const s of senders) s.socket.close();
      });
      const [busy, quiet1, quiet2, new1, new2, late] = senders as [
        (typeof senders)[0],
        (typeof senders)[0],
        (typeof senders)[0],
        (typeof senders)[0],
        (typeof senders)[0],
        (typeof senders)[0],
      ];
      const ask = async (s: (typeof senders)[0], what: string) => {
        const before = s.replies.length;
        s.socket.send(what, remotePort, '127.0.0.1');
        await waitFor(`the answer to ${what}`, () => s.replies.length > before, 5000);
      };
      for (const [s, name] of [
        [busy, 'busy'],
        [quiet1, 'quiet1'],
        [quiet2, 'quiet2'],
      ] as const)
        await ask(s, name);
      // One flow keeps talking; the other two fall silent for more than a second.
      let ticks = 0;
      const talking = setInterval(() => {
        ticks += 1;
        busy.socket.send(`tick${ticks}`, remotePort, '127.0.0.1');
      }, 150);
      h.onCleanup(() => clearInterval(talking));
      await sleep(1400);
      // Two new senders at the limit: each takes the place of a silent flow, and is answered. Each asks twice:
      // a flow that was a single answered query gives its place after 100 ms, one that talked more does not.
      await ask(new1, 'new1');
      await ask(new1, 'new1 again');
      await ask(new2, 'new2');
      await ask(new2, 'new2 again');
      // A third at once: every flow has talked more than once within the second, so its datagram is dropped.
      late.socket.send('late', remotePort, '127.0.0.1');
      await server.proc.waitForMsg('udp flow limit reached: datagrams from new senders dropped', 5000, {
        fields: { proxy: 'dns', max_flows: 3 },
      });
      assert.equal(late.replies.length, 0);
      clearInterval(talking);
      await waitFor('the busy sender answered each tick', () => busy.replies.length === 1 + ticks, 5000);

      const evicted = server.proc
        .logsWithMsg('udp flow closed')
        .filter((l) => /max_flows reached/.test(String(l.reason)))
        .map((l) => l.remote_addr)
        .sort();
      const addr = (s: (typeof senders)[0]) => `127.0.0.1:${s.socket.address().port}`;
      assert.deepEqual(evicted, [addr(quiet1), addr(quiet2)].sort(), 'the two silent flows gave way');
      // The evicted senders are not shut out: asking again opens a flow, by the same rule.
      await sleep(1100);
      await ask(quiet1, 'quiet1 again');
    }),
);

test(
  'at max_flows a flow that was one answered query (a dig) gives its place after 100 ms of silence: lookups a few hundred ms apart are all answered',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const dnsPort = await startDnsmasq(h);
      const { server, remotePort } = await startUdpTunnel(h, {
        client: 'dns',
        proxy: { name: 'dns', local: `127.0.0.1:${dnsPort}`, max_flows: 2, udp_idle_timeout: '60s' },
      });
      // With the 1 s rule alone the third dig, well within a second of the first, found both flows taken.
      const started = performance.now();
      for (let i = 0; i < 6; i++) {
        const r = await dig(remotePort, `q${i}.test.example`, { timeSeconds: 2 });
        assert.equal(r.stdout.trim(), '10.1.2.3', `dig ${i}: ${r.stdout} ${r.stderr}`);
        await sleep(150);
      }
      t.diagnostic(`6 digs in ${Math.round(performance.now() - started)} ms`);
      const gaveWay = () =>
        server.proc.logsWithMsg('udp flow closed').filter((l) => /one query answered/.test(String(l.reason)));
      // Digs 3 to 6 each took a lookup's place (fewer only if the kernel gave two digs the same port).
      await server.proc.waitForLog(() => gaveWay().length >= 3, 5000, 0, 'flows that gave way to a newcomer');
      assert.ok(gaveWay().every((l) => l.datagrams_in === 1 && l.datagrams_out === 1));
      assert.equal(
        server.proc.logsWithMsg('udp flow limit reached: datagrams from new senders dropped').length,
        0,
      );
    }),
);

test(
  'a reload that raises udp_max_flows applies to a udp proxy already registered',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('echo');
      h.onCleanup(() => echo.close());
      const { server, remotePort } = await startUdpTunnel(h, {
        client: 'udp-reload',
        server: { top: { udp_max_flows: 1 } },
        proxy: { name: 'echo', local: `127.0.0.1:${echo.port}` },
      });
      const [a, b] = [await udpClient(), await udpClient()];
      h.onCleanup(() => {
        a.socket.close();
        b.socket.close();
      });
      a.socket.send('first', remotePort, '127.0.0.1');
      await waitFor('the first sender’s echo', () => a.replies.length === 1, 5000);
      // The first flow stays busy throughout, so that it never gives its place to the second sender: only
      // the raised limit can let that one in.
      const busy = setInterval(() => a.socket.send('busy', remotePort, '127.0.0.1'), 200);
      h.onCleanup(() => clearInterval(busy));
      b.socket.send('over the limit', remotePort, '127.0.0.1');
      await sleep(1500);
      assert.equal(b.replies.length, 0, 'a second sender is over udp_max_flows = 1');

      const mark = server.proc.mark();
      const text = await readFile(server.config.configPath, 'utf8');
      assert.match(text, /udp_max_flows = 1\n/);
      await writeFile(server.config.configPath, text.replace('udp_max_flows = 1\n', 'udp_max_flows = 4\n'));
      server.proc.kill('SIGHUP');
      await server.proc.waitForMsg('config reloaded', 10_000, { from: mark });
      b.socket.send('after the reload', remotePort, '127.0.0.1');
      await waitFor('the second sender’s echo after the reload', () => b.replies.length === 1, 5000);
      assert.equal(b.replies[0]!.toString(), 'echo|after the reload');
      clearInterval(busy);
      assert.equal(server.proc.logsWithMsg('udp flow closed').length, 0, 'no flow was evicted');
    }),
);

test('a visitor the server cannot answer (its sends fail with EACCES): each reply is counted dropped, not sent, and the server carries on', {
  timeout: 60_000,
}, async (t) => {
  if (await skippedWithoutNetns(t)) return;
  await withHarness(t, async (h) => {
    const ns = await createLoopbackNamespace(h);
    const echo = spawnProbe(h, 'udp-echo', ns, ['udp-echo-server', '--host', '127.0.0.1', '--port', '9053']);
    await echo.waitForMsg('listening', 10_000);
    const { server, remotePort } = await startUdpTunnel(h, {
      client: 'unanswerable',
      netns: ns,
      proxy: { name: 'echo', local: '127.0.0.1:9053', udp_idle_timeout: '1s' },
    });
    const send = (from: string, count: number) =>
      probe(ns, [
        'udp-send',
        '--bind',
        from,
        '--host',
        '127.0.0.1',
        '--port',
        String(remotePort),
        '--count',
        String(count),
        '--timeout',
        '1000',
      ]);
    const unanswerable = await send(UNREACHABLE_LOOPBACK_ADDR, 5);
    assert.equal(unanswerable.replies, 0, 'no reply can reach the unanswerable visitor');
    const answered = await send('127.0.0.1', 3);
    assert.equal(answered.replies, 3, 'a visitor the server can reach is answered all along');

    const closed = await server.proc.waitForMsg('udp flow closed', 10_000, {
      fields: { proxy: 'echo', remote_addr: String(unanswerable.from) },
    });
    t.diagnostic(`the unanswerable flow: ${JSON.stringify(closed)}`);
    assert.equal(closed.datagrams_in, 5);
    assert.equal(closed.datagrams_out, 0, 'replies that could not be sent are not counted as sent');
    assert.equal(closed.bytes_out, 0);
    assert.equal(closed.dropped, 5, 'each reply that could not be sent is counted dropped');
  });
});
