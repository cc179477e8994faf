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
