// Private services and visitors, end to end with the real CLIs and TOML files: a client's `private = true`
// proxy has no public port; another client's [[visitors]] (or --visit) listens locally and reaches it by
// "owner/proxy" through the server, which checks the visiting token's `visit` grant.
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { acceptWebSocket, checkUpgradeRequest, Session, type Stream } from '@porthole/mux';
import { MessageReader, writeMessage } from '@porthole/protocol';
import {
  ADMIN_TOKEN,
  adminApi,
  adminText,
  clientToml,
  issue,
  listeningPorts,
  startPrivateClient,
  startPrivateServer,
} from './lib/private.js';
import { clientBin, freePort, run, runOk, waitFor, withHarness, withTimeout } from './lib/processes.js';
import { startEchoServer } from './lib/services.js';
import { patternBytes, sha256Hex } from './lib/sha-stream.js';
import { sshRun, startSshd } from './lib/sshd.js';
import { startServer, toml } from './lib/tunnel.js';

interface Exchange {
  reply: Buffer;
  /** How our read side ended: the peer's FIN, or a reset/close without one. */
  ended: 'end' | 'reset';
}

/** Connects, sends `data` and our FIN, reads until the other side ends. */
function exchange(port: number, data: Buffer, timeoutMs = 20_000): Promise<Exchange> {
  return withTimeout(
    new Promise<Exchange>((resolve) => {
      const chunks: Buffer[] = [];
      const socket = net.connect({ host: '127.0.0.1', port, allowHalfOpen: true });
      let ended: Exchange['ended'] = 'reset';
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('end', () => {
        ended = 'end';
        socket.end();
      });
      socket.on('error', () => {});
      socket.on('close', () => resolve({ reply: Buffer.concat(chunks), ended }));
      socket.on('connect', () => socket.end(data));
    }),
    timeoutMs,
    () => `no end of the exchange through port ${port}`,
  );
}

/** Reads what a connection to `port` is sent first (a banner line), then closes. */
async function bannerAt(port: number): Promise<string> {
  const socket = net.connect({ host: '127.0.0.1', port });
  socket.on('error', () => {});
  try {
    return await withTimeout(
      new Promise<string>((resolve) => {
        let text = '';
        socket.on('data', (c: Buffer) => {
          text += c.toString();
          if (text.includes('\n')) resolve(text.trim());
        });
        socket.on('close', () => resolve(text.trim()));
      }),
      15_000,
      () => `no banner through port ${port}`,
    );
  } finally {
    socket.destroy();
  }
}

