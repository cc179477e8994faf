// tcpmux: many TCP services behind one public port of the server, each chosen by the host of an HTTP
// CONNECT request (frp's tcpmuxHTTPConnectPort). Real peers: ssh through `nc -X connect` to a private sshd,
// curl's proxytunnel (-p -x) to HTTP services of two clients, socat, and raw sockets for what the server
// answers to early data, bad credentials, unknown names and requests that are not CONNECT.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import net, { type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { startHttpBackend } from './lib/http-backend.js';
import { ADMIN_TOKEN, adminApi, adminText } from './lib/private.js';
import {
  clientBin,
  eventually,
  freePort,
  type Harness,
  run,
  withHarness,
  withTimeout,
} from './lib/processes.js';
import { issueRoutedToken, type RoutedServer, startRoutedClient, startRoutedServer } from './lib/routing.js';
import { sshRunVia, startSshd } from './lib/sshd.js';

/** A server with a [tcpmux] port (and no [http] one) and an admin API. */
async function startTcpmuxServer(h: Harness): Promise<RoutedServer & { tcpmuxPort: number }> {
  const server = await startRoutedServer(h, { http: false, tcpmux: {}, admin: { token: ADMIN_TOKEN } });
  assert.ok(server.tcpmuxPort, 'the server logged no "tcpmux listening" line');
  return { ...server, tcpmuxPort: server.tcpmuxPort };
}

/** A local service that answers each connection's bytes with "echo:" and the same bytes. */
async function startEchoService(h: Harness): Promise<number> {
  const service = net.createServer((socket) => {
    socket.on('error', () => {});
    socket.on('data', (chunk: Buffer) => socket.write(Buffer.concat([Buffer.from('echo:'), chunk])));
    socket.on('end', () => socket.end());
  });
  await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
  h.onCleanup(() => new Promise<void>((resolve) => service.close(() => resolve())));
  return (service.address() as AddressInfo).port;
}

/**
 * Writes `request` on a raw connection to the tcpmux port in one write and collects what comes back until
 * the server closes, or until `until` matches what came.
 */
async function exchange(port: number, request: string, until?: RegExp): Promise<string> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  let received = '';
  const done = new Promise<string>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      received += chunk.toString('latin1');
      if (until?.test(received)) resolve(received);
    });
    socket.on('close', () => resolve(received));
  });
  socket.write(request);
  try {
    return await withTimeout(
      done,
      15_000,
      () => `no answer to ${JSON.stringify(request.slice(0, 60))}: ${received}`,
    );
  } finally {
    socket.destroy();
  }
}

