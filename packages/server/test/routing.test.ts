import assert from 'node:assert/strict';
import { createSocket } from 'node:dgram';
import { writeFileSync } from 'node:fs';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { test } from 'node:test';
import { Session, type Stream } from '@porthole/mux';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import { ConfigError, ConnectionTracker, captureLogs, readStreamHeader } from '@porthole/protocol';
import type { ClientBandwidth } from '../src/client-bandwidth.js';
import { loadServerConfig } from '../src/config.js';
import { ConnectionLimit } from '../src/connection-limit.js';
import { HostRoutes, locationMatches, MAX_OFFLINE_ROUTES, OFFLINE_ROUTE_TTL_MS } from '../src/host-routes.js';
import type { HttpVhostServer } from '../src/http-vhost-server.js';
import { PendingConnections } from '../src/pending-connections.js';
import { ProxyTraffic } from '../src/proxy-traffic.js';
import { routingPath } from '../src/request-path.js';
import { readRequestTarget } from '../src/request-target.js';
import { TlsCertStore } from '../src/tls-cert-store.js';
import { TlsSniListener, type TlsTarget } from '../src/tls-sni-listener.js';
import { TrustedProxies } from '../src/trusted-proxies.js';
import { UdpProxyListener } from '../src/udp-proxy-listener.js';
import { type SelfSignedCert, selfSignedCert } from './self-signed-cert.js';

const dir = scratchDir('porthole-routing-');

/** A self-signed certificate for these DNS names, in this test's directory. */
function selfSigned(name: string, names: string[]): SelfSignedCert {
  return selfSignedCert({
    certFile: join(dir, `${name}.pem`),
    keyFile: join(dir, `${name}.key`),
    commonName: name,
    altNames: names.map((n) => `DNS:${n}`),
  });
}

test('routes: exact beats wildcard beats subdomain; the longest location wins, on path segments', () => {
  const routes = new HostRoutes<string>();
  routes.add('a', 'web', [{ host: 'app.test', tier: 'exact', location: '/' }], 'web');
  routes.add('a', 'api', [{ host: 'app.test', tier: 'exact', location: '/api' }], 'api');
  routes.add('a', 'api2', [{ host: 'app.test', tier: 'exact', location: '/api/v2/' }], 'api2');
  routes.add('b', 'wild', [{ host: '*.test', tier: 'wildcard', location: '/' }], 'wild');
  routes.add('b', 'deeper', [{ host: '*.x.test', tier: 'wildcard', location: '/' }], 'deeper');
  routes.add('c', 'sub', [{ host: 's.test', tier: 'subdomain', location: '/' }], 'sub');
  const at = (host: string, path = '/') => routes.lookup(host, path)?.target;
  assert.equal(at('app.test', '/'), 'web');
  assert.equal(at('app.test', '/api'), 'api');
  assert.equal(at('app.test', '/api/users'), 'api');
  assert.equal(at('app.test', '/apix'), 'web');
  assert.equal(at('app.test', '/api/v2/x'), 'api2');
  assert.equal(at('app.test', '/api/v2'), 'api', '"/api/v2/" covers only what is below it');
  assert.equal(at('other.test'), 'wild');
  assert.equal(at('a.x.test'), 'deeper', 'the most specific wildcard first');
  assert.equal(at('s.test'), 'wild', 'a wildcard wins over a subdomain of the same name');
  assert.equal(at('test'), undefined);
  assert.ok(locationMatches('/a/b', '/a'));
  assert.ok(!locationMatches('/ab', '/a'));
  // Whatever the case of its letters, as Express, ASP.NET and IIS read a path.
  assert.equal(at('app.test', '/API/users'), 'api');
  assert.equal(at('app.test', '/Api/V2/x'), 'api2');
  assert.ok(locationMatches('/ADMIN', '/admin'));
  assert.ok(locationMatches('/admin/x', '/Admin'));
  assert.ok(!locationMatches('/ADMINX', '/admin'));
  assert.ok(locationMatches('/CAF%C3%A9/x', '/caf%c3%a9'));
  assert.equal(
    routes.conflict('a', 'other', [{ host: 'app.test', tier: 'exact', location: '/API' }]),
    'hostname app.test location /API is already used by proxy "api"',
    'a location that differs in case only names the same paths',
  );
});

