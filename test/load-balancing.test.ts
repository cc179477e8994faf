// Load-balancing groups (frp's loadBalancer.group) and health checks (frp's healthCheck), end to end: real
// servers and clients from TOML files, tcp and udp visitors on real sockets, http visitors with curl, tls
// ones with openssl s_client.
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { type AddressInfo, createServer, type Server, type Socket, connect as tcpConnect } from 'node:net';
import { test } from 'node:test';
import tls from 'node:tls';
import { curl } from './lib/curl.js';
import { startTaggedHttp, startUdpEcho, udpClient } from './lib/http-backend.js';
import { clientBin, freePort, type Harness, run, sleep, withHarness } from './lib/processes.js';
import {
  type CertFiles,
  issueRoutedToken,
  makeCa,
  makeCert,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  sClient,
  startRoutedClient,
  startRoutedServer,
  type TomlValue,
} from './lib/routing.js';

const ADMIN_TOKEN = 'load-balancing-admin-token';

/** A proxy's keys beyond name, type and local. */
type RoutedProxyKeys = Record<string, TomlValue>;

/** A tcp service that greets each connection with its id ("A\n"), then echoes. */
async function startIdService(h: Harness, id: string, port = 0): Promise<{ server: Server; port: number }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => {});
    socket.write(`${id}\n`);
    socket.pipe(socket);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const stop = () => {
    for (const s of sockets) s.destroy();
    server.close();
  };
  h.onCleanup(stop);
  (server as Server & { stopAll?: () => void }).stopAll = stop;
  const bound = server.address();
  return { server, port: typeof bound === 'object' && bound ? bound.port : port };
}

function stopIdService(server: Server): void {
  (server as Server & { stopAll?: () => void }).stopAll?.();
}

