// HTTP virtual hosts through real processes, with curl and a ws client as visitors: routing by Host and
// path, X-Forwarded-*, basic auth, header rewrites, streaming bodies, keep-alive reuse of tunnel
// streams, WebSocket upgrades, and the 404/502 pages.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import { Agent, createServer, request } from 'node:http';
import net from 'node:net';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { curl } from './lib/curl.js';
import { backendServing, rawUpgradeRequest, startHttpBackend } from './lib/http-backend.js';
import { eventually, freePort, run, withHarness, withTimeout } from './lib/processes.js';
import {
  issueRoutedToken,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  startAppTunnel,
  startRoutedClient,
  startRoutedServer,
} from './lib/routing.js';
import { patternBytes, sha256Hex } from './lib/sha-stream.js';

function json(body: string): Record<string, unknown> {
  try {
    return JSON.parse(body) as Record<string, unknown>;
  } catch {
    throw new Error(`not JSON: ${body.slice(0, 300)}`);
  }
}

/** `request` as raw bytes to the http port, then a half-close: everything that comes back before it closes. */
function rawExchange(port: number, request: string): Promise<string> {
  const visitor = net.connect({ host: '127.0.0.1', port });
  let reply = '';
  visitor.on('data', (d: Buffer) => {
    reply += d.toString('latin1');
  });
  visitor.on('error', () => {});
  visitor.end(request, 'latin1');
  return withTimeout(
    new Promise<string>((resolve) => visitor.once('close', () => resolve(reply))),
    10_000,
    () => `the answer to ${JSON.stringify(request.split('\r\n')[0])}`,
  );
}

/** What the test backend saw, from its JSON answer in a raw reply (one chunk, or a Content-Length body). */
function seenIn(reply: string): Record<string, unknown> {
  return json(reply.slice(reply.indexOf('{'), reply.lastIndexOf('}') + 1));
}

test(
  'requests are routed by Host (exact, wildcard, subdomain) and the longest location',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backends = await Promise.all(['web', 'api', 'wild', 'sub'].map((n) => startHttpBackend(n)));
      h.onCleanup(() => Promise.all(backends.map((b) => b.close())));
      const [web, api, wild, sub] = backends as [
        (typeof backends)[0],
        (typeof backends)[0],
        (typeof backends)[0],
        (typeof backends)[0],
      ];
      const server = await startRoutedServer(h, { top: { subdomain_host: 'sub.test' } });
      const token = await issueRoutedToken(server, {
        name: 'routes',
        hosts: ['app.test', '*.wild.test', 'x.sub.test'],
      });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'web', type: 'http', local: `127.0.0.1:${web.port}`, hosts: ['app.test'] },
          {
            name: 'api',
            type: 'http',
            local: `127.0.0.1:${api.port}`,
            hosts: ['app.test'],
            locations: ['/api'],
          },
          { name: 'wild', type: 'http', local: `127.0.0.1:${wild.port}`, hosts: ['*.wild.test'] },
          { name: 'exact', type: 'http', local: `127.0.0.1:${web.port}`, hosts: ['exact.wild.test'] },
          { name: 'sub', type: 'http', local: `127.0.0.1:${sub.port}`, subdomain: 'x' },
        ],
      });
      const port = server.httpPort!;
      assert.deepEqual(client.registered.get('sub')?.urls, [`http://x.sub.test:${port}/`]);
      const base = `http://127.0.0.1:${port}`;
      const cases: [host: string, path: string, backend: string][] = [
        ['app.test', '/', 'web'],
        ['App.Test', '/index.html', 'web'],
        ['app.test', '/api', 'api'],
        ['app.test', '/api/v1/users?x=1', 'api'],
        ['app.test', '/apix', 'web'],
        ['a.wild.test', '/', 'wild'],
        ['b.c.wild.test', '/api', 'wild'],
        ['exact.wild.test', '/', 'web'],
        ['x.sub.test', '/', 'sub'],
      ];
      for (const [host, path, expected] of cases) {
        const r = await curl(['-H', `Host: ${host}`], `${base}${path}`);
        assert.equal(r.status, 200, `${host}${path}: status ${r.status} ${r.stderr} ${r.body}`);
        const seen = json(r.body);
        assert.equal(seen.backend, expected, `${host}${path} went to ${seen.backend}`);
        assert.equal(seen.url, path, `${host}${path}: the path reaches the service unchanged`);
      }
      // The real Host header, as a browser sends it (with the port), via --resolve.
      const resolved = await curl(
        ['--resolve', `app.test:${port}:127.0.0.1`],
        `http://app.test:${port}/api/x`,
      );
      assert.equal(json(resolved.body).backend, 'api');

      // Unknown names: a plain 404 that names no host this server serves.
      for (const host of ['nope.test', 'wild.test', 'sub.test', 'y.sub.test']) {
        const r = await curl(['-H', `Host: ${host}`], `${base}/`);
        assert.equal(r.status, 404, `${host}: ${r.status}`);
        assert.match(r.headers['content-type'] ?? '', /^text\/plain/);
        for (const name of ['app.test', 'wild.test', 'sub.test', 'x.sub', host]) {
          assert.ok(!r.body.includes(name), `the 404 page mentions ${name}: ${r.body}`);
        }
      }

      // Wildcards rank above subdomains: another client (its token allows any name) cannot claim
      // *.sub.test over the subdomain x.sub.test, which keeps going to its owner.
      const anyName = await issueRoutedToken(server, { name: 'wildcarder' });
      const other = await startRoutedClient(h, {
        server: server.url,
        token: anyName,
        name: 'wildcarder',
        waitFor: [],
        proxies: [{ name: 'grab', type: 'http', local: `127.0.0.1:${wild.port}`, hosts: ['*.sub.test'] }],
      });
      const refused = await other.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'grab' } });
      assert.equal(refused.reason, '*.sub.test would take x.sub.test, a subdomain another client holds');
      const still = await curl(['-H', 'Host: x.sub.test'], `${base}/`);
      assert.equal(json(still.body).backend, 'sub');
    }),
);

