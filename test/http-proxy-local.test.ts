// A tcp proxy with `local = "http-proxy"` (frp's http_proxy plugin): the server's public port takes HTTP proxy
// requests and the client connects them from its side, under socks5's rules (socks_user and its password,
// socks_allow, socks_allow_ports). curl through it with -x (absolute-form) and -p -x (CONNECT), an https
// target by CONNECT, the https_proxy variable, uploads by Content-Length and chunked, and the refusals: 407,
// 403, 502, and 400 for a request whose body could end in two places.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFile } from 'node:fs/promises';
import { createServer as createHttpsServer } from 'node:https';
import { type AddressInfo, connect } from 'node:net';
import { test } from 'node:test';
import { FORWARD_PASSWORD, FORWARD_USER, startForwardProxyTunnel } from './lib/forward-proxy.js';
import { startHttpBackend } from './lib/http-backend.js';
import { clientBin, freePort, freePorts, type Harness, run, withHarness } from './lib/processes.js';
import { makeCa, makeCert } from './lib/routing.js';

const USER = FORWARD_USER;
const PASSWORD = FORWARD_PASSWORD;

/** A server and a client whose http-proxy proxy (user and password from a file, `extra` keys) is on its port. */
async function startHttpProxyTunnel(
  h: Harness,
  extra: Record<string, string | string[]> = {},
  adminListen?: string,
) {
  const tunnel = await startForwardProxyTunnel(h, {
    name: 'web-proxy',
    local: 'http-proxy',
    extra,
    ...(adminListen === undefined ? {} : { adminListen }),
  });
  const proxyUrl = `http://${USER}:${encodeURIComponent(PASSWORD)}@127.0.0.1:${tunnel.port}`;
  return { ...tunnel, proxyUrl };
}

/** curl with these arguments: [exit code, stdout, stderr]. */
async function curl(
  args: string[],
  env: Record<string, string> = {},
): Promise<[number | null, string, string]> {
  const r = await run('curl', ['-sS', '--max-time', '15', ...args], { timeoutMs: 20_000, env });
  return [r.code, r.stdout, r.stderr];
}

/** `request` written raw to the proxy port; every byte that came back until it closed (or 15 s passed). */
function rawRequest(port: number, request: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => socket.destroy(), 15_000);
    socket.on('connect', () => socket.write(request));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
  });
}

const basic = (user: string, password: string) => Buffer.from(`${user}:${password}`).toString('base64');

test(
  'curl -x (absolute-form) and -p -x (CONNECT) reach a service through the http-proxy port, an https one by CONNECT and by https_proxy; each connection is logged with its dest',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('lab-web');
      h.onCleanup(() => backend.close());
      const admin = `127.0.0.1:${await freePort()}`;
      const { client, proxyUrl } = await startHttpProxyTunnel(h, {}, admin);
      assert.equal(client.registered.get('web-proxy')?.local, 'http-proxy');
      const status = await run(clientBin, ['status', '--admin', admin], { timeoutMs: 15_000 });
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /^web-proxy +tcp +http-proxy +\d+ +registered /m);

      const [plain, plainBody, plainErr] = await curl([
        '-x',
        proxyUrl,
        `http://localhost:${backend.port}/by-name?q=1`,
      ]);
      assert.equal(plain, 0, plainErr);
      const seen = JSON.parse(plainBody);
      assert.equal(seen.url, '/by-name?q=1', 'the request line in origin-form');
      assert.equal(seen.headers.host, `localhost:${backend.port}`);
      assert.equal(seen.headers['proxy-authorization'], undefined, 'Proxy-Authorization is not passed on');
      assert.equal(seen.headers['proxy-connection'], undefined);
      const named = await client.proc.waitForMsg('connection closed', 10_000, {
        fields: { dest: `localhost:${backend.port}` },
      });
      assert.equal(named.local, 'http-proxy');
      assert.ok(String(named.dest_addr).endsWith(`:${backend.port}`), JSON.stringify(named));
      assert.ok((named.bytes_in as number) > 0 && (named.bytes_out as number) > 0, JSON.stringify(named));
      t.diagnostic(`absolute-form: ${JSON.stringify(named)}`);

      const [tunnelled, tunnelBody, tunnelErr] = await curl([
        '-p',
        '-x',
        proxyUrl,
        `http://127.0.0.1:${backend.port}/through-connect`,
      ]);
      assert.equal(tunnelled, 0, tunnelErr);
      assert.equal(JSON.parse(tunnelBody).url, '/through-connect');
      assert.equal(JSON.parse(tunnelBody).headers['proxy-authorization'], undefined);
      await client.proc.waitForMsg('connection closed', 10_000, {
        fields: { dest: `127.0.0.1:${backend.port}` },
      });

      // An https service: TLS end to end through CONNECT, its certificate checked by curl against our CA.
      const ca = await makeCa(h);
      const cert = await makeCert(h, ca, 'lab-https', ['localhost']);
      const { readFile } = await import('node:fs/promises');
      const https = createHttpsServer(
        { cert: await readFile(cert.cert), key: await readFile(cert.key) },
        (req, res) => res.end(`https says ${req.url}\n`),
      );
      await new Promise<void>((resolve) => https.listen(0, '127.0.0.1', resolve));
      h.onCleanup(() => new Promise<void>((resolve) => https.close(() => resolve())));
      const httpsPort = (https.address() as AddressInfo).port;
      const target = `https://localhost:${httpsPort}/secret`;
      const [secure, secureBody, secureErr] = await curl(['--cacert', ca.cert, '-x', proxyUrl, target]);
      assert.equal(secure, 0, secureErr);
      assert.equal(secureBody, 'https says /secret\n');
      // The environment's form, as apt, pip and git take it.
      const [byEnv, envBody, envErr] = await curl(['--cacert', ca.cert, target], { https_proxy: proxyUrl });
      assert.equal(byEnv, 0, envErr);
      assert.equal(envBody, 'https says /secret\n');
      await client.proc.waitForMsg('connection closed', 10_000, {
        fields: { dest: `localhost:${httpsPort}` },
      });

      const everything = client.proc.output.map((line) => line.text).join('\n');
      assert.ok(!everything.includes(PASSWORD), 'the password is never logged');
    }),
);

