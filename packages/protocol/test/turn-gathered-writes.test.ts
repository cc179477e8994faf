import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, get, type ServerResponse } from 'node:http';
import { type AddressInfo, connect, createServer as createTcpServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { retained } from '@porthole/mux/test/retained-memory';
import { TurnGatheredWrites } from '../src/turn-gathered-writes.js';
import { countSocketWrites } from './count-socket-writes.js';

/** An HTTP server whose one response is written by `respond`; returns the body the client read. */
async function serve(respond: (res: ServerResponse, writes: number[]) => void): Promise<Buffer> {
  const server = createServer((_req, res) => respond(res, countSocketWrites(res.socket as Socket)));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const port = (server.address() as AddressInfo).port;
    const [res] = await once(get({ host: '127.0.0.1', port, path: '/', agent: false }), 'response');
    const body: Buffer[] = [];
    for await (const chunk of res) body.push(chunk as Buffer);
    return Buffer.concat(body);
  } finally {
    server.close();
  }
}

test('the pieces of a response written in one turn leave in one writev', async () => {
  const pieces = [1, 2, 3, 4].map((n) => Buffer.alloc(16 * 1024, n));
  let seen: number[] = [];
  const body = await serve((res, writes) => {
    res.writeHead(200, { 'content-length': String(4 * 16 * 1024) });
    const gathered = new TurnGatheredWrites(res);
    for (const piece of pieces) assert.equal(gathered.write(piece), true);
    setImmediate(() => {
      seen = [...writes];
      res.end();
    });
  });
  assert.ok(body.equals(Buffer.concat(pieces)), 'the body arrived whole and in order');
  assert.equal(seen.length, 1, `one write for the turn, got ${JSON.stringify(seen)}`);
});

test('while gathering, the source waits only once about 1 MiB is waiting', async () => {
  const answers: boolean[] = [];
  const body = await serve((res) => {
    res.writeHead(200, { 'transfer-encoding': 'chunked' });
    const gathered = new TurnGatheredWrites(res);
    for (let i = 0; i < 20; i++) answers.push(gathered.write(Buffer.alloc(64 * 1024, i)));
    res.end();
  });
  assert.equal(body.length, 20 * 64 * 1024);
  // Past the socket's 16 KiB mark the pieces keep coming while gathering, until 1 MiB waits.
  assert.equal(answers.indexOf(false), 15, `the first wait came at piece ${answers.indexOf(false)}`);
  assert.ok(
    answers.slice(15).every((ok) => !ok),
    'and every piece after it is told to wait',
  );
});

test('small pieces for a socket that is already behind wait copied together, not a queued write each', async (t) => {
  const server = createTcpServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const reader = connect((server.address() as AddressInfo).port, '127.0.0.1');
  reader.pause(); // a visitor that does not read
  const [[socket]] = await Promise.all([accepted, once(reader, 'connect')]);
  t.after(() => {
    reader.destroy();
    socket.destroy();
    server.close();
  });
  // Fill the kernel's buffers, in 1 KiB writes, until a little waits in the socket itself.
  const kib = Buffer.alloc(1024, 0x6b);
  for (let i = 0; i < 100_000 && socket.writableLength === 0; i++) {
    socket.write(kib);
    if (i % 64 === 63) await new Promise((resolve) => setImmediate(resolve));
  }
  assert.ok(socket.writableLength > 0 && !socket.writableNeedDrain, 'the kernel is full, the socket not yet');
  const base = retained();
  const gathered = new TurnGatheredWrites(socket);
  let pieces = 0;
  for (let more = true; more && pieces < 1_000_000; ) {
    for (let i = 0; i < 10_000 && more; i++, pieces++) more = gathered.write(Buffer.from([pieces & 0xff]));
    await new Promise((resolve) => setImmediate(resolve));
  }
  const growth = retained() - base;
  t.diagnostic(`${pieces} 1-byte pieces taken; retained growth ${(growth / 1024).toFixed(0)} KiB`);
  assert.ok(pieces < 1_000_000, 'the source was told to wait');
  // Measured: 2.7 MiB when each piece was a queued write of its own.
  assert.ok(growth < 1024 * 1024, `retained memory grew by ${(growth / 1024).toFixed(0)} KiB`);
});
