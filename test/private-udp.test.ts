// Private udp services (frp's sudp), end to end with the real CLIs and TOML files: a client's `private = true`
// udp proxy has no public port; another client's udp visitor binds a UDP socket, maps each sender to a flow
// (one visit each), and the server bridges it to the owner, which serves it as any udp flow.
import assert from 'node:assert/strict';
import type { Socket as UdpSocket } from 'node:dgram';
import { writeFile } from 'node:fs/promises';
import net from 'node:net';
import { test } from 'node:test';
import { dig, startDnsmasq } from './lib/dnsmasq.js';
import { startUdpEcho, udpClient } from './lib/http-backend.js';
import {
  adminApi,
  adminText,
  clientToml,
  issue,
  listeningPorts,
  startPrivateClient,
  startPrivateServer,
} from './lib/private.js';
import { clientBin, freePort, type LogLine, runOk, sleep, waitFor, withHarness } from './lib/processes.js';
import { startEchoServer } from './lib/services.js';
import { patternBytes, sha256Hex } from './lib/sha-stream.js';

/** What the echo service sends back for `payload`: its tag, then the payload. */
const ECHO_TAG = Buffer.from('echo|');

function send(socket: UdpSocket, port: number, payload: Buffer): Promise<void> {
  return new Promise((resolve, reject) =>
    socket.send(payload, port, '127.0.0.1', (err) => (err ? reject(err) : resolve())),
  );
}

/** Sorted hex digests: the same set of datagrams whatever order they came in. */
function digests(datagrams: readonly Buffer[]): string[] {
  return datagrams.map((d) => sha256Hex(d)).sort();
}

function sum(lines: readonly LogLine[], field: string): number {
  return lines.reduce((total, l) => total + Number(l[field]), 0);
}

