// [http] not_found_page and unavailable_page (frps's custom404Page and its companion), with the real CLIs,
// real config files and curl as the visitor: the server's own 404 and 502/503/504 answers carry the
// operator's page on the http port and on the https port it terminates, a service's own 404 or 502 passes
// through untouched, HEAD gets no body, a reload re-reads the pages, and `check` names a bad one's key.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { type CurlResult, curl } from './lib/curl.js';
import { freePort, run, serverBin, withHarness } from './lib/processes.js';
import {
  issueRoutedToken,
  makeCa,
  makeCert,
  startRoutedClient,
  startRoutedServer,
  tomlLines,
} from './lib/routing.js';
import { writeSecret } from './lib/tunnel.js';

const NOT_FOUND_PAGE = '<!doctype html>\n<h1>Nichts hier — this name is not served here</h1>\n';
/** `${PAGES}` as the config file writes it (expanded by the server, not here). */
const PAGES = '$' + '{PAGES}';
const UNAVAILABLE_PAGE = '<!doctype html>\n<h1>Back soon</h1>\n<p>Wartung läuft.</p>\n';

/** The operator's page as the visitor got it: status kept, page's bytes, text/html, no-store as before. */
function assertPage(r: CurlResult, status: number, page: string, what: string): void {
  assert.equal(r.status, status, `${what}: ${r.stderr} ${r.body}`);
  assert.equal(r.body, page, what);
  assert.equal(r.headers['content-type'], 'text/html; charset=utf-8', what);
  assert.equal(r.headers['content-length'], String(Buffer.byteLength(page)), what);
  assert.equal(r.headers['cache-control'], 'no-store', what);
}

/**
 * A local service that answers some paths with its own errors: /missing 404, /broken 502, /slow never (for
 * response_timeout), anything else 200.
 */
async function startErroringService(): Promise<{ port: number; close(): void }> {
  const service = createServer((req, res) => {
    if (req.url === '/slow') return;
    const [status, body] =
      req.url === '/missing'
        ? [404, "the service's own 404\n"]
        : req.url === '/broken'
          ? [502, "the service's own 502\n"]
          : [200, 'served\n'];
    res.writeHead(status, { 'Content-Type': 'text/plain' });
    res.end(body);
  });
  await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
  return {
    port: (service.address() as AddressInfo).port,
    close: () => {
      service.closeAllConnections();
      service.close();
    },
  };
}

