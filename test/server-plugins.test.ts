// [[plugins]]: frp's httpPlugins protocol. A policy service on loopback (a node:http server standing for the
// operator's own) is asked by the real porthole-server at sign-in (Login), registration (NewProxy) and per
// visitor (NewUserConn), and told when a proxy closes (CloseProxy); its rejections refuse the client, the
// proxy or the visitor, and what it receives has frp's field names.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import {
  createServer,
  type IncomingHttpHeaders,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { startTaggedHttp } from './lib/http-backend.js';
import { issue, startPrivateClient } from './lib/private.js';
import {
  freePort,
  type Harness,
  type LogLine,
  run,
  serverBin,
  waitFor,
  withHarness,
  withTimeout,
} from './lib/processes.js';
import {
  type CertFiles,
  issueRoutedToken,
  makeSelfSigned,
  makeSelfSignedCert,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  startRoutedClient,
  startRoutedServer,
  type TomlValue,
  tomlLines,
} from './lib/routing.js';
import { startEchoServer, tryConnect } from './lib/services.js';
import { portOf } from './lib/tunnel.js';

/** One request the policy service received. */
interface PluginRequest {
  url: string;
  headers: IncomingHttpHeaders;
  text: string;
  body: { version: string; op: string; content: Record<string, unknown> };
}

/** What the service answers: a verdict, or 'hang' (never answers) or 'garbage' (not JSON). */
type Decision = { reject: boolean; reject_reason?: string } | 'hang' | 'garbage';

interface PolicyService {
  url: string;
  requests: PluginRequest[];
  of(op: string): PluginRequest[];
}

const ALLOW: Decision = { reject: false };

/** The operator's policy service, over https with `tls` (PEM files), else http. */
async function startPolicyService(
  h: Harness,
  decide: (req: PluginRequest) => Decision,
  tls?: CertFiles,
): Promise<PolicyService> {
  const requests: PluginRequest[] = [];
  const held: ServerResponse[] = [];
  const handle = (req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const text = Buffer.concat(chunks).toString('utf8');
      const seen: PluginRequest = { url: req.url ?? '', headers: req.headers, text, body: JSON.parse(text) };
      requests.push(seen);
      const decision = decide(seen);
      if (decision === 'hang') {
        held.push(res);
        return;
      }
      res.setHeader('Content-Type', 'application/json');
      res.end(decision === 'garbage' ? '<html>oops</html>' : JSON.stringify({ ...decision, unchange: true }));
    });
  };
  const server: Server = tls
    ? createHttpsServer({ cert: await readFile(tls.cert), key: await readFile(tls.key) }, handle)
    : createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  h.onCleanup(() => {
    for (const res of held) res.destroy();
    server.closeAllConnections();
    server.close();
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `${tls ? 'https' : 'http'}://127.0.0.1:${port}/handler`,
    requests,
    of: (op) => requests.filter((r) => r.body.op === op),
  };
}

/** A [[plugins]] table as server.toml text. */
function pluginTable(keys: Parameters<typeof tomlLines>[0]): string {
  return `[[plugins]]\n${tomlLines(keys)}`;
}

/** `nc` from `source`: what the echo service behind `port` sent back for "hello" (empty when cut off). */
async function ncEcho(source: string, port: number): Promise<string> {
  const r = await run('nc', ['-N', '-w', '3', '-s', source, '127.0.0.1', String(port)], {
    input: 'hello\n',
    timeoutMs: 10_000,
  });
  return r.stdout;
}

/** The session id a client's "session established" line names (frp's run_id). */
function sessionIdOf(line: LogLine): string {
  return String(line.session_id);
}

const USER_KEYS = ['metas', 'run_id', 'user'];
const LOGIN_KEYS = [
  'arch',
  'client_address',
  'hostname',
  'metas',
  'os',
  'pool_count',
  'privilege_key',
  'run_id',
  'timestamp',
  'user',
  'version',
];