test(
  'X-Forwarded-* (appended only for trusted_proxies), basic auth, host rewrite, request headers',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('secure');
      h.onCleanup(() => backend.close());
      const server = await startRoutedServer(h, { top: { trusted_proxies: ['127.0.0.2'] } });
      const token = await issueRoutedToken(server, { name: 'auth', hosts: ['secure.test', 'open.test'] });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          {
            name: 'secure',
            type: 'http',
            local: `127.0.0.1:${backend.port}`,
            hosts: ['secure.test'],
            http_user: 'alice',
            http_password: 's3cret pass',
            host_header_rewrite: 'internal.lan',
            request_headers: { 'X-From': 'porthole' },
          },
          { name: 'open', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['open.test'] },
        ],
      });
      const base = `http://127.0.0.1:${server.httpPort}`;
      const noAuth = await curl(['-H', 'Host: secure.test'], `${base}/`);
      assert.equal(noAuth.status, 401);
      assert.match(noAuth.headers['www-authenticate'] ?? '', /^Basic realm="porthole"/);
      const wrong = await curl(['-H', 'Host: secure.test', '-u', 'alice:wrong'], `${base}/`);
      assert.equal(wrong.status, 401);
      assert.equal(backend.requests.length, 0, 'unauthorized requests never reach the service');

      // From 127.0.0.1 (not trusted): the visitor's X-Forwarded-* are replaced, not believed.
      const r = await curl(
        [
          '-H',
          'Host: secure.test',
          '-u',
          'alice:s3cret pass',
          '-H',
          'X-Forwarded-For: 6.6.6.6',
          '-H',
          'X-Forwarded-Proto: https',
          '-H',
          'X-Forwarded-Host: evil.test',
          '-H',
          'Forwarded: for=6.6.6.6;proto=https',
          '-H',
          'X-Real-IP: 6.6.6.6',
          // What a service may believe as much: the rest of X-Forwarded-*, and names that CGI, WSGI, Rack
          // and PHP read as the ones above (X_Forwarded_For is HTTP_X_FORWARDED_FOR there too).
          '-H',
          'X-Forwarded-Port: 443',
          '-H',
          'X-Forwarded-Prefix: /evil',
          '-H',
          'X-Forwarded-Server: evil.test',
          '-H',
          'X_Forwarded_For: 6.6.6.6',
          '-H',
          'X-Forwarded_Host: evil.test',
          '-H',
          'X_Real_IP: 6.6.6.6',
          '-H',
          'X_From: visitor',
          '-H',
          'X_Custom_Thing: kept',
        ],
        `${base}/who`,
      );
      assert.equal(r.status, 200, r.body);
      const seen = json(r.body).headers as Record<string, string>;
      assert.equal(seen.host, 'internal.lan');
      assert.equal(seen['x-forwarded-for'], '127.0.0.1');
      assert.equal(seen['x-forwarded-proto'], 'http');
      assert.equal(seen['x-forwarded-host'], 'secure.test');
      assert.equal(seen['x-from'], 'porthole');
      assert.equal(seen.authorization, undefined, 'the edge credentials are not passed on');
      assert.equal(seen.forwarded, undefined, "an untrusted visitor's Forwarded is not passed on");
      assert.equal(seen['x-real-ip'], undefined, "an untrusted visitor's X-Real-IP is not passed on");
      for (const name of [
        'x-forwarded-port',
        'x-forwarded-prefix',
        'x-forwarded-server',
        'x_forwarded_for',
        'x-forwarded_host',
        'x_real_ip',
        'x_from',
      ])
        assert.equal(seen[name], undefined, `an untrusted visitor's ${name} is not passed on`);
      assert.equal(seen.x_custom_thing, 'kept', 'other names with "_" are passed on');

      // From 127.0.0.2 (a trusted proxy): its X-Forwarded-For is appended to, its proto/host kept.
      const trusted = await curl(
        [
          '--interface',
          '127.0.0.2',
          '-H',
          'Host: open.test',
          '-H',
          'X-Forwarded-For: 203.0.113.9',
          '-H',
          'X-Forwarded-Proto: https',
          '-H',
          'X-Forwarded-Host: open.example.org',
          '-H',
          'X-Real-IP: 203.0.113.9',
          '-H',
          'X-Forwarded-Port: 443',
          '-H',
          'X_Forwarded_For: 6.6.6.6',
        ],
        `${base}/`,
      );
      assert.equal(trusted.status, 200, trusted.stderr);
      const fromTrusted = json(trusted.body).headers as Record<string, string>;
      assert.equal(fromTrusted['x-forwarded-for'], '203.0.113.9, 127.0.0.2');
      assert.equal(fromTrusted['x-forwarded-proto'], 'https');
      assert.equal(fromTrusted['x-forwarded-host'], 'open.example.org');
      assert.equal(fromTrusted.host, 'open.test', "without host_header_rewrite the Host is the visitor's");
      assert.equal(fromTrusted['x-real-ip'], '203.0.113.9', "a trusted proxy's X-Real-IP is kept");
      assert.equal(fromTrusted['x-forwarded-port'], '443', "a trusted proxy's X-Forwarded-Port is kept");
      assert.equal(fromTrusted.x_forwarded_for, undefined, 'X_Forwarded_For would stand for X-Forwarded-For');

      // What even a trusted proxy names in Connection was meant for its hop only: not taken from it.
      const hopOnly = await curl(
        [
          '--interface',
          '127.0.0.2',
          '-H',
          'Host: open.test',
          '-H',
          'Connection: X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host, Forwarded, X-Real-IP',
          '-H',
          'X-Forwarded-For: 6.6.6.6',
          '-H',
          'X-Forwarded-Proto: https',
          '-H',
          'X-Forwarded-Host: evil.test',
          '-H',
          'Forwarded: for=6.6.6.6',
          '-H',
          'X-Real-IP: 6.6.6.6',
        ],
        `${base}/`,
      );
      assert.equal(hopOnly.status, 200, hopOnly.stderr);
      const fromHop = json(hopOnly.body).headers as Record<string, string>;
      assert.equal(fromHop['x-forwarded-for'], '127.0.0.2');
      assert.equal(fromHop['x-forwarded-proto'], 'http');
      assert.equal(fromHop['x-forwarded-host'], 'open.test');
      assert.equal(fromHop.forwarded, undefined);
      assert.equal(fromHop['x-real-ip'], undefined);
    }),
);