/** One visitor: connects, reads the greeting line, and (unless kept) closes. Resolves with the id. */
function visit(port: number, keep = false): Promise<{ id: string; socket: Socket }> {
  return new Promise((resolve, reject) => {
    const socket = tcpConnect({ host: '127.0.0.1', port });
    let text = '';
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no greeting on port ${port} within 10 s (got ${JSON.stringify(text)})`));
    }, 10_000);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      text += chunk;
      const end = text.indexOf('\n');
      if (end < 0) return;
      clearTimeout(timer);
      socket.removeAllListeners('data');
      if (!keep) socket.destroy();
      resolve({ id: text.slice(0, end), socket });
    });
    socket.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`visitor on port ${port}: ${err.message} (got ${JSON.stringify(text)})`));
    });
    socket.on('end', () => {
      clearTimeout(timer);
      reject(new Error(`visitor on port ${port}: closed before a greeting (got ${JSON.stringify(text)})`));
    });
  });
}

/** `n` visitors one after the other: how many reached each id. */
async function spread(port: number, n: number): Promise<Map<string, number>> {
  const seen = new Map<string, number>();
  for (let i = 0; i < n; i++) {
    const { id } = await visit(port);
    seen.set(id, (seen.get(id) ?? 0) + 1);
  }
  return seen;
}

async function adminProxies(base: string): Promise<Array<Record<string, unknown>>> {
  const res = await fetch(`${base}/api/proxies`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(res.status, 200);
  return ((await res.json()) as { proxies: Array<Record<string, unknown>> }).proxies;
}

test(
  'tcp group: two clients share one port, connections spread over both; one killed, all go to the other; others refused by group',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const a = await startIdService(h, 'A');
      const b = await startIdService(h, 'B');
      const publicPort = await freePort();
      const server = await startRoutedServer(h, {
        admin: { token: ADMIN_TOKEN },
        top: { allow_bind: ['127.0.0.2'] },
      });
      const tokenOf = (name: string) => issueRoutedToken(server, { name, ports: String(publicPort) });
      const member = (name: string, port: number, keys: RoutedProxyKeys = { group: 'web' }): RoutedProxy => ({
        name,
        type: 'tcp',
        local: `127.0.0.1:${port}`,
        remote_port: publicPort,
        ...keys,
      });
      const alpha = await startRoutedClient(h, {
        server: server.url,
        token: await tokenOf('alpha'),
        name: 'alpha',
        proxies: [member('web', a.port)],
      });
      await startRoutedClient(h, {
        server: server.url,
        token: await tokenOf('beta'),
        name: 'beta',
        proxies: [member('web', b.port)],
      });

      const seen = await spread(publicPort, 20);
      assert.deepEqual([...seen.keys()].sort(), ['A', 'B'], `both members serve: ${[...seen]}`);
      for (const [id, count] of seen) assert.ok(count >= 4, `member ${id} got only ${count} of 20`);

      const proxies = await adminProxies(server.adminUrl!);
      const web = proxies.filter((p) => p.name === 'web');
      assert.equal(web.length, 2);
      for (const p of web) {
        assert.equal(p.group, 'web');
        assert.deepEqual(p.group_members, ['alpha/web', 'beta/web']);
      }

      // Not of the group (no group, another group): refused with a reason naming the group.
      const gamma = await startRoutedClient(h, {
        server: server.url,
        token: await tokenOf('gamma'),
        name: 'gamma',
        waitFor: [],
        proxies: [member('lone', a.port, {})],
      });
      const lone = await gamma.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'lone' } });
      assert.equal(
        lone.reason,
        `port ${publicPort} is used by tcp proxies in group "web"; this tcp proxy is in no group`,
      );
      const delta = await startRoutedClient(h, {
        server: server.url,
        token: await tokenOf('delta'),
        name: 'delta',
        waitFor: [],
        proxies: [member('other', a.port, { group: 'other' })],
      });
      const other = await delta.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'other' } });
      assert.equal(
        other.reason,
        `port ${publicPort} is used by tcp proxies in group "web"; this tcp proxy is in group "other"`,
      );
      // Of the group, but asking for another address than the group's port is bound on.
      const epsilon = await startRoutedClient(h, {
        server: server.url,
        token: await tokenOf('epsilon'),
        name: 'epsilon',
        waitFor: [],
        proxies: [member('elsewhere', a.port, { group: 'web', remote_bind: '127.0.0.2' })],
      });
      const elsewhere = await epsilon.proc.waitForMsg('proxy refused', 15_000, {
        fields: { proxy: 'elsewhere' },
      });
      assert.equal(
        elsewhere.reason,
        `group "web" has port ${publicPort} bound on 127.0.0.1, and every member asks for that address; this proxy asks for 127.0.0.2 (remote_bind)`,
      );

      // A reload of alpha adds a second member (its own second replica) without disturbing beta's visitor.
      const held = await (async () => {
        for (let i = 0; i < 6; i++) {
          const v = await visit(publicPort, true);
          if (v.id === 'B') return v.socket;
          v.socket.destroy();
        }
        throw new Error('no visitor reached B in 6 tries');
      })();
      h.onCleanup(() => held.destroy());
      const a2 = await startIdService(h, 'A2');
      await rewriteRoutedClientProxies(alpha.configPath, [member('web', a.port), member('web2', a2.port)]);
      const mark = alpha.proc.mark();
      alpha.proc.kill('SIGHUP');
      await alpha.proc.waitForMsg('proxy registered', 15_000, { from: mark, fields: { proxy: 'web2' } });
      const three = await spread(publicPort, 30);
      assert.deepEqual([...three.keys()].sort(), ['A', 'A2', 'B'], `three members serve: ${[...three]}`);
      const echoed = new Promise<string>((resolve) => held.once('data', (d) => resolve(String(d))));
      held.write('still here\n');
      assert.equal(await echoed, 'still here\n', "beta's open connection carried on through the reload");

      // alpha dies: its members leave the group at once; every new visitor goes to beta.
      const serverMark = server.proc.mark();
      alpha.proc.kill('SIGKILL');
      await server.proc.waitForMsg('client disconnected', 15_000, {
        from: serverMark,
        fields: { client: 'alpha' },
      });
      const after = await spread(publicPort, 20);
      assert.deepEqual([...after], [['B', 20]]);
      held.destroy();
    }),
);

test(
  'http group by hostname: curl requests spread over both clients; an http health check withdraws one and brings it back',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const portA = await freePort();
      const portB = await freePort();
      let backendA = await startTaggedHttp(h, 'A', portA);
      await startTaggedHttp(h, 'B', portB);
      const server = await startRoutedServer(h, {});
      const member = (port: number, keys: RoutedProxyKeys = { group: 'site' }): RoutedProxy => ({
        name: 'site',
        type: 'http',
        local: `127.0.0.1:${port}`,
        hosts: ['app.test'],
        ...keys,
      });
      const check = { type: 'http', path: '/healthz', interval: '200ms', timeout: '1s', max_failed: 2 };
      const clients = [];
      for (const [name, port] of [
        ['alpha', portA],
        ['beta', portB],
      ] as const) {
        const token = await issueRoutedToken(server, { name, hosts: ['app.test'] });
        clients.push(
          await startRoutedClient(h, {
            server: server.url,
            token,
            name,
            proxies: [member(port, { group: 'site', health_check: check })],
          }),
        );
      }
      const url = `http://127.0.0.1:${server.httpPort}/page`;
      const tags = async (n: number) => {
        const seen = new Map<string, number>();
        for (let i = 0; i < n; i++) {
          const r = await curl(['-H', 'Host: app.test'], url);
          assert.equal(r.status, 200, `request ${i}: ${r.status} ${r.body} ${r.stderr}`);
          const tag = r.body.split(' ')[0]!;
          seen.set(tag, (seen.get(tag) ?? 0) + 1);
        }
        return seen;
      };
      const both = await tags(20);
      assert.deepEqual([...both.keys()].sort(), ['A', 'B'], `both members serve: ${[...both]}`);
      for (const [tag, count] of both) assert.ok(count >= 4, `member ${tag} got only ${count} of 20`);

      const gammaToken = await issueRoutedToken(server, { name: 'gamma', hosts: ['app.test'] });
      const gamma = await startRoutedClient(h, {
        server: server.url,
        token: gammaToken,
        name: 'gamma',
        waitFor: [],
        proxies: [member(portB, {})],
      });
      const refused = await gamma.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'site' } });
      assert.equal(
        refused.reason,
        'hostname app.test is used by http proxies in group "site"; this http proxy is in no group',
      );

      // A's service stops: its checks fail, alpha withdraws it, and every request goes to B.
      const alpha = clients[0]!;
      const mark = alpha.proc.mark();
      backendA.closeAllConnections();
      await new Promise((resolve) => backendA.close(resolve));
      const withdrawn = await alpha.proc.waitForMsg(
        'health check failed: proxy withdrawn from the server',
        15_000,
        {
          from: mark,
          fields: { proxy: 'site' },
        },
      );
      assert.match(String(withdrawn.reason), /ECONNREFUSED/);
      await server.proc.waitForMsg('proxy closed', 10_000, { fields: { client: 'alpha', proxy: 'site' } });
      assert.deepEqual([...(await tags(10))], [['B', 10]]);

      // Back up: one passing check registers it again, and it takes its turns.
      backendA = await startTaggedHttp(h, 'A', portA);
      await alpha.proc.waitForMsg('health check passed: registering the proxy again', 15_000, { from: mark });
      await alpha.proc.waitForMsg('proxy registered', 15_000, { from: mark, fields: { proxy: 'site' } });
      const again = await tags(20);
      assert.deepEqual([...again.keys()].sort(), ['A', 'B'], `A is back: ${[...again]}`);
      // Said once, not at every failed check.
      assert.equal(
        alpha.proc.logsWithMsg('health check failed: proxy withdrawn from the server', mark).length,
        1,
      );
    }),
);

