import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Stream } from '@porthole/mux';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import {
  CompressedStream,
  issueToken,
  PortRanges,
  readStreamHeader,
  UDP_COMPRESSION_REASON,
} from '@porthole/protocol';
import { defaultRoutingConfig, type RoutingConfig } from '../src/routing-config.js';
import { TcpProxyListener } from '../src/tcp-proxy-listener.js';
import { TlsCertStore } from '../src/tls-cert-store.js';
import { freePort, RawClient, SECRET, startRelay, startServer, token, visit } from './harness.js';

test('hello, register, and a public connection arrives as a stream with its header; half-close both ways', async (t) => {
  const { server, url } = await startServer();
  t.after(() => server.shutdown());
  const port = await freePort();
  const client = await RawClient.connect(url, await token('homelab'));
  const hello = await client.hello();
  assert.equal(hello?.type, 'hello_ok');
  assert.equal(hello?.type === 'hello_ok' && hello.client, 'homelab');
  assert.deepEqual(await client.register([{ name: 'web', port }]), {
    type: 'register_result',
    results: [{ proxy: 'web', ok: true, remote_addr: `127.0.0.1:${port}`, remote_port: port }],
  });
  client.session.on('stream', async (stream: Stream) => {
    const header = await readStreamHeader(stream);
    assert.equal(header.proxy, 'web');
    assert.equal(header.remote_addr, '127.0.0.1');
    assert.equal(header.public_addr, `127.0.0.1:${port}`);
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    // The visitor's FIN arrives as 'end'; our reply still travels back afterwards.
    stream.on('end', () => stream.end(`echo:${Buffer.concat(chunks)}`));
  });
  assert.deepEqual(await visit(port, 'ping'), { data: 'echo:ping' });
  client.session.close();
});

test('refusals name the proxy and the reason; the other proxies still register', async (t) => {
  const [inGrant, outsideGrant, outsideAllow] = [await freePort(), 1, await freePort()];
  const { server, url } = await startServer({ allowPorts: PortRanges.parse([inGrant, 1, 2]) });
  t.after(() => server.shutdown());
  const client = await RawClient.connect(url, await token('a', `${inGrant},${outsideAllow}`));
  await client.hello();
  const result = await client.register([
    { name: 'ok', port: inGrant },
    { name: 'grant', port: outsideGrant },
    { name: 'allow', port: outsideAllow },
  ]);
  assert.deepEqual(result, {
    type: 'register_result',
    results: [
      { proxy: 'ok', ok: true, remote_addr: `127.0.0.1:${inGrant}`, remote_port: inGrant },
      {
        proxy: 'grant',
        ok: false,
        reason: `port 1 is outside the token's grant (${inGrant},${outsideAllow})`,
      },
      {
        proxy: 'allow',
        ok: false,
        reason: `port ${outsideAllow} is outside the server's allow_ports (${PortRanges.parse([inGrant, 1, 2])})`,
      },
    ],
  });
  // Another client cannot take a port this one holds.
  const other = await RawClient.connect(url, await token('b'));
  await other.hello();
  const taken = await other.register([{ name: 'web', port: inGrant }]);
  assert.equal(
    taken?.type === 'register_result' && taken.results[0]?.reason,
    `port ${inGrant} is in use by another client`,
  );
  client.session.close();
  other.session.close();
});

/** Answers each stream the server opens on `client`'s session with "echo:" and what the visitor sent. */
function echoStreams(client: RawClient): void {
  client.session.on('stream', async (stream: Stream) => {
    await readStreamHeader(stream);
    const chunks: Buffer[] = [];
    stream.on('data', (c: Buffer) => chunks.push(c));
    stream.on('end', () => stream.end(`echo:${Buffer.concat(chunks)}`));
  });
}