test(
  "the server's own 404 and 502/504 carry the operator's pages on http and https; a service's own pass through; HEAD has no body",
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      await h.file('404.html', NOT_FOUND_PAGE, 0o644);
      await h.file('503.html', UNAVAILABLE_PAGE, 0o644);
      const service = await startErroringService();
      h.onCleanup(() => service.close());
      const ca = await makeCa(h);
      const edge = await makeCert(h, ca, 'porthole edge', ['*.edge.test']);
      // Relative paths: next to the config file, as the harness writes both into its dir.
      const server = await startRoutedServer(h, {
        http: { not_found_page: '404.html', unavailable_page: '503.html', response_timeout: '1s' },
        https: { certs: [edge] },
      });
      const token = await issueRoutedToken(server, {
        name: 'pages',
        hosts: ['app.edge.test', 'dead.edge.test'],
      });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          {
            name: 'app',
            type: 'http',
            local: `127.0.0.1:${service.port}`,
            hosts: ['app.edge.test'],
            locations: ['/missing', '/broken', '/slow', '/ok'],
          },
          { name: 'dead', type: 'http', local: `127.0.0.1:${await freePort()}`, hosts: ['dead.edge.test'] },
        ],
      });
      const http = `http://127.0.0.1:${server.httpPort}`;
      const httpsPort = server.httpsPort!;
      const overHttps = (host: string, path: string, args: string[] = []) =>
        curl(
          [...args, '--resolve', `${host}:${httpsPort}:127.0.0.1`, '--cacert', ca.cert],
          `https://${host}:${httpsPort}${path}`,
        );

      assert.equal((await curl(['-H', 'Host: app.edge.test'], `${http}/ok`)).body, 'served\n');
      // No proxy for the name, or none for the path under a known name: the server's own 404s.
      assertPage(await curl(['-H', 'Host: nope.edge.test'], `${http}/`), 404, NOT_FOUND_PAGE, 'unknown host');
      assertPage(
        await curl(['-H', 'Host: app.edge.test'], `${http}/elsewhere`),
        404,
        NOT_FOUND_PAGE,
        'location',
      );
      assertPage(await overHttps('nope.edge.test', '/'), 404, NOT_FOUND_PAGE, 'unknown host over https');
      // An upgrade to an unknown name is answered off the raw socket: the same page.
      assertPage(
        await curl(
          ['-H', 'Host: nope.edge.test', '-H', 'Connection: Upgrade', '-H', 'Upgrade: websocket'],
          `${http}/ws`,
        ),
        404,
        NOT_FOUND_PAGE,
        'upgrade to an unknown host',
      );

      // The local service refused (502) or did not answer within response_timeout (504).
      assertPage(await curl(['-H', 'Host: dead.edge.test'], `${http}/`), 502, UNAVAILABLE_PAGE, 'refused');
      assertPage(await overHttps('dead.edge.test', '/'), 502, UNAVAILABLE_PAGE, 'refused over https');
      assertPage(await curl(['-H', 'Host: app.edge.test'], `${http}/slow`), 504, UNAVAILABLE_PAGE, 'timeout');
      // The reason the log gave for machines is as it was.
      await server.proc.waitForMsg('http forward failed', 5_000, {
        fields: { proxy: 'dead', reason: 'local service unreachable' },
      });

      // The service's own 404 and 502 are its answers, not the server's: untouched.
      for (const [path, status] of [
        ['/missing', 404],
        ['/broken', 502],
      ] as const) {
        for (const r of [
          await curl(['-H', 'Host: app.edge.test'], `${http}${path}`),
          await overHttps('app.edge.test', path),
        ]) {
          assert.equal(r.status, status, `${path}: ${r.stderr}`);
          assert.equal(r.body, `the service's own ${status}\n`);
          assert.equal(r.headers['content-type'], 'text/plain');
        }
      }

      // HEAD: the page's headers (its length too), no body.
      for (const r of [
        await curl(['-I', '-H', 'Host: nope.edge.test'], `${http}/`),
        await overHttps('nope.edge.test', '/', ['-I']),
      ]) {
        assert.equal(r.status, 404, r.stderr);
        assert.equal(r.headers['content-type'], 'text/html; charset=utf-8');
        assert.equal(r.headers['content-length'], String(Buffer.byteLength(NOT_FOUND_PAGE)));
        assert.equal(r.body, '');
      }
      // A HEAD with Upgrade is handed over raw by Node's HTTP server; its answer has no body either (socat
      // reads until the server closes, curl -I would stop after the head whatever followed).
      const headUpgrade = await run('socat', ['-t', '5', '-', `TCP:127.0.0.1:${server.httpPort}`], {
        input: 'HEAD / HTTP/1.1\r\nHost: nope.edge.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n',
        timeoutMs: 10_000,
      });
      assert.match(headUpgrade.stdout, /^HTTP\/1\.1 404 Not Found\r\n/);
      assert.match(
        headUpgrade.stdout,
        new RegExp(`\r\nContent-Length: ${Buffer.byteLength(NOT_FOUND_PAGE)}\r\n`),
      );
      assert.ok(headUpgrade.stdout.endsWith('\r\n\r\n'), `a body after the head: ${headUpgrade.stdout}`);

      // The client is gone: its names answer 502 (as they did before there were pages), with the page.
      client.proc.kill('SIGKILL');
      await server.proc.waitForMsg('client disconnected', 10_000, { fields: { client: 'pages' } });
      assertPage(await curl(['-H', 'Host: app.edge.test'], `${http}/ok`), 502, UNAVAILABLE_PAGE, 'offline');
      assertPage(await overHttps('app.edge.test', '/ok'), 502, UNAVAILABLE_PAGE, 'offline over https');
      const head = await curl(['-I', '-H', 'Host: app.edge.test'], `${http}/ok`);
      assert.equal(head.status, 502);
      assert.equal(head.headers['content-length'], String(Buffer.byteLength(UNAVAILABLE_PAGE)));
      assert.equal(head.body, '');
    }),
);