test('Login: the plugin refuses one client with its reason, which the client logs; another signs in with its metadata', async (t) => {
  await withHarness(t, async (h) => {
    const policy = await startPolicyService(h, (req) =>
      req.body.content.user === 'mallory'
        ? { reject: true, reject_reason: 'user mallory is suspended' }
        : ALLOW,
    );
    const server = await startRoutedServer(h, {
      http: false,
      tables: [
        pluginTable({
          name: 'user-manager',
          addr: policy.url.replace(/^http:\/\/|\/handler$/g, ''),
          path: '/handler',
          ops: ['Login'],
          headers: { Authorization: 'Bearer policy-secret' },
        }),
      ],
    });
    assert.deepEqual(server.proc.logsWithMsg('server listening')[0]?.plugins, ['user-manager']);
    const echo = await startEchoServer();
    h.onCleanup(() => echo.close());
    const port = await freePort();
    const aliceToken = await issueRoutedToken(server, { name: 'alice', ports: String(port) });
    const alice = await startRoutedClient(h, {
      server: server.url,
      token: aliceToken,
      name: 'alice',
      proxies: [{ name: 'echo', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: port }],
      keys: { metadata: { team: 'ops', tier: 'gold' } },
    });
    assert.equal(await ncEcho('127.0.0.1', port), 'hello\n');

    const malloryToken = await issueRoutedToken(server, { name: 'mallory', ports: String(port) });
    const mallory = await startRoutedClient(h, {
      server: server.url,
      token: malloryToken,
      name: 'mallory',
      proxies: [{ name: 'echo', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: port }],
      waitFor: [],
    });
    const notice = await mallory.proc.waitForMsg('server notice', 15_000, {
      fields: { code: 'login_refused' },
    });
    assert.equal(
      notice.reason,
      `sign-in refused by the server's plugin "user-manager": user mallory is suspended`,
    );
    assert.equal(notice.level, 'error', 'the refusal is logged at error');
    await server.proc.waitForMsg('client refused', 5_000, {
      fields: { client: 'mallory', plugin: 'user-manager' },
    });
    assert.equal(mallory.proc.logsWithMsg('session established').length, 0);
    // The refused session took nothing over: alice's proxy still serves.
    assert.equal(await ncEcho('127.0.0.1', port), 'hello\n');
    // With exit_on_auth_failure the refusal ends the client, as a refused token does (frp's loginFailExit).
    await mallory.proc.stop();
    const stopping = await startRoutedClient(h, {
      server: server.url,
      token: malloryToken,
      name: 'mallory',
      proxies: [{ name: 'echo', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: port }],
      keys: { exit_on_auth_failure: true },
      waitFor: [],
    });
    const exit = await withTimeout(
      stopping.proc.exited,
      15_000,
      () => `mallory to exit on the refusal\n${stopping.proc.tail(5)}`,
    );
    assert.equal(exit.code, 4, stopping.proc.tail(5));
    const gaveUp = stopping.proc.logsWithMsg('sign-in refused: giving up (exit_on_auth_failure)')[0];
    assert.equal(gaveUp?.reason, notice.reason);

    const [login] = policy.of('Login').filter((r) => r.body.content.user === 'alice');
    assert.ok(login, 'alice was asked about');
    assert.equal(login.url, '/handler?version=0.1.0&op=Login');
    assert.equal(login.headers.authorization, 'Bearer policy-secret');
    assert.match(String(login.headers['content-type']), /^application\/json/);
    assert.match(String(login.headers['x-frp-reqid']), /^[0-9a-f-]{36}$/);
    assert.equal(login.body.version, '0.1.0');
    assert.deepEqual(Object.keys(login.body.content).sort(), LOGIN_KEYS);
    const established = await alice.proc.waitForMsg('session established', 1_000);
    assert.equal(login.body.content.run_id, sessionIdOf(established));
    assert.deepEqual(login.body.content.metas, { team: 'ops', tier: 'gold' });
    assert.match(String(login.body.content.client_address), /^127\.0\.0\.1:\d+$/);
    assert.equal(login.body.content.privilege_key, '');
    assert.ok(!login.text.includes(aliceToken), 'the token never reaches the plugin');
    // Only Login is configured: visitors and registrations cost no request.
    assert.deepEqual(
      [...new Set(policy.requests.map((r) => r.body.op))],
      ['Login'],
      'only the configured op is asked',
    );
  });
});