test("a register entry the server cannot take (a newer client's type, a range past its limit, no name) is refused with its reason; the others serve and the session stays up", async (t) => {
  const { server, url, logs } = await startServer();
  t.after(() => server.shutdown());
  const [port, other] = [await freePort(), await freePort()];
  const client = await RawClient.connect(url, await token('skewed'));
  assert.equal((await client.hello())?.type, 'hello_ok');
  client.sendRaw({
    type: 'register',
    proxies: [
      { name: 'web', type: 'tcp', remote_port: port },
      { name: 'quic', type: 'quic', remote_port: other },
      { name: 'dns', type: 'udp', remote_port: other, udp_idle_timeout_ms: 172_800_000 },
      { name: 42, type: 'tcp', remote_port: other },
    ],
  });
  assert.deepEqual(await client.next(), {
    type: 'register_result',
    results: [
      { proxy: 'web', ok: true, remote_addr: `127.0.0.1:${port}`, remote_port: port },
      {
        proxy: 'quic',
        ok: false,
        reason: 'type: not a proxy type this server knows (tcp, udp, http, tls, tcpmux)',
      },
      { proxy: 'dns', ok: false, reason: 'udp_idle_timeout_ms: Too big: expected number to be <=86400000' },
      {
        proxy: 'register entry 4 (without a valid name)',
        ok: false,
        reason: 'name: Invalid input: expected string, received number',
      },
    ],
  });
  echoStreams(client);
  assert.deepEqual(await visit(port, 'ping'), { data: 'echo:ping' });
  await logs.waitFor('proxy refused', { proxy: 'quic' });
  assert.equal((await visit(other, 'x')).error, 'ECONNREFUSED', 'no refused entry listens');
  // Still the same session: it answers a register of its own.
  assert.equal(logs.lines.filter((l) => l.msg === 'client disconnected').length, 0);
  assert.deepEqual(await client.register([{ name: 'ssh', port: other }]), {
    type: 'register_result',
    results: [{ proxy: 'ssh', ok: true, remote_addr: `127.0.0.1:${other}`, remote_port: other }],
  });
  client.session.close();
});

test("a proxy registered again on its port with a spec the server refuses (a newer client's limit past this one's) is closed, not left serving the old spec", async (t) => {
  const { server, url, logs } = await startServer();
  t.after(() => server.shutdown());
  const port = await freePort();
  const client = await RawClient.connect(url, await token('skewed'));
  assert.equal((await client.hello())?.type, 'hello_ok');
  assert.deepEqual(await client.register([{ name: 'web', port }]), {
    type: 'register_result',
    results: [{ proxy: 'web', ok: true, remote_addr: `127.0.0.1:${port}`, remote_port: port }],
  });
  echoStreams(client);
  assert.deepEqual(await visit(port, 'ping'), { data: 'echo:ping' });
  // A changed proxy on its own port comes as a register alone (no unregister first), as a reload sends it.
  client.sendRaw({
    type: 'register',
    proxies: [{ name: 'web', type: 'tcp', remote_port: port, max_connections: 2_000_000 }],
  });
  const reason = 'max_connections: Too big: expected number to be <=1000000';
  assert.deepEqual(await client.next(), {
    type: 'register_result',
    results: [{ proxy: 'web', ok: false, reason }],
  });
  await logs.waitFor('proxy closed', { proxy: 'web' });
  assert.equal(
    logs.lines.find((l) => l.msg === 'proxy closed')?.reason,
    `its new registration was refused: ${reason}`,
  );
  assert.equal((await visit(port, 'x')).error, 'ECONNREFUSED', 'the old spec no longer serves');
  // The session is the one it was, and the port is free for the proxy's next registration.
  assert.deepEqual(await client.register([{ name: 'web', port }]), {
    type: 'register_result',
    results: [{ proxy: 'web', ok: true, remote_addr: `127.0.0.1:${port}`, remote_port: port }],
  });
  assert.deepEqual(await visit(port, 'pong'), { data: 'echo:pong' });
  client.session.close();
});

test('a message type the server does not know is ignored with one warn line per type and a notice; a malformed known one ends the session with a notice saying why', async (t) => {
  const { server, url, logs } = await startServer();
  t.after(() => server.shutdown());
  const port = await freePort();
  const client = await RawClient.connect(url, await token('newer'));
  assert.equal((await client.hello())?.type, 'hello_ok');
  client.sendRaw({ type: 'subscribe', topics: ['metrics'] });
  client.sendRaw({ type: 'subscribe', topics: ['logs'] });
  assert.deepEqual(await client.register([{ name: 'web', port }]), {
    type: 'notice',
    level: 'warn',
    message: 'server 0.0.0-test does not know control message type "subscribe"; ignored',
    code: 'unknown_message',
  });
  assert.deepEqual(await client.next(), {
    type: 'register_result',
    results: [{ proxy: 'web', ok: true, remote_addr: `127.0.0.1:${port}`, remote_port: port }],
  });
  const ignored = logs.lines.filter((l) => l.msg === 'unknown control message ignored');
  assert.deepEqual(
    ignored.map((l) => [l.level, l.type]),
    [
      ['warn', 'subscribe'],
      ['debug', 'subscribe'],
    ],
  );
  echoStreams(client);
  assert.deepEqual(await visit(port, 'ping'), { data: 'echo:ping' });

  const closed = new Promise((resolve) => client.session.once('close', resolve));
  client.sendRaw({ type: 'unregister', proxies: 'web' });
  const notice = await client.next();
  assert.equal(notice?.type === 'notice' && notice.code, 'protocol');
  assert.match(
    notice?.type === 'notice' ? notice.message : '',
    /invalid control message \(type unregister\) at proxies: /,
  );
  await closed;
  await logs.waitFor('client disconnected', { client: 'newer' });
});