test('tcpmux: ssh (nc -X connect) and curl -p -x reach the service of the name asked for, across two clients', async (t) => {
  await withHarness(t, async (h) => {
    const sshd = await startSshd(h);
    const backendA = await startHttpBackend('site-a');
    const backendB = await startHttpBackend('web-b');
    h.onCleanup(() => backendA.close());
    h.onCleanup(() => backendB.close());
    const server = await startTcpmuxServer(h);
    const tokenA = await issueRoutedToken(server, { name: 'homelab', hosts: ['*.lab.test'] });
    const tokenB = await issueRoutedToken(server, { name: 'office', hosts: ['web.test'] });
    await startRoutedClient(h, {
      server: server.url,
      token: tokenA,
      name: 'client-homelab',
      proxies: [
        { name: 'nas-ssh', type: 'tcpmux', local: `127.0.0.1:${sshd.port}`, hosts: ['nas.lab.test'] },
        { name: 'site', type: 'tcpmux', local: `127.0.0.1:${backendA.port}`, hosts: ['site.lab.test'] },
      ],
    });
    const office = await startRoutedClient(h, {
      server: server.url,
      token: tokenB,
      name: 'client-office',
      adminListen: `127.0.0.1:${await freePort()}`,
      proxies: [
        {
          name: 'web',
          type: 'tcpmux',
          multiplexer: 'httpconnect',
          local: `127.0.0.1:${backendB.port}`,
          hosts: ['web.test'],
        },
      ],
    });
    assert.deepEqual(office.registered.get('web')?.urls, [`tcpmux://web.test:${server.tcpmuxPort}`]);

    // ssh resolves nothing: nc asks the tcpmux port for nas.lab.test:22 and carries the session.
    const via = `nc -X connect -x 127.0.0.1:${server.tcpmuxPort} %h %p`;
    const login = await sshRunVia(sshd, 'nas.lab.test', via, 'echo "login-ok $((6*7)) $(id -un)"');
    assert.equal(login.code, 0, `ssh through tcpmux failed: ${login.stderr}`);
    assert.equal(login.stdout.trim(), 'login-ok 42 root');
    const upload = randomBytes(2 * 1024 * 1024);
    const hashed = await sshRunVia(sshd, 'nas.lab.test', via, 'sha256sum', upload);
    assert.equal(hashed.code, 0, hashed.stderr);
    assert.equal(hashed.stdout.split(' ')[0], createHash('sha256').update(upload).digest('hex'));

    // curl's proxytunnel: CONNECT web.test:80, then plain HTTP inside; each name to its own client.
    // Without the tunnel's own "200 Connection established" head in -i's output.
    const proxy = ['-p', '-x', `http://127.0.0.1:${server.tcpmuxPort}`, '--suppress-connect-headers'];
    const fromB = await curl([...proxy, '-sS', '-f'], 'http://web.test/anything');
    assert.equal(fromB.code, 0, fromB.stderr);
    assert.equal(JSON.parse(fromB.body).backend, 'web-b');
    const fromA = await curl([...proxy, '-sS', '-f'], 'http://site.lab.test:8080/anything');
    assert.equal(fromA.code, 0, fromA.stderr);
    assert.equal(JSON.parse(fromA.body).backend, 'site-a', 'the port in the CONNECT target is not routed by');

    // socat, as frp's docs use it, to the same name.
    const socat = await run('socat', ['-', `PROXY:127.0.0.1:web.test:80,proxyport=${server.tcpmuxPort}`], {
      input: Buffer.from('GET /anything HTTP/1.0\r\nHost: web.test\r\n\r\n'),
      timeoutMs: 15_000,
    });
    assert.match(socat.stdout, /"backend":"web-b"/, socat.stderr);

    // The connections were tcp ones: counted per proxy, with their bytes in the close line.
    const closed = await eventually(
      'a connection closed line of nas-ssh',
      async () => server.proc.logsWithMsg('connection closed').find((l) => l.proxy === 'nas-ssh'),
      10_000,
    );
    assert.equal(closed.client, 'homelab');
    assert.equal(closed.host, 'nas.lab.test');
    assert.ok(Number(closed.bytes_in) > 0 && Number(closed.bytes_out) > 0, JSON.stringify(closed));
    const { proxies } = (await adminApi(server, '/api/proxies')) as unknown as {
      proxies: {
        client: string;
        name: string;
        type: string;
        hosts: string[];
        connections_total: number;
      }[];
    };
    const web = proxies.find((p) => p.name === 'web');
    assert.equal(web?.type, 'tcpmux');
    assert.deepEqual(web?.hosts, ['web.test']);
    assert.equal(web?.client, 'office');
    assert.ok((web?.connections_total ?? 0) >= 2, JSON.stringify(web));

    // The client's own status names the proxy and where visitors reach it.
    const status = await run(clientBin, ['status', '--config', office.configPath], { timeoutMs: 15_000 });
    assert.match(status.stdout, /web\s+tcpmux\s.*tcpmux:\/\/web\.test:\d+/, status.stdout + status.stderr);
  });
});

test('tcpmux: bytes sent right after the CONNECT head (early data) reach the service', async (t) => {
  await withHarness(t, async (h) => {
    const echo = await startEchoService(h);
    const server = await startTcpmuxServer(h);
    const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['echo.test'] });
    await startRoutedClient(h, {
      server: server.url,
      token,
      proxies: [{ name: 'echo', type: 'tcpmux', local: `127.0.0.1:${echo}`, hosts: ['echo.test'] }],
    });
    const answer = await exchange(
      server.tcpmuxPort,
      'CONNECT echo.test:7 HTTP/1.1\r\nHost: echo.test:7\r\n\r\nearly-bytes',
      /echo:early-bytes/,
    );
    assert.ok(answer.startsWith('HTTP/1.1 200 Connection established\r\n\r\n'), answer);
    assert.ok(answer.endsWith('echo:early-bytes'), JSON.stringify(answer));
  });
});

