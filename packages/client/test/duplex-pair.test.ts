import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { PairEnd } from '../src/duplex-pair.js';

test('a pair carries bytes both ways with half-close, and a writer waits while the reader is full', async () => {
  const [a, b] = PairEnd.pair();
  a.write('hello');
  a.end();
  b.setEncoding('utf8');
  let got = '';
  b.on('data', (text: string) => {
    got += text;
  });
  await once(b, 'end');
  assert.equal(got, 'hello');
  // b may still answer after a's end.
  b.end('bye');
  const [answer] = (await once(a, 'data')) as [Buffer];
  assert.equal(answer.toString(), 'bye');

  const [c, d] = PairEnd.pair();
  let accepted = 0;
  for (let i = 0; i < 64 && c.write(Buffer.alloc(64 * 1024)); i++) accepted++;
  assert.ok(accepted < 8, `the writer was told to wait (after ${accepted} chunks)`);
  await sleep(20);
  assert.ok(d.readableLength <= 2 * 64 * 1024, `the reader holds ${d.readableLength} bytes, not all of them`);
  c.destroy();
  d.destroy();
});

test('a destroyed end aborts the other; a clean close leaves its unread bytes to be read', async () => {
  const [a, b] = PairEnd.pair();
  a.destroy();
  await once(b, 'close');
  assert.ok(b.destroyed);

  const [c, d] = PairEnd.pair();
  c.end('last words');
  d.end();
  await once(c, 'finish');
  c.resume();
  await once(c, 'close');
  const [text] = (await once(d, 'data')) as [Buffer];
  assert.equal(text.toString(), 'last words');
});

test('setTimeout: "timeout" after the time without a byte either way, 0 turns it off', async () => {
  const [a, b] = PairEnd.pair();
  let timeouts = 0;
  a.on('timeout', () => timeouts++);
  a.setTimeout(1000);
  b.resume();
  for (let i = 0; i < 5; i++) {
    a.write('x');
    await sleep(50);
  }
  assert.equal(timeouts, 0, 'activity keeps it from timing out');
  const quietSince = performance.now();
  await Promise.race([once(a, 'timeout'), sleep(10_000)]);
  assert.equal(timeouts, 1);
  assert.ok(performance.now() - quietSince >= 900, 'not before its time');
  a.setTimeout(0);
  await sleep(1200);
  assert.equal(timeouts, 1);
  a.destroy();
});