test(
  'http group: a member without the password the others ask for is refused, so no request gets in without it',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const portA = await freePort();
      const portB = await freePort();
      await startTaggedHttp(h, 'A', portA);
      await startTaggedHttp(h, 'B', portB);
      const server = await startRoutedServer(h, {});
      const member = (port: number, keys: RoutedProxyKeys): RoutedProxy => ({
        name: 'site',
        type: 'http',
        local: `127.0.0.1:${port}`,
        hosts: ['app.test'],
        group: 'site',
        ...keys,
      });
      const auth = { http_user: 'family', http_password: 'a long passphrase' };
      const start = async (name: string, proxy: RoutedProxy, waitFor?: string[]) =>
        startRoutedClient(h, {
          server: server.url,
          token: await issueRoutedToken(server, { name, hosts: ['app.test'] }),
          name,
          proxies: [proxy],
          ...(waitFor ? { waitFor } : {}),
        });
      await start('alpha', member(portA, auth));
      const beta = await start('beta', member(portB, {}), []);
      const refused = await beta.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'site' } });
      assert.equal(
        refused.reason,
        'group "site" at app.test takes requests in turn, and its members ask visitors for a password (http_user, http_password): every member must ask for the same; this proxy asks for none',
      );
      assert.ok(!JSON.stringify(refused).includes('passphrase'), 'no password in the reason');
      // Another password is refused too; the same one joins.
      const gamma = await start('gamma', member(portB, { ...auth, http_password: 'another' }), []);
      const other = await gamma.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'site' } });
      assert.match(String(other.reason), /this proxy asks for another http_user or http_password$/);
      await start('delta', member(portB, auth));

      const url = `http://127.0.0.1:${server.httpPort}/page`;
      for (let i = 0; i < 6; i++) {
        const anonymous = await curl(['-H', 'Host: app.test'], url);
        assert.equal(anonymous.status, 401, `request ${i} without a password: ${anonymous.body}`);
      }
      const seen = new Set<string>();
      for (let i = 0; i < 6; i++) {
        const r = await curl(['-H', 'Host: app.test', '-u', 'family:a long passphrase'], url);
        assert.equal(r.status, 200, `request ${i}: ${r.body}`);
        seen.add(r.body.split(' ')[0]!);
      }
      assert.deepEqual([...seen].sort(), ['A', 'B'], 'both members with the password take turns');
    }),
);

