// The client's side of udp flows, with the real CLIs and real UDP sockets: its connect failures (a name
// that does not resolve, no file descriptor left) share the tcp proxies' rate limit, its status counts open
// flows, a reload that moves a udp proxy's local reaches a sender that never falls silent, a datagram its
// socket refused to send is counted once, as dropped, an ICMP host-prohibited is one line and the flow
// carries on, and a proxy's flows share one bound on what they queue for a slow tunnel.
import assert from 'node:assert/strict';
import { readdirSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { startUdpEcho, udpClient } from './lib/http-backend.js';
import { createLoopbackNamespace, probe, skippedWithoutNetns } from './lib/netns.js';
import {
  clientBin,
  eventually,
  freePort,
  procMemory,
  run,
  runOk,
  sleep,
  waitFor,
  withHarness,
} from './lib/processes.js';
import { issueRoutedToken, startRoutedClient, startRoutedServer, startUdpTunnel } from './lib/routing.js';

type Sender = Awaited<ReturnType<typeof udpClient>>;

test(
  'a udp proxy whose local name does not resolve: at most 20 "local connect failed" lines per 10 s, the rest summed up',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const local = 'nonexistent.invalid:31201';
      const { client, remotePort } = await startUdpTunnel(h, {
        client: 'udp-nxdomain',
        proxy: { name: 'nowhere', local },
      });
      // A flow per sender, and each flow's connect fails (the name does not resolve).
      const senders: Sender[] = await Promise.all(Array.from({ length: 30 }, () => udpClient()));
      h.onCleanup(() => {
        for (const s of senders) s.socket.close();
      });
      for (const [i, s] of senders.entries()) s.socket.send(`probe ${i}`, remotePort, '127.0.0.1');
      await client.proc.waitForLog(
        () => client.proc.logsWithMsg('udp flow closed').filter((l) => l.proxy === 'nowhere').length >= 30,
        20_000,
        0,
        '30 "udp flow closed" lines for proxy nowhere',
      );
      // The message udp flows used before they shared the tcp proxies' budget counts too.
      const failures = [
        ...(await client.proc.settledLogsWithMsg('local connect failed')),
        ...client.proc.logsWithMsg('udp local connect failed'),
      ].filter((l) => l.proxy === 'nowhere');
      assert.equal(failures.length, 20, `${failures.length} connect failure lines for 30 flows`);
      const first = failures[0]!;
      assert.equal(first.local, local);
      assert.match(String(first.remote_addr), /^127\.0\.0\.1:\d+$/);
      assert.ok(Number(first.conn) >= 1, JSON.stringify(first));
      assert.match(String(first.reason), /ENOTFOUND|EAI_AGAIN/);
      const summary = await client.proc.waitForMsg('local connect failures not logged one by one', 5000, {
        fields: { proxy: 'nowhere' },
      });
      assert.ok(Number(summary.unlogged) >= 1, JSON.stringify(summary));
      assert.ok(client.proc.alive);
    }),
);

test(
  "porthole-client status counts a udp proxy's open flows in its open_connections and in the total",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('echo');
      h.onCleanup(() => echo.close());
      const adminListen = `127.0.0.1:${await freePort()}`;
      const { client, remotePort } = await startUdpTunnel(h, {
        client: 'udp-status',
        adminListen,
        proxy: { name: 'echo', local: `127.0.0.1:${echo.port}`, udp_idle_timeout: '1500ms' },
      });
      const status = async () => {
        const r = await run(clientBin, ['status', '--admin', adminListen, '--json'], { timeoutMs: 15_000 });
        assert.equal(r.code, 0, r.stderr);
        const view = JSON.parse(r.stdout) as {
          open_connections: number;
          proxies: { name: string; open_connections: number }[];
        };
        return {
          total: view.open_connections,
          echo: view.proxies.find((p) => p.name === 'echo')?.open_connections,
        };
      };
      const [a, b] = [await udpClient(), await udpClient()];
      h.onCleanup(() => {
        a.socket.close();
        b.socket.close();
      });
      // Two senders keep their flows busy (well inside the idle timeout) while the status is read.
      let sent = 0;
      const talk = () => {
        sent += 1;
        for (const s of [a, b]) s.socket.send(`tick ${sent}`, remotePort, '127.0.0.1');
      };
      talk();
      await waitFor('both senders answered', () => a.replies.length === 1 && b.replies.length === 1, 5000);
      const ticking = setInterval(talk, 300);
      h.onCleanup(() => clearInterval(ticking));
      const open = await status();
      clearInterval(ticking);
      assert.deepEqual(open, { total: 2, echo: 2 }, 'two open flows');
      // Silent, both flows end by the idle timeout, and the count goes back to 0.
      await client.proc.waitForLog(
        () => client.proc.logsWithMsg('udp flow closed').length >= 2,
        10_000,
        0,
        'both flows closed on the client',
      );
      assert.deepEqual(await status(), { total: 0, echo: 0 }, 'no open flows');
    }),
);