test(
  'a private udp echo through a udp visitor: 200 datagrams from 3 senders come back to the right one, flows closed after idle with their counts on both ends, no udp port on the server',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('echo');
      h.onCleanup(() => echo.close());
      const server = await startPrivateServer(h);
      const udpBefore = listeningPorts(server.proc.pid!, 'udp');
      const tcpBefore = listeningPorts(server.proc.pid!);
      const [bind, visitorAdmin] = [await freePort(), await freePort()];
      const owner = await startPrivateClient(h, 'homelab', server, await issue(server, 'homelab'), {
        proxies: [{ name: 'echo', type: 'udp', local: `127.0.0.1:${echo.port}`, udp_idle_timeout: '1500ms' }],
      });
      assert.equal(
        owner.proc.logs.find((l) => l.msg === 'proxy registered' && l.proxy === 'echo')?.service,
        'homelab/echo',
      );
      await server.proc.waitForMsg('private service registered', 5000, {
        fields: { client: 'homelab', service: 'homelab/echo' },
      });
      // Nothing was bound for it on the server, udp or tcp.
      assert.deepEqual(listeningPorts(server.proc.pid!, 'udp'), udpBefore);
      assert.deepEqual(listeningPorts(server.proc.pid!), tcpBefore);

      const visitor = await startPrivateClient(
        h,
        'laptop',
        server,
        await issue(server, 'laptop', 'homelab/echo'),
        {
          visitors: [{ name: 'home-echo', type: 'udp', service: 'homelab/echo', bind: `127.0.0.1:${bind}` }],
          admin: visitorAdmin,
        },
      );
      assert.equal(
        visitor.proc.logs.find((l) => l.msg === 'visitor listening')?.type,
        'udp',
        'the visitor says what it carries',
      );

      // 3 senders, 200 datagrams of 1..1400 bytes between them, each unique.
      const senders = [await udpClient(), await udpClient(), await udpClient()];
      for (const s of senders) h.onCleanup(() => s.socket.close());
      const sent: Buffer[][] = [[], [], []];
      for (let i = 0; i < 200; i++) {
        const size = 1 + ((i * 389) % 1400);
        const payload = patternBytes(size, `datagram-${i}`);
        sent[i % 3]!.push(payload);
        await send(senders[i % 3]!.socket, bind, payload);
        // A breath every 20, so no socket buffer on the way overflows (UDP drops, it does not wait).
        if (i % 20 === 19) await sleep(5);
      }
      await waitFor(
        'every echo back',
        () => senders.every((s, i) => s.replies.length >= sent[i]!.length),
        15_000,
      );
      for (const [i, s] of senders.entries()) {
        assert.equal(s.replies.length, sent[i]!.length, `sender ${i}: one reply per datagram`);
        for (const reply of s.replies)
          assert.deepEqual(reply.subarray(0, ECHO_TAG.length), ECHO_TAG, 'the echo service answered');
        assert.deepEqual(
          digests(s.replies.map((r) => r.subarray(ECHO_TAG.length))),
          digests(sent[i]!),
          `sender ${i} got back exactly what it sent, and nothing of the others'`,
        );
      }
      assert.equal(echo.received, 200);
      // The echo service saw one sender per flow: the owner's local sockets.
      assert.equal(echo.senders.size, 3);

      // While the flows are open: the visitor's status counts them, the server's admin API lists the visits.
      const status = JSON.parse(
        await runOk(clientBin, ['status', '--admin', `127.0.0.1:${visitorAdmin}`, '--json']),
      );
      assert.deepEqual(status.visitors, [
        {
          name: 'home-echo',
          type: 'udp',
          service: 'homelab/echo',
          bind: `127.0.0.1:${bind}`,
          listening: true,
          open_connections: 3,
        },
      ]);
      const text = await runOk(clientBin, ['status', '--admin', `127.0.0.1:${visitorAdmin}`]);
      assert.match(text, /VISITOR +TYPE +SERVICE +BIND +STATE +OPEN/);
      assert.match(text, new RegExp(`home-echo +udp +homelab/echo +127\\.0\\.0\\.1:${bind} +listening +3`));
      const connections = (await adminApi(server, '/api/connections')).connections as Record<
        string,
        unknown
      >[];
      const visits = connections.filter((c) => c.proxy === 'echo');
      assert.equal(visits.length, 3, JSON.stringify(connections));
      for (const c of visits) {
        assert.equal(c.client, 'homelab');
        assert.equal(c.visitor, 'laptop', 'a visit names its visiting client in /api/connections');
      }

      // Idle for udp_idle_timeout (1.5 s): each flow ends, one line per flow on each end with its counts.
      const closedOn = (lines: readonly LogLine[], fields: Record<string, unknown>) =>
        lines.filter(
          (l) => l.msg === 'udp flow closed' && Object.entries(fields).every(([k, v]) => l[k] === v),
        );
      await waitFor(
        'three flows closed on the visitor and on the owner',
        () =>
          closedOn(visitor.proc.logs, { visitor: 'home-echo' }).length === 3 &&
          closedOn(owner.proc.logs, { proxy: 'echo', visitor: 'laptop' }).length === 3,
        15_000,
      );
      const visitorLines = closedOn(visitor.proc.logs, { visitor: 'home-echo' });
      const ports = new Set(senders.map((s) => `127.0.0.1:${s.socket.address().port}`));
      for (const line of visitorLines) {
        // Both ends keep the service's idle timeout; whichever fires first ends the flow for both.
        assert.match(String(line.reason), /^(idle timeout|the owner ended the flow)$/);
        assert.equal(line.service, 'homelab/echo');
        assert.ok(ports.has(String(line.remote_addr)), `${line.remote_addr} is one of the senders`);
        const i = senders.findIndex((s) => `127.0.0.1:${s.socket.address().port}` === line.remote_addr);
        const bytes = sent[i]!.reduce((n, d) => n + d.length, 0);
        assert.equal(line.datagrams_in, sent[i]!.length);
        assert.equal(line.datagrams_out, sent[i]!.length);
        assert.equal(line.bytes_in, bytes);
        assert.equal(line.bytes_out, bytes + ECHO_TAG.length * sent[i]!.length);
        assert.equal(line.dropped, 0);
        assert.equal(typeof line.conn, 'number', "the owner's conn, to match the three logs");
      }
      const ownerLines = closedOn(owner.proc.logs, { proxy: 'echo', visitor: 'laptop' });
      for (const line of ownerLines)
        assert.match(String(line.reason), /^(idle timeout|server ended the flow)$/);
      assert.ok(
        visitorLines.some((l) => l.reason === 'idle timeout') ||
          ownerLines.some((l) => l.reason === 'idle timeout'),
        'ended by the idle timeout',
      );
      assert.equal(sum(ownerLines, 'datagrams_in'), 200);
      assert.equal(sum(ownerLines, 'datagrams_out'), 200);
      assert.deepEqual(
        ownerLines.map((l) => l.conn).sort(),
        visitorLines.map((l) => l.conn).sort(),
        'the same conns on both ends',
      );
      await waitFor(
        'three visits closed on the server',
        () =>
          server.proc.logs.filter(
            (l) => l.msg === 'connection closed' && l.visitor === 'laptop' && l.proxy === 'echo',
          ).length === 3,
        10_000,
      );
      assert.match(
        await adminText(server, '/metrics'),
        /porthole_proxy_connections_total\{client="homelab",proxy="echo"\} 3\b/,
      );
      // Still nothing bound on the server.
      assert.deepEqual(listeningPorts(server.proc.pid!, 'udp'), udpBefore);
    }),
);

