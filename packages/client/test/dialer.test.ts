import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer as createHttpServer } from 'node:http';
import { type AddressInfo, createServer } from 'node:net';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';
import { DialError, dial, urlWithoutUserinfo } from '../src/dialer.js';

test('the token goes in Authorization: Bearer; a refusal surfaces status and body as the reason', async (t) => {
  const seen: (string | undefined)[] = [];
  const http = createHttpServer();
  const wss = new WebSocketServer({ noServer: true });
  http.on('upgrade', (req, socket, head) => {
    seen.push(req.headers.authorization);
    if (req.headers.authorization === 'Bearer good') {
      wss.handleUpgrade(req, socket, head, (ws) => ws.close());
      return;
    }
    if (req.headers.authorization === 'Bearer revoked') {
      const body = 'token revoked (too many failed attempts from 127.0.0.1, slow down)\n';
      socket.end(
        `HTTP/1.1 429 Too Many Requests\r\nRetry-After: 42\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
      );
      return;
    }
    socket.end('HTTP/1.1 401 Unauthorized\r\nContent-Length: 14\r\nConnection: close\r\n\r\ntoken expired\n');
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  t.after(() => http.close());
  const server = `ws://127.0.0.1:${(http.address() as AddressInfo).port}/_porthole`;

  const ws = await dial({ server, token: 'good', timeoutMs: 2000 });
  ws.destroy();
  await assert.rejects(dial({ server, token: 'old', timeoutMs: 2000 }), (err: unknown) => {
    assert.ok(err instanceof DialError);
    assert.equal(err.message, '401: token expired');
    assert.equal(err.isAuthFailure, true);
    assert.equal(err.retryAfterMs, undefined, 'no Retry-After: backoff alone decides');
    return true;
  });
  // Rate-limited for failing: the server limits only sources whose tokens fail, so this is one too.
  await assert.rejects(dial({ server, token: 'revoked', timeoutMs: 2000 }), (err: unknown) => {
    assert.ok(err instanceof DialError);
    assert.match(err.message, /^429: token revoked/);
    assert.equal(err.isAuthFailure, true);
    assert.equal(err.retryAfterMs, 42_000, "the 429's Retry-After, for the next attempt to wait out");
    return true;
  });
  assert.deepEqual(seen, ['Bearer good', 'Bearer old', 'Bearer revoked']);
});

test('a URL that leads to a service echoing our request (a whoami, httpbin) gets a reason without the token', async (t) => {
  const token = 'eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJob21lbGFiIn0.bm90LWEtcmVhbC1zaWduYXR1cmUtYnV0LWxvbmc';
  // As traefik/whoami answers: the request's head as the body. ?before=N puts N bytes ahead of it, so that
  // the reason's 512-byte cut falls inside the token.
  const http = createHttpServer();
  http.on('upgrade', (req, socket) => {
    const before = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('before') ?? 0);
    const head = Object.entries(req.headers).map(([name, value]) => `${name}: ${value}`);
    const body = `${'.'.repeat(before)}GET ${req.url} HTTP/1.1\n${head.join('\n')}\n`;
    socket.end(`HTTP/1.1 200 OK\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  });
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  t.after(() => http.close());
  const base = `ws://127.0.0.1:${(http.address() as AddressInfo).port}/_porthole`;
  const reason = async (server: string) => {
    try {
      (await dial({ server, token, timeoutMs: 5000 })).destroy();
      return 'open';
    } catch (err) {
      assert.ok(err instanceof DialError);
      return err.message;
    }
  };

  const whole = await reason(base);
  assert.match(whole, /^200: GET \/_porthole HTTP\/1\.1\n/);
  assert.ok(!whole.includes(token), whole);
  assert.match(whole, /authorization: Bearer \[token\]\n/);
  // Cut 30 characters into the token: its start is hidden too, not only the whole.
  const cut = await reason(
    `${base}?before=${512 - 'GET /_porthole?before=NNN HTTP/1.1\nauthorization: Bearer '.length - 30}`,
  );
  assert.ok(cut.endsWith('authorization: Bearer [token]'), cut);
  assert.ok(!cut.includes(token.slice(0, 8)), cut);
});

test('an unreachable server is a DialError naming the address, not an auth failure', async () => {
  const closedPort = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
  await assert.rejects(
    dial({ server: `ws://127.0.0.1:${closedPort}/x`, token: 't', timeoutMs: 2000 }),
    (err) => {
      assert.ok(err instanceof DialError);
      assert.match(err.message, new RegExp(`ECONNREFUSED 127.0.0.1:${closedPort}`));
      assert.equal(err.isAuthFailure, false);
      return true;
    },
  );
});

test('the usual mistakes in the server URL are named next to the error (ws:// to a TLS port: test/https-sni)', async (t) => {
  // A plain HTTP server that knows no WebSocket path: wss:// to it, and ws:// to a wrong path.
  const http = createHttpServer((_req, res) => res.writeHead(404).end('not found'));
  http.on('upgrade', (_req, socket) =>
    socket.end('HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n'),
  );
  http.listen(0, '127.0.0.1');
  await once(http, 'listening');
  t.after(() => http.close());
  const plainPort = (http.address() as AddressInfo).port;

  const reason = async (server: string) => {
    try {
      (await dial({ server, token: 't', timeoutMs: 5000 })).destroy();
      return 'open';
    } catch (err) {
      assert.ok(err instanceof DialError);
      return err.message;
    }
  };
  assert.match(
    await reason(`wss://127.0.0.1:${plainPort}/_porthole`),
    /does not speak TLS on this port: is it ws:\/\//,
  );
  assert.match(
    await reason(`ws://127.0.0.1:${plainPort}/`),
    /^404: not found \(no control endpoint at \/: the URL's path must be the server's path/,
  );
  // The default path on a port that is not porthole's: the port is what to check, not the path.
  assert.match(
    await reason(`ws://127.0.0.1:${plainPort}/_porthole`),
    /^404: not found \(no control endpoint at \/_porthole: is this porthole-server's port/,
  );

  // A TLS port that closes the handshake, as an [https] port does for a name it has no certificate for.
  const cutter = createServer((socket) => socket.once('data', () => socket.destroy()));
  cutter.listen(0, '127.0.0.1');
  await once(cutter, 'listening');
  t.after(() => cutter.close());
  assert.match(
    await reason(`wss://127.0.0.1:${(cutter.address() as AddressInfo).port}/_porthole`),
    /disconnected before secure TLS connection was established \(the server closed the connection in the TLS handshake: .*default_host\)/,
  );
});

test('the server URL in logs and status leaves out a user and password, even where URL cannot parse it', () => {
  assert.equal(urlWithoutUserinfo('ws://u:secret@[::1]:41020/_porthole'), 'ws://[::1]:41020/_porthole');
  assert.equal(
    urlWithoutUserinfo('wss://secret@vps.example.com/_porthole'),
    'wss://vps.example.com/_porthole',
  );
  assert.equal(urlWithoutUserinfo('wss://u:p@ss@vps.example.com/x?a=b@c'), 'wss://vps.example.com/x?a=b@c');
  assert.equal(urlWithoutUserinfo('ws://u:secret@bad host/'), 'ws://bad host/');
  assert.equal(urlWithoutUserinfo('ws://127.0.0.1:7000/a@b'), 'ws://127.0.0.1:7000/a@b');
});
