import assert from 'node:assert/strict';
import { test } from 'node:test';
import { namesCover } from '../src/pem-certificate.js';

test('a certificate covers its names and, by a wildcard, exactly one label below it', () => {
  const names = ['app.example.com', '*.home.example.com'];
  assert.equal(namesCover(names, 'app.example.com'), true);
  assert.equal(namesCover(names, 'APP.example.com'), true);
  assert.equal(namesCover(names, 'nas.home.example.com'), true);
  assert.equal(namesCover(names, '*.home.example.com'), true);
  assert.equal(namesCover(names, 'home.example.com'), false);
  assert.equal(namesCover(names, 'a.nas.home.example.com'), false);
  assert.equal(namesCover(names, '*.example.com'), false);
  assert.equal(namesCover(names, 'www.app.example.com'), false);
});
