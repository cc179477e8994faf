// `porthole-client reload`: SIGHUP's reload asked of the running client over its [admin] endpoint, with
// the answer a signal cannot give (what changed, or the mistake that kept the running config).
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { clientBin, freePort, run, withHarness } from './lib/processes.js';
import {
  issueRoutedToken,
  rewriteRoutedClientProxies,
  startRoutedClient,
  startRoutedServer,
} from './lib/routing.js';
import { startEchoServer } from './lib/services.js';

test(
  'porthole-client reload: says what it added, that nothing changed, or the mistake that kept the running config; the endpoint takes a JSON POST from a loopback Host only',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const [first, second, adminPort] = [await freePort(), await freePort(), await freePort()];
      const server = await startRoutedServer(h, { http: false, allowPorts: [`${first}`, `${second}`] });
      const client = await startRoutedClient(h, {
        server: server.url,
        token: await issueRoutedToken(server, { name: 'homelab', ports: `${first},${second}` }),
        adminListen: `127.0.0.1:${adminPort}`,
        proxies: [{ name: 'one', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: first }],
      });
      await client.proc.waitForMsg('admin listening', 5_000);
      const reload = () => run(clientBin, ['reload', '--config', client.configPath], { timeoutMs: 15_000 });

      const proxies = [
        { name: 'one', type: 'tcp' as const, local: `127.0.0.1:${echo.port}`, remote_port: first },
        { name: 'two', type: 'tcp' as const, local: `127.0.0.1:${echo.port}`, remote_port: second },
      ];
      await rewriteRoutedClientProxies(client.configPath, proxies);
      const added = await reload();
      assert.equal(added.code, 0, added.stderr);
      assert.equal(added.stdout, 'reloaded:\n  proxies added: two\n');
      await client.proc.waitForMsg('proxy registered', 10_000, { fields: { proxy: 'two' } });

      const unchanged = await reload();
      assert.equal(unchanged.code, 0, unchanged.stderr);
      assert.equal(unchanged.stdout, 'reloaded: nothing changed\n');

      // A misspelt key: the reload is refused with check's words, and the running proxies stay.
      const good = await readFile(client.configPath, 'utf8');
      await writeFile(client.configPath, good.replace(`remote_port = ${second}`, `remote_prot = ${second}`));
      const refused = await reload();
      assert.equal(refused.code, 2, refused.stdout);
      assert.match(refused.stderr, /remote_prot/);
      assert.match(refused.stderr, /did you mean "remote_port"\?/);
      assert.match(refused.stderr, /\nthe running configuration is kept\n$/);
      await client.proc.waitForMsg('reload failed: keeping the running configuration', 5_000);
      assert.equal(client.proc.logsWithMsg('proxy unregistered').length, 0, 'nothing was unregistered');

      // What a web page could send (a form, text) is refused; so is GET, and a Host that is not loopback.
      const api = `http://127.0.0.1:${adminPort}/api/reload`;
      const form = await curl(['-X', 'POST', '-d', 'a=b'], api);
      assert.equal(form.status, 415, form.body);
      const get = await curl([], api);
      assert.equal(get.status, 405, get.body);
      assert.equal(get.headers.allow, 'POST');
      const rebound = await curl(
        ['-X', 'POST', '-H', 'Content-Type: application/json', '-H', 'Host: evil.example:80', '-d', '{}'],
        api,
      );
      assert.equal(rebound.status, 421, rebound.body);
      assert.equal(client.proc.logsWithMsg('config reloaded').length, 2, 'none of them reloaded');

      const stopped = await run(clientBin, ['reload', '--admin', `127.0.0.1:${await freePort()}`]);
      assert.equal(stopped.code, 1);
      assert.match(stopped.stderr, /^porthole-client reload: cannot reach the client at 127\.0\.0\.1:\d+: /);
    }),
);