test(
  "client SIGHUP: a udp proxy's new local reaches a sender that keeps sending (its flow ends, the next datagram opens one); a removed proxy's flows end",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [before, after, other] = [
        await startUdpEcho('before'),
        await startUdpEcho('after'),
        await startUdpEcho('other'),
      ];
      h.onCleanup(() => Promise.all([before.close(), after.close(), other.close()]));
      const [wgPort, otherPort] = [await freePort(), await freePort()];
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, { name: 'udp-relocal', ports: `${wgPort},${otherPort}` });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          // The default idle timeout (60 s): a sender with a keepalive never lets its flow end by itself.
          { name: 'wg', type: 'udp', local: `127.0.0.1:${before.port}`, remote_port: wgPort },
          { name: 'other', type: 'udp', local: `127.0.0.1:${other.port}`, remote_port: otherPort },
        ],
      });
      const peer = await udpClient();
      h.onCleanup(() => peer.socket.close());
      let sent = 0;
      const keepalive = setInterval(() => {
        sent += 1;
        if (sent <= 200) peer.socket.send(`keepalive ${sent}`, wgPort, '127.0.0.1');
      }, 100);
      h.onCleanup(() => clearInterval(keepalive));
      const replyFrom = (tag: string) => peer.replies.some((r) => r.toString().startsWith(`${tag}|`));
      await waitFor('replies from the first local', () => replyFrom('before'), 5000);

      const mark = client.proc.mark();
      const text = await readFile(client.configPath, 'utf8');
      await writeFile(client.configPath, text.replace(`127.0.0.1:${before.port}`, `127.0.0.1:${after.port}`));
      client.proc.kill('SIGHUP');
      const reloaded = await client.proc.waitForMsg('config reloaded', 10_000, { from: mark });
      assert.deepEqual(reloaded.local_changed, ['wg']);
      await waitFor(
        'replies from the new local, the sender never having paused',
        () => replyFrom('after'),
        5000,
      );
      const moved = await client.proc.waitForMsg('udp flow closed', 5000, {
        from: mark,
        fields: { proxy: 'wg' },
      });
      assert.equal(moved.reason, 'local changed by a reload');
      const receivedBefore = before.received;
      await eventually('the sender keeps reaching the new local', async () => after.received >= 3, 5000);
      assert.equal(before.received, receivedBefore, 'nothing more reaches the old local');

      // Removed by a reload: the flow open now ends at once, not after its idle timeout.
      const removeMark = client.proc.mark();
      const withoutWg = (await readFile(client.configPath, 'utf8'))
        .split('\n\n')
        .filter((part) => !part.includes('name = "wg"'))
        .join('\n\n');
      await writeFile(client.configPath, withoutWg);
      client.proc.kill('SIGHUP');
      const removed = await client.proc.waitForMsg('config reloaded', 10_000, { from: removeMark });
      assert.deepEqual(removed.removed, ['wg']);
      const ended = await client.proc.waitForMsg('udp flow closed', 5000, {
        from: removeMark,
        fields: { proxy: 'wg' },
      });
      t.diagnostic(`a removed proxy's flow: ${ended.reason}`);
      clearInterval(keepalive);
      await server.proc.waitForMsg('udp flow closed', 5000, { fields: { proxy: 'wg', conn: ended.conn } });
    }),
);

test(
  'a datagram whose send the local socket refuses (ECONNREFUSED) is counted as dropped, not in datagrams_in',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const closedPort = await freePort();
      const { server, client, remotePort } = await startUdpTunnel(h, {
        client: 'udp-down',
        proxy: { name: 'down', local: `127.0.0.1:${closedPort}`, udp_idle_timeout: '1s' },
      });
      const sender = await udpClient();
      h.onCleanup(() => sender.socket.close());
      // A burst: the client sends them back to back, so an ICMP refusal of one fails the send of the next
      // (that one is not sent), alternately.
      const burst = 40;
      for (let i = 0; i < burst; i++)
        sender.socket.send(`dgram ${String(i).padStart(2, '0')}`, remotePort, '127.0.0.1');
      const serverFlow = await server.proc.waitForMsg('udp flow closed', 10_000, {
        fields: { proxy: 'down' },
      });
      assert.equal(serverFlow.datagrams_in, burst, 'every datagram reached the client');
      const flow = await client.proc.waitForMsg('udp flow closed', 10_000, { fields: { proxy: 'down' } });
      t.diagnostic(JSON.stringify(flow));
      const sentLocally = Number(flow.datagrams_in);
      assert.ok(sentLocally < burst, `datagrams_in ${sentLocally}: the refused sends are not counted in`);
      assert.ok(sentLocally >= 1, 'the first datagram was sent');
      assert.ok(
        Number(flow.dropped) >= burst - sentLocally,
        `each unsent datagram is dropped: ${flow.dropped}`,
      );
      assert.equal(flow.bytes_in, sentLocally * 'dgram 00'.length, 'bytes_in counts the sent ones only');
    }),
);