test('a client that connects again takes over at once: old session closed, its port bound anew', async (t) => {
  const { server, url, logs } = await startServer();
  t.after(() => server.shutdown());
  const port = await freePort();
  const jwt = await token('homelab');
  const old = await RawClient.connect(url, jwt);
  await old.hello('instance-1');
  await old.register([{ name: 'ssh', port }]);
  const oldClosed = new Promise((resolve) => old.session.once('close', resolve));

  const fresh = await RawClient.connect(url, jwt);
  assert.equal((await fresh.hello('instance-1'))?.type, 'hello_ok');
  const notice = await old.next();
  assert.equal(notice?.type === 'notice' && notice.code, 'replaced');
  await oldClosed;
  assert.deepEqual(await fresh.register([{ name: 'ssh', port }]), {
    type: 'register_result',
    results: [{ proxy: 'ssh', ok: true, remote_addr: `127.0.0.1:${port}`, remote_port: port }],
  });
  await logs.waitFor('client replaced', { client: 'homelab' });
  fresh.session.close();
});

test('a goodbye sent just before the connection closes is still read: proxies close as unregistered', async (t) => {
  const { server, url, logs } = await startServer();
  t.after(() => server.shutdown());
  const port = await freePort();
  const client = await RawClient.connect(url, await token('leaving'));
  await client.hello();
  await client.register([{ name: 'ssh', port }]);
  // What a stopping client does when nothing is open: unregister, FIN, close, all in one turn.
  client.send({ type: 'unregister', proxies: ['ssh'] });
  client.control.end();
  client.session.close();
  const closed = await logs.waitFor('proxy closed', { proxy: 'ssh' });
  assert.equal(closed.reason, 'unregistered by client');
  await logs.waitFor('client disconnected', { client: 'leaving' });
  assert.equal((await visit(port, 'x')).error, 'ECONNREFUSED');
});

test('a half-open session (network gone dark) is replaced by the reconnecting client without "in use"', async (t) => {
  const { server, url, config } = await startServer();
  t.after(() => server.shutdown());
  const relay = await startRelay({ host: '127.0.0.1', port: Number(new URL(url).port) });
  t.after(() => relay.close());
  const viaRelay = `ws://127.0.0.1:${relay.port}${config.path}`;
  const port = await freePort();
  const jwt = await token('homelab');
  const old = await RawClient.connect(viaRelay, jwt);
  await old.hello('instance-1');
  await old.register([{ name: 'ssh', port }]);
  relay.darkenExisting();
  const fresh = await RawClient.connect(viaRelay, jwt);
  await fresh.hello('instance-1');
  const result = await fresh.register([{ name: 'ssh', port }]);
  assert.equal(result?.type === 'register_result' && result.results[0]?.ok, true);
  old.session.close();
  fresh.session.close();
});

test('the server notices a dead client by keepalive and frees its ports', async (t) => {
  const { server, url, config, logs } = await startServer({ heartbeatInterval: 100, heartbeatTimeout: 400 });
  t.after(() => server.shutdown());
  const relay = await startRelay({ host: '127.0.0.1', port: Number(new URL(url).port) });
  t.after(() => relay.close());
  const port = await freePort();
  const client = await RawClient.connect(`ws://127.0.0.1:${relay.port}${config.path}`, await token('gone'));
  await client.hello();
  await client.register([{ name: 'ssh', port }]);
  const started = Date.now();
  relay.darkenExisting();
  const line = await logs.waitFor('client disconnected', { client: 'gone' }, 3000);
  assert.match(String(line.reason), /keepalive/);
  // heartbeat_timeout plus slack for a stalled machine; still far below the 30 s default it stands against.
  assert.ok(
    Date.now() - started <= 400 + 1500,
    `noticed about heartbeat_timeout after the link went dark (${Date.now() - started} ms)`,
  );
  await logs.waitFor('proxy closed', { proxy: 'ssh' });
  assert.equal((await visit(port, 'x')).error, 'ECONNREFUSED');
  client.session.close();
});