test("routes: a wildcard cannot take another client's subdomain, nor a subdomain sit under another's wildcard", () => {
  const routes = new HostRoutes<string>();
  routes.add('a', 'sub', [{ host: 'x.sub.test', tier: 'subdomain', location: '/' }], 'sub');
  const wildcard = { host: '*.sub.test', tier: 'wildcard' as const, location: '/' };
  assert.equal(
    routes.subdomainShadow('b', wildcard),
    '*.sub.test would take x.sub.test, a subdomain another client holds',
  );
  assert.equal(routes.subdomainShadow('a', wildcard), undefined, 'its own subdomain does not stop a client');
  assert.equal(routes.subdomainShadow('b', { ...wildcard, host: '*.other.test' }), undefined);
  routes.add('b', 'wild', [{ host: '*.w.test', tier: 'wildcard', location: '/' }], 'wild');
  assert.equal(
    routes.subdomainShadow('a', { host: 'y.w.test', tier: 'subdomain', location: '/' }),
    'y.w.test is covered by *.w.test, which another client holds',
  );
  routes.release('sub');
  assert.equal(routes.subdomainShadow('b', wildcard), undefined, 'an offline subdomain does not block');
});

test('routes: past the cap of offline routes the oldest are forgotten, with room left before the next sweep', () => {
  let now = 1_000;
  const routes = new HostRoutes<string>(() => now);
  const offlineCount = () => routes.entries().filter((e) => e.target === undefined).length;
  for (let i = 0; i <= MAX_OFFLINE_ROUTES; i++) {
    now += 1;
    routes.add('alpha', `p${i}`, [{ host: `h${i}.test`, tier: 'exact', location: '/' }], `t${i}`);
    routes.release(`t${i}`);
  }
  const afterSweep = offlineCount();
  assert.ok(afterSweep <= MAX_OFFLINE_ROUTES * 0.9, `${afterSweep} offline routes kept after the sweep`);
  assert.equal(routes.lookup('h0.test'), undefined, 'the oldest is forgotten');
  assert.equal(routes.lookup(`h${MAX_OFFLINE_ROUTES}.test`)?.target, undefined, 'the newest stays offline');
  assert.ok(routes.lookup(`h${MAX_OFFLINE_ROUTES}.test`));
  // The next releases below the cap forget nothing: no sweep per release.
  for (let i = 0; i < 100; i++) {
    routes.add('beta', `q${i}`, [{ host: `q${i}.test`, tier: 'exact', location: '/' }], `u${i}`);
    routes.release(`u${i}`);
  }
  assert.equal(offlineCount(), afterSweep + 100);
});

test('routes: a group shares a name and location, lookups take its members in turn, the last to leave leaves it offline', () => {
  const routes = new HostRoutes<string>();
  const claim = [{ host: 'app.test', tier: 'exact' as const, location: '/' }];
  routes.add('alpha', 'web', claim, 'alpha-web', undefined, 'site');
  assert.equal(routes.conflict('beta', 'web', claim, 'site', 'http'), undefined, 'same group: shared');
  assert.equal(
    routes.conflict('beta', 'web', claim, undefined, 'http'),
    'hostname app.test is used by http proxies in group "site"; this http proxy is in no group',
  );
  assert.equal(
    routes.conflict('beta', 'web', claim, 'other', 'http'),
    'hostname app.test is used by http proxies in group "site"; this http proxy is in group "other"',
  );
  // alpha's own proxy of the same name may leave the group: its own routes are replaced, not met.
  assert.equal(routes.conflict('alpha', 'web', claim, undefined, 'http'), undefined);
  routes.add('beta', 'web', claim, 'beta-web', undefined, 'site');
  routes.add('gamma', 'web', claim, 'gamma-web', undefined, 'site');
  routes.peekName('app.test');
  routes.peekName('app.test');
  const turns = Array.from({ length: 6 }, () => routes.lookup('app.test')?.target);
  assert.deepEqual(turns, ['alpha-web', 'beta-web', 'gamma-web', 'alpha-web', 'beta-web', 'gamma-web']);
  // (peekName, for the TLS port's decision between a tls and an http route, takes no turn.)
  // A member whose limit is full is passed over while another takes it; when none does, the next in turn.
  const notBeta = (t: string) => t !== 'beta-web';
  const skipping = Array.from({ length: 4 }, () => routes.lookupName('app.test', notBeta)?.target);
  assert.ok(!skipping.includes('beta-web'), `${skipping}`);
  assert.ok(routes.lookupName('app.test', () => false)?.target !== undefined);

  routes.release('beta-web');
  routes.release('gamma-web');
  assert.equal(routes.entries().length, 1, 'members that leave while another serves are not kept offline');
  assert.deepEqual(
    Array.from({ length: 3 }, () => routes.lookup('app.test')?.target),
    ['alpha-web', 'alpha-web', 'alpha-web'],
  );
  routes.release('alpha-web');
  const offline = routes.lookup('app.test');
  assert.ok(offline && offline.target === undefined, 'the last member leaves the name offline (502)');
  routes.add('beta', 'web', claim, 'beta-web', undefined, 'site');
  assert.equal(routes.entries().length, 1, 'a member coming back replaces the offline entry');
});

