// A directory served by the client itself (`local = "dir:PATH"`, frp's static_file plugin): through an http
// proxy with the server's basic auth, and through a tcp proxy with strip_prefix, visited by curl and wget.
// A nested tree mirrored by wget -r through the listing (a binary file's sha256 kept), a 100 MiB sparse file
// streamed while the client's memory stays flat, Range, If-Modified-Since, HEAD, 405, and what must never be
// served: "..", "%2e%2e", symlinks out of the directory, hidden names, and a listing that runs a file name.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, symlink, truncate, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import path from 'node:path';
import { test } from 'node:test';
import { curl, parseCurlHeads } from './lib/curl.js';
import {
  clientBin,
  freePort,
  type Harness,
  procMemory,
  run,
  runOk,
  sleep,
  waitFor,
  withHarness,
} from './lib/processes.js';
import {
  issueRoutedToken,
  type RoutedProxy,
  rewriteRoutedClientProxies,
  startRoutedClient,
  startRoutedServer,
} from './lib/routing.js';
import { sha256Hex } from './lib/sha-stream.js';

const SPARSE_BYTES = 100 * 1024 * 1024;
const SCRIPT_NAME = '<script>alert(1).txt';
const OUTSIDE_SECRET = 'root:x:0:0:outside the share\n';

interface Share {
  dir: string;
  blob: Buffer;
  readme: string;
}

/**
 * share/ (docs/readme.txt, docs/sub/blob.bin, site/index.html, a file named like a script tag, hidden
 * .secret and .git/config, a 100 MiB sparse file, symlinks out of it) and outside/passwd beside it.
 */
async function makeShare(h: Harness): Promise<Share> {
  const dir = h.path('share');
  const outside = h.path('outside');
  await mkdir(path.join(dir, 'docs', 'sub'), { recursive: true });
  await mkdir(path.join(dir, 'site'), { recursive: true });
  await mkdir(path.join(dir, '.git'), { recursive: true });
  await mkdir(outside, { recursive: true });
  const blob = randomBytes(3 * 1024 * 1024 + 7);
  const readme = 'hello from the share\n';
  await writeFile(path.join(dir, 'docs', 'readme.txt'), readme);
  await writeFile(path.join(dir, 'docs', 'sub', 'blob.bin'), blob);
  await writeFile(path.join(dir, 'site', 'index.html'), '<h1>the site</h1>\n');
  await writeFile(path.join(dir, SCRIPT_NAME), 'x');
  await writeFile(path.join(dir, '.secret'), 'hidden\n');
  await writeFile(path.join(dir, '.git', 'config'), '[core]\n');
  await writeFile(path.join(dir, 'big.sparse'), '');
  await truncate(path.join(dir, 'big.sparse'), SPARSE_BYTES);
  await writeFile(path.join(outside, 'passwd'), OUTSIDE_SECRET);
  await symlink(outside, path.join(dir, 'escape'));
  await symlink(path.join(outside, 'passwd'), path.join(dir, 'escape-file'));
  await symlink('docs', path.join(dir, 'docs-link'));
  return { dir, blob, readme };
}

