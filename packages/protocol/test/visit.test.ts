import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import {
  readVisitAnswer,
  readVisitRequest,
  serviceNameRefusal,
  visitGrantAllows,
  visitGrantRefusal,
  writeVisitAnswer,
  writeVisitRequest,
} from '../src/visit.js';

test('a visit grant allows its services exactly, or all of one owner with owner/*; no grant allows none', () => {
  assert.equal(visitGrantAllows(['homelab/ssh'], 'homelab/ssh'), true);
  assert.equal(visitGrantAllows(['homelab/ssh'], 'homelab/db'), false);
  assert.equal(visitGrantAllows(['homelab/*'], 'homelab/db'), true);
  // The wildcard is one owner's: not another's whose name it begins, not every owner's.
  assert.equal(visitGrantAllows(['homelab/*'], 'homelab2/db'), false);
  assert.equal(visitGrantAllows(['home/*'], 'homelab/db'), false);
  assert.equal(visitGrantAllows(['*/*'], 'homelab/db'), false);
  assert.equal(visitGrantAllows(undefined, 'homelab/ssh'), false);
  assert.equal(visitGrantAllows([], 'homelab/ssh'), false);
});

test('grant entries and service names are owner/proxy, each a proxy name; a grant may end in /*', () => {
  for (const good of ['homelab/ssh', 'homelab/*', 'a.b_c-d/e.f'])
    assert.equal(visitGrantRefusal(good), undefined, good);
  for (const bad of [
    'homelab',
    '*/ssh',
    '*',
    'homelab/ssh/x',
    'homelab/',
    '/ssh',
    'home lab/ssh',
    'homelab/s*',
  ])
    assert.match(visitGrantRefusal(bad) ?? '', /is not a service to visit/, bad);
  assert.equal(serviceNameRefusal('homelab/ssh'), undefined);
  assert.match(serviceNameRefusal('homelab/*') ?? '', /is not a service name/);
});

test('a visit request and its answer go through a stream and leave the bytes after them', async () => {
  const stream = new PassThrough();
  writeVisitRequest(stream, { visit: 'homelab/ssh' });
  stream.write('SSH-2.0-client\r\n');
  assert.deepEqual(await readVisitRequest(stream), { visit: 'homelab/ssh' });
  assert.equal(stream.read().toString(), 'SSH-2.0-client\r\n');

  const bad = new PassThrough();
  writeVisitRequest(bad, { visit: 'homelab' });
  await assert.rejects(readVisitRequest(bad), /invalid visit request: must be "owner\/proxy"/);

  const answers = new PassThrough();
  writeVisitAnswer(answers, { ok: false, reason: 'client "homelab" is not connected' });
  assert.deepEqual(await readVisitAnswer(answers), {
    ok: false,
    reason: 'client "homelab" is not connected',
  });
  answers.end();
  assert.equal(await readVisitAnswer(answers), null, 'a stream ended without an answer');
});