test(
  "a location's basic auth holds however the path is written; the path reaches the service as sent",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [site, admin] = await Promise.all([startHttpBackend('site'), startHttpBackend('admin')]);
      h.onCleanup(() => Promise.all([site.close(), admin.close()]));
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, { name: 'paths', hosts: ['app.test'] });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'site', type: 'http', local: `127.0.0.1:${site.port}`, hosts: ['app.test'] },
          {
            name: 'admin',
            type: 'http',
            local: `127.0.0.1:${admin.port}`,
            hosts: ['app.test'],
            locations: ['/admin'],
            http_user: 'root',
            http_password: 'pw',
          },
        ],
      });
      const base = `http://127.0.0.1:${server.httpPort}`;
      // Each is /admin/secret to a service that merges slashes, decodes escapes or resolves dot segments
      // (nginx does all three), that drops ";parameters" before resolving them (Tomcat, Jetty, Spring), or
      // that reads paths without regard to case (Express, ASP.NET, IIS); --path-as-is makes curl send them
      // untouched.
      const disguised = [
        '//admin/secret',
        '/%61dmin/secret',
        '/x/../admin/secret',
        '/admin%2Fsecret',
        '/./admin',
        '/x/..;/admin/secret',
        '/admin;v=1/secret',
        '/;x/admin/secret',
        '/x/..%3B/admin/secret',
        '/ADMIN/secret',
        '/%41dmin/secret',
        '/x/..;/Admin;v=1/secret',
      ];
      for (const path of disguised) {
        const r = await curl(['--path-as-is', '-H', 'Host: app.test'], `${base}${path}`);
        assert.equal(r.status, 401, `${path}: status ${r.status}, answered by ${r.body.slice(0, 80)}`);
      }
      assert.equal(site.requests.length + admin.requests.length, 0, 'no disguised path reached a service');
      for (const path of disguised) {
        const r = await curl(['--path-as-is', '-H', 'Host: app.test', '-u', 'root:pw'], `${base}${path}`);
        assert.equal(r.status, 200, `${path} with credentials: ${r.status} ${r.stderr}`);
        const seen = json(r.body);
        assert.equal(seen.backend, 'admin', `${path} went to ${seen.backend}`);
        assert.equal(seen.url, path, 'the request line is forwarded as the visitor sent it');
      }
      // Paths that only look alike stay with the site.
      for (const path of ['/administrator', '/%2561dmin/secret', '/site/admin', '/administrator;x/..']) {
        const r = await curl(['--path-as-is', '-H', 'Host: app.test'], `${base}${path}`);
        assert.equal(r.status, 200, `${path}: ${r.status}`);
        assert.equal(json(r.body).backend, 'site', path);
      }
      // A location the routing could never match is refused when the proxy registers.
      const oddToken = await issueRoutedToken(server, { name: 'odd', hosts: ['odd.test'] });
      const refused = await startRoutedClient(h, {
        server: server.url,
        token: oddToken,
        name: 'odd-client',
        waitFor: [],
        proxies: [
          {
            name: 'odd',
            type: 'http',
            local: `127.0.0.1:${site.port}`,
            hosts: ['odd.test'],
            locations: ['/%7euser'],
          },
        ],
      });
      const line = await refused.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'odd' } });
      t.diagnostic(`refused: ${line.reason}`);
      assert.match(String(line.reason), /location "\/%7euser" is not in normal form: write it "\/~user"/);
    }),
);