test(
  "a udp proxy's flows share one 16 MiB bound on what they queue for a tunnel that takes nothing (before: 512 KiB each, 80 MiB for 200 flows)",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const service = await startUdpEcho('svc');
      h.onCleanup(() => service.close());
      const { server, client, remotePort } = await startUdpTunnel(h, {
        client: 'udp-chatty',
        proxy: { name: 'chatty', local: `127.0.0.1:${service.port}`, udp_idle_timeout: '4s' },
      });
      // 200 visitors, a flow each: the service learns the address of each flow's local socket.
      const visitors: Sender[] = await Promise.all(Array.from({ length: 200 }, () => udpClient()));
      h.onCleanup(() => {
        for (const v of visitors) v.socket.close();
      });
      for (const v of visitors) v.socket.send('hi', remotePort, '127.0.0.1');
      await waitFor('every visitor answered', () => visitors.every((v) => v.replies.length >= 1), 10_000);
      assert.equal(service.senders.size, visitors.length);

      // The tunnel takes nothing more (the server is stopped) while the service talks to every flow:
      // 300 datagrams of 1400 bytes each, 80 MiB in all, each flow's share under its own 512 KiB bound.
      const flows = [...service.senders].map((address) => {
        const colon = address.lastIndexOf(':');
        return { host: address.slice(0, colon), port: Number(address.slice(colon + 1)) };
      });
      const payload = Buffer.alloc(1400, 0x61);
      server.proc.kill('SIGSTOP');
      try {
        for (let round = 0; round < 300; round++) {
          for (const { host, port } of flows) service.socket.send(payload, port, host);
          // The client reads its sockets between rounds, as with a service that talks steadily.
          await sleep(5);
        }
        await sleep(1000);
        t.diagnostic(`client rss: ${(procMemory('VmRSS', client.proc.pid!) / 2 ** 20).toFixed(0)} MiB`);
      } finally {
        server.proc.kill('SIGCONT');
      }

      await client.proc.waitForLog(
        () => client.proc.logsWithMsg('udp flow closed').length >= flows.length,
        30_000,
        0,
        `${flows.length} "udp flow closed" lines on the client`,
      );
      const closed = client.proc.logsWithMsg('udp flow closed');
      const taken = closed.reduce((sum, l) => sum + Number(l.bytes_out), 0);
      const dropped = closed.reduce((sum, l) => sum + Number(l.dropped), 0);
      t.diagnostic(`taken into the tunnel: ${(taken / 2 ** 20).toFixed(1)} MiB; dropped: ${dropped}`);
      // 16 MiB of queue (13.5 MiB of payload, the rest overhead), and what the kernel's socket buffers
      // between client and stopped server took (some 8 MiB here).
      assert.ok(
        taken < 40 * 2 ** 20,
        `${(taken / 2 ** 20).toFixed(1)} MiB taken for a tunnel that took nothing`,
      );
      assert.ok(dropped > 0, 'the rest was dropped');
    }),
);

test('a local service whose host refuses with ICMP host-prohibited (firewalld): one line, and the flow carries on, not a flow and a line per datagram', {
  timeout: 60_000,
}, async (t) => {
  if (await skippedWithoutNetns(t)) return;
  await withHarness(t, async (h) => {
    const ns = await createLoopbackNamespace(h);
    // firewalld's default for a port it has not opened: the datagram arrives, an ICMP error answers it.
    const localPort = 9054;
    await runOk(
      'iptables',
      [
        ...['-A', 'INPUT', '-p', 'udp', '--dport', String(localPort)],
        ...['-j', 'REJECT', '--reject-with', 'icmp-host-prohibited'],
      ],
      { netns: ns },
    );
    const { server, client, remotePort } = await startUdpTunnel(h, {
      client: 'udp-prohibited',
      netns: ns,
      proxy: { name: 'fw', local: `127.0.0.1:${localPort}`, udp_idle_timeout: '2s' },
    });
    // A game client: one source port, a datagram every 100 ms.
    const sent = await probe(ns, [
      ...['udp-send', '--host', '127.0.0.1', '--port', String(remotePort)],
      ...['--count', '10', '--interval', '100', '--timeout', '100'],
    ]);
    assert.equal(sent.replies, 0);
    // The sender's flow ends 2 s after its last datagram (by either end's idle timer), 2.9 s after its first.
    await server.proc.waitForLog(
      (l) => l.msg === 'udp flow closed' && l.proxy === 'fw' && Number(l.ms) >= 2000,
      10_000,
      0,
      'the flow closed after outliving the ICMP errors',
    );
    const flows = await client.proc.settledLogsWithMsg('udp flow closed');
    t.diagnostic(`client flows: ${flows.length}, first: ${JSON.stringify(flows[0])}`);
    const lines = [
      ...client.proc.logsWithMsg('local connect failed'),
      ...client.proc.logsWithMsg('udp local error'),
    ];
    assert.equal(flows.length, 1, 'one flow for the one sender');
    assert.equal(server.proc.logsWithMsg('udp flow closed').length, 1);
    assert.equal(lines.length, 1, 'one line for the flow');
    assert.equal(lines[0]!.msg, 'local connect failed');
    assert.match(String(lines[0]!.reason), /^EHOSTUNREACH /);
    const flow = flows[0]!;
    assert.ok(['idle timeout', 'server ended the flow'].includes(String(flow.reason)), JSON.stringify(flow));
    assert.equal(flow.datagrams_in, 10, 'every datagram was sent to the service');
  });
});