test(
  "dig through a udp visitor (--visit udp:PORT:OWNER/PROXY) gets a private dnsmasq's answers",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const dnsPort = await startDnsmasq(h);
      const server = await startPrivateServer(h);
      await startPrivateClient(h, 'homelab', server, await issue(server, 'homelab'), {
        proxies: [{ name: 'dns', type: 'udp', local: `127.0.0.1:${dnsPort}` }],
      });
      const bind = await freePort();
      const tokenFile = await h.file('laptop-token', `${await issue(server, 'laptop', 'homelab/*')}\n`);
      const visitor = h.spawn('laptop', clientBin, [
        '--server',
        server.url,
        '--token-file',
        tokenFile,
        '--visit',
        `udp:${bind}:homelab/dns`,
      ]);
      await visitor.waitForMsg('visitor listening', 15_000, {
        fields: { visitor: `visit-udp-${bind}`, type: 'udp', bind: `127.0.0.1:${bind}` },
      });
      await visitor.waitForMsg('session established', 15_000);
      for (const name of ['a.test.example', 'b.test.example', 'c.test.example']) {
        const answer = await dig(bind, name, { timeSeconds: 5 });
        assert.equal(answer.code, 0, answer.stderr);
        assert.equal(answer.stdout.trim(), '10.1.2.3', `${name} answered by dnsmasq through the visit`);
      }
      // A name dnsmasq has no answer for gets its own NXDOMAIN: it is dnsmasq talking, not a stand-in.
      const nx = await dig(bind, 'nothing.invalid', { timeSeconds: 5, short: false });
      assert.match(nx.stdout, /status: (NXDOMAIN|REFUSED)/);
    }),
);