test(
  'ssh through a visitor to a private sshd: both ways hashed, one log line per visit, status on both ends, no public port',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const sshd = await startSshd(h);
      const server = await startPrivateServer(h);
      const listeningBefore = listeningPorts(server.proc.pid!);
      const [bind, ownerAdmin, visitorAdmin] = [await freePort(), await freePort(), await freePort()];
      const owner = await startPrivateClient(h, 'homelab', server, await issue(server, 'homelab'), {
        proxies: [{ name: 'ssh', local: `127.0.0.1:${sshd.port}` }],
        admin: ownerAdmin,
      });
      const registered = owner.proc.logs.find((l) => l.msg === 'proxy registered' && l.proxy === 'ssh')!;
      assert.equal(registered.service, 'homelab/ssh');
      assert.equal(registered.remote_addr, undefined, 'a private proxy has no public address');
      await server.proc.waitForMsg('private service registered', 5000, {
        fields: { client: 'homelab', service: 'homelab/ssh' },
      });
      // Nothing listens for it: the server's listening ports are the same as before the owner came.
      assert.deepEqual(listeningPorts(server.proc.pid!), listeningBefore);

      const visitor = await startPrivateClient(
        h,
        'laptop',
        server,
        await issue(server, 'laptop', 'homelab/ssh'),
        {
          visitors: [{ name: 'home-ssh', service: 'homelab/ssh', bind: `127.0.0.1:${bind}` }],
          admin: visitorAdmin,
        },
      );
      const login = await sshRun(sshd, bind, 'echo "login-ok $((6*7)) $(id -un)"');
      assert.equal(login.code, 0, `ssh exited ${login.code}: ${login.stderr}`);
      assert.equal(login.stdout.trim(), 'login-ok 42 root');

      // 4 MiB up (hashed by the remote shell) and 4 MiB down (made by it, hashed here).
      const up = patternBytes(4 * 1024 * 1024, 'visit-up');
      const hashed = await sshRun(sshd, bind, 'sha256sum', up);
      assert.equal(hashed.code, 0, hashed.stderr);
      assert.equal(hashed.stdout.split(' ')[0], sha256Hex(up), 'sha256 of 4 MiB up through the visitor');
      const down = await sshRun(sshd, bind, 'yes porthole-visit | head -c 4194304');
      assert.equal(down.code, 0, down.stderr);
      const expected = 'porthole-visit\n'.repeat(Math.ceil(4194304 / 15)).slice(0, 4194304);
      assert.equal(down.stdout.length, 4194304);
      assert.equal(
        sha256Hex(Buffer.from(down.stdout)),
        sha256Hex(Buffer.from(expected)),
        'sha256 of 4 MiB down',
      );

      // One line per visit on the server, naming both clients, with bytes and ms.
      await waitFor(
        'three visits closed on the server',
        () =>
          server.proc.logs.filter((l) => l.msg === 'connection closed' && l.visitor === 'laptop').length >= 3,
        10_000,
      );
      const lines = server.proc.logs.filter((l) => l.msg === 'connection closed' && l.visitor === 'laptop');
      for (const line of lines) {
        assert.equal(line.client, 'homelab');
        assert.equal(line.proxy, 'ssh');
        assert.equal(typeof line.ms, 'number');
        assert.equal(typeof line.conn, 'number');
      }
      assert.ok(
        lines.some((l) => Number(l.bytes_in) > 4 * 1024 * 1024),
        'a visit carried 4 MiB in',
      );
      assert.ok(
        lines.some((l) => Number(l.bytes_out) > 4 * 1024 * 1024),
        'a visit carried 4 MiB out',
      );
      await owner.proc.waitForMsg('connection closed', 5000, { fields: { proxy: 'ssh', visitor: 'laptop' } });
      await visitor.proc.waitForMsg('connection closed', 5000, {
        fields: { visitor: 'home-ssh', service: 'homelab/ssh' },
      });
      // sshd saw the login come from the owner's local connection.
      await sshd.proc.waitForOutput(/Accepted publickey for root from 127\.0\.0\.1/, 5000);

      // The server's admin API and metrics show the private service and count its visits.
      const proxies = (await adminApi(server, '/api/proxies')).proxies as Record<string, unknown>[];
      const ssh = proxies.find((p) => p.client === 'homelab' && p.name === 'ssh')!;
      assert.equal(ssh.service, 'homelab/ssh');
      assert.equal(ssh.public_addr, 'private homelab/ssh');
      assert.equal(ssh.remote_port, null);
      assert.ok(Number(ssh.connections_total) >= 3, `connections_total ${ssh.connections_total}`);
      assert.match(
        await adminText(server, '/metrics'),
        /porthole_proxy_connections_total\{client="homelab",proxy="ssh"\} [3-9]/,
      );

      // `status` on both ends.
      const ownerStatus = JSON.parse(
        await runOk(clientBin, ['status', '--admin', `127.0.0.1:${ownerAdmin}`, '--json']),
      );
      const own = ownerStatus.proxies.find((p: { name: string }) => p.name === 'ssh');
      assert.equal(own.private, true);
      assert.equal(own.service, 'homelab/ssh');
      assert.equal(own.state, 'registered');
      const ownerText = await runOk(clientBin, ['status', '--admin', `127.0.0.1:${ownerAdmin}`]);
      assert.match(ownerText, /ssh +tcp .* private +registered .*visitors ask for homelab\/ssh/);
      const visitorStatus = JSON.parse(
        await runOk(clientBin, ['status', '--admin', `127.0.0.1:${visitorAdmin}`, '--json']),
      );
      assert.deepEqual(visitorStatus.visitors, [
        {
          name: 'home-ssh',
          type: 'tcp',
          service: 'homelab/ssh',
          bind: `127.0.0.1:${bind}`,
          listening: true,
          open_connections: 0,
        },
      ]);
      assert.deepEqual(visitorStatus.proxies, []);
      const visitorText = await runOk(clientBin, ['status', '--admin', `127.0.0.1:${visitorAdmin}`]);
      assert.match(visitorText, new RegExp(`home-ssh +tcp +homelab/ssh +127\\.0\\.0\\.1:${bind} +listening`));
    }),
);