test(
  'tcp health check: a stopped backend is withdrawn within a bounded time, all new connections go to the healthy member, and it comes back; status shows group and health',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const a = await startIdService(h, 'A');
      const b = await startIdService(h, 'B');
      const publicPort = await freePort();
      const server = await startRoutedServer(h, {});
      const token = await issueRoutedToken(server, { name: 'alpha', ports: String(publicPort) });
      const check = { type: 'tcp', interval: '200ms', timeout: '1s', max_failed: 2 };
      const adminPort = await freePort();
      // Two replicas behind one client, one group.
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        adminListen: `127.0.0.1:${adminPort}`,
        proxies: [
          { name: 'a', type: 'tcp', local: `127.0.0.1:${a.port}`, remote_port: publicPort, group: 'g' },
          { name: 'b', type: 'tcp', local: `127.0.0.1:${b.port}`, remote_port: publicPort, group: 'g' },
        ].map((p): RoutedProxy => ({ ...p, type: 'tcp', health_check: check })),
      });
      const both = await spread(publicPort, 20);
      assert.deepEqual([...both.keys()].sort(), ['A', 'B']);

      const mark = client.proc.mark();
      const stoppedAt = Date.now();
      stopIdService(a.server);
      await client.proc.waitForMsg('health check failed: proxy withdrawn from the server', 10_000, {
        from: mark,
        fields: { proxy: 'a' },
      });
      await server.proc.waitForMsg('proxy closed', 10_000, { fields: { client: 'alpha', proxy: 'a' } });
      // 2 failures 200 ms apart: well under 10 s even on a loaded machine.
      assert.ok(Date.now() - stoppedAt < 10_000);
      assert.deepEqual([...(await spread(publicPort, 20))], [['B', 20]]);

      const status = await run(clientBin, ['status', '--admin', `127.0.0.1:${adminPort}`, '--json'], {
        timeoutMs: 15_000,
      });
      const proxies = (JSON.parse(status.stdout) as { proxies: Array<Record<string, unknown>> }).proxies;
      const byName = new Map(proxies.map((p) => [p.name, p]));
      assert.equal(byName.get('a')?.state, 'withdrawn');
      assert.equal(byName.get('a')?.health, 'unhealthy');
      assert.equal(byName.get('a')?.group, 'g');
      assert.equal(byName.get('b')?.state, 'registered');
      assert.equal(byName.get('b')?.health, 'healthy');
      assert.equal(status.code, 5, 'a withdrawn proxy is a proxy not served');

      await startIdService(h, 'A', a.port);
      await client.proc.waitForMsg('proxy registered', 15_000, { from: mark, fields: { proxy: 'a' } });
      const back = await spread(publicPort, 20);
      assert.deepEqual([...back.keys()].sort(), ['A', 'B'], `A is back: ${[...back]}`);
    }),
);

