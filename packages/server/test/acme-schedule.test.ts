import assert from 'node:assert/strict';
import { test } from 'node:test';
import { retryAfterMs } from '../src/acme-client.js';
import { checkDelay, MAX_RETRY_MS, RECHECK_MS, renewalDue, retryDelay } from '../src/acme-schedule.js';

const DAY = 24 * 60 * 60_000;

test("renewal is due with a third of the lifetime left: Let's Encrypt's 90 days at 30 left, 30 s at 10 s left", () => {
  const issued = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(renewalDue(issued, issued + 90 * DAY), issued + 60 * DAY);
  assert.equal(renewalDue(issued, issued + 30_000), issued + 20_000);
  // A certificate whose dates are the wrong way round is due at its end, not in the future.
  assert.equal(renewalDue(issued, issued - 1000), issued - 1000);
});

test('the next look is at the due time, never more than RECHECK_MS away, never in the past', () => {
  const now = 1_000_000_000_000;
  assert.equal(checkDelay(now + 5_000, now), 5_000);
  assert.equal(checkDelay(now + 60 * DAY, now), RECHECK_MS);
  assert.equal(RECHECK_MS, 12 * 60 * 60_000);
  assert.equal(checkDelay(now - 5_000, now), 0);
});

test('failed orders are retried after 1 min, doubling, up to 6 h', () => {
  assert.deepEqual([1, 2, 3, 4].map(retryDelay), [60_000, 120_000, 240_000, 480_000]);
  assert.equal(retryDelay(9), 15_360_000);
  assert.equal(retryDelay(10), MAX_RETRY_MS);
  assert.equal(retryDelay(1000), MAX_RETRY_MS);
  assert.equal(MAX_RETRY_MS, 6 * 60 * 60_000);
});

test('Retry-After in seconds or as a date, bounded; absent or unreadable: 1 s', () => {
  const now = Date.parse('2026-01-01T00:00:00Z');
  assert.equal(retryAfterMs('3', now), 3_000);
  assert.equal(retryAfterMs('3600', now), 30_000);
  assert.equal(retryAfterMs('Thu, 01 Jan 2026 00:00:05 GMT', now), 5_000);
  assert.equal(retryAfterMs('Wed, 31 Dec 2025 00:00:05 GMT', now), 0);
  assert.equal(retryAfterMs(undefined, now), 1_000);
  assert.equal(retryAfterMs('soon', now), 1_000);
});