test('NewProxy: the plugin refuses one of two proxies with its reason; the other serves', async (t) => {
  await withHarness(t, async (h) => {
    const policy = await startPolicyService(h, (req) =>
      req.body.content.proxy_name === 'db'
        ? { reject: true, reject_reason: 'port reserved for the DBA team' }
        : ALLOW,
    );
    const server = await startRoutedServer(h, {
      tables: [pluginTable({ name: 'port-manager', url: policy.url, ops: ['NewProxy'] })],
    });
    const web = await startTaggedHttp(h, 'web', 0);
    const webPort = (web.address() as AddressInfo).port;
    const dbPort = await freePort();
    const token = await issueRoutedToken(server, {
      name: 'carol',
      ports: String(dbPort),
      hosts: ['app.plugins.test'],
    });
    const client = await startRoutedClient(h, {
      server: server.url,
      token,
      proxies: [
        {
          name: 'web',
          type: 'http',
          local: `127.0.0.1:${webPort}`,
          hosts: ['app.plugins.test'],
          locations: ['/'],
          compression: true,
        },
        { name: 'db', type: 'tcp', local: '127.0.0.1:9', remote_port: dbPort },
      ],
      waitFor: ['web'],
    });
    const refused = await client.proc.waitForMsg('proxy refused', 10_000, { fields: { proxy: 'db' } });
    assert.equal(
      refused.reason,
      `refused by the server's plugin "port-manager": port reserved for the DBA team`,
    );
    assert.equal(await tryConnect('127.0.0.1', dbPort, 2_000), 'refused', 'the refused port is not bound');
    const page = await curl(['-H', 'Host: app.plugins.test'], `http://127.0.0.1:${server.httpPort}/hi`);
    assert.equal(page.status, 200);
    assert.match(page.body, /^web GET \/hi /);

    const established = await client.proc.waitForMsg('session established', 1_000);
    const user = { user: 'carol', metas: {}, run_id: sessionIdOf(established) };
    const [webAsk] = policy.of('NewProxy').filter((r) => r.body.content.proxy_name === 'web');
    const [dbAsk] = policy.of('NewProxy').filter((r) => r.body.content.proxy_name === 'db');
    assert.ok(webAsk && dbAsk);
    assert.equal(dbAsk.url, '/handler?version=0.1.0&op=NewProxy');
    assert.deepEqual(Object.keys(dbAsk.body.content.user as object).sort(), USER_KEYS);
    assert.deepEqual(dbAsk.body.content.user, user);
    assert.equal(dbAsk.body.content.proxy_type, 'tcp');
    assert.equal(dbAsk.body.content.remote_port, dbPort);
    assert.equal(webAsk.body.content.proxy_type, 'http');
    assert.deepEqual(webAsk.body.content.custom_domains, ['app.plugins.test']);
    assert.deepEqual(webAsk.body.content.locations, ['/']);
    assert.equal(webAsk.body.content.subdomain, '');
    assert.equal(
      webAsk.body.content.use_compression,
      true,
      "frp's use_compression is the proxy's compression",
    );
    assert.equal(dbAsk.body.content.use_compression, false);
  });
});