test(
  'a wildcard grant visits every service of one owner; half-close and a few MiB both ways (sha256)',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer();
      const tagged = await startEchoServer('127.0.0.1', 0, 'service-two');
      h.onCleanup(() => echo.close());
      h.onCleanup(() => tagged.close());
      const server = await startPrivateServer(h);
      await startPrivateClient(h, 'homelab', server, await issue(server, 'homelab'), {
        proxies: [
          { name: 'echo', local: `127.0.0.1:${echo.port}` },
          { name: 'two', local: `127.0.0.1:${tagged.port}` },
        ],
      });
      const [echoBind, twoBind] = [await freePort(), await freePort()];
      await startPrivateClient(h, 'laptop', server, await issue(server, 'laptop', 'homelab/*'), {
        visitors: [
          { name: 'echo', service: 'homelab/echo', bind: `127.0.0.1:${echoBind}` },
          { name: 'two', service: 'homelab/two', bind: `127.0.0.1:${twoBind}` },
        ],
      });
      // Our FIN reaches the service after the last byte; its FIN (after the echo) comes back to us.
      const data = patternBytes(3 * 1024 * 1024, 'visit-echo');
      const r = await exchange(echoBind, data);
      assert.equal(r.ended, 'end', 'the service half-closed back after our FIN');
      assert.equal(r.reply.length, data.length);
      assert.equal(sha256Hex(r.reply), sha256Hex(data), 'sha256 of 3 MiB echoed through the visitor');
      assert.equal(await bannerAt(twoBind), 'service-two');
    }),
);

test(
  'visits the server refuses: no grant, another service, none by that name, max_connections; the reason is in the visitor log and nothing reaches the service',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0, 'homelab-echo');
      h.onCleanup(() => echo.close());
      const publicPort = await freePort();
      const server = await startServer(h, {
        allowPorts: [String(publicPort)],
        admin: { token: ADMIN_TOKEN },
      });
      const owner = await startPrivateClient(h, 'homelab', server, await issue(server, 'homelab'), {
        proxies: [
          { name: 'echo', local: `127.0.0.1:${echo.port}`, max_connections: 1 },
          { name: 'web', local: `127.0.0.1:${echo.port}`, remote_port: publicPort },
        ],
      });
      const binds = [await freePort(), await freePort(), await freePort(), await freePort()];
      const visitors = [
        { name: 'v0', service: 'homelab/echo', bind: `127.0.0.1:${binds[0]}` },
        { name: 'v1', service: 'homelab/nope', bind: `127.0.0.1:${binds[1]}` },
        { name: 'v2', service: 'other/echo', bind: `127.0.0.1:${binds[2]}` },
        { name: 'v3', service: 'homelab/web', bind: `127.0.0.1:${binds[3]}` },
      ];
      // No visit claim at all.
      const ungranted = await startPrivateClient(h, 'stranger', server, await issue(server, 'stranger'), {
        visitors: [visitors[0]!],
      });
      const r0 = await exchange(binds[0]!, Buffer.from('hello\n'));
      assert.equal(r0.reply.length, 0);
      assert.equal(r0.ended, 'reset', 'a refused visit is reset');
      const refused0 = await ungranted.proc.waitForMsg('visit refused', 5000, { fields: { visitor: 'v0' } });
      assert.match(
        String(refused0.reason),
        /token of client "stranger" does not grant visiting homelab\/echo \(visit: no services\)/,
      );
      await server.proc.waitForMsg('visit refused', 5000, { fields: { visitor: 'stranger' } });
      await ungranted.proc.stop();

      // A grant for another service of the owner; a service that does not exist; a grant that does not reach.
      const granted = await startPrivateClient(
        h,
        'laptop',
        server,
        await issue(server, 'laptop', 'homelab/web,homelab/nope'),
        { visitors },
      );
      await exchange(binds[0]!, Buffer.from('x'));
      const notGranted = await granted.proc.waitForMsg('visit refused', 5000, { fields: { visitor: 'v0' } });
      assert.match(
        String(notGranted.reason),
        /does not grant visiting homelab\/echo \(visit: homelab\/web,homelab\/nope\)/,
      );
      await exchange(binds[1]!, Buffer.from('x'));
      const none = await granted.proc.waitForMsg('visit refused', 5000, { fields: { visitor: 'v1' } });
      assert.equal(none.reason, 'client "homelab" has no private service "nope"');
      await exchange(binds[2]!, Buffer.from('x'));
      await granted.proc.waitForMsg('visit refused', 5000, { fields: { visitor: 'v2' } });
      // A public proxy of the owner is named as such, not as missing: the visitor has the right name.
      await exchange(binds[3]!, Buffer.from('x'));
      const publicOne = await granted.proc.waitForMsg('visit refused', 5000, { fields: { visitor: 'v3' } });
      assert.equal(
        publicOne.reason,
        'client "homelab" has proxy "web" public, not private: visitors reach only its private = true proxies',
      );
      assert.equal(echo.accepted, 0, 'no refused visit reached the service');
      assert.equal(owner.proc.logs.filter((l) => l.msg === 'connection closed').length, 0);
      await granted.proc.stop();

      // max_connections = 1: a second visit while one is open is refused.
      const allowed = await startPrivateClient(
        h,
        'friend',
        server,
        await issue(server, 'friend', 'homelab/echo'),
        {
          visitors: [visitors[0]!],
        },
      );
      const held = net.connect({ host: '127.0.0.1', port: binds[0]! });
      held.on('error', () => {});
      h.onCleanup(() => held.destroy());
      await withTimeout(
        new Promise((resolve) => held.once('data', resolve)),
        10_000,
        () => 'no banner on the first visit',
      );
      const second = await exchange(binds[0]!, Buffer.from('x'));
      assert.equal(second.ended, 'reset');
      const limited = await allowed.proc.waitForMsg('visit refused', 5000, { fields: { visitor: 'v0' } });
      assert.equal(limited.reason, 'homelab/echo has its max_connections (1) open');
      assert.equal(echo.accepted, 1);
    }),
);