test(
  'bodies stream both ways, tunnel streams are reused across requests, WebSockets pass through',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, { client: 'stream' });
      const port = server.httpPort!;
      const base = `http://127.0.0.1:${port}`;

      // An 8 MiB upload (chunked and with Content-Length) is hashed by the service.
      const upload = patternBytes(8 * 1024 * 1024, 'upload');
      const file = await h.file('upload.bin', '');
      await import('node:fs/promises').then((fs) => fs.writeFile(file, upload));
      for (const extra of [[], ['-H', 'Transfer-Encoding: chunked']]) {
        const r = await curl(
          ['-H', 'Host: app.test', '--data-binary', `@${file}`, ...extra],
          `${base}/sha256`,
          60_000,
        );
        assert.equal(r.status, 200, r.stderr);
        assert.deepEqual(json(r.body), { bytes: upload.length, sha256: sha256Hex(upload), backend: 'app' });
      }
      // A download that arrives in 50 pieces over ~1 s is passed on as it comes, byte-exact.
      const out = h.path('download.bin');
      const down = await run(
        'curl',
        ['-sS', '-H', 'Host: app.test', '-o', out, `${base}/stream?bytes=${2 * 1024 * 1024}&chunks=50`],
        { timeoutMs: 30_000 },
      );
      assert.equal(down.code, 0, down.stderr);
      const got = await readFile(out);
      assert.equal(sha256Hex(got), sha256Hex(patternBytes(2 * 1024 * 1024, 'stream')));

      // Keep-alive: 30 requests from 30 separate visitor connections ride a pooled tunnel stream, so the
      // local service sees far fewer connections than requests.
      const before = backend.connections;
      for (let i = 0; i < 30; i++) {
        const r = await new Promise<number>((resolve, reject) => {
          const req = request(
            { host: '127.0.0.1', port, path: `/k${i}`, headers: { Host: 'app.test' }, agent: false },
            (res) => {
              res.resume();
              res.on('end', () => resolve(res.statusCode ?? 0));
            },
          );
          req.on('error', reject);
          req.end();
        });
        assert.equal(r, 200);
      }
      const used = backend.connections - before;
      t.diagnostic(`30 requests on 30 visitor connections used ${used} local connection(s)`);
      assert.ok(
        used <= 3,
        `expected pooled tunnel streams, the service saw ${used} connections for 30 requests`,
      );
      // And a visitor's own keep-alive connection carries many requests.
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      for (let i = 0; i < 10; i++) {
        const status = await new Promise<number>((resolve, reject) => {
          const req = request(
            { host: '127.0.0.1', port, path: '/', headers: { Host: 'app.test' }, agent },
            (res) => {
              res.resume();
              res.on('end', () => resolve(res.statusCode ?? 0));
            },
          );
          req.on('error', reject);
          req.end();
        });
        assert.equal(status, 200);
      }
      agent.destroy();

      // A WebSocket through the proxy: greeting (with the visitor's address), text and 1 MiB binary echo.
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { Host: 'app.test' } });
      const messages: Buffer[] = [];
      let waiter: (() => void) | undefined;
      ws.on('message', (data: Buffer) => {
        messages.push(Buffer.from(data));
        waiter?.();
      });
      const next = (n: number) =>
        withTimeout(
          new Promise<void>((resolve) => {
            const check = () => {
              if (messages.length >= n) resolve();
            };
            waiter = check;
            check();
          }),
          10_000,
          () => `WebSocket message ${n} (got ${messages.length})`,
        );
      await withTimeout(
        new Promise((resolve, reject) => {
          ws.once('open', resolve);
          ws.once('error', reject);
        }),
        10_000,
        () => 'WebSocket open through the tunnel',
      );
      await next(1);
      assert.equal(messages[0]!.toString(), 'hello from app xff=127.0.0.1');
      ws.send('ping');
      await next(2);
      assert.equal(messages[1]!.toString(), 'echo:ping');
      const blob = patternBytes(1024 * 1024, 'ws');
      ws.send(blob);
      await next(3);
      assert.equal(createHash('sha256').update(messages[2]!).digest('hex'), sha256Hex(blob));
      ws.close();
    }),
);

test(
  'more visitors at once than any idle cap: each pooled stream is kept for the next request, not reopened',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, { client: 'crowd' });
      const port = server.httpPort!;
      // 96 keep-alive visitors, 20 requests each, all in flight together: the proxy needs up to 96
      // streams at once, and each that comes back clean should carry a later request. A pool that closed
      // streams past an idle cap below that reopened one (and a local connection) per request.
      const visitors = 96;
      const perVisitor = 20;
      const agent = new Agent({ keepAlive: true, maxSockets: visitors });
      h.onCleanup(() => agent.destroy());
      const before = backend.connections;
      const one = (path: string) =>
        new Promise<number>((resolve, reject) => {
          const req = request(
            { host: '127.0.0.1', port, path, headers: { Host: 'app.test' }, agent },
            (res) => {
              res.resume();
              res.on('end', () => resolve(res.statusCode ?? 0));
            },
          );
          req.on('error', reject);
          req.end();
        });
      const statuses = await withTimeout(
        Promise.all(
          Array.from({ length: visitors }, async (_, v) => {
            const seen: number[] = [];
            for (let i = 0; i < perVisitor; i++) seen.push(await one(`/crowd/${v}/${i}`));
            return seen;
          }),
        ),
        45_000,
        () => `${visitors} x ${perVisitor} requests through the http proxy`,
      );
      assert.deepEqual(new Set(statuses.flat()), new Set([200]));
      const used = backend.connections - before;
      t.diagnostic(
        `${visitors * perVisitor} requests from ${visitors} visitors used ${used} local connection(s)`,
      );
      assert.ok(
        used <= visitors,
        `the service saw ${used} connections for ${visitors * perVisitor} requests from ${visitors} visitors`,
      );
    }),
);

