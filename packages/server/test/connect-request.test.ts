import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import { readRequestHead } from '@porthole/protocol';
import { parseConnectHead } from '../src/connect-request.js';

const parse = (text: string) => parseConnectHead(Buffer.from(text, 'latin1'));

test('a CONNECT head gives its host (normalized), the target as written and its Proxy-Authorization', () => {
  assert.deepEqual(
    parse(
      'CONNECT NAS.Example.com.:22 HTTP/1.1\r\nHost: nas.example.com:22\r\nProxy-Authorization: Basic eDp5\r\n\r\n',
    ),
    { name: 'nas.example.com', authority: 'NAS.Example.com.:22', proxyAuthorization: 'Basic eDp5' },
  );
  assert.deepEqual(parse('CONNECT [::1]:5432 HTTP/1.0\r\n\r\n'), {
    name: '::1',
    authority: '[::1]:5432',
    proxyAuthorization: undefined,
  });
});

test('anything but a strict CONNECT head is refused: 405 for another method, 400 for the rest', () => {
  assert.equal((parse('GET / HTTP/1.1\r\nHost: a.test\r\n\r\n') as { status: number }).status, 405);
  for (const [text, reason] of [
    ['CONNECT a.test:22 HTTP/1.1\n\n', 'lines must end with CRLF'],
    ['CONNECT a.test:22 HTTP/1.1\r\nX: 1\n\r\n', 'lines must end with CRLF'],
    ['CONNECT a.test HTTP/1.1\r\n\r\n', 'the CONNECT target is not host:port'],
    ['CONNECT a.test:0 HTTP/1.1\r\n\r\n', 'the CONNECT target is not host:port'],
    ['CONNECT a.test:22@b.test:22 HTTP/1.1\r\n\r\n', 'the CONNECT target is not host:port'],
    ['CONNECT http://a.test:22 HTTP/1.1\r\n\r\n', 'the CONNECT target is not host:port'],
    ['CONNECT a.test:22 HTTP/2\r\n\r\n', 'malformed request line'],
    ['CONNECT  a.test:22 HTTP/1.1\r\n\r\n', 'malformed request line'],
    [
      'CONNECT a.test:22 HTTP/1.1\r\nX: 1\r\n folded\r\n\r\n',
      'obs-fold (a field line starting with a space)',
    ],
    ['CONNECT a.test:22 HTTP/1.1\r\nBad Name: 1\r\n\r\n', 'malformed header field'],
    ['CONNECT a.test:22 HTTP/1.1\r\nno colon\r\n\r\n', 'malformed header field'],
    ['CONNECT a.test:22 HTTP/1.1\r\nHost: a.test\r\nHost: a.test\r\n\r\n', 'more than one Host field'],
    [
      'CONNECT a.test:22 HTTP/1.1\r\nHost: b.test:22\r\n\r\n',
      'Host names another host than the CONNECT target',
    ],
    [
      'CONNECT a.test:22 HTTP/1.1\r\nProxy-Authorization: Basic eDp5\r\nProxy-Authorization: Basic eDp6\r\n\r\n',
      'more than one Proxy-Authorization field',
    ],
  ]) {
    assert.deepEqual(parse(text!), { status: 400, reason }, JSON.stringify(text));
  }
});

test('the head is read up to its blank line, what follows kept; past the size or the time it is refused', async () => {
  const socket = new PassThrough();
  const reading = readRequestHead(socket, { maxBytes: 64, timeoutMs: 5_000 });
  socket.write('CONNECT a.test:22 HTTP/1.1\r\n\r');
  socket.write('\nSSH-2.0-early');
  const read = await reading;
  assert.equal(read.state, 'head');
  if (read.state !== 'head') return;
  assert.equal(read.head.toString(), 'CONNECT a.test:22 HTTP/1.1\r\n\r\n');
  assert.equal(read.rest.toString(), 'SSH-2.0-early');

  const big = new PassThrough();
  const tooBig = readRequestHead(big, { maxBytes: 64, timeoutMs: 5_000 });
  big.write(`CONNECT a.test:22 HTTP/1.1\r\nX: ${'x'.repeat(64)}\r\n\r\n`);
  assert.deepEqual(await tooBig, {
    state: 'refused',
    refused: { status: 431, reason: 'request head larger than 64 bytes' },
  });

  const slow = new PassThrough();
  const late = await readRequestHead(slow, { maxBytes: 64, timeoutMs: 50 });
  assert.equal(late.state === 'refused' && late.refused.status, 408);
});