test(
  'an http proxy with local = "dir:..." serves a tree to curl and wget: listing, index.html, Range, 304, HEAD, 405, and nothing outside or hidden',
  { timeout: 120_000 },
  (t) =>
    withHarness(t, async (h) => {
      const share = await makeShare(h);
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, { name: 'files', hosts: ['files.test'] });
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        // Relative: resolved next to the config file, which the harness writes in its own directory.
        proxies: [
          {
            name: 'files',
            type: 'http',
            local: 'dir:share',
            hosts: ['files.test'],
            http_user: 'family',
            http_password: 'a long passphrase',
          },
        ],
      });
      assert.equal(client.registered.get('files')?.local, `dir:${share.dir}`);
      const base = `http://127.0.0.1:${server.httpPort}`;
      const auth = ['-H', 'Host: files.test', '-u', 'family:a long passphrase'];
      const get = (urlPath: string, extra: string[] = []) => curl([...auth, ...extra], `${base}${urlPath}`);
      /** The body into `file` (binary), the head parsed. */
      const download = async (urlPath: string, extra: string[], file: string) => {
        const r = await run('curl', ['-sS', '-D', '-', '-o', file, ...auth, ...extra, `${base}${urlPath}`], {
          timeoutMs: 20_000,
        });
        assert.equal(r.code, 0, r.stderr);
        const heads = parseCurlHeads(r.stdout);
        return {
          status: heads.status,
          headers: Object.fromEntries(heads.headers),
          body: await readFile(file),
        };
      };

      // The server's basic auth stands in front of the files.
      const anonymous = await curl(['-H', 'Host: files.test'], `${base}/docs/readme.txt`);
      assert.equal(anonymous.status, 401);

      const listing = await get('/');
      assert.equal(listing.status, 200, listing.stderr);
      assert.match(listing.headers['content-type'] ?? '', /^text\/html/);
      assert.match(listing.headers['content-security-policy'] ?? '', /default-src 'none'/);
      for (const name of ['docs/', 'site/', 'big.sparse', 'docs-link/'])
        assert.ok(listing.body.includes(`>${name}</a>`), `${name} listed: ${listing.body}`);
      assert.ok(listing.body.includes('&lt;script&gt;alert(1).txt'), listing.body);
      assert.ok(!listing.body.includes('<script'), 'no tag from a file name');
      for (const hidden of ['.secret', '.git', 'escape'])
        assert.ok(!listing.body.includes(hidden), `${hidden} not listed: ${listing.body}`);

      const moved = await get('/docs');
      assert.equal(moved.status, 301);
      assert.equal(moved.headers.location, '/docs/');
      const site = await get('/site/');
      assert.equal(site.status, 200);
      assert.equal(site.body, '<h1>the site</h1>\n');
      const readme = await get('/docs/readme.txt');
      assert.equal(readme.status, 200);
      assert.equal(readme.body, share.readme);
      assert.equal(readme.headers['content-type'], 'text/plain; charset=utf-8');
      assert.equal(readme.headers['content-length'], String(share.readme.length));
      // A symlink inside the share is followed.
      assert.equal((await get('/docs-link/readme.txt')).body, share.readme);

      // wget mirrors the tree through the listings; the binary file arrives whole.
      const mirror = h.path('mirror');
      await runOk(
        'wget',
        [
          '-q',
          '-r',
          '-np',
          '-nH',
          '-P',
          mirror,
          '--header',
          'Host: files.test',
          '--user',
          'family',
          '--password',
          'a long passphrase',
          `${base}/docs/`,
        ],
        { timeoutMs: 60_000 },
      );
      assert.equal(
        sha256Hex(await readFile(path.join(mirror, 'docs', 'sub', 'blob.bin'))),
        sha256Hex(share.blob),
      );
      assert.equal(await readFile(path.join(mirror, 'docs', 'readme.txt'), 'utf8'), share.readme);

      // One range, and one past the end.
      const blobFile = h.path('part.bin');
      const part = await download('/docs/sub/blob.bin', ['-r', '1000-1999'], blobFile);
      assert.equal(part.status, 206);
      assert.equal(part.headers['content-range'], `bytes 1000-1999/${share.blob.length}`);
      assert.ok(part.body.equals(share.blob.subarray(1000, 2000)));
      const tail = await download('/docs/sub/blob.bin', ['-r', '-10'], blobFile);
      assert.equal(tail.status, 206);
      assert.ok(tail.body.equals(share.blob.subarray(-10)));
      // The whole binary file through curl too.
      const whole = await download('/docs/sub/blob.bin', [], blobFile);
      assert.equal(whole.headers['content-type'], 'application/octet-stream');
      assert.equal(sha256Hex(whole.body), sha256Hex(share.blob));
      const past = await get('/docs/sub/blob.bin', ['-H', `Range: bytes=${share.blob.length}-`]);
      assert.equal(past.status, 416);
      assert.equal(past.headers['content-range'], `bytes */${share.blob.length}`);

      // If-Modified-Since: 304 for the file's own time, the file for an older one.
      const lastModified = readme.headers['last-modified'];
      assert.ok(lastModified, 'Last-Modified sent');
      const notModified = await get('/docs/readme.txt', ['-H', `If-Modified-Since: ${lastModified}`]);
      assert.equal(notModified.status, 304);
      assert.equal(notModified.body, '');
      const older = new Date(Date.parse(lastModified) - 60_000).toUTCString();
      assert.equal((await get('/docs/readme.txt', ['-H', `If-Modified-Since: ${older}`])).status, 200);

      // HEAD: the head of a GET, no body.
      const head = await get('/docs/sub/blob.bin', ['-I']);
      assert.equal(head.status, 200);
      assert.equal(head.headers['content-length'], String(share.blob.length));
      assert.equal(head.headers['accept-ranges'], 'bytes');
      assert.equal(head.body, '');

      const posted = await get('/docs/readme.txt', ['-X', 'POST', '-d', 'x=1']);
      assert.equal(posted.status, 405);
      assert.equal(posted.headers.allow, 'GET, HEAD');

      // Nothing above the share, however asked; nothing hidden.
      for (const [urlPath, status] of [
        ['/../etc/passwd', 400],
        ['/%2e%2e/etc/passwd', 400],
        ['/docs/%2E%2E/%2e%2e/etc/passwd', 400],
        ['/docs/..%2f..%2fetc/passwd', 404],
        ['/docs/readme.txt%00.png', 400],
        ['/escape-file', 404],
        ['/escape/passwd', 404],
        ['/.secret', 404],
        ['/.git/config', 404],
        ['/docs/%2esecret', 404],
      ] as const) {
        const refused = await get(urlPath, ['--path-as-is']);
        assert.equal(refused.status, status, `${urlPath}: ${refused.status} ${refused.body}`);
        assert.ok(!refused.body.includes('root:') && !refused.body.includes('hidden'), urlPath);
      }

      // One line per request on the client (written once the answer is out: it may follow curl's exit).
      await waitFor(
        'the client lines of the refused requests',
        () => client.proc.logsWithMsg('file request').some((l) => l.path === '/docs/%2esecret'),
        10_000,
      );
      const lines = client.proc.logsWithMsg('file request');
      const served = lines.find((l) => l.path === '/docs/readme.txt' && l.status === 200);
      assert.ok(served, `a file request line for /docs/readme.txt: ${JSON.stringify(lines.slice(0, 3))}`);
      assert.equal(served.proxy, 'files');
      assert.equal(served.method, 'GET');
      assert.equal(served.bytes_out, share.readme.length);
      assert.equal(served.remote_addr, '127.0.0.1');
      const refusedLine = lines.find((l) => l.path === '/escape/passwd');
      assert.equal(refusedLine?.status, 404);
      assert.equal(refusedLine?.reason, 'a symlink leading out of the directory');
      // The client refused it, not the server in front.
      const dotDot = lines.find((l) => l.path === '/%2e%2e/etc/passwd');
      assert.equal(dotDot?.reason, 'a ".." segment');
      assert.ok(!JSON.stringify(client.proc.logs).includes('a long passphrase'), 'no password in a log line');

      // 100 MiB read at 25 MiB/s: the client streams it, its memory does not grow by the file (measured:
      // +30 MiB streamed, +89 MiB with the file read whole).
      const pid = client.proc.pid!;
      const before = procMemory('VmRSS', pid);
      let peak = before;
      let downloading = true;
      const sampler = (async () => {
        while (downloading) {
          peak = Math.max(peak, procMemory('VmRSS', pid));
          await sleep(50);
        }
      })();
      const big = await run(
        'curl',
        [
          '-sS',
          '-o',
          '/dev/null',
          '-w',
          '%{http_code} %{size_download}',
          '--limit-rate',
          '25M',
          ...auth,
          `${base}/big.sparse`,
        ],
        { timeoutMs: 60_000 },
      );
      downloading = false;
      await sampler;
      assert.equal(big.stdout, `200 ${SPARSE_BYTES}`, big.stderr);
      const grown = peak - before;
      t.diagnostic(
        `client RSS ${Math.round(before / 2 ** 20)} MiB, +${Math.round(grown / 2 ** 20)} MiB at most while serving 100 MiB`,
      );
      assert.ok(
        grown < 64 * 2 ** 20,
        `the client grew by ${Math.round(grown / 2 ** 20)} MiB serving a 100 MiB file`,
      );
    }),
);