test('protocol misuse ends only that session: register before hello, wrong version', async (t) => {
  const { server, url, logs } = await startServer();
  t.after(() => server.shutdown());
  const early = await RawClient.connect(url, await token('early'));
  const earlyClosed = new Promise((resolve) => early.session.once('close', resolve));
  early.send({ type: 'register', proxies: [] });
  await earlyClosed;
  await logs.waitFor('session ended before hello', { client: 'early' });

  const old = await RawClient.connect(url, await token('old'));
  old.send({ type: 'hello', version: 99, instance_id: 'x', client_version: '9' });
  const notice = await old.next();
  assert.equal(notice?.type === 'notice' && notice.level, 'error');
  assert.match(notice?.type === 'notice' ? notice.message : '', /protocol version 99 is not supported/);

  const fine = await RawClient.connect(url, await token('fine'));
  assert.equal((await fine.hello())?.type, 'hello_ok');
  fine.session.close();
});

test('one client holds at most max_proxies_per_client proxies and 4096 host routes', {
  timeout: 30_000,
}, async (t) => {
  const ports = [await freePort(), await freePort(), await freePort()];
  const { server, url } = await startServer({
    maxProxiesPerClient: 2,
    routing: { ...defaultRoutingConfig(), httpListen: { host: '127.0.0.1', port: 0 } },
  });
  t.after(() => server.shutdown());
  const client = await RawClient.connect(url, await token('many'));
  t.after(() => client.session.close());
  await client.hello();
  const result = await client.register(ports.map((port, i) => ({ name: `p${i}`, port })));
  assert.ok(result?.type === 'register_result');
  assert.deepEqual(
    result.results.map((r) => r.reason ?? 'ok'),
    ['ok', 'ok', "this client already has 2 proxies, the server's max_proxies_per_client"],
  );
  // Registering one of its proxies again (changed) is not one more.
  const again = await client.register([{ name: 'p1', port: ports[2]! }]);
  assert.ok(again?.type === 'register_result' && again.results[0]?.ok, JSON.stringify(again));

  // Routes: 16 names x 16 locations is 256 per proxy; 16 such proxies fill the 4096, a 17th is refused.
  const routed = await startServer({
    maxProxiesPerClient: 100,
    routing: { ...defaultRoutingConfig(), httpListen: { host: '127.0.0.1', port: 0 } },
  });
  t.after(() => routed.server.shutdown());
  const web = await RawClient.connect(routed.url, await token('web'));
  t.after(() => web.session.close());
  await web.hello();
  const locations = Array.from({ length: 16 }, (_, i) => `/l${i}`);
  const proxies = Array.from({ length: 17 }, (_, p) => ({
    name: `web${p}`,
    type: 'http' as const,
    local: '127.0.0.1:8080',
    hosts: Array.from({ length: 16 }, (_, i) => `h${i}.p${p}.test`),
    locations,
  }));
  web.send({ type: 'register', proxies });
  const answer = await web.next();
  assert.ok(answer?.type === 'register_result');
  assert.equal(answer.results.filter((r) => r.ok).length, 16);
  assert.equal(
    answer.results[16]?.reason,
    'this proxy would bring the client to 4352 host routes (names x locations); the limit is 4096',
  );
});

/** An [http] and an [https] port on loopback (no certificates): http and tls proxies can register. */
function vhostRouting(): RoutingConfig {
  return {
    ...defaultRoutingConfig(),
    httpListen: { host: '127.0.0.1', port: 0 },
    https: {
      listen: { host: '127.0.0.1', port: 0 },
      defaultHost: undefined,
      handshakeTimeout: 10_000,
      maxClientHelloSize: 16 * 1024,
      certs: new TlsCertStore([]),
    },
  };
}

