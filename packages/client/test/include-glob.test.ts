import assert from 'node:assert/strict';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import { fileNamePattern, hasWildcard, matchFileNamePattern } from '../src/include-glob.js';

test('* stands for any run of characters (none too), ? for one; every other character for itself', () => {
  const toml = fileNamePattern('*.toml');
  for (const name of ['web.toml', '.toml', 'a b.toml', 'ünï.toml']) assert.ok(toml.test(name), name);
  for (const name of ['web.toml.bak', 'web.tom', 'webtoml', 'web.TOML']) assert.ok(!toml.test(name), name);
  const one = fileNamePattern('a?.toml');
  assert.ok(one.test('ab.toml'));
  assert.ok(one.test('aü.toml'), 'one character, not one byte');
  assert.ok(!one.test('a.toml'));
  assert.ok(!one.test('abc.toml'));
  // Characters a RegExp reads as syntax are plain ones in a file name, brackets too (no classes, as the
  // README says: * and ? only).
  const literal = fileNamePattern('a+b(1)[x]{2}^$|.toml');
  assert.ok(literal.test('a+b(1)[x]{2}^$|.toml'));
  assert.ok(!literal.test('aab(1)x{2}^$|.toml'));
  assert.ok(!literal.test('a+b(1)[x]{2}^$|xtoml'));
  assert.ok(hasWildcard('conf.d/*.toml'));
  assert.ok(!hasWildcard('conf.d/web.toml'));
});

test('a pattern matches the files of its directory in name order, not directories; a missing directory matches nothing', () => {
  const dir = scratchDir('porthole-include-glob-');
  for (const name of ['b.toml', 'a.toml', '10-x.toml', 'c.txt', '.hidden.toml'])
    writeFileSync(join(dir, name), '');
  mkdirSync(join(dir, 'd.toml'));
  assert.deepEqual(
    matchFileNamePattern(join(dir, '*.toml')),
    ['.hidden.toml', '10-x.toml', 'a.toml', 'b.toml'].map((name) => join(dir, name)),
  );
  assert.deepEqual(
    matchFileNamePattern(join(dir, '?.toml')),
    ['a.toml', 'b.toml'].map((name) => join(dir, name)),
  );
  assert.deepEqual(matchFileNamePattern(join(dir, 'none', '*.toml')), []);
  assert.deepEqual(
    matchFileNamePattern(join(dir, 'c.txt', '*.toml')),
    [],
    'a file where the directory should be',
  );
});