test(
  'uploads by Content-Length and chunked arrive intact (sha256); a request with both Transfer-Encoding and Content-Length gets 400 and reaches nothing',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('lab-web');
      h.onCleanup(() => backend.close());
      const { port, client, proxyUrl } = await startHttpProxyTunnel(h);
      const data = randomBytes(3 * 1024 * 1024 + 17);
      const file = h.path('upload.bin');
      await writeFile(file, data);
      const sha256 = createHash('sha256').update(data).digest('hex');
      const url = `http://127.0.0.1:${backend.port}/sha256`;

      const [sized, sizedBody, sizedErr] = await curl(['-x', proxyUrl, '--data-binary', `@${file}`, url]);
      assert.equal(sized, 0, sizedErr);
      assert.deepEqual(JSON.parse(sizedBody).sha256, sha256);
      assert.equal(JSON.parse(sizedBody).bytes, data.length);
      const [chunked, chunkedBody, chunkedErr] = await curl([
        '-x',
        proxyUrl,
        '-H',
        'Transfer-Encoding: chunked',
        '--data-binary',
        `@${file}`,
        url,
      ]);
      assert.equal(chunked, 0, chunkedErr);
      assert.deepEqual(JSON.parse(chunkedBody).sha256, sha256);
      const framings = backend.requests.map((r) => [
        r.headers['content-length'],
        r.headers['transfer-encoding'],
      ]);
      assert.deepEqual(framings, [
        [String(data.length), undefined],
        [undefined, 'chunked'],
      ]);
      t.diagnostic(`uploads: ${sizedBody} ${chunkedBody}`);

      const before = { connections: backend.connections, requests: backend.requests.length };
      const smuggled = `GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1:${backend.port}\r\n\r\n`;
      const answer = await rawRequest(
        port,
        `POST http://127.0.0.1:${backend.port}/anything HTTP/1.1\r\nHost: 127.0.0.1:${backend.port}\r\n` +
          `Proxy-Authorization: Basic ${basic(USER, PASSWORD)}\r\nContent-Length: 5\r\n` +
          `Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n${smuggled}`,
      );
      assert.match(answer, /^HTTP\/1\.1 400 /);
      const line = await client.proc.waitForMsg('http proxy request failed', 10_000);
      assert.match(String(line.reason), /both Transfer-Encoding and Content-Length/);
      assert.deepEqual(
        { connections: backend.connections, requests: backend.requests.length },
        before,
        'the destination was not even connected',
      );
    }),
);