test('a name a proxy gives twice, in hosts and as its subdomain, is one URL', {
  timeout: 30_000,
}, async (t) => {
  const routing: RoutingConfig = { ...vhostRouting(), subdomainHost: 'home.test' };
  const { server, url } = await startServer({
    file: join(scratchDir('porthole-twice-'), 'server.toml'),
    routing,
  });
  t.after(() => server.shutdown());
  const client = await RawClient.connect(url, await token('twice'));
  t.after(() => client.session.close());
  await client.hello();
  client.send({
    type: 'register',
    proxies: [
      { name: 'blog', type: 'http', hosts: ['blog.home.test', 'Blog.Home.Test'], subdomain: 'blog' },
      { name: 'vault', type: 'tls', hosts: ['vault.home.test'], subdomain: 'vault' },
    ],
  });
  const result = await client.next();
  assert.ok(result?.type === 'register_result', JSON.stringify(result));
  const httpPort = Number(server.ctx.routing.httpAddress?.split(':').pop());
  const httpsPort = Number(server.ctx.routing.httpsAddress?.split(':').pop());
  assert.deepEqual(
    result.results.map((r) => [r.proxy, r.ok, r.urls]),
    [
      ['blog', true, [`http://blog.home.test:${httpPort}/`]],
      ['vault', true, [`tls://vault.home.test:${httpsPort}`]],
    ],
  );
});

test('a reload that changes subdomain_host moves http and tls subdomain routes as registering now would; a name another client holds closes the proxy', {
  timeout: 30_000,
}, async (t) => {
  const file = join(scratchDir('porthole-reload-'), 'server.toml');
  const routing: RoutingConfig = { ...vhostRouting(), subdomainHost: 'old.test' };
  const { server, url, logs } = await startServer({ file, routing });
  t.after(() => server.shutdown());
  const { httpRoutes, tlsRoutes } = server.ctx.routing;
  const client = await RawClient.connect(url, await token('moving'));
  t.after(() => client.session.close());
  await client.hello();
  const proxies = [
    { name: 'web', type: 'http' as const, subdomain: 'app', locations: ['/', '/api'] },
    { name: 'vault', type: 'tls' as const, subdomain: 'vault' },
    { name: 'docs', type: 'http' as const, subdomain: 'docs' },
  ];
  client.send({ type: 'register', proxies });
  const first = await client.next();
  assert.ok(first?.type === 'register_result' && first.results.every((r) => r.ok), JSON.stringify(first));
  // Another client's http proxy already holds the name docs would move to.
  const other = await RawClient.connect(url, await token('other'));
  t.after(() => other.session.close());
  await other.hello();
  other.send({ type: 'register', proxies: [{ name: 'site', type: 'http', hosts: ['docs.new.test'] }] });
  assert.ok((await other.next())?.type === 'register_result');

  writeFileSync(
    file,
    [
      'subdomain_host = "new.test"',
      '[auth]',
      `secret = "${SECRET}"`,
      '[http]',
      'listen = "127.0.0.1:0"',
      '[https]',
      'listen = "127.0.0.1:0"',
      '',
    ].join('\n'),
  );
  server.reload();
  for (const path of ['/', '/api/x']) {
    assert.equal(httpRoutes.lookup('app.new.test', path)?.proxy, 'web');
    assert.ok(httpRoutes.lookup('app.new.test', path)?.target, 'online');
    assert.equal(httpRoutes.lookup('app.old.test', path), undefined, 'the old name is forgotten');
  }
  assert.equal(tlsRoutes.lookupName('vault.new.test')?.proxy, 'vault');
  assert.equal(tlsRoutes.lookupName('vault.old.test'), undefined);
  assert.equal(httpRoutes.lookup('docs.new.test')?.client, 'other');
  assert.equal(httpRoutes.lookup('docs.old.test'), undefined, 'closed by the reload: forgotten, not offline');
  const reloaded = await logs.waitFor('config reloaded');
  assert.deepEqual(reloaded.proxies_moved, ['moving/web', 'moving/vault']);
  assert.deepEqual(reloaded.proxies_closed, ['moving/docs']);
  const moved = await logs.waitFor('proxy routes moved', { client: 'moving', proxy: 'web' });
  assert.deepEqual([moved.old_hosts, moved.new_hosts], [['app.old.test'], ['app.new.test']]);

  const closed = await client.next();
  assert.ok(closed?.type === 'notice' && closed.code === 'proxies_closed', JSON.stringify(closed));
  assert.deepEqual(closed.proxies, ['docs']);
  assert.match(closed.message, /"docs" \(hostname docs\.new\.test is in use by another client\)/);
  const told = await client.next();
  assert.ok(told?.type === 'notice' && told.code === 'proxies_moved', JSON.stringify(told));
  assert.deepEqual(told.proxies, ['web', 'vault']);
  const httpPort = Number(server.ctx.routing.httpAddress?.split(':').pop());
  const httpsPort = Number(server.ctx.routing.httpsAddress?.split(':').pop());
  const newUrls = [
    { proxy: 'web', urls: [`http://app.new.test:${httpPort}/`, `http://app.new.test:${httpPort}/api`] },
    { proxy: 'vault', urls: [`tls://vault.new.test:${httpsPort}`] },
  ];
  const results = await client.next();
  assert.ok(results?.type === 'register_result');
  assert.deepEqual(
    results.results.map((r) => ({ proxy: r.proxy, urls: r.urls })),
    newUrls,
  );

  // The same specs again: nothing left to change, the same answer.
  client.send({ type: 'register', proxies: proxies.slice(0, 2) });
  const again = await client.next();
  assert.ok(again?.type === 'register_result');
  assert.deepEqual(
    again.results.map((r) => ({ proxy: r.proxy, urls: r.urls })),
    newUrls,
  );
  assert.equal(httpRoutes.lookup('app.new.test')?.proxy, 'web');
});