test(
  'a second client cannot own homelab/...: its private proxy is its own service, and "homelab/ssh" is no proxy name',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const home = await startEchoServer('127.0.0.1', 0, 'the-real-homelab');
      const fake = await startEchoServer('127.0.0.1', 0, 'an-intruder');
      h.onCleanup(() => home.close());
      h.onCleanup(() => fake.close());
      const server = await startPrivateServer(h);
      await startPrivateClient(h, 'homelab', server, await issue(server, 'homelab'), {
        proxies: [{ name: 'ssh', local: `127.0.0.1:${home.port}` }],
      });
      const intruder = await startPrivateClient(h, 'intruder', server, await issue(server, 'intruder'), {
        proxies: [{ name: 'ssh', local: `127.0.0.1:${fake.port}` }],
      });
      const line = intruder.proc.logs.find((l) => l.msg === 'proxy registered' && l.proxy === 'ssh')!;
      assert.equal(line.service, 'intruder/ssh');
      const [homeBind, intruderBind] = [await freePort(), await freePort()];
      const visitor = await startPrivateClient(
        h,
        'laptop',
        server,
        await issue(server, 'laptop', 'homelab/*'),
        {
          visitors: [
            { name: 'home', service: 'homelab/ssh', bind: `127.0.0.1:${homeBind}` },
            { name: 'other', service: 'intruder/ssh', bind: `127.0.0.1:${intruderBind}` },
          ],
        },
      );
      assert.equal(await bannerAt(homeBind), 'the-real-homelab');
      assert.equal(await bannerAt(intruderBind), '');
      const refused = await visitor.proc.waitForMsg('visit refused', 5000, { fields: { visitor: 'other' } });
      assert.match(String(refused.reason), /does not grant visiting intruder\/ssh/);
      assert.equal(fake.accepted, 0);

      // A proxy cannot be named into another client's space.
      const config = await h.file(
        'slash.toml',
        `${toml({ server: server.url, token: 'x.y.z' })}\n[[proxies]]\n${toml({ name: 'homelab/ssh', type: 'tcp', local: '127.0.0.1:22', private: true })}\n`,
      );
      const check = await run(clientBin, ['check', '--config', config]);
      assert.equal(check.code, 2, check.stdout + check.stderr);
      assert.match(check.stderr, /proxies\[0\] \("homelab\/ssh"\)\.name: must be letters/);
      // Nor is an http proxy private (tcp and udp ones may be).
      const httpPrivate = await h.file(
        'http.toml',
        `${toml({ server: server.url, token: 'x.y.z' })}\n[[proxies]]\n${toml({ name: 'web', type: 'http', local: '127.0.0.1:80', hosts: ['a.example.com'], private: true })}\n`,
      );
      const httpCheck = await run(clientBin, ['check', '--config', httpPrivate]);
      assert.equal(httpCheck.code, 2);
      assert.match(httpCheck.stderr, /private: applies to tcp and udp proxies, not http/);
    }),
);