test(
  'a tcp proxy with local = "dir:..." answers HTTP itself; strip_prefix, serve_dotfiles and follow_outside_symlinks',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const share = await makeShare(h);
      const [plainPort, openPort] = [await freePort(), await freePort()];
      const server = await startRoutedServer(h, { http: false });
      const token = await issueRoutedToken(server, { name: 'files', ports: `${plainPort},${openPort}` });
      const plainProxy: RoutedProxy = {
        name: 'plain',
        type: 'tcp',
        local: `dir:${share.dir}`,
        remote_port: plainPort,
        strip_prefix: 'static',
      };
      const openProxy: RoutedProxy = {
        name: 'open',
        type: 'tcp',
        local: `dir:${share.dir}`,
        remote_port: openPort,
        serve_dotfiles: true,
        follow_outside_symlinks: true,
      };
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [plainProxy, openProxy],
      });
      const plain = `http://127.0.0.1:${plainPort}`;
      assert.equal((await curl([], `${plain}/static/docs/readme.txt`)).body, share.readme);
      assert.equal((await curl([], `${plain}/docs/readme.txt`)).status, 404, 'outside strip_prefix');
      const moved = await curl([], `${plain}/static`);
      assert.equal(moved.status, 301);
      assert.equal(moved.headers.location, '/static/');
      const listing = await curl([], `${plain}/static/`);
      assert.ok(listing.body.includes('>docs/</a>'), listing.body);
      assert.equal((await curl([], `${plain}/static/.secret`)).status, 404);
      assert.equal((await curl(['--path-as-is'], `${plain}/static/../etc/passwd`)).status, 400);
      // Two requests on one connection (curl keeps it alive between URLs).
      const twice = await run(
        'curl',
        ['-sS', '-v', `${plain}/static/docs/readme.txt`, `${plain}/static/docs/`],
        {
          timeoutMs: 20_000,
        },
      );
      assert.ok(twice.stdout.startsWith(share.readme), twice.stdout);
      assert.match(twice.stdout, />sub\/<\/a>/);
      assert.match(twice.stderr, /Re-using existing connection/);

      // Not HTTP at all (a port scanner, a mistaken ssh): a 400 reaches the visitor, then the end.
      const junk = await new Promise<string>((resolve, reject) => {
        const socket = connect({ host: '127.0.0.1', port: plainPort });
        let got = '';
        const timer = setTimeout(() => socket.destroy(new Error('no close within 10 s')), 10_000);
        socket.on('connect', () => socket.write('SSH-2.0-OpenSSH_9.2\r\n\r\n'));
        socket.on('data', (chunk: Buffer) => {
          got += chunk.toString();
        });
        socket.on('error', reject);
        socket.on('end', () => {
          clearTimeout(timer);
          socket.end();
          resolve(got);
        });
      });
      assert.match(junk, /^HTTP\/1\.1 400 Bad Request\r\n/);

      const open = `http://127.0.0.1:${openPort}`;
      assert.equal((await curl([], `${open}/.secret`)).body, 'hidden\n');
      assert.equal((await curl([], `${open}/escape/passwd`)).body, OUTSIDE_SECRET);
      assert.equal((await curl([], `${open}/escape-file`)).body, OUTSIDE_SECRET);
      // ".." stays refused even where symlinks may leave.
      assert.equal((await curl(['--path-as-is'], `${open}/../etc/passwd`)).status, 400);
      const wget = await run('wget', ['-q', '-O', '-', `${open}/docs/readme.txt`], { timeoutMs: 20_000 });
      assert.equal(wget.stdout, share.readme);

      // A reload: a new strip_prefix applies to the next request, and a bandwidth_limit holds a served file
      // to its rate as it does any proxy's bytes (3 MiB at "1MB": about 2 s, the first second's worth at once).
      await rewriteRoutedClientProxies(client.configPath, [
        { ...plainProxy, strip_prefix: '/files/' },
        { ...openProxy, bandwidth_limit: '1MB' },
      ]);
      const mark = client.proc.mark();
      client.proc.kill('SIGHUP');
      await client.proc.waitForMsg('config reloaded', 10_000, { from: mark });
      assert.equal((await curl([], `${plain}/files/docs/readme.txt`)).body, share.readme);
      assert.equal((await curl([], `${plain}/static/docs/readme.txt`)).status, 404);
      const started = performance.now();
      const limited = await run(
        'curl',
        ['-sS', '-o', '/dev/null', '-w', '%{size_download}', `${open}/docs/sub/blob.bin`],
        {
          timeoutMs: 30_000,
        },
      );
      const ms = performance.now() - started;
      assert.equal(limited.stdout, String(share.blob.length), limited.stderr);
      t.diagnostic(`${share.blob.length} bytes at bandwidth_limit = "1MB" in ${Math.round(ms)} ms`);
      assert.ok(ms >= 1000, `held to 1 MiB/s: ${Math.round(ms)} ms`);
    }),
);