test('routes: conflicts are by client and by (name, location); offline routes answer until claimed or expired', () => {
  let now = 1_000;
  const routes = new HostRoutes<string>(() => now);
  const claim = [{ host: 'app.test', tier: 'exact' as const, location: '/' }];
  routes.add('alpha', 'web', claim, 'alpha-web');
  assert.equal(routes.conflict('beta', 'web', claim), 'hostname app.test is in use by another client');
  assert.equal(routes.conflict('alpha', 'other', claim), 'hostname app.test is already used by proxy "web"');
  assert.equal(routes.conflict('alpha', 'api', [{ ...claim[0]!, location: '/api' }]), undefined);
  assert.equal(routes.conflict('alpha', 'web', claim), undefined, 'a proxy does not conflict with itself');
  assert.ok(routes.heldByOther('beta', 'app.test'));

  routes.release('alpha-web');
  const offline = routes.lookup('app.test');
  assert.ok(offline && offline.target === undefined, 'an offline route, not a missing one');
  assert.equal(routes.conflict('beta', 'web', claim), undefined, 'offline routes do not block');
  routes.add('beta', 'web', claim, 'beta-web');
  assert.equal(routes.lookup('app.test')?.target, 'beta-web');
  assert.equal(routes.entries().length, 1, 'the offline entry was replaced');

  routes.release('beta-web');
  now += OFFLINE_ROUTE_TTL_MS;
  assert.equal(routes.lookup('app.test'), undefined, 'forgotten after the TTL');
  routes.add('beta', 'web', claim, 'again');
  routes.release('again', { forget: true });
  assert.equal(routes.lookup('app.test'), undefined);
});

test("routes: a claim forgets the offline routes of another client that lookup would put first; the claimer's own stay", () => {
  const routes = new HostRoutes<string>();
  routes.add('away', 'wild', [{ host: '*.sub.test', tier: 'wildcard', location: '/' }], 'away-wild');
  routes.add('away', 'api', [{ host: 'app.test', tier: 'exact', location: '/api' }], 'away-api');
  routes.add('here', 'old', [{ host: 'app.test', tier: 'exact', location: '/old' }], 'here-old');
  routes.release('away-wild');
  routes.release('away-api');
  routes.release('here-old');
  routes.add('here', 'x', [{ host: 'x.sub.test', tier: 'subdomain', location: '/' }], 'here-x');
  routes.add('here', 'app', [{ host: 'app.test', tier: 'exact', location: '/' }], 'here-app');
  assert.equal(routes.lookup('x.sub.test')?.target, 'here-x', 'not the offline wildcard over it');
  assert.equal(routes.lookup('y.sub.test'), undefined, 'the wildcard could not come back: forgotten');
  assert.equal(routes.lookup('app.test', '/api/users')?.target, 'here-app', "not the other's offline /api");
  const own = routes.lookup('app.test', '/old');
  assert.ok(own && own.target === undefined && own.client === 'here', 'its own offline location stays');
  assert.equal(routes.entries().filter((e) => e.target === undefined).length, 1);
  // A wildcard claim does not touch subdomains' offline routes: it ranks before them anyway.
  routes.add('away', 'sub', [{ host: 'z.w.test', tier: 'subdomain', location: '/' }], 'away-z');
  routes.release('away-z');
  routes.add('here', 'w', [{ host: '*.w.test', tier: 'wildcard', location: '/' }], 'here-w');
  assert.equal(routes.lookup('z.w.test')?.target, 'here-w');
  assert.equal(routes.entries().filter((e) => e.target === undefined).length, 2);
});

test('routes: forgetOffline drops the offline routes that match only', () => {
  const routes = new HostRoutes<string>();
  const sub = { host: 'app.old.test', tier: 'subdomain' as const, location: '/' };
  const exact = { host: 'site.test', tier: 'exact' as const, location: '/' };
  routes.add('away', 'web', [sub, { ...sub, location: '/api' }], 'away-web');
  routes.add('away', 'site', [exact], 'away-site');
  routes.add('here', 'blog', [{ ...sub, host: 'blog.old.test' }], 'here-blog');
  routes.release('away-web');
  routes.release('away-site');
  assert.equal(
    routes.forgetOffline((e) => e.tier === 'subdomain'),
    2,
    'both locations of app.old.test',
  );
  assert.equal(routes.lookup('app.old.test'), undefined);
  assert.equal(routes.lookup('app.old.test', '/api'), undefined);
  assert.equal(routes.lookup('site.test')?.target, undefined, 'the exact name stays offline');
  assert.ok(routes.lookup('site.test'));
  assert.equal(routes.lookup('blog.old.test')?.target, 'here-blog', 'an online route is not touched');
  assert.equal(
    routes.forgetOffline((e) => e.tier === 'subdomain'),
    0,
  );
  assert.equal(
    routes.forgetOffline((e) => e.tier === 'exact'),
    1,
  );
  assert.deepEqual(
    routes.entries().map((e) => e.host),
    ['blog.old.test'],
  );
});

