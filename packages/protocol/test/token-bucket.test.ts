import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { type PipeResult, pipeBidirectional } from '../src/pipe-bidirectional.js';
import { TokenBucket } from '../src/token-bucket.js';

/** The bucket's timer does not hold the process open (the connections it paces do): this test's must. */
function whileWaiting<T>(waited: Promise<T>): Promise<T> {
  const keep = setInterval(() => {}, 1000);
  return waited.finally(() => clearInterval(keep));
}

test('TokenBucket: a burst at once, then debt that a waiter waits out; trySpend spends only what it holds', async () => {
  const bucket = new TokenBucket(100_000, 10_000);
  assert.equal(bucket.spend(10_000), true, 'the burst');
  assert.equal(bucket.trySpend(5000), false);
  assert.equal(bucket.spend(5000), false, 'into debt');
  const started = performance.now();
  await whileWaiting(new Promise<void>((resolve) => bucket.whenRefilled(resolve)));
  // 5000 bytes of debt at 100000 bytes/s: 50 ms (timers may fire a millisecond early by the clock).
  assert.ok(performance.now() - started >= 45, `resumed after ${performance.now() - started} ms`);
  assert.equal(bucket.trySpend(10_000), false, 'the debt paid, not yet the burst again');
});

test('TokenBucket: a full bucket pays for a datagram over the burst, into debt the next waits out', () => {
  const bucket = new TokenBucket(1000);
  assert.equal(bucket.trySpend(1400), true, "a full bucket: one datagram over a second's worth passes");
  assert.equal(bucket.trySpend(1), false, 'the debt first');
  const partly = new TokenBucket(1000);
  assert.equal(partly.trySpend(1), true);
  assert.equal(partly.trySpend(1400), false, 'not full: nothing spent');
});

test('TokenBucket: a cancelled waiter is not called; setRate(Infinity) lets the waiting go at once', async () => {
  const bucket = new TokenBucket(1000);
  bucket.spend(2000);
  let cancelledCalled = false;
  const cancelled = () => {
    cancelledCalled = true;
  };
  bucket.whenRefilled(cancelled);
  bucket.cancel(cancelled);
  let resumed = false;
  bucket.whenRefilled(() => {
    resumed = true;
  });
  await sleep(20);
  assert.equal(resumed, false, 'a second of debt');
  bucket.setRate(Number.POSITIVE_INFINITY);
  assert.equal(resumed, true);
  assert.equal(bucket.spend(1e9), true, 'unlimited');
  assert.equal(cancelledCalled, false);
});

test('pipeBidirectional with limits: the limited direction keeps to its budget; both ways byte-exact', async () => {
  const SIZE = 384 * 1024;
  const payload = Buffer.alloc(SIZE, 0x5a);
  // The service sends SIZE bytes (limited: 128 KiB of burst, then 256 KiB at 256 KiB/s) and takes SIZE.
  const service = createServer({ allowHalfOpen: true }, (socket) => {
    let got = 0;
    socket.on('data', (chunk: Buffer) => {
      got += chunk.length;
    });
    socket.on('end', () => socket.end(String(got)));
    socket.write(payload);
  });
  service.listen(0, '127.0.0.1');
  await once(service, 'listening');
  const budget = new TokenBucket(256 * 1024, 128 * 1024);
  let piped: Promise<PipeResult> | undefined;
  const relay = createServer({ allowHalfOpen: true }, (visitor) => {
    const upstream = connect({ port: (service.address() as AddressInfo).port, allowHalfOpen: true });
    piped = new Promise((resolve) =>
      pipeBidirectional(visitor, upstream, { limits: { bToA: budget } }, resolve),
    );
  });
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  const started = performance.now();
  const visitor: Socket = connect({ port: (relay.address() as AddressInfo).port, allowHalfOpen: true });
  visitor.end(payload);
  const received: Buffer[] = [];
  visitor.on('data', (chunk: Buffer) => received.push(chunk));
  await once(visitor, 'end');
  const ms = performance.now() - started;
  visitor.destroy();
  const result = await piped!;
  relay.close();
  service.close();
  const all = Buffer.concat(received);
  // What the service sent, then what it counted of ours (sent at once, unlimited).
  assert.equal(all.length, SIZE + String(SIZE).length);
  assert.ok(all.subarray(0, SIZE).equals(payload));
  assert.equal(all.subarray(SIZE).toString(), String(SIZE));
  assert.equal(result.bytesAtoB, SIZE);
  // 256 KiB past the burst at 256 KiB/s, less what the last read (64 KiB at most) took on credit.
  assert.ok(ms >= 700, `the limited direction took only ${Math.round(ms)} ms`);
});