test('a session ends when its token expires, with a notice saying so', { timeout: 15_000 }, async (t) => {
  const { server, url } = await startServer();
  t.after(() => server.shutdown());
  const jwt = await issueToken(SECRET, { name: 'brief', expiresInMs: 1500 });
  const client = await RawClient.connect(url, jwt);
  t.after(() => client.session.close());
  await client.hello();
  let message = await client.next();
  while (message && message.type !== 'notice') message = await client.next();
  assert.ok(message?.type === 'notice', 'a notice before the end');
  assert.equal(message.code, 'expired');
  assert.equal(message.message, 'token expired');
  // Measured against the token's own exp (whole seconds), not against when the test got round to hello.
  const { exp } = JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString()) as { exp: number };
  const afterExp = Date.now() - exp * 1000;
  assert.ok(afterExp >= -50 && afterExp < 3000, `the notice came ${afterExp} ms after the token's exp`);
  await new Promise<void>((resolve) => {
    if (client.session.closed) resolve();
    else client.session.once('close', () => resolve());
  });
});

test('a drain that comes while a proxy is still binding refuses it too: no port is left listening', async (t) => {
  const { server, url } = await startServer();
  t.after(() => server.shutdown());
  const port = await freePort();
  const client = await RawClient.connect(url, await token('homelab'));
  await client.hello();
  // The drain lands in the one moment the check before the bind cannot see: while listen() is under way.
  const listen = TcpProxyListener.prototype.listen;
  t.after(() => {
    TcpProxyListener.prototype.listen = listen;
  });
  TcpProxyListener.prototype.listen = function (this: TcpProxyListener) {
    const bound = listen.call(this);
    for (const session of server.ctx.sessions) session.drain('server shutting down');
    return bound;
  };
  let answer = await client.register([{ name: 'web', port }]);
  assert.equal(answer?.type === 'notice' && answer.code, 'shutdown', 'the drain is told first');
  answer = await client.next();
  assert.deepEqual(answer, {
    type: 'register_result',
    results: [{ proxy: 'web', ok: false, reason: 'the server is shutting down' }],
  });
  assert.equal((await visit(port, 'ping')).error, 'ECONNREFUSED', 'the port it bound is closed again');
  client.session.close();
});

test('a client that does not read its answers is not answered ahead: the server reads its next request once it has', async (t) => {
  const { server, url } = await startServer({ allowPorts: PortRanges.parse([2]) });
  t.after(() => server.shutdown());
  const client = await RawClient.connect(url, await token('homelab'));
  await client.hello();
  // Each answer refuses 1024 proxies (~90 KB); forty of them unread would be 3.6 MB held by the server.
  const proxies = Array.from({ length: 1024 }, (_, i) => ({
    name: `p${i}`,
    type: 'tcp' as const,
    remote_port: 1,
  }));
  for (let i = 0; i < 40; i++) client.send({ type: 'register', proxies });
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const [session] = [...server.ctx.sessions];
  const unread = (session as unknown as { control: Stream }).control.writableLength;
  assert.ok(unread < 1024 * 1024, `${unread} bytes of answers held for a client that does not read`);
  // Once the client reads, every request is answered, none lost.
  for (let i = 0; i < 40; i++) {
    const answer = await client.next();
    assert.equal(answer?.type, 'register_result', `answer ${i}`);
    assert.equal(answer?.type === 'register_result' && answer.results.length, 1024);
  }
  client.session.close();
});

