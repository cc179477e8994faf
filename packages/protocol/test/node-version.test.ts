import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { nodeVersionProblem, REQUIRED_NODE_MAJOR } from '../src/node-version.js';

test('an older Node.js than 20 is named with the one needed, in one line; 20 and later pass', () => {
  assert.equal(
    nodeVersionProblem('porthole-server', '18.20.4', '/usr/bin/node'),
    'porthole-server: Node.js 18.20.4 (/usr/bin/node) is too old: it needs Node.js 20 or later',
  );
  assert.equal(
    nodeVersionProblem('porthole-client', '12.22.9', '/usr/local/bin/node'),
    'porthole-client: Node.js 12.22.9 (/usr/local/bin/node) is too old: it needs Node.js 20 or later',
  );
  for (const version of ['20.0.0', '20.19.2', '22.11.0', '24.0.0-pre'])
    assert.equal(nodeVersionProblem('porthole-server', version, '/usr/bin/node'), undefined, version);
  assert.equal(nodeVersionProblem('porthole-server', process.versions.node, process.execPath), undefined);
});

test('the required version is the one package.json promises, and the check imports nothing that could fail first', () => {
  const root = JSON.parse(readFileSync(new URL('../../../../package.json', import.meta.url), 'utf8'));
  assert.equal(root.engines.node, `>=${REQUIRED_NODE_MAJOR}`);
  // It runs on the old Node it refuses: an import would load (and could break on) code meant for Node 20.
  const compiled = readFileSync(new URL('../src/node-version.js', import.meta.url), 'utf8');
  assert.doesNotMatch(compiled, /^\s*import\b|\bimport\(|\brequire\(/m);
});
