import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, get, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { test } from 'node:test';
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