test(
  'a client that went away answers 502; an unknown host 404; a dead local service 502',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, { name: 'offline', hosts: ['app.test', 'dead.test'] });
      const deadPort = await freePort();
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'app', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.test'] },
          { name: 'dead', type: 'http', local: `127.0.0.1:${deadPort}`, hosts: ['dead.test'] },
        ],
      });
      const base = `http://127.0.0.1:${server.httpPort}`;
      assert.equal((await curl(['-H', 'Host: app.test'], `${base}/`)).status, 200);
      const dead = await curl(['-H', 'Host: dead.test'], `${base}/`);
      assert.equal(dead.status, 502, dead.body);
      assert.match(dead.body, /did not answer/);

      // Killed, not stopped: a client that is gone may come back, so its names answer as offline.
      client.proc.kill('SIGKILL');
      await server.proc.waitForMsg('client disconnected', 10_000, { fields: { client: 'offline' } });
      const offline = await curl(['-H', 'Host: app.test'], `${base}/`);
      assert.equal(offline.status, 502, offline.body);
      assert.match(offline.body, /offline/);
      assert.equal((await curl(['-H', 'Host: other.test'], `${base}/`)).status, 404);

      // The client comes back, this time dialing the control endpoint on the http vhost port itself:
      // the same name is served again at once.
      await startRoutedClient(h, {
        server: `ws://127.0.0.1:${server.httpPort}/_porthole`,
        token,
        name: 'client again',
        proxies: [{ name: 'app', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.test'] }],
      });
      assert.equal((await curl(['-H', 'Host: app.test'], `${base}/`)).status, 200);
    }),
);

test(
  'a proxy its client removes (reload, SIGTERM) is forgotten at once: 404, or the wildcard under it serves the name again',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const names = { wild: '*.site.test', app: 'app.site.test', solo: 'solo.test' };
      const proxies: RoutedProxy[] = [];
      for (const [name, host] of Object.entries(names)) {
        const backend = await startHttpBackend(name);
        h.onCleanup(() => backend.close());
        proxies.push({ name, type: 'http', local: `127.0.0.1:${backend.port}`, hosts: [host] });
      }
      const [wild, app, solo] = proxies as [RoutedProxy, RoutedProxy, RoutedProxy];
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, { name: 'owner' });
      const client = await startRoutedClient(h, { server: server.url, token, proxies: [wild, app, solo] });
      const servedBy = (host: string) => backendServing(server.httpPort, host);
      assert.equal(await servedBy('app.site.test'), 'app');
      assert.equal(await servedBy('solo.test'), 'solo');
      assert.equal(await servedBy('other.site.test'), 'wild');

      // A reload drops app and solo: not offline (502) but gone, as if they had never been registered.
      let mark = server.proc.mark();
      await rewriteRoutedClientProxies(client.configPath, [wild]);
      client.proc.kill('SIGHUP');
      for (const proxy of ['app', 'solo'])
        await server.proc.waitForMsg('proxy closed', 10_000, {
          from: mark,
          fields: { proxy, reason: 'unregistered by client' },
        });
      assert.equal(await servedBy('app.site.test'), 'wild');
      assert.equal(await servedBy('solo.test'), 'HTTP 404');

      // SIGTERM: the client unregisters everything on its way out, and its names are free.
      mark = server.proc.mark();
      await client.proc.stop();
      await server.proc.waitForMsg('client disconnected', 10_000, {
        from: mark,
        fields: { client: 'owner' },
      });
      assert.equal(await servedBy('other.site.test'), 'HTTP 404');
      assert.equal(await servedBy('app.site.test'), 'HTTP 404');
      t.diagnostic('removed proxies: 404, or the wildcard; never 502 offline');
    }),
);

test(
  'a pooled stream whose local keep-alive ends is retired with FIN, and the next request gets a new one',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('short');
      backend.server.keepAliveTimeout = 300;
      h.onCleanup(() => backend.close());
      const { server, client } = await startAppTunnel(h, backend.port, { client: 'retire' });
      const url = `http://127.0.0.1:${server.httpPort}/`;
      assert.equal((await curl(['-H', 'Host: app.test'], url)).status, 200);
      // The service drops its idle connection after 300 ms; the tunnel stream behind it ends cleanly.
      const closed = await client.proc.waitForMsg('connection closed', 5000, { fields: { proxy: 'app' } });
      assert.equal(closed.reason, 'closed', JSON.stringify(closed));
      for (let i = 0; i < 3; i++) {
        const r = await curl(['-H', 'Host: app.test'], url);
        assert.equal(r.status, 200, `request ${i} after the retire: ${r.status} ${r.body}`);
      }
      assert.ok(backend.connections >= 2, 'a new local connection was opened');
      assert.equal((await server.proc.settledLogsWithMsg('http forward failed')).length, 0);
    }),
);