test('NewProxy: a reload that changes only compression asks again, with use_compression as the proxy has it now, and the answer holds', async (t) => {
  await withHarness(t, async (h) => {
    const policy = await startPolicyService(h, (req) =>
      req.body.content.use_compression === true
        ? { reject: true, reject_reason: 'no compression on this server' }
        : ALLOW,
    );
    const server = await startRoutedServer(h, {
      tables: [pluginTable({ name: 'cpu-guard', url: policy.url, ops: ['NewProxy'] })],
    });
    const echo = await startEchoServer();
    h.onCleanup(() => echo.close());
    const port = await freePort();
    const token = await issueRoutedToken(server, { name: 'carol', ports: String(port) });
    const db: RoutedProxy = { name: 'db', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: port };
    const client = await startRoutedClient(h, { server: server.url, token, proxies: [db] });
    const reloadTo = async (proxy: RoutedProxy, answer: string) => {
      const from = client.proc.mark();
      await rewriteRoutedClientProxies(client.configPath, [proxy]);
      client.proc.kill('SIGHUP');
      return client.proc.waitForMsg(answer, 15_000, { from, fields: { proxy: 'db' } });
    };

    const refused = await reloadTo({ ...db, compression: true }, 'proxy refused');
    assert.equal(refused.reason, `refused by the server's plugin "cpu-guard": no compression on this server`);
    assert.equal(await tryConnect('127.0.0.1', port, 2_000), 'refused', 'its port is let go');
    await reloadTo(db, 'proxy registered');
    assert.equal(await ncEcho('127.0.0.1', port), 'hello\n');
    const asks = policy.of('NewProxy').map((r) => r.body.content.use_compression);
    // A refused proxy is asked for again every proxy_retry_interval (30 s): a slow run may add a repeat.
    const turns = asks.filter((compressed, i) => compressed !== asks[i - 1]);
    assert.deepEqual(turns, [false, true, false], `asked at sign-in and at each reload: ${asks}`);
  });
});

test('CloseProxy: told when a proxy stops being served (removed or moved by a reload, refused on its changed registration, its client gone), not when it changes in place', async (t) => {
  await withHarness(t, async (h) => {
    const policy = await startPolicyService(h, (req) =>
      req.body.op === 'NewProxy' && req.body.content.use_compression === true
        ? { reject: true, reject_reason: 'no compression on this server' }
        : ALLOW,
    );
    const server = await startRoutedServer(h, {
      tables: [pluginTable({ name: 'ledger', url: policy.url, ops: ['NewProxy', 'CloseProxy'] })],
    });
    const echo = await startEchoServer();
    h.onCleanup(() => echo.close());
    const [webPort, webMoved, dbPort, apiPort] = [
      await freePort(),
      await freePort(),
      await freePort(),
      await freePort(),
    ];
    const token = await issueRoutedToken(server, {
      name: 'carol',
      ports: [webPort, webMoved, dbPort, apiPort].join(','),
    });
    const tcp = (name: string, port: number, more: Partial<RoutedProxy> = {}): RoutedProxy => ({
      name,
      type: 'tcp',
      local: `127.0.0.1:${echo.port}`,
      remote_port: port,
      ...more,
    });
    const client = await startRoutedClient(h, {
      server: server.url,
      token,
      proxies: [tcp('web', webPort), tcp('db', dbPort), tcp('api', apiPort)],
    });
    const established = await client.proc.waitForMsg('session established', 1_000);
    const user = { user: 'carol', metas: {}, run_id: sessionIdOf(established) };
    const reloadTo = async (proxies: RoutedProxy[], answer: string, fields: Record<string, unknown>) => {
      const from = client.proc.mark();
      await rewriteRoutedClientProxies(client.configPath, proxies);
      client.proc.kill('SIGHUP');
      await client.proc.waitForMsg(answer, 15_000, { from, fields });
    };
    /** The plugin's requests, in the order it got them, as "Op name". */
    const heard = () => policy.requests.map((r) => `${r.body.op} ${r.body.content.proxy_name}`).slice(3);
    const closed = () => heard().filter((line) => line.startsWith('CloseProxy'));
    const told = (names: string[]) => {
      const want = names.map((name) => `CloseProxy ${name}`).join(', ');
      return waitFor(`CloseProxy for ${want}; heard ${heard()}`, () => closed().join(', ') === want, 10_000);
    };

    await reloadTo([tcp('web', webPort), tcp('db', dbPort)], 'config reloaded', { removed: ['api'] });
    await told(['api']);
    const [apiClosed] = policy.of('CloseProxy');
    assert.equal(apiClosed!.url, '/handler?version=0.1.0&op=CloseProxy');
    assert.deepEqual(apiClosed!.body.content, { user, proxy_name: 'api' });

    // Moved to another port: the client unregisters it and registers it anew, as frpc does on a reload.
    await reloadTo([tcp('web', webMoved), tcp('db', dbPort)], 'proxy registered', { proxy: 'web' });
    assert.equal(await ncEcho('127.0.0.1', webMoved), 'hello\n');
    await told(['api', 'web']);
    assert.deepEqual(heard(), ['CloseProxy api', 'CloseProxy web', 'NewProxy web']);

    // Changed on its own port: asked again, still served, so not closed. With max_connections the server
    // changes it in place; put in a group, it closes it and binds the group's listener there.
    const dbCapped = tcp('db', dbPort, { max_connections: 5 });
    await reloadTo([tcp('web', webMoved), dbCapped], 'proxy registered', { proxy: 'db' });
    assert.equal(await ncEcho('127.0.0.1', dbPort), 'hello\n');
    const dbGrouped = { ...dbCapped, group: 'dbs' };
    await reloadTo([tcp('web', webMoved), dbGrouped], 'proxy registered', { proxy: 'db' });
    assert.equal(await ncEcho('127.0.0.1', dbPort), 'hello\n');
    // Changed again, and the change refused: the registration it had is gone too.
    await reloadTo([tcp('web', webMoved), { ...dbGrouped, compression: true }], 'proxy refused', {
      proxy: 'db',
    });
    await told(['api', 'web', 'db']);
    assert.deepEqual(heard().slice(3), ['NewProxy db', 'NewProxy db', 'NewProxy db', 'CloseProxy db']);

    client.proc.kill('SIGTERM');
    await told(['api', 'web', 'db', 'web']);
    assert.deepEqual(
      policy.of('CloseProxy').map((r) => r.body.content.user),
      [user, user, user, user],
    );
  });
});