test(
  "a big cookie that the server's max_header_size lets through is served from the directory too, over http and tcp",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const share = await makeShare(h);
      const tcpPort = await freePort();
      const server = await startRoutedServer(h);
      const token = await issueRoutedToken(server, {
        name: 'files',
        hosts: ['files.test'],
        ports: `${tcpPort}`,
      });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'files', type: 'http', local: `dir:${share.dir}`, hosts: ['files.test'] },
          { name: 'plain', type: 'tcp', local: `dir:${share.dir}`, remote_port: tcpPort },
        ],
      });
      // An SSO cookie of 24 KiB: under the server's 32 KiB default, over Node's own 16 KiB.
      const cookie = ['-H', `Cookie: sso=${'a'.repeat(24 * 1024)}`];
      const viaHttp = await curl(
        ['-H', 'Host: files.test', ...cookie],
        `http://127.0.0.1:${server.httpPort}/docs/readme.txt`,
      );
      assert.equal(viaHttp.status, 200, `http proxy: ${viaHttp.status} ${viaHttp.stderr}`);
      assert.equal(viaHttp.body, share.readme);
      const viaTcp = await curl(cookie, `http://127.0.0.1:${tcpPort}/docs/readme.txt`);
      assert.equal(viaTcp.status, 200, `tcp proxy: ${viaTcp.status} ${viaTcp.stderr}`);
      assert.equal(viaTcp.body, share.readme);
      // Past 32 KiB: the server refuses it on the http port, the client on the tcp proxy, as the server would.
      const huge = ['-H', `Cookie: sso=${'a'.repeat(40 * 1024)}`];
      assert.equal((await curl(huge, `http://127.0.0.1:${tcpPort}/docs/readme.txt`)).status, 431);
    }),
);

