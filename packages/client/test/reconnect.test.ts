import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Backoff, MAX_RETRY_AFTER_MS, retryAfterMs } from '../src/reconnect.js';

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

test('a Retry-After is read as delay-seconds or an HTTP-date, and one over an hour or unreadable is ignored', () => {
  const now = Date.parse('2026-11-25T10:00:00Z');
  assert.equal(retryAfterMs('42', now), 42_000);
  assert.equal(retryAfterMs(' 0 ', now), 0);
  assert.equal(retryAfterMs('Wed, 25 Nov 2026 10:00:30 GMT', now), 30_000);
  assert.equal(retryAfterMs('Wed, 25 Nov 2026 09:59:00 GMT', now), 0, 'a date passed: at once');
  assert.equal(retryAfterMs('3600', now), MAX_RETRY_AFTER_MS);
  assert.equal(retryAfterMs('3601', now), undefined, 'over an hour: a mistake, backoff decides');
  assert.equal(retryAfterMs('-5', now), undefined);
  assert.equal(retryAfterMs('soon', now), undefined);
  assert.equal(retryAfterMs(undefined, now), undefined);
});