test(
  'the owner goes offline and comes back: visits are refused meanwhile, then work again without restarting the visitor (--visit flag)',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0, 'back-again');
      h.onCleanup(() => echo.close());
      const server = await startPrivateServer(h);
      const ownerToken = await issue(server, 'homelab');
      const tables = { proxies: [{ name: 'ssh', local: `127.0.0.1:${echo.port}` }] };
      const owner = await startPrivateClient(h, 'homelab', server, ownerToken, tables);
      const bind = await freePort();
      const tokenFile = await h.file('visitor-token', `${await issue(server, 'laptop', 'homelab/ssh')}\n`);
      // A visitor-only client from flags alone.
      const visitor = h.spawn('laptop', clientBin, [
        '--server',
        server.url,
        '--token-file',
        tokenFile,
        '--visit',
        `${bind}:homelab/ssh`,
      ]);
      await visitor.waitForMsg('visitor listening', 15_000, { fields: { visitor: `visit-${bind}` } });
      await visitor.waitForMsg('session established', 15_000);
      assert.equal(await bannerAt(bind), 'back-again');

      await owner.proc.stop();
      await server.proc.waitForMsg('client disconnected', 5000, { fields: { client: 'homelab' } });
      assert.equal(await bannerAt(bind), '');
      const offline = await visitor.waitForMsg('visit refused', 5000);
      assert.equal(offline.reason, 'client "homelab" is not connected');
      assert.equal(offline.service, 'homelab/ssh');

      await startPrivateClient(h, 'homelab-again', server, ownerToken, tables);
      assert.equal(await bannerAt(bind), 'back-again');
      assert.equal(visitor.exitCode, null, 'the visitor kept running');
    }),
);

