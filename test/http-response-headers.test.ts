// An http proxy's response_headers (frp's responseHeaders.set): set on every answer the service sends
// through the proxy, replacing the service's fields of that name, but not on a WebSocket's 101 nor on the
// server's own answers; a reload that changes them applies to the next request; `check` refuses what the
// server owns and other proxy types. curl is the visitor, a real HTTP service behind the real CLIs.
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { WebSocket } from 'ws';
import { type CurlResult, curl } from './lib/curl.js';
import { rawUpgradeRequest, startHttpBackend } from './lib/http-backend.js';
import { clientBin, freePort, type Harness, run, withHarness, withTimeout } from './lib/processes.js';
import {
  issueRoutedToken,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  startRoutedClient,
  startRoutedServer,
} from './lib/routing.js';

const SECURITY = { 'X-Frame-Options': 'DENY', 'Strict-Transport-Security': 'max-age=63072000' };

/** The values of every field of `answer` named `name` (any case), in the order sent. */
function values(answer: CurlResult, name: string): string[] {
  return answer.fields.filter(([n]) => n.toLowerCase() === name.toLowerCase()).map(([, v]) => v);
}

/** `path` on `host` through the vhost port, curl the visitor (`-I`: HEAD). */
function fetchHead(port: number, host: string, path: string, extra: string[] = []): Promise<CurlResult> {
  return curl(['-H', `Host: ${host}`, ...extra], `http://127.0.0.1:${port}${path}`);
}

/** The head a visitor gets back for a WebSocket upgrade of `path`, as raw text. */
async function upgradeAnswerHead(port: number, host: string, path: string): Promise<string> {
  const visitor = net.connect({ host: '127.0.0.1', port });
  visitor.on('error', () => {});
  let reply = '';
  const head = new Promise<string>((resolve) => {
    visitor.on('data', (d: Buffer) => {
      reply += d.toString('latin1');
      const end = reply.indexOf('\r\n\r\n');
      if (end >= 0) resolve(reply.slice(0, end));
    });
    visitor.once('close', () => resolve(reply));
  });
  visitor.write(rawUpgradeRequest(path, host));
  try {
    return await withTimeout(head, 5000, () => `the answer to the upgrade of ${path}`);
  } finally {
    visitor.destroy();
  }
}

/** A WebSocket through the vhost port: opens, gets the service's greeting and its echo of "ping". */
async function webSocketEchoes(port: number, host: string): Promise<string[]> {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/ws`, { headers: { Host: host } });
  const messages: string[] = [];
  try {
    await withTimeout(
      new Promise<void>((resolve, reject) => {
        ws.on('message', (data: Buffer) => {
          messages.push(data.toString());
          if (messages.length === 1) ws.send('ping');
          if (messages.length === 2) resolve();
        });
        ws.once('error', reject);
      }),
      10_000,
      () => `the WebSocket's greeting and echo (got ${JSON.stringify(messages)})`,
    );
  } finally {
    ws.terminate();
  }
  return messages;
}

/** A server, and a client whose http proxies (`proxies`, each on its own host) it serves. */
async function tunnel(h: Harness, proxies: RoutedProxy[]) {
  const server = await startRoutedServer(h);
  const hosts = proxies.flatMap((p) => p.hosts as string[]);
  const token = await issueRoutedToken(server, { name: 'headers', hosts });
  const client = await startRoutedClient(h, { server: server.url, token, proxies });
  return { server, client, port: server.httpPort! };
}

