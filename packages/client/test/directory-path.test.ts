import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readRange } from '../src/byte-range.js';
import { directoryUrl, requestedPath } from '../src/directory-path.js';

const plain = { serveDotfiles: false };

test('a request path is decoded once per segment; "..", NUL and an encoded "/" are refused, not resolved', () => {
  assert.deepEqual(requestedPath('/a/b%20c.txt?x=1', plain), {
    segments: ['a', 'b c.txt'],
    trailingSlash: false,
  });
  assert.deepEqual(requestedPath('//a/./b/', plain), { segments: ['a', 'b'], trailingSlash: true });
  assert.deepEqual(requestedPath('http://files.test/a/b', plain), {
    segments: ['a', 'b'],
    trailingSlash: false,
  });
  // Decoded once: "%252e%252e" is the name "%2e%2e", not "..".
  assert.deepEqual(requestedPath('/%252e%252e', plain), { segments: ['%2e%2e'], trailingSlash: false });
  for (const target of ['/../etc/passwd', '/a/%2e%2e/%2E%2E/etc', '/a/..', '/x%00.png', '/%E0%A4%A'])
    assert.equal((requestedPath(target, plain) as { status: number }).status, 400, target);
  for (const target of ['/a%2f..%2f..%2fetc', '/.git/config', '/a/%2eenv'])
    assert.equal((requestedPath(target, plain) as { status: number }).status, 404, target);
  assert.deepEqual(requestedPath('/.well-known/x', { serveDotfiles: true }), {
    segments: ['.well-known', 'x'],
    trailingSlash: false,
  });
  assert.equal((requestedPath('*', plain) as { status: number }).status, 400);
});

test('strip_prefix: taken off whole segments; anything else is 404', () => {
  const opts = { serveDotfiles: false, stripPrefix: '/static/v1' };
  assert.deepEqual(requestedPath('/static/v1/a.txt', opts), { segments: ['a.txt'], trailingSlash: false });
  assert.deepEqual(requestedPath('/static/v1', opts), { segments: [], trailingSlash: false });
  assert.equal((requestedPath('/static/v10/a.txt', opts) as { status: number }).status, 404);
  assert.equal((requestedPath('/a.txt', opts) as { status: number }).status, 404);
});

test("a directory's URL is built from its names, never from the request: no //host redirect", () => {
  assert.equal(directoryUrl([], undefined), '/');
  assert.equal(directoryUrl([], '/static'), '/static/');
  assert.equal(directoryUrl(['evil.com', 'a b'], undefined), '/evil.com/a%20b/');
  assert.equal(directoryUrl(['<x>'], '/s'), '/s/%3Cx%3E/');
});

test('Range: one range honoured, several or malformed ones ignored, one past the end unsatisfiable', () => {
  assert.deepEqual(readRange(undefined, 100), { kind: 'whole' });
  assert.deepEqual(readRange('bytes=0-9', 100), { kind: 'part', start: 0, end: 9 });
  assert.deepEqual(readRange('bytes=90-', 100), { kind: 'part', start: 90, end: 99 });
  assert.deepEqual(readRange('bytes=90-1000', 100), { kind: 'part', start: 90, end: 99 });
  assert.deepEqual(readRange('bytes=-10', 100), { kind: 'part', start: 90, end: 99 });
  assert.deepEqual(readRange('bytes=-1000', 100), { kind: 'part', start: 0, end: 99 });
  assert.deepEqual(readRange('bytes=100-', 100), { kind: 'unsatisfiable' });
  assert.deepEqual(readRange('bytes=-0', 100), { kind: 'unsatisfiable' });
  assert.deepEqual(readRange('bytes=0-', 0), { kind: 'unsatisfiable' });
  for (const header of ['bytes=0-1,5-6', 'bytes=5-1', 'items=0-1', 'bytes=-', 'bytes=a-b'])
    assert.deepEqual(readRange(header, 100), { kind: 'whole' }, header);
});
