// Who may claim a name: a hostname (or UDP port) held by another client is refused by name, as is one
// outside the token's --hosts grant or one the server terminates itself; once the holder is gone, the
// name can be claimed again.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { backendServing, startHttpBackend } from './lib/http-backend.js';
import { freePort, withHarness } from './lib/processes.js';
import { issueRoutedToken, makeCa, makeCert, startRoutedClient, startRoutedServer } from './lib/routing.js';

test(
  "names held by another client, outside the grant, or the server's own are refused by name",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'edge', ['vps.edge.test', '*.edge.test']);
      const first = await startHttpBackend('first');
      const second = await startHttpBackend('second');
      h.onCleanup(() => Promise.all([first.close(), second.close()]));
      const udpPort = await freePort();
      const server = await startRoutedServer(h, {
        top: { subdomain_host: 'sub.test' },
        https: { certs: [edge] },
      });
      const tokenA = await issueRoutedToken(server, {
        name: 'alpha',
        ports: String(udpPort),
        hosts: ['app.test', 'vault.test', 'x.sub.test'],
      });
      const tokenB = await issueRoutedToken(server, {
        name: 'beta',
        ports: String(udpPort),
        hosts: ['app.test', 'vault.test', 'x.sub.test', 'other.test', 'vps.edge.test', '*.wild.test'],
      });
      const local = `127.0.0.1:${first.port}`;
      const alpha = await startRoutedClient(h, {
        server: server.url,
        token: tokenA,
        name: 'alpha',
        proxies: [
          { name: 'app', type: 'http', local, hosts: ['app.test'] },
          { name: 'vault', type: 'tls', local, hosts: ['vault.test'] },
          { name: 'sub', type: 'http', local, subdomain: 'x' },
          { name: 'dns', type: 'udp', local: '127.0.0.1:9', remote_port: udpPort },
        ],
      });
      const bLocal = `127.0.0.1:${second.port}`;
      const beta = await startRoutedClient(h, {
        server: server.url,
        token: tokenB,
        name: 'beta',
        waitFor: ['other', 'dns-tcp'],
        proxies: [
          { name: 'app', type: 'http', local: bLocal, hosts: ['app.test'] },
          { name: 'vault', type: 'tls', local: bLocal, hosts: ['vault.test'] },
          { name: 'vault-http', type: 'http', local: bLocal, hosts: ['vault.test'] },
          { name: 'sub', type: 'http', local: bLocal, subdomain: 'x' },
          { name: 'outside', type: 'http', local: bLocal, hosts: ['notmine.test'] },
          { name: 'wildcard-wider', type: 'http', local: bLocal, hosts: ['*.test'] },
          { name: 'server-own', type: 'tls', local: bLocal, hosts: ['vps.edge.test'] },
          { name: 'dns', type: 'udp', local: '127.0.0.1:9', remote_port: udpPort },
          // tcp and udp ports are separate: the same number over tcp is free.
          { name: 'dns-tcp', type: 'tcp', local: bLocal, remote_port: udpPort },
          { name: 'other', type: 'http', local: bLocal, hosts: ['other.test'] },
        ],
      });
      const expected: Record<string, string> = {
        app: 'hostname app.test is in use by another client',
        vault: 'hostname vault.test is in use by another client',
        'vault-http': 'hostname vault.test is in use by another client',
        sub: 'hostname x.sub.test is in use by another client',
        outside: "hostname notmine.test is outside the token's grant",
        'wildcard-wider': "hostname *.test is outside the token's grant",
        'server-own': 'hostname vps.edge.test is served by the server itself (https.certs)',
        dns: `udp port ${udpPort} is in use by another client`,
      };
      for (const [proxy, reason] of Object.entries(expected)) {
        const line = await beta.proc.waitForMsg('proxy refused', 10_000, { fields: { proxy } });
        assert.ok(String(line.reason).startsWith(reason), `${proxy}: ${line.reason}`);
        // A refusal names only the name asked for, never who holds it.
        assert.ok(!String(line.reason).includes('alpha'), `${proxy}: ${line.reason}`);
      }
      assert.equal(beta.proc.logsWithMsg('proxy refused').length, Object.keys(expected).length);
      const base = `http://127.0.0.1:${server.httpPort}`;
      assert.equal(JSON.parse((await curl(['-H', 'Host: app.test'], `${base}/`)).body).backend, 'first');
      assert.equal(JSON.parse((await curl(['-H', 'Host: other.test'], `${base}/`)).body).backend, 'second');

      // alpha is gone (killed, not stopped): its names answer 502 (offline) until someone with the grant
      // claims them.
      alpha.proc.kill('SIGKILL');
      await server.proc.waitForMsg('client disconnected', 10_000, { fields: { client: 'alpha' } });
      assert.equal((await curl(['-H', 'Host: app.test'], `${base}/`)).status, 502);
      // (beta's first process would take its session back if left running: one token, one client.)
      await beta.proc.stop();
      const takeover = await startRoutedClient(h, {
        server: server.url,
        token: tokenB,
        name: 'beta again',
        proxies: [
          { name: 'app', type: 'http', local: bLocal, hosts: ['app.test'] },
          { name: 'dns', type: 'udp', local: '127.0.0.1:9', remote_port: udpPort },
        ],
      });
      assert.equal((await takeover.proc.settledLogsWithMsg('proxy refused')).length, 0);
      assert.equal(JSON.parse((await curl(['-H', 'Host: app.test'], `${base}/`)).body).backend, 'second');
    }),
);