test('NewUserConn: a visitor address the plugin refuses is cut off (tcp, tls), answered 403 (http, tcpmux); others pass', async (t) => {
  await withHarness(t, async (h) => {
    // Loopback has all of 127/8: 127.0.0.2 is the stranger.
    const policy = await startPolicyService(h, (req) =>
      String(req.body.content.remote_addr).startsWith('127.0.0.2:')
        ? { reject: true, reject_reason: 'address blocked' }
        : ALLOW,
    );
    const server = await startRoutedServer(h, {
      tcpmux: {},
      https: { certs: [await makeSelfSignedCert(h, 'edge.plugins.test')] },
      tables: [pluginTable({ name: 'visitor-policy', url: policy.url, ops: ['NewUserConn'] })],
    });
    // The tls proxy's own service: the server passes its visitors' TLS through by SNI.
    const vaultCert = await makeSelfSignedCert(h, 'vault.plugins.test');
    const vault = createHttpsServer(
      { cert: await readFile(vaultCert.cert), key: await readFile(vaultCert.key) },
      (_req, res) => res.end('vault\n'),
    );
    await new Promise<void>((resolve) => vault.listen(0, '127.0.0.1', resolve));
    h.onCleanup(() => {
      vault.closeAllConnections();
      vault.close();
    });
    const echo = await startEchoServer();
    h.onCleanup(() => echo.close());
    const web = await startTaggedHttp(h, 'web', 0);
    const webPort = (web.address() as AddressInfo).port;
    const port = await freePort();
    const token = await issueRoutedToken(server, {
      name: 'erin',
      ports: String(port),
      hosts: ['app.plugins.test', 'mux.plugins.test', 'vault.plugins.test'],
    });
    const client = await startRoutedClient(h, {
      server: server.url,
      token,
      proxies: [
        { name: 'echo', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: port },
        { name: 'web', type: 'http', local: `127.0.0.1:${webPort}`, hosts: ['app.plugins.test'] },
        { name: 'mux', type: 'tcpmux', local: `127.0.0.1:${webPort}`, hosts: ['mux.plugins.test'] },
        {
          name: 'vault',
          type: 'tls',
          local: `127.0.0.1:${(vault.address() as AddressInfo).port}`,
          hosts: ['vault.plugins.test'],
        },
      ],
    });

    assert.equal(await ncEcho('127.0.0.1', port), 'hello\n');
    const accepted = echo.accepted;
    assert.equal(await ncEcho('127.0.0.2', port), '', 'the refused visitor gets nothing back');
    assert.equal(echo.accepted, accepted, 'the refused visitor never reached the service');

    const httpUrl = `http://127.0.0.1:${server.httpPort}/page`;
    const allowed = await curl(['-H', 'Host: app.plugins.test'], httpUrl);
    assert.equal(allowed.status, 200);
    const blocked = await curl(['--interface', '127.0.0.2', '-H', 'Host: app.plugins.test'], httpUrl);
    assert.equal(blocked.status, 403);
    assert.doesNotMatch(blocked.body, /^web/);

    const proxyArgs = ['--suppress-connect-headers', '-p', '-x', `http://127.0.0.1:${server.tcpmuxPort}`];
    const viaMux = await curl(proxyArgs, 'http://mux.plugins.test/m');
    assert.equal(viaMux.status, 200);
    assert.match(viaMux.body, /^web GET \/m /);
    const muxBlocked = await curl(['--interface', '127.0.0.2', ...proxyArgs], 'http://mux.plugins.test/m');
    assert.notEqual(muxBlocked.code, 0);
    assert.match(muxBlocked.stderr + muxBlocked.body, /403/);

    const vaultUrl = `https://vault.plugins.test:${server.httpsPort}/`;
    const resolveVault = ['-k', '--resolve', `vault.plugins.test:${server.httpsPort}:127.0.0.1`];
    const viaTls = await curl(resolveVault, vaultUrl);
    assert.equal(viaTls.status, 200);
    assert.equal(viaTls.body, 'vault\n');
    const tlsBlocked = await curl(['--interface', '127.0.0.2', ...resolveVault], vaultUrl);
    assert.notEqual(tlsBlocked.code, 0, 'the refused visitor gets no TLS handshake');
    assert.equal(tlsBlocked.status, 0);

    const established = await client.proc.waitForMsg('session established', 1_000);
    const asks = policy.of('NewUserConn');
    assert.deepEqual(
      asks.map((r) => [
        r.body.content.proxy_name,
        r.body.content.proxy_type,
        String(r.body.content.remote_addr).split(':')[0],
      ]),
      [
        ['echo', 'tcp', '127.0.0.1'],
        ['echo', 'tcp', '127.0.0.2'],
        ['web', 'http', '127.0.0.1'],
        ['web', 'http', '127.0.0.2'],
        ['mux', 'tcpmux', '127.0.0.1'],
        ['mux', 'tcpmux', '127.0.0.2'],
        ['vault', 'https', '127.0.0.1'],
        ['vault', 'https', '127.0.0.2'],
      ],
    );
    const [first] = asks;
    assert.equal(first!.url, '/handler?version=0.1.0&op=NewUserConn');
    assert.deepEqual(Object.keys(first!.body.content).sort(), [
      'proxy_name',
      'proxy_type',
      'remote_addr',
      'user',
    ]);
    assert.deepEqual(first!.body.content.user, { user: 'erin', metas: {}, run_id: sessionIdOf(established) });
    assert.match(String(first!.body.content.remote_addr), /^127\.0\.0\.1:\d+$/);
    await server.proc.waitForMsg('visitor refused by plugin', 5_000, {
      fields: { plugin: 'visitor-policy', proxy: 'echo', reason: 'address blocked' },
    });
  });
});