test(
  'a visitor that half-closes after its request (socat, HTTP/1.0 tools) still gets the answer',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, { client: 'halfclose', proxy: 'web' });
      // socat sends stdin, shuts down its write side at stdin's end, and prints what comes back.
      for (const [version, connection] of [
        ['1.1', 'Connection: close\r\n'],
        ['1.1', ''],
        ['1.0', ''],
      ] as const) {
        const path = `/anything?v=${version}&close=${connection !== ''}`;
        const r = await run('socat', ['-t', '10', '-', `TCP:127.0.0.1:${server.httpPort}`], {
          input: `GET ${path} HTTP/${version}\r\nHost: app.test\r\n${connection}\r\n`,
          timeoutMs: 20_000,
        });
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /^HTTP\/1\.1 200 OK\r\n/, `HTTP/${version} ${connection.trim()}: ${r.stdout}`);
        assert.ok(r.stdout.includes(`"url":${JSON.stringify(path)}`), r.stdout);
      }
      assert.equal(server.proc.logsWithMsg('http request').filter((l) => l.reason !== 'done').length, 0);
    }),
);

test(
  'a visitor that closes while its answer is awaited: the service learns of it at once, as it would directly, and its stream is not reused',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      // A service that answers /slow after 4 s, and says when each response closed and whether it was sent.
      const closes: { url: string; finished: boolean; at: number }[] = [];
      const service = createServer((req, res) => {
        res.on('close', () =>
          closes.push({ url: req.url ?? '', finished: res.writableFinished, at: Date.now() }),
        );
        const answer = () => res.end(`answer to ${req.url}\n`);
        if (req.url === '/slow') setTimeout(answer, 4000).unref();
        else answer();
      });
      await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
      h.onCleanup(() => new Promise((resolve) => service.close(() => resolve(undefined))));
      service.on('connection', (socket) => h.onCleanup(() => socket.destroy()));
      const { server } = await startAppTunnel(h, (service.address() as net.AddressInfo).port, {
        client: 'gaveup',
      });
      const port = server.httpPort!;
      // As curl --max-time or a closed browser tab leaves: the request, then the socket closed (a FIN).
      const visitor = net.connect({ host: '127.0.0.1', port });
      visitor.on('error', () => {});
      await once(visitor, 'connect');
      visitor.write('GET /slow HTTP/1.1\r\nHost: app.test\r\n\r\n');
      await new Promise((resolve) => setTimeout(resolve, 500));
      const gaveUpAt = Date.now();
      visitor.end();
      const closed = await eventually(
        'the service to see the response close',
        async () => closes.find((c) => c.url === '/slow'),
        10_000,
        20,
      );
      t.diagnostic(
        `the service saw the visitor go after ${closed.at - gaveUpAt} ms, finished: ${closed.finished}`,
      );
      assert.equal(closed.finished, false, 'the service did not answer a visitor that had gone');
      assert.ok(closed.at - gaveUpAt < 2000, `${closed.at - gaveUpAt} ms after the visitor's FIN`);
      const line = await server.proc.waitForMsg('http request', 5000, { fields: { path: '/slow' } });
      assert.equal(line.reason, 'visitor closed early');
      assert.equal(line.status, undefined);
      assert.equal(
        server.proc.logsWithMsg('http forward failed').length,
        0,
        'a visitor that left is not a failure',
      );
      // The site serves on, on a fresh stream.
      const next = await curl(['-H', 'Host: app.test'], `http://127.0.0.1:${port}/next`);
      assert.equal(next.status, 200, next.body);
      assert.equal(next.body, 'answer to /next\n');
    }),
);

test(
  'an upgrade answered without a 101 is an http request: an access line with its status and bytes, counted once; an accepted one is counted once, as a connection',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('ws');
      h.onCleanup(() => backend.close());
      const adminToken = 'admin-token-for-e2e-0123456789abcdef';
      const { server } = await startAppTunnel(h, backend.port, {
        client: 'upgrader',
        proxy: 'web',
        server: { admin: { token: adminToken } },
      });
      const port = server.httpPort!;
      const totals = async (): Promise<[number, number]> => {
        const res = await fetch(`${server.adminUrl}/api/proxies`, {
          headers: { Authorization: `Bearer ${adminToken}` },
        });
        const web = ((await res.json()) as { proxies: Record<string, number>[] }).proxies[0];
        return [web?.open_connections ?? -1, web?.connections_total ?? -1];
      };
      const rawUpgrade = async (path: string): Promise<string> => {
        const visitor = net.connect({ host: '127.0.0.1', port });
        let reply = '';
        visitor.on('data', (d: Buffer) => {
          reply += d.toString('latin1');
        });
        visitor.on('error', () => {});
        const closed = new Promise<void>((resolve) => visitor.once('close', () => resolve()));
        visitor.write(rawUpgradeRequest(path, 'app.test'));
        await withTimeout(closed, 5000, () => `the answer to the upgrade of ${path}`);
        return reply;
      };
      const accessLine = (path: string) =>
        eventually(
          `the access line of ${path}`,
          async () =>
            server.proc.logsWithMsg('http request').find((l) => l.proxy === 'web' && l.path === path),
          5000,
        );

      // The service has no WebSocket on this path: its 400 is passed on and the connection closed.
      assert.match(await rawUpgrade('/not-a-websocket'), /^HTTP\/1\.1 400 /);
      const declined = await accessLine('/not-a-websocket');
      assert.equal(declined.status, 400, JSON.stringify(declined));
      assert.equal(declined.reason, 'upgrade not accepted');
      assert.equal(declined.method, 'GET');
      assert.ok(Number(declined.bytes_in) > 100, `bytes_in ${declined.bytes_in}: the request head went on`);
      assert.ok(Number(declined.bytes_out) > 10, `bytes_out ${declined.bytes_out}: the 400 came back`);
      assert.deepEqual(await totals(), [0, 1]);

      // Accepted: one connection, counted when it closes, not a request as well.
      const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { Host: 'app.test' } });
      const greeting = await withTimeout(
        new Promise<string>((resolve, reject) => {
          ws.once('message', (data) => resolve(String(data)));
          ws.once('error', reject);
        }),
        5000,
        () => 'the greeting through the tunnel',
      );
      assert.match(greeting, /^hello from ws/);
      // Totals count open connections live: the WebSocket is in it now, and stays counted once it closes.
      assert.deepEqual(await totals(), [1, 2]);
      ws.close();
      await eventually(
        'the WebSocket closed',
        async () => ((await totals())[0] === 0 ? true : undefined),
        5000,
      );
      assert.deepEqual(await totals(), [0, 2]);

      // The service is gone: a 502, with an access line that says so.
      await backend.close();
      assert.match(await rawUpgrade('/ws'), /^HTTP\/1\.1 502 /);
      const failed = await eventually(
        'the access line of the failed upgrade',
        async () =>
          server.proc
            .logsWithMsg('http request')
            .find((l) => l.proxy === 'web' && l.path === '/ws' && l.status === 502),
        5000,
      );
      assert.equal(failed.reason, 'local service unreachable', JSON.stringify(failed));
      assert.deepEqual(await totals(), [0, 3]);
    }),
);

