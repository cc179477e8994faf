import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { CompressedStream, CompressionError, IDLE_DEFLATER_MS } from '../src/compressed-stream.js';

/** Two ends of one loopback TCP connection: the wire a CompressedStream runs over in these tests. */
async function socketPair(): Promise<[Socket, Socket]> {
  const server = createServer({ allowHalfOpen: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const dialed = connect({
    port: (server.address() as AddressInfo).port,
    host: '127.0.0.1',
    allowHalfOpen: true,
  });
  const [[accepted]] = (await Promise.all([once(server, 'connection'), once(dialed, 'connect')])) as [
    [Socket],
    unknown,
  ];
  server.close();
  return [dialed, accepted];
}

/** Counts what crosses `socket` towards its peer. */
function countWritten(socket: Socket): () => number {
  return () => socket.bytesWritten;
}

function readAll(stream: CompressedStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  stream.on('data', (chunk: Buffer) => chunks.push(chunk));
  return new Promise((resolve, reject) => {
    stream.once('end', () => resolve(Buffer.concat(chunks)));
    stream.once('error', reject);
  });
}

const TEXT = Buffer.from(
  Array.from({ length: 40_000 }, (_, i) => `${i} GET /api/items?page=${i % 97} HTTP/1.1 200 OK\n`).join(''),
);

test('bytes cross deflated, arrive whole both ways, and each end passes its half-close', async () => {
  const [a, b] = await socketPair();
  const wireAtoB = countWritten(a);
  const left = new CompressedStream(a);
  const right = new CompressedStream(b);
  const closed = Promise.all([once(left, 'close'), once(right, 'close')]);
  const rightGot = readAll(right);
  const leftGot = readAll(left);
  left.end(TEXT);
  assert.deepEqual(await rightGot, TEXT);
  // The other direction still flows after the first one's end.
  right.end('reply after the end');
  assert.equal((await leftGot).toString(), 'reply after the end');
  assert.ok(wireAtoB() < TEXT.length / 5, `${wireAtoB()} bytes on the wire for ${TEXT.length}`);
  await closed;
  assert.ok(a.destroyed && b.destroyed);
});

test('a lone write is flushed at once: a keystroke does not wait for more input', async () => {
  const [a, b] = await socketPair();
  const left = new CompressedStream(a);
  const right = new CompressedStream(b);
  left.write('k');
  const [chunk] = (await Promise.race([once(right, 'data'), sleep(2000, ['nothing within 2 s'])])) as [
    Buffer | string,
  ];
  assert.equal(chunk.toString(), 'k');
  left.destroy();
  right.destroy();
});

test('corrupt data fails that stream with a CompressionError and resets its wire', async () => {
  const [a, b] = await socketPair();
  const right = new CompressedStream(b);
  right.resume();
  a.write(Buffer.from([0xff, 0xff, 0xff, 0xff, 0x00, 0x13, 0x37]));
  const [err] = (await once(right, 'error')) as [CompressionError];
  assert.ok(err instanceof CompressionError);
  assert.match(err.message, /corrupt compressed data/);
  assert.equal(err.code, 'Z_DATA_ERROR');
  await once(b, 'close');
  a.destroy();
});

test('a reader that stops reading stops the writer: neither end buffers without bound', async () => {
  const [a, b] = await socketPair();
  const left = new CompressedStream(a);
  const right = new CompressedStream(b);
  right.pause();
  // Incompressible, so what waits is as large as what was written.
  let written = 0;
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < 2000; i++) {
    for (let j = 0; j < chunk.length; j += 4) chunk.writeUInt32LE((Math.random() * 2 ** 32) >>> 0, j);
    written += chunk.length;
    if (!left.write(Buffer.from(chunk))) break;
  }
  // Let every buffer on the way fill: the sockets' kernel buffers, both zlib streams, both Duplexes.
  await sleep(500);
  assert.ok(written < 4 * 1024 * 1024, `the writer took ${written} bytes before holding back`);
  const held = right.readableLength + b.readableLength + a.writableLength + left.writableLength;
  assert.ok(held < 4 * 1024 * 1024, `${held} bytes held in the streams`);
  left.destroy();
  right.destroy();
});

test('the end of a stream that never carried a byte is still clean', async () => {
  const [a, b] = await socketPair();
  const left = new CompressedStream(a);
  const right = new CompressedStream(b);
  const closed = Promise.all([once(left, 'close'), once(right, 'close')]);
  const got = readAll(right);
  left.resume();
  left.end();
  assert.equal((await got).length, 0);
  right.end();
  await closed;
});

test('an idle deflater is let go, and what follows with a new one still inflates on the same stream', async () => {
  const [a, b] = await socketPair();
  const left = new CompressedStream(a);
  const right = new CompressedStream(b);
  const got = readAll(right);
  left.write(TEXT.subarray(0, 100_000));
  await sleep(IDLE_DEFLATER_MS + 1000);
  assert.equal(
    (left as unknown as { deflater: unknown }).deflater,
    undefined,
    'the idle deflater is still held',
  );
  // The same text again: a deflater that had kept its dictionary would refer back to it, across the seam.
  left.end(TEXT.subarray(0, 100_000));
  assert.deepEqual(await got, Buffer.concat([TEXT.subarray(0, 100_000), TEXT.subarray(0, 100_000)]));
  right.end();
});
