import assert from 'node:assert/strict';
import { test } from 'node:test';
import { closestName } from '../src/closest-name.js';

const KEYS = [
  'listen',
  'allow_ports',
  'proxy_bind',
  'remote_port',
  'local',
  'name',
  'type',
  'secret_file',
  'secret',
];

test('a typo finds the key it stands for: a letter missing, extra, wrong, or two swapped', () => {
  assert.equal(closestName('lisen', KEYS), 'listen');
  assert.equal(closestName('alow_ports', KEYS), 'allow_ports');
  assert.equal(closestName('remote_prot', KEYS), 'remote_port');
  assert.equal(closestName('proxy_bnid', KEYS), 'proxy_bind');
  assert.equal(closestName('Listen', KEYS), 'listen');
  assert.equal(closestName('locl', KEYS), 'local');
});

test('nothing is offered for a word that is not close, nor for a tie', () => {
  assert.equal(closestName('colour', KEYS), undefined);
  assert.equal(closestName('zz', KEYS), undefined);
  // Short words get one edit only: "nmae" is two from "name".
  assert.equal(closestName('nmea', KEYS), undefined);
  assert.equal(closestName('secret_fil', KEYS), 'secret_file');
  // One edit from both "cat" and "bat": no guess.
  assert.equal(closestName('hat', ['cat', 'bat']), undefined);
  // The known name itself is no typo.
  assert.equal(closestName('listen', KEYS), undefined);
});

test('a singular stands for its plural', () => {
  assert.equal(closestName('proxy', ['proxies', 'server', 'token']), 'proxies');
  assert.equal(closestName('cert', ['certs', 'listen']), 'certs');
  assert.equal(closestName('key', ['keys', 'token']), 'keys');
  assert.equal(closestName('key', ['keys', 'key']), undefined, 'a known name is no typo, whatever the order');
});

test('a prefix of exactly one name is taken for it', () => {
  assert.equal(closestName('--ca', ['--config', '--ca-file', '--server']), '--ca-file');
  assert.equal(closestName('--con', ['--config', '--conn-limit']), undefined);
});