test("NewUserConn for private services: each visit is asked (stcp, the visiting client's address); a refused one is told why", async (t) => {
  await withHarness(t, async (h) => {
    const policy = await startPolicyService(h, (req) =>
      req.body.content.proxy_name === 'vault'
        ? { reject: true, reject_reason: 'the vault is closed to visits' }
        : ALLOW,
    );
    const server = await startRoutedServer(h, {
      http: false,
      tables: [pluginTable({ name: 'visits', url: policy.url, ops: ['NewUserConn'] })],
    });
    const echo = await startEchoServer();
    h.onCleanup(() => echo.close());
    const owner = await startPrivateClient(h, 'owner', server, await issue(server, 'owner'), {
      proxies: [
        { name: 'notes', local: `127.0.0.1:${echo.port}` },
        { name: 'vault', local: `127.0.0.1:${echo.port}` },
      ],
    });
    const [notesPort, vaultPort] = [await freePort(), await freePort()];
    const laptop = await startPrivateClient(h, 'laptop', server, await issue(server, 'laptop', 'owner/*'), {
      visitors: [
        { name: 'notes', service: 'owner/notes', bind: `127.0.0.1:${notesPort}` },
        { name: 'vault', service: 'owner/vault', bind: `127.0.0.1:${vaultPort}` },
      ],
    });

    assert.equal(await ncEcho('127.0.0.1', notesPort), 'hello\n', 'an allowed visit echoes');
    assert.equal(await ncEcho('127.0.0.1', vaultPort), '', 'a refused visit is cut off');
    const told = await laptop.proc.waitForMsg('visit refused', 10_000, {
      fields: { service: 'owner/vault' },
    });
    assert.equal(told.reason, `refused by the server's plugin "visits": the vault is closed to visits`);
    await server.proc.waitForMsg('visitor refused by plugin', 5_000, {
      fields: { client: 'owner', proxy: 'vault', plugin: 'visits' },
    });
    assert.equal(
      owner.proc.logsWithMsg('connection closed').filter((l) => l.proxy === 'vault').length,
      0,
      'nothing of the refused visit reached the owner',
    );

    const established = await owner.proc.waitForMsg('session established', 1_000);
    const [ask] = policy.of('NewUserConn').filter((r) => r.body.content.proxy_name === 'notes');
    assert.ok(ask, 'the allowed visit was asked about');
    assert.equal(ask.body.content.proxy_type, 'stcp');
    assert.deepEqual(ask.body.content.user, { user: 'owner', metas: {}, run_id: sessionIdOf(established) });
    assert.match(String(ask.body.content.remote_addr), /^127\.0\.0\.1:\d+$/);
  });
});

