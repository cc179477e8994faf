import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff } from '../src/reconnect.js';

test('backoff doubles its ceiling up to the cap, jitters below it, and resets', () => {
  const top = new Backoff(500, 4000, () => 0.999_999);
  assert.deepEqual(
    Array.from({ length: 6 }, () => top.next()),
    [500, 1000, 2000, 4000, 4000, 4000],
  );
  top.reset();
  assert.equal(top.next(), 500);
  const bottom = new Backoff(500, 4000, () => 0);
  assert.equal(bottom.next(), 0);
  const real = new Backoff(100, 1000);
  for (let i = 0; i < 50; i++) {
    const delay = real.next();
    assert.ok(delay >= 0 && delay <= 1000, `${delay}`);
  }
});

test('new limits apply to the next delay and keep the attempt count', () => {
  const backoff = new Backoff(100, 10_000, () => 0.999_999);
  assert.deepEqual(
    Array.from({ length: 4 }, () => backoff.next()),
    [100, 200, 400, 800],
  );
  backoff.setLimits(100, 10_000);
  assert.equal(backoff.next(), 1600, 'the same limits again: the delays go on growing');
  backoff.setLimits(200, 1000);
  assert.equal(backoff.next(), 1000, 'capped by the new max from the next delay on');
  backoff.setLimits(200, 60_000);
  assert.equal(backoff.next(), 200 * 2 ** 6);
});