test(
  'a reload (SIGHUP) serves an edited page; one whose page is missing fails naming the key and keeps the running page',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      await h.file('404.html', NOT_FOUND_PAGE, 0o644);
      const server = await startRoutedServer(h, { http: { not_found_page: '404.html' } });
      const url = `http://127.0.0.1:${server.httpPort}/`;
      const unknown = () => curl(['-H', 'Host: nope.test'], url);
      assertPage(await unknown(), 404, NOT_FOUND_PAGE, 'at start');

      const edited = '<h1>Moved: see example.org</h1>\n';
      await writeFile(h.path('404.html'), edited);
      let mark = server.proc.mark();
      server.proc.kill('SIGHUP');
      await server.proc.waitForMsg('config reloaded', 10_000, { from: mark });
      assertPage(await unknown(), 404, edited, 'after the reload');

      const configPath = server.config.configPath;
      const config = await readFile(configPath, 'utf8');
      await writeFile(configPath, config.replace('"404.html"', '"gone/404.html"'));
      mark = server.proc.mark();
      server.proc.kill('SIGHUP');
      const failed = await server.proc.waitForMsg(
        'reload failed: keeping the running configuration',
        10_000,
        {
          from: mark,
        },
      );
      assert.match(String(failed.reason), /: http\.not_found_page: cannot read \S*gone\/404\.html: ENOENT/);
      assertPage(await unknown(), 404, edited, 'after the failed reload');
    }),
);

test(
  '`check` refuses a missing, an oversized, an empty page and a directory, naming the key and the path',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const secretFile = await writeSecret(h);
      await h.file('big.html', 'x'.repeat(256 * 1024 + 1), 0o644);
      await h.file('fits.html', 'x'.repeat(256 * 1024), 0o644);
      await h.file('empty.html', '', 0o644);
      const check = async (http: Record<string, string>, env: Record<string, string> = {}) => {
        const file = await h.file(
          'server.toml',
          `${tomlLines({ listen: '127.0.0.1:0' })}\n[auth]\n${tomlLines({ secret_file: secretFile })}\n[http]\n${tomlLines(http)}\n`,
        );
        return run(serverBin, ['check', '--config', file], { timeoutMs: 15_000, env });
      };
      const missing = await check({ listen: '127.0.0.1:0', not_found_page: 'missing.html' });
      assert.equal(missing.code, 2, missing.stderr);
      assert.match(
        missing.stderr,
        new RegExp(`server\\.toml: http\\.not_found_page: cannot read ${h.path('missing.html')}: ENOENT`),
      );
      const big = await check({ listen: '127.0.0.1:0', unavailable_page: 'big.html' });
      assert.equal(big.code, 2, big.stderr);
      assert.match(
        big.stderr,
        /server\.toml: http\.unavailable_page: \S*big\.html is 262145 bytes, over the 256 KiB an error page may have/,
      );
      const empty = await check({ not_found_page: 'empty.html' });
      assert.equal(empty.code, 2, empty.stderr);
      assert.match(empty.stderr, /http\.not_found_page: \S*empty\.html is empty/);
      // A directory (a path cut short) is not read at all.
      const directory = await check({ unavailable_page: '.' });
      assert.equal(directory.code, 2, directory.stderr);
      assert.match(directory.stderr, /http\.unavailable_page: \S+ is not a regular file/);
      // At the cap is a page; ${VAR} is expanded (systemd's $CREDENTIALS_DIRECTORY, say).
      const fits = await check(
        { listen: '127.0.0.1:0', not_found_page: `${PAGES}/fits.html`, unavailable_page: 'fits.html' },
        { PAGES: h.dir },
      );
      assert.equal(fits.code, 0, fits.stderr);
      const unset = await check({ not_found_page: `${PAGES}/fits.html` });
      assert.match(unset.stderr, /http\.not_found_page: \$\{PAGES\} in "\$\{PAGES\}\/fits\.html" is not set/);
    }),
);