test('a tls proxy named by an IP address is refused (the TLS port reads such an SNI as none); an http proxy takes one', async (t) => {
  const { server, url } = await startServer({ routing: vhostRouting() });
  t.after(() => server.shutdown());
  const client = await RawClient.connect(url, await token('by-address'));
  t.after(() => client.session.close());
  await client.hello();
  client.send({
    type: 'register',
    proxies: [
      { name: 'vault', type: 'tls', hosts: ['127.0.0.1'] },
      { name: 'web', type: 'http', hosts: ['127.0.0.1'] },
    ],
  });
  const answer = await client.next();
  assert.ok(answer?.type === 'register_result', JSON.stringify(answer));
  assert.deepEqual(
    answer.results.map((r) => [r.proxy, r.ok, r.reason]),
    [
      [
        'vault',
        false,
        '127.0.0.1 is an IP address, which SNI does not carry (RFC 6066): a tls proxy is found by a hostname',
      ],
      ['web', true, undefined],
    ],
  );
});

test('compression: the result says the server took it, each stream is marked and deflated both ways; udp is refused, and a proxy without it is left as it was', async (t) => {
  const { server, url } = await startServer();
  t.after(() => server.shutdown());
  const [packed, plain, game] = [await freePort(), await freePort(), await freePort()];
  const client = await RawClient.connect(url, await token('homelab'));
  await client.hello();
  client.sendRaw({
    type: 'register',
    proxies: [
      { name: 'packed', type: 'tcp', remote_port: packed, compression: true },
      { name: 'plain', type: 'tcp', remote_port: plain },
      { name: 'game', type: 'udp', remote_port: game, compression: true },
    ],
  });
  assert.deepEqual(await client.next(), {
    type: 'register_result',
    results: [
      {
        proxy: 'packed',
        ok: true,
        compression: true,
        remote_addr: `127.0.0.1:${packed}`,
        remote_port: packed,
      },
      { proxy: 'plain', ok: true, remote_addr: `127.0.0.1:${plain}`, remote_port: plain },
      { proxy: 'game', ok: false, reason: UDP_COMPRESSION_REASON },
    ],
  });
  client.session.on('stream', async (stream: Stream) => {
    const header = await readStreamHeader(stream);
    // What a client does: inflate what a marked stream carries, deflate the reply.
    const tunnel = header.compression ? new CompressedStream(stream) : stream;
    const chunks: Buffer[] = [];
    tunnel.on('data', (c: Buffer) => chunks.push(c));
    tunnel.on('end', () =>
      tunnel.end(`${header.proxy} ${header.compression ?? false}:${Buffer.concat(chunks)}`),
    );
  });
  assert.deepEqual(await visit(packed, 'ping'), { data: 'packed true:ping' });
  assert.deepEqual(await visit(plain, 'ping'), { data: 'plain false:ping' });
  client.session.close();
});

test('response_headers: the result says the server sets them (http only); a name the server owns and a proxy of another type are refused with the reason', async (t) => {
  const { server, url } = await startServer({ routing: vhostRouting() });
  t.after(() => server.shutdown());
  const port = await freePort();
  const client = await RawClient.connect(url, await token('secured'));
  t.after(() => client.session.close());
  await client.hello();
  client.sendRaw({
    type: 'register',
    proxies: [
      { name: 'web', type: 'http', hosts: ['app.test'], response_headers: { 'X-Frame-Options': 'DENY' } },
      { name: 'plain', type: 'http', hosts: ['plain.test'] },
      { name: 'framed', type: 'http', hosts: ['framed.test'], response_headers: { 'content-length': '0' } },
      { name: 'ssh', type: 'tcp', remote_port: port, response_headers: { 'X-Frame-Options': 'DENY' } },
    ],
  });
  const answer = await client.next();
  assert.ok(answer?.type === 'register_result', JSON.stringify(answer));
  assert.deepEqual(
    answer.results.map((r) => [r.proxy, r.ok, r.response_headers, r.reason]),
    [
      ['web', true, true, undefined],
      ['plain', true, undefined, undefined],
      [
        'framed',
        false,
        undefined,
        'response_headers.content-length: cannot be set here: it frames the body, which the server frames itself as it passes the body on',
      ],
      ['ssh', false, undefined, 'response_headers applies to http proxies only'],
    ],
  );
});