test(
  'a request with two Host headers is refused (400): routed by one, it would reach the service with the other',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, { client: 'twohosts' });
      const port = server.httpPort!;
      // Node's req.headers keeps the first Host, the raw list the request is forwarded from has both.
      for (const [first, second] of [
        ['app.test', 'internal.test'],
        ['internal.test', 'app.test'],
        ['app.test', 'app.test'],
      ]) {
        const reply = await rawExchange(
          port,
          `GET /who HTTP/1.1\r\nHost: ${first}\r\nhost: ${second}\r\nConnection: close\r\n\r\n`,
        );
        assert.match(reply, /^HTTP\/1\.1 400 /, `${first} then ${second}: ${reply}`);
      }
      assert.equal(backend.requests.length, 0, 'no request with two Hosts reached the service');
      // One Host: the service gets the very one the request was routed (and its auth checked) by.
      const reply = await rawExchange(
        port,
        'GET /who HTTP/1.1\r\nHOST: App.Test:80\r\nConnection: close\r\n\r\n',
      );
      assert.match(reply, /^HTTP\/1\.1 200 /, reply);
      const seen = seenIn(reply).headers as Record<string, string>;
      assert.equal(seen.host, 'App.Test:80');
      assert.equal(seen['x-forwarded-host'], 'App.Test:80');
    }),
);

test(
  'an absolute-form target is routed by its own host and reaches the service in origin-form; a Host that is not host[:port] is refused (400)',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, {
        name: 'absolute',
        hosts: ['app.test', 'internal.test'],
      });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'public', type: 'http', local: `127.0.0.1:${backend.port}`, hosts: ['app.test'] },
          {
            name: 'internal',
            type: 'http',
            local: `127.0.0.1:${backend.port}`,
            hosts: ['internal.test'],
            http_user: 'ops',
            http_password: 'pw',
          },
        ],
      });
      const port = server.httpPort!;
      const get = (target: string, host: string, extra = '') =>
        rawExchange(port, `GET ${target} HTTP/1.1\r\nHost: ${host}\r\n${extra}Connection: close\r\n\r\n`);

      // The service reads the target's host, not Host (RFC 9112 3.2.2): so does the routing, and its auth.
      const sneaked = await get('http://internal.test/who', 'app.test');
      assert.match(sneaked, /^HTTP\/1\.1 401 /, sneaked);
      assert.equal(backend.requests.length, 0, 'the absolute-form target passed the auth of another name');
      const authorized = await get(
        'http://internal.test/who',
        'app.test',
        `Authorization: Basic ${Buffer.from('ops:pw').toString('base64')}\r\n`,
      );
      assert.match(authorized, /^HTTP\/1\.1 200 /, authorized);
      const inside = seenIn(authorized);
      assert.equal(inside.url, '/who', 'the service gets origin-form');
      assert.equal((inside.headers as Record<string, string>).host, 'internal.test');
      for (const [target, url] of [
        ['http://app.test/who?x=1', '/who?x=1'],
        ['HTTP://App.Test:80', '/'],
        ['http://app.test?q', '/?q'],
      ] as const) {
        const reply = await get(target, 'whatever.test');
        assert.match(reply, /^HTTP\/1\.1 200 /, `${target}: ${reply}`);
        assert.equal(seenIn(reply).url, url, target);
      }

      // Refused before routing: a Host or an authority a service may read another name in, and targets
      // that are neither origin-form nor http(s) absolute-form.
      const before = backend.requests.length;
      for (const [target, host] of [
        ['/who', 'app.test:x@internal.test'],
        ['/who', 'app.test:80:81'],
        ['/who', '[::1]app.test'],
        ['http://x@app.test/who', 'app.test'],
        ['http://app.test:x@internal.test/who', 'app.test'],
        ['http:///who', 'app.test'],
        ['ftp://app.test/who', 'app.test'],
      ] as const) {
        const reply = await get(target, host);
        assert.match(reply, /^HTTP\/1\.1 400 /, `${target} with Host ${host}: ${reply}`);
      }
      assert.equal(backend.requests.length, before, 'no refused request reached the service');
    }),
);

