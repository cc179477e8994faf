import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { tcpPair } from '@porthole/mux/test/transports';
import { readSocksRequest, replyForError, SocksHandshakeError, socksReply } from '../src/socks5.js';

/** A loopback TCP pair: `server` is read by readSocksRequest, `visitor` writes what a SOCKS client would. */
async function socketPair(): Promise<{ server: Socket; visitor: Socket; replies: () => Buffer }> {
  const [visitor, server] = await tcpPair();
  server.pause();
  const chunks: Buffer[] = [];
  visitor.on('data', (chunk: Buffer) => chunks.push(chunk));
  return { server, visitor, replies: () => Buffer.concat(chunks) };
}

const CREDENTIALS = { user: 'u', password: 'p4ss' };

function greetingWithAuth(user: string, password: string): Buffer {
  return Buffer.concat([
    Buffer.from([0x05, 0x01, 0x02, 0x01, user.length]),
    Buffer.from(user),
    Buffer.from([password.length]),
    Buffer.from(password),
  ]);
}

test('a CONNECT by IPv6 address and by name is read; bytes after the request stay in the stream', async () => {
  const { server, visitor } = await socketPair();
  const ipv6 = Buffer.from([0x05, 0x01, 0x00, 0x04, ...Buffer.alloc(15), 1, 0x1f, 0x90]);
  visitor.write(Buffer.concat([greetingWithAuth('u', 'p4ss'), ipv6]));
  assert.deepEqual(await readSocksRequest(server, CREDENTIALS), { host: '::1', port: 8080, isName: false });

  const { server: second, visitor: other } = await socketPair();
  const name = Buffer.from('nas.lan');
  other.write(
    Buffer.concat([
      Buffer.from([0x05, 0x01, 0x00]),
      Buffer.from([0x05, 0x01, 0x00, 0x03, name.length]),
      name,
      Buffer.from([0x00, 0x50]),
      Buffer.from('GET / HTTP/1.0\r\n'),
    ]),
  );
  assert.deepEqual(await readSocksRequest(second, undefined), { host: 'nas.lan', port: 80, isName: true });
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(second.read()?.toString(), 'GET / HTTP/1.0\r\n');
  for (const socket of [server, visitor, second, other]) socket.destroy();
});

test('a wrong password is answered with failure; a visitor without username/password gets "no acceptable method"', async () => {
  const { server, visitor, replies } = await socketPair();
  visitor.write(greetingWithAuth('u', 'wrong'));
  await assert.rejects(readSocksRequest(server, CREDENTIALS), (err: Error) => {
    assert.ok(err instanceof SocksHandshakeError);
    assert.match(err.message, /wrong username or password/);
    assert.doesNotMatch(err.message, /wrong"|p4ss/);
    return true;
  });
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual([...replies()], [0x05, 0x02, 0x01, 0x01]);

  const { server: second, visitor: other, replies: otherReplies } = await socketPair();
  other.write(Buffer.from([0x05, 0x01, 0x00]));
  await assert.rejects(readSocksRequest(second, CREDENTIALS), /offered no username\/password/);
  await new Promise((resolve) => setTimeout(resolve, 50));
  assert.deepEqual([...otherReplies()], [0x05, 0xff]);
  for (const socket of [server, visitor, second, other]) socket.destroy();
});

test('replies: the bound address in either family, and the codes of failed connects', () => {
  assert.deepEqual(
    [...socksReply(0, { address: '127.0.0.1', port: 1080 })],
    [5, 0, 0, 1, 127, 0, 0, 1, 4, 56],
  );
  assert.deepEqual(
    [...socksReply(0, { address: '::1', port: 1 })],
    [5, 0, 0, 4, ...Buffer.alloc(15), 1, 0, 1],
  );
  assert.deepEqual([...socksReply(5)], [5, 5, 0, 1, 0, 0, 0, 0, 0, 0]);
  assert.equal(replyForError('ECONNREFUSED'), 0x05);
  assert.equal(replyForError('EHOSTUNREACH'), 0x04);
  assert.equal(replyForError('ENOTFOUND'), 0x04);
  assert.equal(replyForError('ENETUNREACH'), 0x03);
  assert.equal(replyForError('ETIMEDOUT'), 0x06);
  assert.equal(replyForError(undefined), 0x01);
});