test(
  "a name claimed while another client is away is served by its new holder, not left behind that client's offline routes",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const first = await startHttpBackend('first');
      const second = await startHttpBackend('second');
      h.onCleanup(() => Promise.all([first.close(), second.close()]));
      const server = await startRoutedServer(h, { top: { subdomain_host: 'sub.test' } });
      const away = await startRoutedClient(h, {
        server: server.url,
        token: await issueRoutedToken(server, { name: 'away', hosts: ['*.sub.test', 'app.test'] }),
        name: 'away',
        proxies: [
          { name: 'wild', type: 'http', local: `127.0.0.1:${second.port}`, hosts: ['*.sub.test'] },
          {
            name: 'api',
            type: 'http',
            local: `127.0.0.1:${second.port}`,
            hosts: ['app.test'],
            locations: ['/api'],
          },
        ],
      });
      // Gone without a goodbye (killed): its routes stay behind as offline ones, answering 502.
      away.proc.kill('SIGKILL');
      await server.proc.waitForMsg('client disconnected', 10_000, { fields: { client: 'away' } });
      const served = (host: string, path: string) => backendServing(server.httpPort, host, path);
      assert.equal(await served('x.sub.test', '/'), 'HTTP 502');
      assert.equal(await served('app.test', '/api/users'), 'HTTP 502');

      // Another client claims a subdomain under the offline wildcard, and the offline location's name. Both
      // are registered (offline routes never block a claim), and the away client could not take either back
      // while they are held (its wildcard would take a subdomain another client holds; app.test is in use).
      const here = await startRoutedClient(h, {
        server: server.url,
        token: await issueRoutedToken(server, { name: 'here', hosts: ['x.sub.test', 'app.test'] }),
        name: 'here',
        proxies: [
          { name: 'x', type: 'http', local: `127.0.0.1:${first.port}`, subdomain: 'x' },
          { name: 'app', type: 'http', local: `127.0.0.1:${first.port}`, hosts: ['app.test'] },
        ],
      });
      assert.equal((await here.proc.settledLogsWithMsg('proxy refused')).length, 0);
      assert.equal(await served('x.sub.test', '/'), 'first', "the subdomain's visitors reach its holder");
      assert.equal(await served('app.test', '/api/users'), 'first', 'so do those of every path of app.test');
      assert.equal(await served('app.test', '/'), 'first');
    }),
);