test('a plugin that is down, slow or answers garbage refuses; a reload that removes it lets the client in', async (t) => {
  await withHarness(t, async (h) => {
    const policy = await startPolicyService(h, (req) => {
      if (req.body.content.user === 'slow') return 'hang';
      if (req.body.content.user === 'garbled') return 'garbage';
      return ALLOW;
    });
    const downPort = await freePort();
    const down = pluginTable({ name: 'down', url: `http://127.0.0.1:${downPort}/handler`, ops: ['Login'] });
    const answering = pluginTable({ name: 'flaky', url: policy.url, ops: ['Login'], timeout: '500ms' });
    const server = await startRoutedServer(h, { http: false, tables: [answering] });
    const echo = await startEchoServer();
    h.onCleanup(() => echo.close());
    const port = await freePort();

    const signIn = async (name: string, waitFor: string[], keys: Record<string, TomlValue> = {}) =>
      startRoutedClient(h, {
        server: server.url,
        token: await issueRoutedToken(server, { name, ports: String(port) }),
        name,
        proxies: [{ name: 'echo', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: port }],
        waitFor,
        keys,
      });
    for (const [name, failure] of [
      ['slow', 'no answer within 500 ms'],
      ['garbled', 'the answer is not JSON'],
    ] as const) {
      const client = await signIn(name, []);
      const notice = await client.proc.waitForMsg('server notice', 15_000, {
        fields: { code: 'login_unavailable' },
      });
      assert.equal(
        notice.reason,
        `sign-in refused by the server's plugin "flaky": the server's plugin "flaky" could not be asked`,
      );
      await server.proc.waitForMsg('plugin failed: refused', 5_000, {
        fields: { plugin: 'flaky', op: 'Login', client: name, reason: failure },
      });
      await client.proc.stop();
    }

    // Down: nothing listens at its address.
    const config = await readFile(server.config.configPath, 'utf8');
    await writeFile(server.config.configPath, config.replace(answering, down));
    let mark = server.proc.mark();
    server.proc.kill('SIGHUP');
    const reloaded = await server.proc.waitForMsg('config reloaded', 10_000, { from: mark });
    assert.deepEqual(reloaded.plugins, ['down']);
    // A plugin that is down is no verdict on the client: exit_on_auth_failure waits it out.
    const dave = await signIn('dave', [], { exit_on_auth_failure: true });
    await dave.proc.waitForMsg('server notice', 15_000, { fields: { code: 'login_unavailable' } });
    const failed = await server.proc.waitForMsg('plugin failed: refused', 5_000, {
      fields: { plugin: 'down', op: 'Login', client: 'dave' },
    });
    assert.match(String(failed.reason), /ECONNREFUSED/);

    mark = server.proc.mark();
    const daveMark = dave.proc.mark();
    await writeFile(server.config.configPath, config.replace(answering, ''));
    server.proc.kill('SIGHUP');
    await server.proc.waitForMsg('config reloaded', 10_000, { from: mark, fields: { plugins: '' } });
    // The client's next attempt (backoff at most 2 s) is let in.
    await dave.proc.waitForMsg('proxy registered', 15_000, { from: daveMark, fields: { proxy: 'echo' } });
    assert.equal(await ncEcho('127.0.0.1', port), 'hello\n');
    assert.equal(portOf(dave.proc.logsWithMsg('proxy registered', daveMark)[0]!.remote_addr), port);
    assert.ok(dave.proc.alive, 'exit_on_auth_failure did not stop on a plugin that could not be asked');
  });
});