test(
  "visits refused: a udp visitor without a grant, udp to a tcp service and tcp to a udp one, past the service's max_flows; the reason on both ends, nothing reaches the services, repeats coalesced to a line per 10 s with suppressed",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const udpEcho = await startUdpEcho('echo');
      h.onCleanup(() => udpEcho.close());
      const tcpEcho = await startEchoServer();
      h.onCleanup(() => tcpEcho.close());
      const server = await startPrivateServer(h);
      await startPrivateClient(h, 'homelab', server, await issue(server, 'homelab'), {
        proxies: [
          { name: 'echo', type: 'udp', local: `127.0.0.1:${udpEcho.port}`, max_flows: 1 },
          { name: 'ssh', local: `127.0.0.1:${tcpEcho.port}` },
        ],
      });
      const [noGrant, udpToTcp, tcpToUdp, echoBind, admin] = [
        await freePort(),
        await freePort(),
        await freePort(),
        await freePort(),
        await freePort(),
      ];
      const visitor = await startPrivateClient(
        h,
        'laptop',
        server,
        await issue(server, 'laptop', 'homelab/ssh,homelab/echo'),
        {
          visitors: [
            { name: 'dns', type: 'udp', service: 'homelab/dns', bind: `127.0.0.1:${noGrant}` },
            { name: 'udp-ssh', type: 'udp', service: 'homelab/ssh', bind: `127.0.0.1:${udpToTcp}` },
            { name: 'tcp-echo', service: 'homelab/echo', bind: `127.0.0.1:${tcpToUdp}` },
            { name: 'echo', type: 'udp', service: 'homelab/echo', bind: `127.0.0.1:${echoBind}` },
          ],
          admin,
        },
      );
      const sender = await udpClient();
      h.onCleanup(() => sender.socket.close());
      const refusedOn = (lines: readonly LogLine[], fields: Record<string, unknown>) =>
        lines.filter(
          (l) => l.msg === 'visit refused' && Object.entries(fields).every(([k, v]) => l[k] === v),
        );

      // No grant: refused by the server with the token's grant in the reason, on both ends.
      await send(sender.socket, noGrant, Buffer.from('query'));
      const noGrantReason =
        'the token of client "laptop" does not grant visiting homelab/dns (visit: homelab/ssh,homelab/echo)';
      await visitor.proc.waitForMsg('visit refused', 10_000, {
        fields: { visitor: 'dns', type: 'udp', reason: noGrantReason },
      });
      await server.proc.waitForMsg('visit refused', 5000, {
        fields: { visitor: 'laptop', service: 'homelab/dns', type: 'udp', reason: noGrantReason },
      });

      // A udp visitor for a tcp service, and the reverse: refused, naming both types.
      await send(sender.socket, udpToTcp, Buffer.from('datagram for sshd'));
      await visitor.proc.waitForMsg('visit refused', 10_000, {
        fields: {
          visitor: 'udp-ssh',
          reason: 'homelab/ssh is a tcp service and this visitor is udp: set the visitor\'s type = "tcp"',
        },
      });
      const tcpToUdpReason =
        'homelab/echo is a udp service and this visitor is tcp: set the visitor\'s type = "udp"';
      // Five connections in a row, as a retry loop makes them: each is reset; the log says the first at once.
      for (let i = 0; i < 5; i++) {
        const ended = await new Promise<string>((resolve) => {
          const socket = net.connect({ host: '127.0.0.1', port: tcpToUdp });
          socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
          socket.on('close', () => resolve('closed'));
        });
        assert.match(ended, /ECONNRESET|closed/);
      }
      const fields = { visitor: 'tcp-echo', reason: tcpToUdpReason };
      await visitor.proc.waitForMsg('visit refused', 10_000, { fields });
      await server.proc.waitForMsg('visit refused', 5000, {
        fields: { visitor: 'laptop', service: 'homelab/echo', type: 'tcp', reason: tcpToUdpReason },
      });
      await sleep(1000);
      assert.equal(refusedOn(visitor.proc.logs, fields).length, 1, 'one line for the five, so far');
      assert.equal(refusedOn(server.proc.logs, { visitor: 'laptop', reason: tcpToUdpReason }).length, 1);
      // Once the 10 s are over, one more line with the four others: "suppressed" counts the three it stands
      // in for beside itself.
      await visitor.proc.waitForMsg('visit refused', 15_000, { fields: { ...fields, suppressed: 3 } });
      await server.proc.waitForMsg('visit refused', 5000, {
        fields: { visitor: 'laptop', reason: tcpToUdpReason, suppressed: 3 },
      });
      assert.equal(refusedOn(visitor.proc.logs, fields).length, 2);

      // Nothing reached either service, and no refused flow has a 'udp flow closed' line of its own.
      assert.equal(udpEcho.received, 0);
      assert.equal(tcpEcho.accepted, 0);
      assert.equal(sender.replies.length, 0);
      assert.equal(
        visitor.proc.logs.filter((l) => l.msg === 'udp flow closed').length,
        0,
        'a refused flow is its refusal line',
      );

      // The service's max_flows (1) counts visits: a second sender while the first's flow is open is refused.
      const first = await udpClient();
      h.onCleanup(() => first.socket.close());
      await send(first.socket, echoBind, Buffer.from('first'));
      await waitFor('the first sender answered', () => first.replies.length === 1, 10_000);
      await send(sender.socket, echoBind, Buffer.from('second'));
      await visitor.proc.waitForMsg('visit refused', 10_000, {
        fields: { visitor: 'echo', reason: 'homelab/echo has its max_flows (1) open' },
      });
      // The server's warning names the key the limit comes from.
      const limitLine = await server.proc.waitForMsg(
        'connection limit reached: new visitors refused',
        10_000,
        {
          fields: { client: 'homelab', proxy: 'echo', max_flows: 1 },
        },
      );
      assert.equal(limitLine.max_connections, undefined, JSON.stringify(limitLine));
      assert.equal(udpEcho.received, 1, 'only the first sender reached the service');
      assert.equal(sender.replies.length, 0);
      // A refused sender that goes on sending: for a second its datagrams are dropped by the visitor, not each
      // a visit for the server to open and refuse; after it, the next one asks again.
      const refusedVisits = async () => {
        const { proxies } = (await adminApi(server, '/api/proxies')) as {
          proxies: { client: string; name: string; refused_connections: number }[];
        };
        return proxies.find((p) => p.client === 'homelab' && p.name === 'echo')?.refused_connections;
      };
      const refusedAtFirst = await refusedVisits();
      assert.equal(refusedAtFirst, 1);
      for (let i = 0; i < 5; i++) {
        await send(sender.socket, echoBind, Buffer.from(`again ${i}`));
        await sleep(50);
      }
      await sleep(200);
      assert.equal(await refusedVisits(), 1, 'datagrams within a second of the refusal asked nothing');
      await sleep(1000);
      await send(sender.socket, echoBind, Buffer.from('once more'));
      const deadline = Date.now() + 10_000;
      while ((await refusedVisits()) !== 2) {
        assert.ok(Date.now() < deadline, 'the next datagram after the hold asked again');
        await sleep(100);
      }
      assert.equal(udpEcho.received, 1);
      // status: the last refusal of each visitor in DETAIL.
      const status = JSON.parse(
        await runOk(clientBin, ['status', '--admin', `127.0.0.1:${admin}`, '--json']),
      );
      const reasons = Object.fromEntries(
        (status.visitors as { name: string; reason?: string }[]).map((v) => [v.name, v.reason]),
      );
      assert.equal(reasons.dns, noGrantReason);
      assert.equal(reasons['tcp-echo'], tcpToUdpReason);
    }),
);