test(
  'CONNECT gets a 400 (this is no forward proxy) and the connection closes after it; the port keeps serving',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, { client: 'connect' });
      const port = server.httpPort!;
      // A request after the CONNECT on the same connection is never read: the connection ends with the 400.
      for (const target of ['app.test:443', '127.0.0.1:22']) {
        const reply = await rawExchange(
          port,
          `CONNECT ${target} HTTP/1.1\r\nHost: ${target}\r\n\r\nGET /after HTTP/1.1\r\nHost: app.test\r\n\r\n`,
        );
        assert.match(reply, /^HTTP\/1\.1 400 Bad Request\r\n/, `CONNECT ${target}: ${JSON.stringify(reply)}`);
        assert.match(reply, /\r\nConnection: close\r\n/i, reply);
        assert.equal(reply.split('HTTP/1.1 ').length - 1, 1, `one answer only: ${reply}`);
      }
      // curl as a client of a forward proxy: it reports the refusal, not a connection closed unanswered.
      const viaProxy = await run(
        'curl',
        ['-sS', '--max-time', '10', '-p', '-x', `http://127.0.0.1:${port}`, 'http://app.test/'],
        { timeoutMs: 15_000 },
      );
      assert.match(viaProxy.stderr, /CONNECT tunnel failed, response 400/, viaProxy.stderr);
      assert.equal(backend.requests.length, 0, 'nothing reached the service');
      assert.equal((await curl(['-H', 'Host: app.test'], `http://127.0.0.1:${port}/anything`)).status, 200);
    }),
);

test(
  'a request whose Transfer-Encoding does not end in chunked gets a 400 and never reaches the service; "gzip, chunked" reaches it intact',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const { server } = await startAppTunnel(h, backend.port, { client: 'codings' });
      const port = server.httpPort!;
      // RFC 9112 6.3: such a body has no length the proxy could forward it by.
      for (const codings of ['gzip', 'identity', 'chunked, gzip']) {
        const reply = await rawExchange(
          port,
          `POST /anything HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: ${codings}\r\n\r\nhello`,
        );
        assert.match(reply, /^HTTP\/1\.1 400 /, `Transfer-Encoding: ${codings}: ${JSON.stringify(reply)}`);
        assert.match(reply, /\r\nConnection: close\r\n/i, reply);
      }
      const body = await h.file('upload.bin', 'x'.repeat(300_000));
      const upload = await curl(
        ['-H', 'Host: app.test', '-H', 'Transfer-Encoding: gzip', '--data-binary', `@${body}`],
        `http://127.0.0.1:${port}/anything`,
      );
      assert.equal(upload.status, 400, `${upload.code} ${upload.stderr}`);
      assert.equal(backend.requests.length, 0, 'no request without a length reached the service');
      // A coding before chunked is the service's to decode: passed on as sent, the chunks framed anew.
      const reply = await rawExchange(
        port,
        'POST /anything HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n' +
          '5\r\nhello\r\n0\r\n\r\n',
      );
      assert.match(reply, /^HTTP\/1\.1 200 /, reply);
      const seen = seenIn(reply).headers as Record<string, string>;
      assert.equal(seen['transfer-encoding'], 'gzip, chunked');
      assert.equal(seen['content-length'], undefined);
    }),
);

test(
  'hosts takes IP addresses as a Host header carries them: an IPv6 one in brackets (or not), matched however the visitor writes it',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [v4, v6] = await Promise.all([startHttpBackend('v4'), startHttpBackend('v6')]);
      h.onCleanup(() => Promise.all([v4.close(), v6.close()]));
      const server = await startRoutedServer(h);
      const port = server.httpPort!;
      // The token's grant is written as the client's hosts are; the client sends them normalized.
      const token = await issueRoutedToken(server, {
        name: 'by-address',
        hosts: ['127.0.0.1', '[::1]', '2001:db8::1'],
      });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'v4', type: 'http', local: `127.0.0.1:${v4.port}`, hosts: ['127.0.0.1'] },
          { name: 'v6', type: 'http', local: `127.0.0.1:${v6.port}`, hosts: ['[::1]', '[2001:DB8:0::1]'] },
        ],
      });
      assert.deepEqual(client.registered.get('v6')?.urls, [
        `http://[::1]:${port}/`,
        `http://[2001:db8::1]:${port}/`,
      ]);
      const backendOf = (host: string) => backendServing(port, host);
      assert.equal(await backendOf('127.0.0.1'), 'v4');
      assert.equal(await backendOf(`127.0.0.1:${port}`), 'v4');
      for (const host of [
        '[::1]',
        `[::1]:${port}`,
        '[0:0:0:0:0:0:0:1]',
        '[2001:db8::1]',
        '[2001:0DB8::0:1]:80',
      ]) {
        assert.equal(await backendOf(host), 'v6', host);
      }
      assert.equal(await backendOf('[::2]'), 'HTTP 404');
      // curl's own Host for a URL naming the address (what a browser sends too).
      const direct = await curl(['--connect-to', `::127.0.0.1:${port}`], `http://[::1]:${port}/`);
      assert.equal(direct.status, 200, direct.stderr);
      assert.equal(JSON.parse(direct.body).backend, 'v6');
    }),
);