test(
  "response_headers: set on the service's answers (all of a field's values replaced, whatever their case), HEAD and 304 too; not on a 101, whose WebSocket works, nor on the server's own 404, 401 and 502",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const local = `127.0.0.1:${backend.port}`;
      const { port } = await tunnel(h, [
        { name: 'web', type: 'http', local, hosts: ['app.test'], response_headers: SECURITY },
        {
          name: 'locked',
          type: 'http',
          local,
          hosts: ['locked.test'],
          http_user: 'alice',
          http_password: 'pw',
          response_headers: SECURITY,
        },
        {
          name: 'down',
          type: 'http',
          local: `127.0.0.1:${await freePort()}`,
          hosts: ['down.test'],
          response_headers: SECURITY,
        },
      ]);

      const plain = await fetchHead(port, 'app.test', '/anything');
      assert.equal(plain.status, 200);
      assert.deepEqual(values(plain, 'X-Frame-Options'), ['DENY']);
      assert.deepEqual(values(plain, 'Strict-Transport-Security'), ['max-age=63072000']);
      assert.deepEqual(values(plain, 'X-Backend'), ['app'], "the service's other fields pass");

      // The service sends the field three times, in two spellings: one value is left, the proxy's.
      const sent =
        '/fields?field=X-Frame-Options:SAMEORIGIN&field=x-frame-options:ALLOW-FROM%20x&field=X-FRAME-OPTIONS:x&field=X-Kept:yes';
      const replaced = await fetchHead(port, 'app.test', sent);
      assert.equal(replaced.status, 200);
      assert.deepEqual(values(replaced, 'X-Frame-Options'), ['DENY'], JSON.stringify(replaced.fields));
      assert.deepEqual(values(replaced, 'X-Kept'), ['yes']);

      // HEAD and 304: the fields are set, and no body comes (curl would wait for one a length promised).
      const head = await fetchHead(port, 'app.test', sent, ['-I']);
      assert.equal(head.status, 200);
      assert.deepEqual(values(head, 'X-Frame-Options'), ['DENY']);
      const notModified = await fetchHead(port, 'app.test', '/fields?status=304&field=ETag:"v1"');
      assert.equal(notModified.status, 304);
      assert.deepEqual(values(notModified, 'X-Frame-Options'), ['DENY']);
      assert.deepEqual(values(notModified, 'ETag'), ['"v1"']);

      // The server's own answers are not the service's.
      const notFound = await fetchHead(port, 'nobody.test', '/');
      assert.equal(notFound.status, 404);
      assert.deepEqual(values(notFound, 'X-Frame-Options'), []);
      const noCredentials = await fetchHead(port, 'locked.test', '/');
      assert.equal(noCredentials.status, 401);
      assert.deepEqual(values(noCredentials, 'X-Frame-Options'), []);
      const signedIn = await fetchHead(port, 'locked.test', '/', ['-u', 'alice:pw']);
      assert.equal(signedIn.status, 200);
      assert.deepEqual(values(signedIn, 'X-Frame-Options'), ['DENY']);
      const unreachable = await fetchHead(port, 'down.test', '/');
      assert.equal(unreachable.status, 502);
      assert.deepEqual(values(unreachable, 'X-Frame-Options'), []);

      // A 101 is passed as the service wrote it, and the WebSocket works; an upgrade the service declines
      // is an answer of the service like any other.
      const switching = await upgradeAnswerHead(port, 'app.test', '/ws');
      assert.match(switching, /^HTTP\/1\.1 101 /);
      assert.doesNotMatch(switching, /x-frame-options|strict-transport-security/i);
      assert.deepEqual(await webSocketEchoes(port, 'app.test'), [
        'hello from app xff=127.0.0.1',
        'echo:ping',
      ]);
      const declined = await upgradeAnswerHead(port, 'app.test', '/not-a-websocket');
      assert.match(declined, /^HTTP\/1\.1 400 /);
      assert.match(declined, /\r\nX-Frame-Options: DENY\r\n/);
    }),
);

test(
  "a reload that changes only response_headers applies to the next request; one that removes them lets the service's own through",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('app');
      h.onCleanup(() => backend.close());
      const web: RoutedProxy = {
        name: 'web',
        type: 'http',
        local: `127.0.0.1:${backend.port}`,
        hosts: ['app.test'],
        response_headers: { 'X-Frame-Options': 'DENY' },
      };
      const { client, port } = await tunnel(h, [web]);
      const path = '/fields?field=X-Frame-Options:SAMEORIGIN';
      assert.deepEqual(values(await fetchHead(port, 'app.test', path), 'X-Frame-Options'), ['DENY']);

      const reload = async (proxy: RoutedProxy) => {
        await rewriteRoutedClientProxies(client.configPath, [proxy]);
        const from = client.proc.logs.length;
        client.proc.child.kill('SIGHUP');
        const reloaded = await client.proc.waitForMsg('config reloaded', 15_000, { from });
        assert.deepEqual(reloaded.changed, ['web']);
        await client.proc.waitForMsg('proxy registered', 15_000, { from, fields: { proxy: 'web' } });
      };
      await reload({ ...web, response_headers: { 'x-frame-options': 'ALLOW-FROM https://a.test' } });
      assert.deepEqual(values(await fetchHead(port, 'app.test', path), 'X-Frame-Options'), [
        'ALLOW-FROM https://a.test',
      ]);
      const { response_headers: _, ...without } = web;
      await reload(without);
      assert.deepEqual(values(await fetchHead(port, 'app.test', path), 'X-Frame-Options'), ['SAMEORIGIN']);
    }),
);

test(
  'check refuses response_headers that the server owns, and on a proxy that is not http, naming the key',
  {
    timeout: 30_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      const head = 'server = "ws://127.0.0.1:1/_porthole"\ntoken = "x"\n';
      const http =
        '[[proxies]]\nname = "web"\ntype = "http"\nlocal = "127.0.0.1:3000"\nhosts = ["app.test"]\n';
      const owned = await h.file(
        'owned.toml',
        `${head}${http}response_headers = { "X-Frame-Options" = "DENY", "Transfer-Encoding" = "gzip" }\n`,
      );
      const refusedName = await run(clientBin, ['check', '--config', owned]);
      assert.equal(refusedName.code, 2);
      assert.match(
        refusedName.stderr,
        /owned\.toml: proxies\[0\] \("web"\)\.response_headers\.Transfer-Encoding: cannot be set here: it frames the body/,
      );
      const tcp = await h.file(
        'tcp.toml',
        `${head}[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = 2222\nresponse_headers = { "X-Frame-Options" = "DENY" }\n`,
      );
      const refusedType = await run(clientBin, ['check', '--config', tcp]);
      assert.equal(refusedType.code, 2);
      assert.match(
        refusedType.stderr,
        /tcp\.toml: proxies\[0\] \("ssh"\)\.response_headers: applies to http proxies, not tcp/,
      );
      const fine = await h.file(
        'fine.toml',
        `${head}${http}response_headers = { "X-Frame-Options" = "DENY" }\n`,
      );
      const passed = await run(clientBin, ['check', '--config', fine]);
      assert.equal(passed.code, 0, passed.stderr);
    }),
);