test('an https plugin is checked against its ca_file: without one a self-signed plugin cannot be asked; check names a ca_file that cannot serve', async (t) => {
  await withHarness(t, async (h) => {
    const pair = await makeSelfSigned(h, 'policy', ['subjectAltName=IP:127.0.0.1']);
    const policy = await startPolicyService(h, () => ALLOW, pair);
    const table = (keys: Record<string, TomlValue>) =>
      pluginTable({ name: 'tls-policy', url: policy.url, ops: ['Login'], timeout: '2s', ...keys });
    const unverified = table({});
    const server = await startRoutedServer(h, { http: false, tables: [unverified] });
    const port = await freePort();
    const erin = await startRoutedClient(h, {
      server: server.url,
      token: await issueRoutedToken(server, { name: 'erin', ports: String(port) }),
      name: 'erin',
      proxies: [{ name: 'echo', type: 'tcp', local: '127.0.0.1:9', remote_port: port }],
      waitFor: [],
    });
    await erin.proc.waitForMsg('server notice', 15_000, { fields: { code: 'login_unavailable' } });
    const failed = await server.proc.waitForMsg('plugin failed: refused', 5_000, {
      fields: { plugin: 'tls-policy', op: 'Login', client: 'erin' },
    });
    assert.match(String(failed.reason), /self[- ]signed certificate/);
    assert.equal(policy.requests.length, 0, 'no request reached a plugin whose certificate was not trusted');

    // The plugin's own certificate as its CA: asked, and erin is let in at its next try.
    const config = await readFile(server.config.configPath, 'utf8');
    await writeFile(server.config.configPath, config.replace(unverified, table({ ca_file: pair.cert })));
    const mark = server.proc.mark();
    server.proc.kill('SIGHUP');
    await server.proc.waitForMsg('config reloaded', 10_000, { from: mark });
    await erin.proc.waitForMsg('session established', 15_000);
    assert.equal(policy.of('Login').length >= 1, true, 'the plugin was asked over https');

    // What check says of a ca_file that cannot do its job.
    const checkWith = async (keys: Record<string, TomlValue>) => {
      const file = h.path(`server-ca-${Object.keys(keys).join('-')}-${policy.requests.length}.toml`);
      await writeFile(
        file,
        config.replace(unverified, pluginTable({ name: 'tls-policy', ops: ['Login'], ...keys })),
      );
      return run(serverBin, ['check', '--config', file]);
    };
    const overHttp = await checkWith({ url: 'http://127.0.0.1:9/handler', ca_file: pair.cert });
    assert.equal(overHttp.code, 2, overHttp.stderr);
    assert.match(
      overHttp.stderr,
      /plugins\[0\] \("tls-policy"\)\.ca_file: checks an https:\/\/ plugin's certificate; this one is http:\/\//,
    );
    const keyInstead = await checkWith({ url: policy.url, ca_file: pair.key });
    assert.equal(keyInstead.code, 2, keyInstead.stderr);
    assert.match(
      keyInstead.stderr,
      /plugins\[0\] \("tls-policy"\)\.ca_file: .* is not a PEM certificate \(it holds a private key: ca_file is the plugin's certificate/,
    );
  });
});