test('tcpmux: http_user/http_password ask for Proxy-Authorization (407 without or with wrong ones)', async (t) => {
  await withHarness(t, async (h) => {
    const backend = await startHttpBackend('secret');
    h.onCleanup(() => backend.close());
    const server = await startTcpmuxServer(h);
    const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['db.test'] });
    await startRoutedClient(h, {
      server: server.url,
      token,
      proxies: [
        {
          name: 'db',
          type: 'tcpmux',
          local: `127.0.0.1:${backend.port}`,
          hosts: ['db.test'],
          http_user: 'alice',
          http_password: 'correct-horse',
        },
      ],
    });
    const without = await exchange(
      server.tcpmuxPort,
      'CONNECT db.test:5432 HTTP/1.1\r\nHost: db.test:5432\r\n\r\n',
    );
    assert.match(without, /^HTTP\/1\.1 407 Proxy Authentication Required\r\n/);
    assert.match(without, /\r\nProxy-Authenticate: Basic realm="porthole"\r\n/);
    const wrong = Buffer.from('alice:wrong').toString('base64');
    const withWrong = await exchange(
      server.tcpmuxPort,
      `CONNECT db.test:5432 HTTP/1.1\r\nProxy-Authorization: Basic ${wrong}\r\n\r\n`,
    );
    assert.match(withWrong, /^HTTP\/1\.1 407 /);
    const refusedCurl = await curl(
      ['-p', '-x', `http://127.0.0.1:${server.tcpmuxPort}`, '-sS'],
      'http://db.test/',
    );
    assert.notEqual(refusedCurl.code, 0);
    assert.match(refusedCurl.stderr, /407/);
    assert.equal(backend.connections, 0, 'a refused visitor reached the service');

    const ok = await curl(
      [
        '-p',
        '-x',
        `http://127.0.0.1:${server.tcpmuxPort}`,
        '--suppress-connect-headers',
        '--proxy-user',
        'alice:correct-horse',
        '-sS',
        '-f',
      ],
      'http://db.test/anything',
    );
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(JSON.parse(ok.body).backend, 'secret');
    // The password is the visitor's to send and the server's to check: it is in no log line.
    assert.ok(!server.proc.outputContains('correct-horse'), 'the password reached the server log');
  });
});

test('tcpmux: unknown names get 404, other methods 405, malformed requests 400, a service down 502', async (t) => {
  await withHarness(t, async (h) => {
    const echo = await startEchoService(h);
    const nobodyListens = await freePort();
    const server = await startTcpmuxServer(h);
    const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['echo.test', 'down.test'] });
    await startRoutedClient(h, {
      server: server.url,
      token,
      proxies: [
        { name: 'echo', type: 'tcpmux', local: `127.0.0.1:${echo}`, hosts: ['echo.test'] },
        { name: 'down', type: 'tcpmux', local: `127.0.0.1:${nobodyListens}`, hosts: ['down.test'] },
      ],
    });
    const port = server.tcpmuxPort;
    // Never a 200 for a tunnel that did not open: the client's local connect was refused.
    assert.match(
      await exchange(port, 'CONNECT down.test:22 HTTP/1.1\r\n\r\n'),
      /^HTTP\/1\.1 502 Bad Gateway\r\n/,
    );
    assert.match(
      await exchange(port, 'CONNECT nobody.test:22 HTTP/1.1\r\n\r\n'),
      /^HTTP\/1\.1 404 Not Found\r\n/,
    );
    assert.match(
      await exchange(port, 'GET http://echo.test/ HTTP/1.1\r\nHost: echo.test\r\n\r\n'),
      /^HTTP\/1\.1 405 Method Not Allowed\r\n/,
    );
    for (const malformed of [
      'CONNECT echo.test HTTP/1.1\r\n\r\n',
      'CONNECT echo.test:7 HTTP/1.1\n\n',
      'CONNECT echo.test:7 HTTP/1.1\r\nHost: other.test:7\r\n\r\n',
      'CONNECT echo.test:7 HTTP/1.1\r\nX-A: 1\r\n  folded\r\n\r\n',
      'CONNECT /echo.test:7 HTTP/1.1\r\n\r\n',
    ]) {
      assert.match(
        await exchange(port, malformed),
        /^HTTP\/1\.1 400 Bad Request\r\n/,
        JSON.stringify(malformed),
      );
    }
    // The name that is served still is, after all that.
    const answer = await exchange(port, 'CONNECT echo.test:7 HTTP/1.1\r\n\r\nstill', /echo:still/);
    assert.match(answer, /^HTTP\/1\.1 200 /);
  });
});