test('trusted_proxies match CIDRs, single addresses and IPv4-mapped peers', () => {
  const trusted = new TrustedProxies(['10.0.0.0/8', '127.0.0.2', 'fd00::/8']);
  assert.ok(trusted.contains('10.1.2.3'));
  assert.ok(trusted.contains('::ffff:10.9.9.9'));
  assert.ok(trusted.contains('127.0.0.2'));
  assert.ok(!trusted.contains('127.0.0.1'));
  assert.ok(trusted.contains('fd12::1'));
  assert.ok(!trusted.contains('fe80::1'));
  assert.ok(!new TrustedProxies([]).contains('10.0.0.1'));
  assert.throws(() => TrustedProxies.check('10.0.0.0/33'), /prefix length/);
  assert.throws(() => TrustedProxies.check('example.com'), /expected an IP address/);
});

test('SNI decisions: tls proxies by exact name, then exact certificates, then wildcards; else closed', () => {
  const edge = selfSigned('edge', ['vps.example.test', '*.example.test', '*.team.example.test']);
  const certs = new TlsCertStore([{ cert: edge.cert, key: edge.key, source: 'https.certs[0]' }]);
  assert.deepEqual(certs.names.sort(), ['*.example.test', '*.team.example.test', 'vps.example.test']);
  const routes = new HostRoutes<TlsTarget>();
  const target = (proxy: string): TlsTarget => ({
    client: 'c',
    proxy,
    session: {} as Session,
    bandwidth: {} as ClientBandwidth,
    limit: new ConnectionLimit({
      client: 'c',
      proxy,
      max: () => 1,
      key: 'max_connections',
      logger: captureLogs().logger,
      onRefused: () => {},
    }),
  });
  routes.add('c', 'vault', [{ host: 'vault.example.test', tier: 'exact', location: '/' }], target('vault'));
  routes.add('c', 'wild', [{ host: '*.tls.test', tier: 'wildcard', location: '/' }], target('wild'));
  routes.add('c', 'wild2', [{ host: '*.example.test', tier: 'wildcard', location: '/' }], target('wild2'));
  // http proxies (terminated here, under the wildcard certificates): a subdomain and a wildcard more
  // specific than the tls proxy's *.example.test; and a name no certificate covers.
  const httpRoutes = new HostRoutes<string>();
  httpRoutes.add('other', 'app', [{ host: 'app.example.test', tier: 'subdomain', location: '/api' }], 'app');
  httpRoutes.add('other', 'team', [{ host: '*.team.example.test', tier: 'wildcard', location: '/' }], 'team');
  httpRoutes.add('other', 'site', [{ host: 'site.tls.test', tier: 'exact', location: '/' }], 'site');
  const listener = (defaultHost?: string) =>
    new TlsSniListener({
      listen: { host: '127.0.0.1', port: 0 },
      routes,
      httpRoutes,
      certs: () => certs,
      defaultHost,
      vhost: { terminates: true } as HttpVhostServer,
      logger: captureLogs().logger,
      tracker: new ConnectionTracker(),
      helloTimeoutMs: 1000,
      helloMaxBytes: 16384,
      pending: new PendingConnections(
        () => ({ perSource: 1, total: 1 }),
        () => new TrustedProxies([]),
        captureLogs().logger,
      ),
    });
  const decide = (name: string | undefined, defaultHost?: string) => {
    const d = listener(defaultHost).decide(name);
    return d.action === 'passthrough' ? `pass:${d.target.proxy}` : d.action;
  };
  assert.equal(decide('vault.example.test'), 'pass:vault');
  assert.equal(decide('VPS.example.test'), 'terminate');
  assert.equal(decide('a.tls.test'), 'pass:wild');
  assert.equal(decide('other.example.test'), 'pass:wild2', 'a wildcard proxy before a wildcard certificate');
  assert.equal(decide('unknown.test'), 'close');
  assert.equal(decide(undefined), 'close');
  assert.equal(decide(undefined, 'vps.example.test'), 'terminate');
  assert.equal(decide('app.example.test'), 'terminate', "an http proxy's name before a wildcard tls proxy");
  assert.equal(decide('x.team.example.test'), 'terminate', 'a more specific http wildcard too');
  assert.equal(decide('site.tls.test'), 'pass:wild', 'not without a certificate to terminate it with');
  routes.release(routes.lookup('vault.example.test')!.target!);
  assert.equal(decide('vault.example.test'), 'close', 'an offline passthrough name is closed');
  routes.release(routes.lookup('other.example.test')!.target!);
  assert.equal(decide('app.example.test'), 'terminate', 'still, with the wildcard tls proxy offline');
  // An offline tls name gives way to an online http proxy of another client that claimed the same name.
  assert.equal(decide('zzz.example.test'), 'close', 'the offline wildcard tls proxy still holds its names');
  httpRoutes.add('other', 'all', [{ host: '*.example.test', tier: 'wildcard', location: '/' }], 'all');
  assert.equal(decide('zzz.example.test'), 'terminate');
  httpRoutes.add('other', 'vault-http', [{ host: 'vault.example.test', tier: 'exact', location: '/' }], 'vh');
  assert.equal(decide('vault.example.test'), 'terminate');
});