/** One new sender (a new flow): sends until the first reply comes (bounded), and returns its tag. */
async function udpAsk(port: number): Promise<string> {
  const { socket, replies } = await udpClient();
  try {
    for (let i = 0; i < 50 && replies.length === 0; i++) {
      socket.send('hi', port, '127.0.0.1');
      await sleep(200);
    }
    assert.ok(replies.length > 0, `no reply on udp port ${port} within 10 s`);
    return String(replies[0]).split('|')[0]!;
  } finally {
    socket.close();
  }
}

test(
  'udp group: two clients share one udp port, new senders (flows) spread over both; a lone udp proxy there is refused by group',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echoA = await startUdpEcho('A');
      const echoB = await startUdpEcho('B');
      h.onCleanup(() => Promise.all([echoA.close(), echoB.close()]));
      const publicPort = await freePort();
      const server = await startRoutedServer(h, { admin: { token: ADMIN_TOKEN } });
      const member = (local: number, keys: RoutedProxyKeys = { group: 'dns' }): RoutedProxy => ({
        name: 'dns',
        type: 'udp',
        local: `127.0.0.1:${local}`,
        remote_port: publicPort,
        ...keys,
      });
      for (const [name, echo] of [
        ['alpha', echoA],
        ['beta', echoB],
      ] as const) {
        const token = await issueRoutedToken(server, { name, ports: String(publicPort) });
        await startRoutedClient(h, { server: server.url, token, name, proxies: [member(echo.port)] });
      }
      const seen = new Map<string, number>();
      for (let i = 0; i < 10; i++) {
        const tag = await udpAsk(publicPort);
        seen.set(tag, (seen.get(tag) ?? 0) + 1);
      }
      assert.deepEqual([...seen.keys()].sort(), ['A', 'B'], `both members serve: ${[...seen]}`);
      for (const [tag, count] of seen) assert.ok(count >= 2, `member ${tag} got only ${count} of 10 flows`);
      const dns = (await adminProxies(server.adminUrl!)).filter((p) => p.name === 'dns');
      assert.deepEqual(
        dns.map((p) => p.group_members),
        [
          ['alpha/dns', 'beta/dns'],
          ['alpha/dns', 'beta/dns'],
        ],
      );

      const token = await issueRoutedToken(server, { name: 'gamma', ports: String(publicPort) });
      const gamma = await startRoutedClient(h, {
        server: server.url,
        token,
        name: 'gamma',
        waitFor: [],
        proxies: [member(echoA.port, {})],
      });
      const refused = await gamma.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'dns' } });
      assert.equal(
        refused.reason,
        `udp port ${publicPort} is used by udp proxies in group "dns"; this udp proxy is in no group`,
      );
    }),
);