test(
  'no credentials or wrong ones get 407 with Proxy-Authenticate, a destination outside socks_allow or socks_allow_ports 403, a closed port 502; no password in the logs',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('lab-web');
      h.onCleanup(() => backend.close());
      const [closedPort] = (await freePorts(1)) as [number];
      const { port, client, proxyUrl } = await startHttpProxyTunnel(h, {
        socks_allow: ['127.0.0.1/32'],
        socks_allow_ports: `${backend.port},${closedPort}`,
      });
      const url = `http://127.0.0.1:${backend.port}/`;
      const status = ['-o', '/dev/null', '-w', '%{http_code}'];

      const [, none] = await curl([...status, '-x', `http://127.0.0.1:${port}`, url]);
      assert.equal(none, '407');
      const [, head] = await curl(['-i', '-x', `http://127.0.0.1:${port}`, url]);
      assert.match(head, /^Proxy-Authenticate: Basic realm="porthole"\r$/m);
      const noneLine = await client.proc.waitForMsg('http proxy request failed', 10_000);
      assert.match(String(noneLine.reason), /407: no Proxy-Authorization/);
      const wrongProxy = `http://${USER}:not-the-password@127.0.0.1:${port}`;
      const [, wrong] = await curl([...status, '-x', wrongProxy, url]);
      assert.equal(wrong, '407');
      const [wrongTunnel, , wrongTunnelErr] = await curl(['-p', '-x', wrongProxy, url]);
      t.diagnostic(`CONNECT with a wrong password: curl exit ${wrongTunnel}: ${wrongTunnelErr.trim()}`);
      assert.notEqual(wrongTunnel, 0);
      assert.match(wrongTunnelErr, /407/);
      await client.proc.waitForMsg('http proxy request failed', 10_000, {
        fields: { reason: '407: wrong username or password' },
      });

      // 127.0.0.2 is loopback too, but not in socks_allow.
      const [, outside] = await curl([...status, '-x', proxyUrl, `http://127.0.0.2:${backend.port}/`]);
      assert.equal(outside, '403');
      const disallowed = await client.proc.waitForMsg('http proxy request failed', 10_000, {
        fields: { dest: `127.0.0.2:${backend.port}` },
      });
      assert.match(String(disallowed.reason), /403: .*not in socks_allow/);
      const [outsideTunnel, , outsideErr] = await curl(['-p', '-x', proxyUrl, 'http://127.0.0.1:22/']);
      assert.notEqual(outsideTunnel, 0);
      assert.match(outsideErr, /403/);

      const [, closed] = await curl([...status, '-x', proxyUrl, `http://127.0.0.1:${closedPort}/`]);
      assert.equal(closed, '502');
      const refused = await client.proc.waitForMsg('http proxy request failed', 10_000, {
        fields: { dest: `127.0.0.1:${closedPort}` },
      });
      assert.match(String(refused.reason), /502: .*refused/i);

      // And a good request still works after all that.
      const [, fine] = await curl([...status, '-x', proxyUrl, url]);
      assert.equal(fine, '200');

      const everything = client.proc.output.map((line) => line.text).join('\n');
      assert.ok(!everything.includes(PASSWORD), 'the password is never logged');
      assert.ok(!everything.includes('not-the-password'), "a visitor's password is never logged");
      assert.ok(!everything.includes(basic(USER, 'not-the-password')), 'nor its Basic form');
    }),
);

test('check refuses an http-proxy proxy that would be an open proxy', { timeout: 30_000 }, (t) =>
  withHarness(t, async (h) => {
    const base =
      'server = "ws://127.0.0.1:7000/_porthole"\ntoken = "x"\n[[proxies]]\nname = "web-proxy"\ntype = "tcp"\nremote_port = 3128\n';
    const cases: [string, RegExp][] = [
      ['local = "http-proxy"\n', /socks_user: an http-proxy proxy needs socks_user and socks_password_file/],
      ['local = "http-proxy"\nsocks_no_auth = true\n', /socks_allow: required with socks_no_auth = true/],
      [
        'local = "http-proxy"\nproxy_protocol = "v2"\nsocks_no_auth = true\nsocks_allow = ["10.0.0.0/8"]\n',
        /proxy_protocol: an http-proxy proxy has no one local service/,
      ],
    ];
    for (const [keys, problem] of cases) {
      const file = await h.file('client.toml', base + keys);
      const r = await run(clientBin, ['check', '--config', file], { timeoutMs: 15_000 });
      assert.equal(r.code, 2, `${keys}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, problem);
    }
    const open = await h.file(
      'client.toml',
      `${base}local = "http-proxy"\nsocks_no_auth = true\nsocks_allow = ["192.168.1.0/24"]\n`,
    );
    const ok = await run(clientBin, ['check', '--config', open], { timeoutMs: 15_000 });
    assert.equal(ok.code, 0, ok.stderr);
  }),
);