test(
  'SIGHUP adds and removes private services and visitors; an open visit on one that stays carries on',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const one = await startEchoServer('127.0.0.1', 0, 'one');
      const two = await startEchoServer('127.0.0.1', 0, 'two');
      h.onCleanup(() => one.close());
      h.onCleanup(() => two.close());
      const server = await startPrivateServer(h);
      const ownerToken = await issue(server, 'homelab');
      const owner = await startPrivateClient(h, 'homelab', server, ownerToken, {
        proxies: [{ name: 'one', local: `127.0.0.1:${one.port}` }],
      });
      const [oneBind, twoBind] = [await freePort(), await freePort()];
      const visitorToken = await issue(server, 'laptop', 'homelab/*');
      const visitor = await startPrivateClient(h, 'laptop', server, visitorToken, {
        visitors: [{ name: 'one', service: 'homelab/one', bind: `127.0.0.1:${oneBind}` }],
      });
      // A visit held open across both reloads.
      const held = net.connect({ host: '127.0.0.1', port: oneBind });
      held.on('error', () => {});
      h.onCleanup(() => held.destroy());
      let heldText = '';
      held.on('data', (c: Buffer) => {
        heldText += c.toString();
      });
      await waitFor('the held visit banner', () => heldText === 'one\n', 10_000);
      // The server's admin API lists it with the client visiting.
      const open = (await adminApi(server, '/api/connections')).connections as Record<string, unknown>[];
      assert.deepEqual(
        open.filter((c) => c.proxy === 'one').map((c) => [c.client, c.visitor]),
        [['homelab', 'laptop']],
      );

      await writeFile(
        owner.configPath,
        await clientToml(h, server, ownerToken, {
          proxies: [
            { name: 'one', local: `127.0.0.1:${one.port}` },
            { name: 'two', local: `127.0.0.1:${two.port}` },
          ],
        }),
      );
      owner.proc.kill('SIGHUP');
      await owner.proc.waitForMsg('proxy registered', 10_000, {
        fields: { proxy: 'two', service: 'homelab/two' },
      });
      await writeFile(
        visitor.configPath,
        await clientToml(h, server, visitorToken, {
          visitors: [
            { name: 'one', service: 'homelab/one', bind: `127.0.0.1:${oneBind}` },
            { name: 'two', service: 'homelab/two', bind: `127.0.0.1:${twoBind}` },
          ],
        }),
      );
      visitor.proc.kill('SIGHUP');
      const reloaded = await visitor.proc.waitForMsg('config reloaded', 10_000);
      assert.deepEqual(reloaded.visitors_added, ['two']);
      await visitor.proc.waitForMsg('visitor listening', 10_000, { fields: { visitor: 'two' } });
      assert.equal(await bannerAt(twoBind), 'two');

      // Removed on both ends: the visitor's port closes, the service is gone from the server.
      await writeFile(
        visitor.configPath,
        await clientToml(h, server, visitorToken, {
          visitors: [{ name: 'one', service: 'homelab/one', bind: `127.0.0.1:${oneBind}` }],
        }),
      );
      visitor.proc.kill('SIGHUP');
      const removed = await visitor.proc.waitForMsg('config reloaded', 10_000, {
        from: visitor.proc.logs.indexOf(reloaded) + 1,
      });
      assert.deepEqual(removed.visitors_removed, ['two']);
      await waitFor(
        'the removed visitor port to close',
        () => !listeningPorts(visitor.proc.pid!).includes(twoBind),
        5000,
      );
      await writeFile(
        owner.configPath,
        await clientToml(h, server, ownerToken, {
          proxies: [{ name: 'one', local: `127.0.0.1:${one.port}` }],
        }),
      );
      owner.proc.kill('SIGHUP');
      await server.proc.waitForMsg('proxy closed', 10_000, { fields: { proxy: 'two' } });

      // The held visit is still the same connection, and still carries bytes both ways.
      held.write('still here\n');
      await waitFor('the held visit echo', () => heldText === 'one\nstill here\n', 10_000);
      assert.equal(one.accepted, 1);

      // SIGTERM with the visit still open: the client stops listening at once and drains.
      visitor.proc.kill('SIGTERM');
      await visitor.proc.waitForMsg('shutting down', 5000);
      await waitFor(
        "the visitor's port to close on SIGTERM",
        () => !listeningPorts(visitor.proc.pid!).includes(oneBind),
        5000,
      );
    }),
);

test(
  'an older server: a visit stream it resets is said in the visitor log; its refusal of a private proxy says the server is older',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      // What a server before private services does, from its code: every client-opened stream after the
      // control stream is destroyed, and a register entry without remote_port is refused for it.
      const sessions: Session[] = [];
      const registers: Record<string, unknown>[] = [];
      const peer = http.createServer((_req, res) => res.writeHead(404).end());
      peer.on('upgrade', (req, socket, head) => {
        const handshake = checkUpgradeRequest(req);
        if (!handshake.ok) return socket.destroy();
        const session = new Session(acceptWebSocket(socket, head, handshake.key), {
          client: false,
          keepAliveInterval: 0,
        });
        sessions.push(session);
        let control: Stream | undefined;
        session.on('stream', (stream: Stream) => {
          stream.on('error', () => {});
          if (control) return stream.destroy();
          control = stream;
          const reader = new MessageReader(stream);
          void (async () => {
            for (;;) {
              const m = (await reader.read().catch(() => null)) as Record<string, unknown> | null;
              if (m === null) return;
              if (m.type === 'hello')
                writeMessage(stream, {
                  type: 'hello_ok',
                  client: 'laptop',
                  session_id: 's1',
                  server_version: '0.1.0',
                });
              if (m.type === 'register') {
                registers.push(m);
                writeMessage(stream, {
                  type: 'register_result',
                  results: [{ proxy: 'ssh', ok: false, reason: 'a tcp proxy needs remote_port' }],
                });
              }
            }
          })();
        });
      });
      await new Promise<void>((resolve) => peer.listen(0, '127.0.0.1', resolve));
      h.onCleanup(() => {
        for (const s of sessions) s.close();
        peer.close();
      });
      const url = `ws://127.0.0.1:${(peer.address() as AddressInfo).port}/_porthole`;
      const bind = await freePort();
      const config = await h.file(
        'old.toml',
        [
          toml({ server: url, token: 'not.checked.here' }),
          '[[proxies]]',
          toml({ name: 'ssh', type: 'tcp', local: '127.0.0.1:22', private: true }),
          '[[visitors]]',
          toml({ name: 'home', service: 'homelab/ssh', bind: `127.0.0.1:${bind}` }),
          '',
        ].join('\n'),
      );
      const client = h.spawn('client', clientBin, ['--config', config]);
      const refused = await client.waitForMsg('proxy refused', 10_000, { fields: { proxy: 'ssh' } });
      assert.match(String(refused.reason), /this server is older than private proxies/);
      const entry = (registers[0]!.proxies as Record<string, unknown>[])[0]!;
      assert.equal(entry.private, true);
      assert.equal(entry.remote_port, undefined, 'an older server sees no port to open');
      const r = await exchange(bind, Buffer.from('x'));
      assert.equal(r.ended, 'reset');
      const visit = await client.waitForMsg('visit refused', 5000, { fields: { visitor: 'home' } });
      assert.match(String(visit.reason), /without an answer \(a server older than private services/);
      assert.equal(sessions.filter((s) => !s.closed).length, 1, 'the session stays up');
    }),
);