test(
  'SIGHUP on the visiting client: a lowered max_flows ends the quietest flows, a moved udp visitor listens on its new port, an added one at once',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startUdpEcho('echo');
      h.onCleanup(() => echo.close());
      const server = await startPrivateServer(h);
      await startPrivateClient(h, 'homelab', server, await issue(server, 'homelab'), {
        proxies: [{ name: 'echo', type: 'udp', local: `127.0.0.1:${echo.port}` }],
      });
      const [first, moved, added] = [await freePort(), await freePort(), await freePort()];
      const token = await issue(server, 'laptop', 'homelab/echo');
      const table = (bind: number, maxFlows: number) => ({
        name: 'echo',
        type: 'udp' as const,
        service: 'homelab/echo',
        bind: `127.0.0.1:${bind}`,
        max_flows: maxFlows,
      });
      const visitor = await startPrivateClient(h, 'laptop', server, token, { visitors: [table(first, 4)] });
      const senders = [await udpClient(), await udpClient(), await udpClient()];
      for (const s of senders) h.onCleanup(() => s.socket.close());
      for (const [i, s] of senders.entries()) {
        await send(s.socket, first, Buffer.from(`hello ${i}`));
        await waitFor(`sender ${i} answered`, () => s.replies.length === 1, 10_000);
      }
      const reload = async (tables: Parameters<typeof clientToml>[3]) => {
        const from = visitor.proc.logs.length;
        await writeFile(visitor.configPath, await clientToml(h, server, token, tables));
        visitor.proc.kill('SIGHUP');
        return visitor.proc.waitForMsg('config reloaded', 10_000, { from });
      };

      // max_flows 4 -> 1: the two flows least recently active end, the last sender's stays.
      const lowered = await reload({ visitors: [table(first, 1)] });
      assert.deepEqual(lowered.visitors_changed, ['echo']);
      await waitFor(
        'two flows ended by the lowered max_flows',
        () =>
          visitor.proc.logs.filter(
            (l) => l.msg === 'udp flow closed' && l.reason === 'max_flows lowered to 1 by a reload',
          ).length === 2,
        10_000,
      );
      await send(senders[2]!.socket, first, Buffer.from('still here'));
      await waitFor('the kept flow answered', () => senders[2]!.replies.length === 2, 10_000);

      // Moved to another port, and a second visitor added: both listen, and carry datagrams.
      const movedAt = await reload({
        visitors: [table(moved, 1), { ...table(added, 8), name: 'echo-2' }],
      });
      assert.deepEqual(movedAt.visitors_changed, ['echo']);
      assert.deepEqual(movedAt.visitors_added, ['echo-2']);
      await visitor.proc.waitForMsg('visitor listening', 10_000, {
        fields: { visitor: 'echo', bind: `127.0.0.1:${moved}` },
      });
      await visitor.proc.waitForMsg('visitor listening', 10_000, { fields: { visitor: 'echo-2' } });
      await waitFor(
        'the old port let go',
        () => !listeningPorts(visitor.proc.pid!, 'udp').includes(first),
        5000,
      );
      await send(senders[0]!.socket, moved, Buffer.from('after the move'));
      await send(senders[1]!.socket, added, Buffer.from('to the new one'));
      await waitFor(
        'both answered',
        () => senders[0]!.replies.length === 2 && senders[1]!.replies.length === 2,
        10_000,
      );
      assert.equal(senders[0]!.replies[1]!.toString(), 'echo|after the move');
      assert.equal(senders[1]!.replies[1]!.toString(), 'echo|to the new one');
    }),
);