test(
  'a client out of file descriptors: each udp flow that cannot get a socket is a local connect failure, at most 20 lines per 10 s, not a warning each',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('echo');
      h.onCleanup(() => echo.close());
      const { client, remotePort } = await startUdpTunnel(h, {
        client: 'udp-emfile',
        proxy: { name: 'echo', local: `127.0.0.1:${echo.port}` },
      });
      const pid = client.proc.pid!;
      const nofile = async (soft: number | string) =>
        runOk('prlimit', ['--pid', String(pid), `--nofile=${soft}:`]);
      const hard = (
        await runOk('prlimit', ['--pid', String(pid), '--nofile', '--output=HARD', '--noheadings'])
      ).trim();
      // No descriptor above those open now: a flow's socket gets one only where an earlier one was freed.
      await nofile(readdirSync(`/proc/${pid}/fd`).length);
      const senders: Sender[] = await Promise.all(Array.from({ length: 30 }, () => udpClient()));
      h.onCleanup(() => {
        for (const s of senders) s.socket.close();
      });
      for (const [i, s] of senders.entries()) s.socket.send(`probe ${i}`, remotePort, '127.0.0.1');
      const ended = () =>
        client.proc.logsWithMsg('udp flow closed').filter((l) => String(l.reason).endsWith(': EMFILE'));
      await client.proc.waitForLog(() => ended().length >= 25, 20_000, 0, '25 flows ended for EMFILE');
      const lines = [
        ...(await client.proc.settledLogsWithMsg('local connect failed')),
        ...client.proc.logsWithMsg('udp local error'),
      ];
      t.diagnostic(
        `${ended().length} flows ended for EMFILE; ${lines.length} lines, first: ${JSON.stringify(lines[0])}`,
      );
      assert.equal(client.proc.logsWithMsg('udp local error').length, 0, 'not a warning of its own per flow');
      assert.equal(lines.length, 20, 'the local connect failures budget');
      assert.match(String(lines[0]!.reason), /EMFILE/);
      await client.proc.waitForMsg('local connect failures not logged one by one', 15_000, {
        fields: { proxy: 'echo' },
      });

      // Descriptors back, the next sender is served.
      await nofile(hard);
      const late = await udpClient();
      h.onCleanup(() => late.socket.close());
      late.socket.send('after', remotePort, '127.0.0.1');
      await waitFor('the echo once descriptors are back', () => late.replies.length === 1, 5000);
    }),
);

test(
  "SIGTERM's 'shutting down' line counts the udp flows open on either end, beside the connections",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('game');
      h.onCleanup(() => echo.close());
      // One end at a time, on a tunnel of its own: signalled together, the server's drain could end the
      // flows (and the session) before the client's handler ran, and the client then had nothing to say.
      for (const side of ['client', 'server'] as const) {
        const { server, client, remotePort } = await startUdpTunnel(h, {
          client: `udp-drain-${side}`,
          proxy: { name: 'game', local: `127.0.0.1:${echo.port}` },
        });
        const players = await Promise.all([udpClient(), udpClient()]);
        h.onCleanup(() => {
          for (const p of players) p.socket.close();
        });
        for (const [i, p] of players.entries()) p.socket.send(`hello ${i}`, remotePort, '127.0.0.1');
        await waitFor('both replies', () => players.every((p) => p.replies.length > 0), 10_000);
        const proc = side === 'client' ? client.proc : server.proc;
        proc.kill('SIGTERM');
        const line = await proc.waitForMsg('shutting down', 5000);
        t.diagnostic(`${side}: ${JSON.stringify(line)}`);
        assert.equal(line.open_udp_flows, 2, `${side}: ${JSON.stringify(line)}`);
        if (side === 'client') assert.equal(line.open_connections, 0);
        await proc.exited;
      }
    }),
);
