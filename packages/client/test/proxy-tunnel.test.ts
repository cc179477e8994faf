import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { readExactly } from '@porthole/protocol';
import { MAX_PROXY_HEAD_BYTES, openProxyTunnel, ProxyTunnelError } from '../src/proxy-tunnel.js';

/** A loopback "proxy" that answers each connection's first bytes with `answer`; resolves with its port. */
async function fakeProxy(
  t: { after: (fn: () => void) => void },
  answer: (request: Buffer, socket: Socket) => void,
) {
  const server = createServer((socket) => {
    socket.on('error', () => {});
    socket.once('data', (request: Buffer) => answer(request, socket));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  t.after(() => server.close());
  return (server.address() as AddressInfo).port;
}

test('HTTP CONNECT: credentials as Basic; the bytes after the 200 head stay in the socket, none lost', async (t) => {
  let request = '';
  const port = await fakeProxy(t, (bytes, socket) => {
    request = bytes.toString('latin1');
    // The head in two writes, the blank line cut across them, the server's first bytes in the second.
    socket.write('HTTP/1.1 200 Connection established\r\nVia: fake\r');
    setTimeout(() => socket.write('\n\r\nserver-bytes'), 20);
  });
  const proxy = { kind: 'http' as const, host: '127.0.0.1', port, credentials: { user: 'u', password: 'p' } };
  const { socket, answer, target } = await openProxyTunnel(proxy, { host: '::1', port: 7000 }, 2000);
  t.after(() => socket.destroy());
  assert.deepEqual([answer, target], ['200', '[::1]:7000']);
  assert.equal(
    request,
    `CONNECT [::1]:7000 HTTP/1.1\r\nHost: [::1]:7000\r\nProxy-Authorization: Basic ${Buffer.from('u:p').toString('base64')}\r\n\r\n`,
  );
  assert.equal((await readExactly(socket, 12))?.toString(), 'server-bytes');
});

test('HTTP CONNECT: a refusal, a 407 and a head past the cap are ProxyTunnelErrors that say which', async (t) => {
  const target = { host: 'vps.example.com', port: 443 };
  const refusing = await fakeProxy(t, (_, socket) => socket.end('HTTP/1.1 403 Forbidden\r\n\r\n'));
  await assert.rejects(
    openProxyTunnel({ kind: 'http', host: '127.0.0.1', port: refusing }, target, 2000),
    (err: unknown) =>
      err instanceof ProxyTunnelError &&
      err.message ===
        `the proxy http://127.0.0.1:${refusing} answered 403 Forbidden to CONNECT vps.example.com:443` &&
      !err.credentialsRefused,
  );
  const asking = await fakeProxy(t, (_, socket) =>
    socket.end('HTTP/1.1 407 Proxy Authentication Required\r\n\r\n'),
  );
  await assert.rejects(
    openProxyTunnel({ kind: 'http', host: '127.0.0.1', port: asking }, target, 2000),
    (err: unknown) =>
      err instanceof ProxyTunnelError && /wants credentials/.test(err.message) && err.credentialsRefused,
  );
  const endless = await fakeProxy(t, (_, socket) =>
    socket.write(`HTTP/1.1 200 OK\r\nX-Pad: ${'a'.repeat(MAX_PROXY_HEAD_BYTES)}`),
  );
  await assert.rejects(
    openProxyTunnel({ kind: 'http', host: '127.0.0.1', port: endless }, target, 2000),
    /with a head over 16384 bytes/,
  );
});

test('SOCKS5: a refusal is named by its reply code; a proxy that never answers times out', async (t) => {
  const refusing = await fakeProxy(t, (_, socket) => {
    socket.write(Buffer.from([0x05, 0x00]));
    socket.once('data', () => socket.end(Buffer.from([0x05, 0x05, 0x00, 0x01, 0, 0, 0, 0, 0, 0])));
  });
  await assert.rejects(
    openProxyTunnel(
      { kind: 'socks5', host: '127.0.0.1', port: refusing },
      { host: '10.0.0.1', port: 7000 },
      2000,
    ),
    new RegExp(
      `the proxy socks5://127\\.0\\.0\\.1:${refusing} answered connection refused \\(5\\) to CONNECT 10\\.0\\.0\\.1:7000`,
    ),
  );
  const silent = await fakeProxy(t, () => {});
  await assert.rejects(
    openProxyTunnel({ kind: 'socks5', host: '127.0.0.1', port: silent }, { host: 'h', port: 1 }, 300),
    /did not open a tunnel to h:1 within 300 ms/,
  );
});