test("tcpmux: a visitor whose local connect failed (502) is counted in /api/proxies and /metrics, as a tcp proxy's is", async (t) => {
  await withHarness(t, async (h) => {
    const nobodyListens = await freePort();
    const tcpPort = await freePort();
    const server = await startTcpmuxServer(h);
    const token = await issueRoutedToken(server, {
      name: 'homelab',
      hosts: ['down.test'],
      ports: String(tcpPort),
    });
    const local = `127.0.0.1:${nobodyListens}`;
    await startRoutedClient(h, {
      server: server.url,
      token,
      proxies: [
        { name: 'down', type: 'tcpmux', local, hosts: ['down.test'] },
        { name: 'tcp-down', type: 'tcp', local, remote_port: tcpPort },
      ],
    });
    // One with early data: those bytes went towards the service, as a tcp visitor's first bytes do.
    for (const request of [
      'CONNECT down.test:22 HTTP/1.1\r\n\r\n',
      'CONNECT down.test:22 HTTP/1.1\r\n\r\nhello',
    ]) {
      assert.match(await exchange(server.tcpmuxPort, request), /^HTTP\/1\.1 502 Bad Gateway\r\n/);
    }
    // The tcp proxy's visitor to the same dead service: accepted, then closed once the client's connect fails.
    await exchange(tcpPort, 'hello');
    const totals = async () => {
      const { proxies } = (await adminApi(server, '/api/proxies')) as unknown as {
        proxies: { name: string; connections_total: number; bytes_in: number }[];
      };
      const of = (name: string) => proxies.find((p) => p.name === name);
      return { tcpmux: of('down'), tcp: of('tcp-down') };
    };
    const counted = await eventually(
      'the failed visitors counted in /api/proxies',
      async () => {
        const now = await totals();
        const seen = [now.tcpmux?.connections_total, now.tcp?.connections_total];
        assert.deepEqual(seen, [2, 1], `connections_total of down, tcp-down: ${JSON.stringify(now)}`);
        return now;
      },
      10_000,
    );
    assert.equal(counted.tcpmux?.bytes_in, 'hello'.length);
    assert.match(
      await adminText(server, '/metrics'),
      /^porthole_proxy_connections_total\{client="homelab",proxy="down"\} 2$/m,
    );
  });
});

test('tcpmux: a name outside the token grant, or on a server without [tcpmux], is refused at registration', async (t) => {
  await withHarness(t, async (h) => {
    const echo = await startEchoService(h);
    const server = await startTcpmuxServer(h);
    const token = await issueRoutedToken(server, { name: 'homelab', hosts: ['echo.test'] });
    const client = await startRoutedClient(h, {
      server: server.url,
      token,
      waitFor: [],
      proxies: [{ name: 'nas', type: 'tcpmux', local: `127.0.0.1:${echo}`, hosts: ['nas.test'] }],
    });
    const refused = await client.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'nas' } });
    assert.match(String(refused.reason), /hostname nas\.test is outside the token's grant/);
    assert.match(
      await exchange(server.tcpmuxPort, 'CONNECT nas.test:22 HTTP/1.1\r\n\r\n'),
      /^HTTP\/1\.1 404 /,
    );

    const plain = await startRoutedServer(h, { name: 'plain-server' });
    const plainToken = await issueRoutedToken(plain, { name: 'homelab', hosts: ['echo.test'] });
    const second = await startRoutedClient(h, {
      server: plain.url,
      token: plainToken,
      name: 'client-plain',
      waitFor: [],
      proxies: [{ name: 'echo', type: 'tcpmux', local: `127.0.0.1:${echo}`, hosts: ['echo.test'] }],
    });
    const noPort = await second.proc.waitForMsg('proxy refused', 15_000, { fields: { proxy: 'echo' } });
    assert.match(String(noPort.reason), /no \[tcpmux\] port/);
  });
});
