import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  CoalescedLines,
  FirstSightings,
  LimitWarning,
  LineBudget,
  RepeatedReasons,
} from '../src/limit-warning.js';

test('a limit warning: the first refusal at once, a burst after it in one line when the interval ends', async () => {
  const lines: number[] = [];
  let tail: (() => void) | undefined;
  const warning = new LimitWarning((count) => {
    lines.push(count);
    tail?.();
  }, 200);
  warning.count();
  assert.deepEqual(lines, [1], 'the first is reported at once');
  const burstReported = new Promise<void>((resolve) => {
    tail = resolve;
  });
  for (let i = 0; i < 5; i++) warning.count();
  assert.deepEqual(lines, [1], 'the burst waits for the interval');
  // The warning's timer does not hold a process open; this one holds the test's.
  const keepAlive = setTimeout(() => {}, 10_000);
  await burstReported;
  clearTimeout(keepAlive);
  assert.deepEqual(lines, [1, 5], 'the burst is one line, even though nothing was refused after it');
  warning.flush();
  assert.deepEqual(lines, [1, 5], 'nothing pending, nothing reported');
  warning.count();
  warning.flush();
  assert.deepEqual(lines, [1, 5, 1], 'flush reports what is pending at once (the proxy is closing)');
});

test('a line budget: lines while they last, then counted; useLine counts nothing and countUnlogged needs no line', () => {
  const summaries: number[] = [];
  const budget = new LineBudget(2, (unlogged) => summaries.push(unlogged), 60_000);
  assert.equal(budget.useLine(), true);
  assert.equal(budget.take(), true);
  assert.equal(budget.useLine(), false, 'both lines of the interval are used');
  assert.deepEqual(summaries, [], 'useLine counted nothing');
  assert.equal(budget.take(), false);
  assert.deepEqual(summaries, [1], 'take counts what gets no line (the first at once)');
  budget.countUnlogged();
  budget.countUnlogged();
  budget.flush();
  assert.deepEqual(summaries, [1, 2], 'what the caller counts goes to the same summary');
});

test('repeated reasons: the same reason for a key repeats until it changes or is forgotten; the memory is bounded', () => {
  const reasons = new RepeatedReasons(2);
  assert.equal(reasons.repeats('a', 'port in use'), false);
  assert.equal(reasons.repeats('a', 'port in use'), true);
  assert.equal(reasons.repeats('a', 'outside the grant'), false);
  assert.equal(reasons.repeats('a', 'outside the grant'), true);
  reasons.forget('a');
  assert.equal(reasons.repeats('a', 'outside the grant'), false);
  assert.equal(reasons.repeats('b', 'x'), false);
  // A third key starts the memory over: 'a' is news again.
  assert.equal(reasons.repeats('c', 'x'), false);
  assert.equal(reasons.repeats('a', 'outside the grant'), false);
});

test('first sightings: each key is first once; past maxKeys no new key is (a peer varying keys buys no lines)', () => {
  const sightings = new FirstSightings(2);
  assert.equal(sightings.first('a'), true);
  assert.equal(sightings.first('a'), false);
  assert.equal(sightings.first('b'), true);
  assert.equal(sightings.first('c'), false);
  assert.equal(sightings.first('a'), false);
});

test("coalesced lines: a key's first line at once, its repeats in one line with suppressed, keys apart", () => {
  const lines: Record<string, unknown>[] = [];
  const coalesced = new CoalescedLines((fields) => lines.push(fields), 60_000, 2);
  coalesced.say('laptop|no grant', { visitor: 'laptop', n: 1 });
  coalesced.say('laptop|no grant', { visitor: 'laptop', n: 2 });
  coalesced.say('laptop|no grant', { visitor: 'laptop', n: 3 });
  coalesced.say('phone|no grant', { visitor: 'phone', n: 1 });
  assert.deepEqual(lines, [
    { visitor: 'laptop', n: 1 },
    { visitor: 'phone', n: 1 },
  ]);
  // A third key, past maxKeys: the others' counts are said, and they are forgotten.
  coalesced.say('tablet|no grant', { visitor: 'tablet', n: 1 });
  assert.deepEqual(lines.slice(2), [
    { visitor: 'laptop', n: 3, suppressed: 1 },
    { visitor: 'tablet', n: 1 },
  ]);
  coalesced.say('laptop|no grant', { visitor: 'laptop', n: 4 });
  assert.deepEqual(lines.at(-1), { visitor: 'laptop', n: 4 }, 'a forgotten key starts anew');
  coalesced.forgetAll();
});

test('coalesced lines: a burst is one line once the interval is over, even when nothing follows it', async () => {
  const lines: Record<string, unknown>[] = [];
  let tail: (() => void) | undefined;
  const coalesced = new CoalescedLines((fields) => {
    lines.push(fields);
    if (lines.length === 2) tail?.();
  }, 200);
  const burstSaid = new Promise<void>((resolve) => {
    tail = resolve;
  });
  for (let i = 1; i <= 50; i++) coalesced.say('k', { i });
  assert.deepEqual(lines, [{ i: 1 }]);
  const keepAlive = setTimeout(() => {}, 10_000);
  await burstSaid;
  clearTimeout(keepAlive);
  assert.deepEqual(lines, [{ i: 1 }, { i: 50, suppressed: 48 }]);
});