/** Two ends of a mux session over a loopback TCP connection. */
async function sessionPair(): Promise<{ server: Session; client: Session; close(): void }> {
  const listener = createServer();
  await new Promise<void>((resolve) => listener.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<Socket>((resolve) => listener.once('connection', resolve));
  const dialed = connect((listener.address() as AddressInfo).port, '127.0.0.1');
  const serverSocket = await accepted;
  listener.close();
  const server = new Session(serverSocket, { client: false, keepAliveInterval: 0 });
  const client = new Session(dialed, { client: true, keepAliveInterval: 0 });
  return {
    server,
    client,
    close: () => {
      server.close();
      client.close();
    },
  };
}

/** A udp proxy "dns" on an ephemeral loopback port, its flows opened on `session`. */
function udpListener(session: Session, logger: ReturnType<typeof captureLogs>['logger'], maxFlows: number) {
  let id = 0;
  return new UdpProxyListener({
    client: 'c',
    proxy: { name: 'dns', type: 'udp', remote_port: 0 },
    bindHost: '127.0.0.1',
    session,
    logger,
    idleTimeoutMs: () => 60_000,
    maxFlows: () => maxFlows,
    nextId: () => ++id,
    traffic: new ProxyTraffic(new ConnectionTracker()),
  });
}

test('udp listener: a flow per sender, oversize and truncated datagrams from the tunnel dropped and counted', async () => {
  const pair = await sessionPair();
  const logs = captureLogs();
  const listener = udpListener(pair.server, logs.logger, 1);
  await listener.listen();
  const port = listener.boundPort;
  const visitor = createSocket('udp4');
  const replies: string[] = [];
  visitor.on('message', (m) => replies.push(m.toString()));
  await new Promise<void>((resolve) => visitor.bind(0, '127.0.0.1', resolve));
  try {
    const streamArrived = new Promise<Stream>((resolve) => pair.client.once('stream', resolve));
    visitor.send('q1', port, '127.0.0.1');
    const stream = await streamArrived;
    const header = await readStreamHeader(stream);
    assert.equal(header.proxy, 'dns');
    assert.equal(header.remote_port, visitor.address().port);
    assert.equal(header.udp_idle_timeout_ms, 60_000);
    const first = await new Promise<Buffer>((resolve) => {
      const chunks: Buffer[] = [];
      const onData = (chunk: Buffer) => {
        chunks.push(chunk);
        if (Buffer.concat(chunks).length >= 4) {
          stream.off('data', onData);
          resolve(Buffer.concat(chunks));
        }
      };
      stream.on('data', onData);
    });
    assert.deepEqual(first, Buffer.from([0, 2, ...Buffer.from('q1')]));

    // A second sender is over max_flows (1): dropped and counted.
    const other = createSocket('udp4');
    other.send('over', port, '127.0.0.1');
    const frame = (payload: Buffer) =>
      Buffer.concat([Buffer.from([payload.length >> 8, payload.length & 0xff]), payload]);
    // From the tunnel: a reply, an oversize frame (65535 > 65507), another reply, then a cut-off frame.
    stream.write(frame(Buffer.from('r1')));
    stream.write(frame(Buffer.alloc(65_535, 1)));
    stream.write(frame(Buffer.from('r2')));
    const deadline = Date.now() + 5000;
    while (replies.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(replies, ['r1', 'r2']);
    stream.end(Buffer.from([0, 10, 1, 2, 3]));
    await logs.waitFor('udp flow closed', { proxy: 'dns' });
    other.close();
    const closed = logs.lines.find((l) => l.msg === 'udp flow closed')!;
    assert.equal(closed.datagrams_in, 1);
    assert.equal(closed.datagrams_out, 2);
    assert.equal(closed.dropped, 2, 'the oversize and the truncated datagram');
    assert.equal(listener.stats.droppedOversize, 1);
    assert.equal(listener.stats.droppedTruncated, 1);
    assert.equal(listener.stats.droppedFlowLimit, 1);
    assert.equal(listener.activeFlows, 0);
  } finally {
    visitor.close();
    listener.close();
    pair.close();
  }
});

test('udp listener: a datagram from source port 0 (spoofed; no one could be answered) opens no flow', async () => {
  const pair = await sessionPair();
  const listener = udpListener(pair.server, captureLogs().logger, 8);
  await listener.listen();
  let streams = 0;
  pair.client.on('stream', (stream: Stream) => {
    streams += 1;
    stream.resume();
  });
  try {
    // A kernel hands such a packet over as it came; a socket cannot send one, so it is handed in the same way.
    const socket = (listener as unknown as { table: { socket: import('node:dgram').Socket } }).table.socket;
    socket.emit('message', Buffer.from('spoofed'), {
      address: '127.0.0.1',
      family: 'IPv4',
      port: 0,
      size: 7,
    });
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(streams, 0, 'no tunnel stream for it');
    assert.equal(listener.activeFlows, 0);
    assert.equal(listener.stats.droppedSend, 1);
  } finally {
    listener.close();
    pair.close();
  }
});

test('udp listener: a new spec on its port keeps the socket and the flows; a lowered max_flows ends the least recently active', async () => {
  const pair = await sessionPair();
  const logs = captureLogs();
  const listener = udpListener(pair.server, logs.logger, 3);
  await listener.listen();
  const port = listener.boundPort;
  // The tunnel's end of each flow, by the sender's port; each ends its side when the server ends the flow.
  const flows = new Map<number, { stream: Stream; data: Buffer[] }>();
  pair.client.on('stream', async (stream: Stream) => {
    const header = await readStreamHeader(stream);
    const flow = { stream, data: [] as Buffer[] };
    flows.set(header.remote_port, flow);
    stream.on('data', (c: Buffer) => flow.data.push(c));
    stream.on('end', () => stream.end());
  });
  const senders = await Promise.all(
    ['a', 'b', 'c'].map(async (name) => {
      const socket = createSocket('udp4');
      await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
      return { name, socket, port: socket.address().port };
    }),
  );
  const [a, b, c] = senders as [(typeof senders)[0], (typeof senders)[0], (typeof senders)[0]];
  const bytesOf = (sender: typeof a) => Buffer.concat(flows.get(sender.port)?.data ?? []).length;
  const waitUntil = async (what: string, done: () => boolean) => {
    const deadline = Date.now() + 5000;
    while (!done()) {
      assert.ok(Date.now() < deadline, `timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };
  try {
    // a is the oldest flow but, speaking again last, the most recently active.
    for (const sender of [a, b, c, a]) {
      const before = bytesOf(sender);
      sender.socket.send(sender.name, port, '127.0.0.1');
      await waitUntil(`${sender.name}'s datagram`, () => bytesOf(sender) > before);
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(listener.activeFlows, 3);
    listener.respec(
      { name: 'dns', type: 'udp', remote_port: port, max_flows: 1 },
      {
        idleTimeoutMs: () => 60_000,
        maxFlows: () => 1,
      },
    );
    await logs.waitFor('udp flow closed', { remote_addr: `127.0.0.1:${c.port}` });
    await logs.waitFor('udp flow closed', { remote_addr: `127.0.0.1:${b.port}` });
    const closed = logs.lines.filter((l) => l.msg === 'udp flow closed');
    assert.deepEqual(
      closed.map((l) => [l.remote_addr, l.reason]).sort(),
      [b, c].map((s) => [`127.0.0.1:${s.port}`, 'max_flows lowered to 1 by a new registration']).sort(),
    );
    assert.equal(listener.activeFlows, 1);
    // a's flow is the one it had, on the socket bound before: its next datagram arrives on the same stream.
    const before = bytesOf(a);
    a.socket.send('again', port, '127.0.0.1');
    await waitUntil("a's datagram after the new spec", () => bytesOf(a) > before);
    assert.equal(flows.size, 3, 'no new flow was opened');
    assert.equal(listener.boundPort, port);
  } finally {
    for (const sender of senders) sender.socket.close();
    listener.close();
    pair.close();
  }
});

test('server.toml: routing keys parse with defaults, and mistakes name their key', () => {
  writeFileSync(join(dir, 'secret'), `${'f'.repeat(64)}\n`);
  const edge = selfSigned('cfg', ['vps.example.test']);
  const write = (text: string) => {
    const file = join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
    writeFileSync(file, `[auth]\nsecret_file = "secret"\n${text}`);
    return file;
  };
  const minimal = loadServerConfig(write(''));
  assert.equal(minimal.routing?.httpListen, undefined);
  assert.equal(minimal.routing?.https, undefined);
  assert.equal(minimal.routing?.udpIdleTimeout, 60_000);
  const full = loadServerConfig(
    write(
      `[http]\nlisten = "127.0.0.1:0"\nheaders_timeout = "3s"\nmax_header_size = 8192\n` +
        `[https]\nlisten = "127.0.0.1:0"\ndefault_host = "vps.example.test"\n` +
        `[[https.certs]]\ncert_file = "${edge.certFile}"\nkey_file = "${edge.keyFile}"\n`,
    ).replace(/$/, ''),
  );
  assert.equal(full.routing?.httpLimits.headersTimeout, 3000);
  assert.equal(full.routing?.httpLimits.maxHeaderSize, 8192);
  assert.ok(full.routing?.https?.certs.hasExact('vps.example.test'));
  const problems = (text: string) => {
    const file = write(text);
    try {
      loadServerConfig(file);
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.problems.map((line) => line.replace(`${file}: `, ''));
    }
    assert.fail('expected a ConfigError');
  };
  // Top-level keys must come before the [auth] table in TOML, so these use dotted keys at the top.
  const top = (text: string) => {
    const file = join(dir, `t${Math.random().toString(36).slice(2)}.toml`);
    writeFileSync(file, `${text}\n[auth]\nsecret_file = "secret"\n`);
    try {
      loadServerConfig(file);
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.problems.map((line) => line.replace(`${file}: `, ''));
    }
    assert.fail('expected a ConfigError');
  };
  assert.deepEqual(top('trusted_proxies = ["10.0.0.0/40"]'), [
    'trusted_proxies[0]: invalid prefix length in "10.0.0.0/40" (0-32)',
  ]);
  assert.deepEqual(top('subdomain_host = "*.example.com"'), [
    'subdomain_host: "*.example.com" must be a plain hostname, not a wildcard',
  ]);
  assert.deepEqual(problems('[http]\nheaders_timeout = "10s"\nrequest_timeout = "5s"\n'), [
    'http.request_timeout: must not be shorter than http.headers_timeout',
  ]);
  // response_timeout: a duration, or 0 (either spelling) for none; the same field as request_timeout.
  assert.equal(minimal.routing?.httpLimits.responseTimeout, 60_000, 'the default without an [http] table');
  const httpLimits = (text: string) => loadServerConfig(write(`[http]\n${text}\n`)).routing?.httpLimits;
  assert.equal(httpLimits('')?.responseTimeout, 60_000);
  // No limit on a whole request unless one is set: a 50 MB upload at 100 KB/s was cut at the 5 minutes
  // this once defaulted to; idle_timeout still ends an upload that stalls.
  assert.equal(httpLimits('')?.requestTimeout, 0);
  assert.equal(minimal.routing?.httpLimits.requestTimeout, 0);
  assert.equal(httpLimits('response_timeout = "1500ms"')?.responseTimeout, 1500);
  for (const off of ['0', '"0"', '"0s"']) {
    assert.equal(httpLimits(`response_timeout = ${off}`)?.responseTimeout, 0, `response_timeout = ${off}`);
    assert.equal(httpLimits(`request_timeout = ${off}`)?.requestTimeout, 0, `request_timeout = ${off}`);
  }
  assert.deepEqual(problems('[http]\nresponse_timeout = "soon"\n'), [
    'http.response_timeout: invalid duration "soon" (expected a number and a unit: 250ms, 10s, 5m, 2h, 90d)',
  ]);
  assert.deepEqual(problems('[http]\nresponse_timeout = 30\n'), [
    'http.response_timeout: expected a duration like "60s", or 0 for no limit',
  ]);
  assert.deepEqual(problems('[http]\nrequest_timeout = 30\n'), [
    'http.request_timeout: expected a duration like "60s", or 0 for no limit',
  ]);
  assert.deepEqual(problems('[http]\nresponse_timeout = false\nrequest_timeout = "-5s"\n'), [
    'http.request_timeout: invalid duration "-5s" (expected a number and a unit: 250ms, 10s, 5m, 2h, 90d)',
    'http.response_timeout: expected a duration like "60s", or 0 for no limit',
  ]);
  assert.deepEqual(
    problems(
      '[https]\nlisten = "127.0.0.1:0"\n[[https.certs]]\ncert_file = "nope.pem"\nkey_file = "nope.key"\n',
    ).length,
    1,
  );
  assert.match(
    problems(
      '[https]\nlisten = "127.0.0.1:0"\n[[https.certs]]\ncert_file = "nope.pem"\nkey_file = "nope.key"\n',
    )[0]!,
    /^https\.certs\[0\]\.cert_file: cannot read .*nope\.pem: ENOENT$/,
  );
  // Checked as [tls] is: before, OpenSSL's bare "key values mismatch" ("no start line" when swapped).
  const other = selfSigned('cfg-other', ['other.example.test']);
  assert.deepEqual(
    problems(
      `[https]\nlisten = "127.0.0.1:0"\n[[https.certs]]\ncert_file = "${edge.certFile}"\nkey_file = "${edge.keyFile}"\n` +
        `[[https.certs]]\ncert_file = "${edge.certFile}"\nkey_file = "${other.keyFile}"\n`,
    ),
    [
      `https.certs[1].key_file: the key in ${other.keyFile} does not match the certificate in ${edge.certFile} (https.certs[1].cert_file)`,
    ],
  );
  assert.deepEqual(
    problems(
      `[https]\nlisten = "127.0.0.1:0"\n[[https.certs]]\ncert_file = "${edge.keyFile}"\nkey_file = "${edge.certFile}"\n`,
    ),
    [
      `https.certs[0].cert_file: ${edge.keyFile} is not a PEM certificate (it holds a private key: are cert_file and key_file swapped?)`,
    ],
  );
  assert.deepEqual(problems('[http]\nlisten = "x"\n'), [
    'http.listen: invalid address "x" (expected host:port, e.g. 127.0.0.1:22 or [::1]:22)',
  ]);
});

test('requests are routed by their normalized path, whatever way the visitor wrote it', () => {
  const cases: Array<[string | undefined, string]> = [
    ['/admin/x?q=1', '/admin/x'],
    ['//admin/x', '/admin/x'],
    ['/\\admin/x', '/admin/x'],
    ['///admin//x', '/admin/x'],
    ['/%61dmin/x', '/admin/x'],
    ['/%2e%2E/admin', '/admin'],
    ['/x/../admin/x', '/admin/x'],
    ['/x/%2e%2e/admin', '/admin'],
    ['/./admin', '/admin'],
    ['/admin%2Fx', '/admin/x'],
    ['/admin%5cx', '/admin/x'],
    ['/caf%c3%a9', '/caf%C3%A9'],
    ['/%2561dmin', '/%2561dmin'],
    // ";parameters" go before dot segments are resolved, as Tomcat, Jetty and Spring read them.
    ['/x/..;/admin/y', '/admin/y'],
    ['/x/..;jsessionid=1/admin', '/admin'],
    ['/admin;x=1/y', '/admin/y'],
    ['/admin;/y;z', '/admin/y'],
    ['/;x/admin', '/admin'],
    ['/x/..%3B/admin', '/admin'],
    ['/admin%3bx/y', '/admin/y'],
    ['/a/.;/b', '/a/b'],
    ['/a;b?c;d', '/a'],
    ['/a#frag', '/a'],
    ['http://app.test//admin/x?q', '/admin/x'],
    ['HTTP://app.test/%61dmin', '/admin'],
    ['*', '/'],
    ['app.test:443', '/'],
    [undefined, '/'],
  ];
  for (const [target, path] of cases) assert.equal(routingPath(target), path, JSON.stringify(target));
});

test('a request is routed by one host[:port] and forwarded in origin-form', () => {
  assert.deepEqual(readRequestTarget('/a?b', ['Host', ' App.Test:8080 ']), {
    host: 'App.Test:8080',
    name: 'app.test',
    target: '/a?b',
  });
  assert.deepEqual(readRequestTarget('/', []), { host: '', name: undefined, target: '/' }, 'HTTP/1.0');
  // Absolute-form: its authority replaces Host (RFC 9112 3.2.2).
  assert.deepEqual(readRequestTarget('http://Inner.Test:81/x?y', ['Host', 'app.test']), {
    host: 'Inner.Test:81',
    name: 'inner.test',
    target: '/x?y',
  });
  assert.deepEqual(readRequestTarget('https://inner.test?y', ['Host', 'app.test']), {
    host: 'inner.test',
    name: 'inner.test',
    target: '/?y',
  });
  assert.deepEqual(readRequestTarget('*', ['Host', 'app.test']), {
    host: 'app.test',
    name: 'app.test',
    target: '*',
  });
  const refused: Array<[string, string[]]> = [
    ['/', ['Host', 'a.test', 'host', 'b.test']],
    ['/', ['Host', 'a.test', 'HOST', 'a.test']],
    ['/', ['Host', 'a.test:x@b.test']],
    ['http://u@a.test/', ['Host', 'a.test']],
    ['http:///x', ['Host', 'a.test']],
    ['http://a.test/', ['Host', 'a.test', 'Host', 'b.test']],
    ['ftp://a.test/', ['Host', 'a.test']],
    ['a.test:443', ['Host', 'a.test']],
  ];
  for (const [url, raw] of refused)
    assert.ok('refused' in readRequestTarget(url, raw), `${url} ${JSON.stringify(raw)}`);
});