/** A local TLS service with its own certificate (the visitor tells the members apart by its subject). */
async function startTlsService(h: Harness, pair: CertFiles): Promise<number> {
  const service = tls.createServer(
    { cert: await readFile(pair.cert), key: await readFile(pair.key) },
    (socket) => {
      socket.on('error', () => {});
      socket.end('hello\n');
    },
  );
  await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
  h.onCleanup(() => new Promise((resolve) => service.close(resolve)));
  return (service.address() as AddressInfo).port;
}

test(
  'tls group by SNI: openssl s_client connections pass through to both clients in turn',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'porthole edge', ['vps.edge.test']);
      const ports = [
        await startTlsService(h, await makeCert(h, ca, 'vault-a', ['vault.test'])),
        await startTlsService(h, await makeCert(h, ca, 'vault-b', ['vault.test'])),
      ];
      const server = await startRoutedServer(h, { https: { certs: [edge] } });
      for (const [i, name] of ['alpha', 'beta'].entries()) {
        const token = await issueRoutedToken(server, { name, hosts: ['vault.test'] });
        await startRoutedClient(h, {
          server: server.url,
          token,
          name,
          proxies: [
            {
              name: 'vault',
              type: 'tls',
              local: `127.0.0.1:${ports[i]}`,
              hosts: ['vault.test'],
              group: 'vault',
            },
          ],
        });
      }
      const seen = new Map<string, number>();
      for (let i = 0; i < 10; i++) {
        const { out } = await sClient(
          ['-connect', `127.0.0.1:${server.httpsPort}`, '-servername', 'vault.test', '-CAfile', ca.cert],
          'Q\n',
        );
        const subject = /subject=CN\s?=\s?(vault-[ab])/.exec(out)?.[1];
        assert.ok(subject, `connection ${i}: ${out}`);
        seen.set(subject, (seen.get(subject) ?? 0) + 1);
      }
      assert.deepEqual([...seen.keys()].sort(), ['vault-a', 'vault-b'], `both members serve: ${[...seen]}`);
      for (const [who, count] of seen) assert.ok(count >= 2, `${who} got only ${count} of 10`);
    }),
);

test(
  'tcp group: a member whose max_connections is full is passed over while another has room',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const a = await startIdService(h, 'A');
      const b = await startIdService(h, 'B');
      const publicPort = await freePort();
      const server = await startRoutedServer(h, {});
      const token = await issueRoutedToken(server, { name: 'alpha', ports: String(publicPort) });
      const proxy = (name: string, port: number, keys: RoutedProxyKeys = {}): RoutedProxy => ({
        name,
        type: 'tcp',
        local: `127.0.0.1:${port}`,
        remote_port: publicPort,
        group: 'g',
        ...keys,
      });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [proxy('a', a.port, { max_connections: 1 }), proxy('b', b.port)],
      });
      // Visitors until one holds A's only connection.
      let held: Socket | undefined;
      for (let i = 0; i < 4 && !held; i++) {
        const v = await visit(publicPort, true);
        if (v.id === 'A') held = v.socket;
        else v.socket.destroy();
      }
      assert.ok(held, 'a visitor reached A');
      h.onCleanup(() => held?.destroy());
      assert.deepEqual([...(await spread(publicPort, 8))], [['B', 8]], 'A is full: B takes every turn');
      held.destroy();
      const free = await spread(publicPort, 8);
      assert.deepEqual([...free.keys()].sort(), ['A', 'B'], `A takes turns again: ${[...free]}`);
    }),
);