test(
  "check warns of a visitor outside the token's visit grant; a visitor whose port is taken is said in its log, and status exits 5",
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const server = await startPrivateServer(h);
      const taken = net.createServer();
      await new Promise<void>((resolve) => taken.listen(0, '127.0.0.1', resolve));
      h.onCleanup(() => taken.close());
      const takenPort = (taken.address() as AddressInfo).port;
      const admin = await freePort();
      const tables = {
        visitors: [{ name: 'home', service: 'homelab/ssh', bind: `127.0.0.1:${takenPort}` }],
        admin,
      };
      const configPath = await h.file(
        'laptop.toml',
        await clientToml(h, server, await issue(server, 'laptop'), tables),
      );
      const check = await run(clientBin, ['check', '--config', configPath]);
      assert.equal(check.code, 0, check.stderr);
      assert.match(check.stdout, /: ok \(0 proxies, 1 visitor\)/);
      assert.match(
        check.stderr,
        /warning: visitors\[0\] \("home"\)\.service: homelab\/ssh is outside the token's visit grant \(no services: issue it with --visit\); the server will refuse its visits/,
      );

      const client = h.spawn('laptop', clientBin, ['--config', configPath]);
      const failed = await client.waitForMsg('visitor listen failed', 10_000, {
        fields: { visitor: 'home' },
      });
      assert.equal(failed.reason, `cannot listen on 127.0.0.1:${takenPort}: EADDRINUSE`);
      await client.waitForMsg('session established', 10_000);
      const status = await run(clientBin, ['status', '--admin', `127.0.0.1:${admin}`]);
      assert.equal(status.code, 5, status.stdout + status.stderr);
      assert.match(
        status.stdout,
        /home +tcp +homelab\/ssh .* not listening +0 +cannot listen on .*EADDRINUSE/,
      );
      // One line says it: not a second, "visitor listener error", for the same failed bind.
      const errors = client.logs.filter((l) => l.level === 'error');
      assert.deepEqual(
        errors.map((l) => l.msg),
        ['visitor listen failed'],
      );
    }),
);

test(
  'a private directory share (local = "dir:...") through a visitor: its file request lines name the visitor',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const share = h.path('share');
      await mkdir(share);
      await writeFile(`${share}/hello.txt`, 'hello from the share\n');
      const server = await startPrivateServer(h);
      const owner = await startPrivateClient(h, 'homelab', server, await issue(server, 'homelab'), {
        proxies: [{ name: 'files', local: `dir:${share}` }],
      });
      const bind = await freePort();
      await startPrivateClient(h, 'laptop', server, await issue(server, 'laptop', 'homelab/files'), {
        visitors: [{ name: 'home-files', service: 'homelab/files', bind: `127.0.0.1:${bind}` }],
      });
      const res = await fetch(`http://127.0.0.1:${bind}/hello.txt`);
      assert.equal(res.status, 200);
      assert.equal(await res.text(), 'hello from the share\n');
      const line = await owner.proc.waitForMsg('file request', 5000, { fields: { path: '/hello.txt' } });
      assert.equal(line.proxy, 'files');
      assert.equal(line.visitor, 'laptop', 'a visit names its visiting client');
      assert.equal(line.status, 200);
    }),
);