test('check refuses dir: where it cannot work and its keys on other proxies', { timeout: 30_000 }, (t) =>
  withHarness(t, async (h) => {
    const token = await h.file('token', 'x.y.z\n');
    const cases: [string, RegExp][] = [
      ['type = "udp"\nlocal = "dir:/srv"\nremote_port = 5353', /"dir:" is for http and tcp proxies/],
      ['type = "tls"\nlocal = "dir:/srv"\nhosts = ["a.test"]', /"dir:" is for http and tcp proxies/],
      ['type = "tcp"\nlocal = "dir:"\nremote_port = 8080', /names no directory/],
      [
        'type = "tcp"\nlocal = "127.0.0.1:80"\nremote_port = 8080\nstrip_prefix = "x"',
        /strip_prefix: applies to proxies with local = "dir:PATH" only/,
      ],
      [
        'type = "tcp"\nlocal = "dir:/srv"\nremote_port = 8080\nstrip_prefix = "a/../b"',
        /strip_prefix: "\.\." cannot be a segment/,
      ],
      [
        'type = "tcp"\nlocal = "dir:/srv"\nremote_port = 8080\nproxy_protocol = "v1"',
        /proxy_protocol: a directory served by the client/,
      ],
    ];
    for (const [keys, expected] of cases) {
      const file = await h.file(
        'client.toml',
        `server = "ws://127.0.0.1:7000/_porthole"\ntoken_file = "${token}"\n[[proxies]]\nname = "files"\n${keys}\n`,
      );
      const r = await run(clientBin, ['check', '--config', file], { timeoutMs: 15_000 });
      assert.equal(r.code, 2, `${keys}: ${r.stdout}`);
      assert.match(r.stderr, expected, keys);
    }
  }),
);
