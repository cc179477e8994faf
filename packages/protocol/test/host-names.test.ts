import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  hostGrantAllows,
  hostMatchesPattern,
  isLoopback,
  normalizeRequestHost,
  parseHostPattern,
  parseSubdomain,
  requestHostIsLoopback,
} from '../src/host-names.js';

test('host patterns normalize and reject what cannot be a hostname', () => {
  assert.equal(parseHostPattern('App.Example.COM.'), 'app.example.com');
  assert.equal(parseHostPattern('*.Home.example.com'), '*.home.example.com');
  assert.equal(parseHostPattern('localhost'), 'localhost');
  for (const bad of [
    '',
    '*',
    '*.',
    'a..b',
    '-a.com',
    'a-.com',
    'a b.com',
    'a.*.com',
    'app.com:80',
    'x'.repeat(64),
  ]) {
    assert.throws(() => parseHostPattern(bad), /invalid hostname/, bad);
  }
  // IP addresses as a Host header carries them; an IPv6 one compared in RFC 5952 form, brackets or not
  // (a token's --hosts holds the normalized form, read again here).
  assert.equal(parseHostPattern('127.0.0.1'), '127.0.0.1');
  assert.equal(parseHostPattern('[::1]'), '::1');
  assert.equal(parseHostPattern('[2001:DB8:0:0::1]'), '2001:db8::1');
  assert.equal(parseHostPattern('2001:db8::1'), '2001:db8::1');
  for (const bad of ['[127.0.0.1]', '*.[::1]', '[fe80::1%eth0]', '[::1]:80', '[::g]'])
    assert.throws(() => parseHostPattern(bad), /invalid hostname/, bad);
  assert.ok(hostGrantAllows([parseHostPattern('[::1]')], parseHostPattern('[0:0::1]')));
  assert.equal(parseSubdomain('App'), 'app');
  assert.throws(() => parseSubdomain('*.app'), /no wildcards/);
});

test('wildcards match names at any depth below them, never the name itself', () => {
  assert.ok(hostMatchesPattern('a.example.com', '*.example.com'));
  assert.ok(hostMatchesPattern('b.a.example.com', '*.example.com'));
  assert.ok(!hostMatchesPattern('example.com', '*.example.com'));
  assert.ok(!hostMatchesPattern('badexample.com', '*.example.com'));
  assert.ok(hostMatchesPattern('example.com', 'example.com'));
  assert.ok(!hostMatchesPattern('a.example.com', 'example.com'));
});

test('a host grant allows exactly its names and what its wildcards cover', () => {
  const grant = ['app.example.com', '*.home.example.com'];
  assert.ok(hostGrantAllows(undefined, 'anything.test'));
  assert.ok(hostGrantAllows(grant, 'app.example.com'));
  assert.ok(hostGrantAllows(grant, 'nas.home.example.com'));
  assert.ok(hostGrantAllows(grant, '*.home.example.com'));
  assert.ok(hostGrantAllows(grant, '*.media.home.example.com'));
  assert.ok(!hostGrantAllows(grant, 'home.example.com'));
  assert.ok(!hostGrantAllows(grant, '*.example.com'));
  assert.ok(!hostGrantAllows(grant, 'other.example.com'));
  assert.ok(!hostGrantAllows([], 'app.example.com'));
});

test('request hosts lose their port, case and trailing dot; junk is undefined', () => {
  assert.equal(normalizeRequestHost('App.Example.com:8080'), 'app.example.com');
  assert.equal(normalizeRequestHost('app.example.com.'), 'app.example.com');
  assert.equal(normalizeRequestHost('[::1]:80'), '::1');
  assert.equal(normalizeRequestHost('[0:0:0:0:0:0:0:1]'), '::1', 'as parseHostPattern writes it');
  assert.equal(normalizeRequestHost('[2001:DB8::0:1]:8080'), '2001:db8::1');
  assert.equal(normalizeRequestHost(undefined), undefined);
  assert.equal(normalizeRequestHost(''), undefined);
  assert.equal(normalizeRequestHost('a/b'), undefined);
  assert.equal(normalizeRequestHost('app.example.com:'), 'app.example.com', 'an empty port is allowed');
  // Anything but a port after the name: a service may read the name after "@" (or after the "]").
  for (const junk of [
    'app.example.com:x@evil',
    'app.example.com:80:81',
    'a:123456',
    '[::1]x',
    '[::1]:8x',
    '[evil]',
    '.',
  ])
    assert.equal(normalizeRequestHost(junk), undefined, junk);
});

test('loopback is 127.0.0.0/8, ::1 and localhost however the address is written; nothing else', () => {
  for (const host of ['localhost', '127.0.0.1', '127.9.8.7', '::1', '0:0:0:0:0:0:0:1', '::ffff:127.0.0.1'])
    assert.equal(isLoopback(host), true, host);
  for (const host of [
    '127.0.0.999',
    '10.0.0.1',
    '::2',
    '::ffff:10.0.0.1',
    'localhost.evil',
    '127.0.0.1.nip.io',
  ])
    assert.equal(isLoopback(host), false, host);
  // As a Host header carries them (normalized first).
  assert.equal(requestHostIsLoopback('[::ffff:127.0.0.1]:7500'), true);
  assert.equal(requestHostIsLoopback('[0:0:0:0:0:0:0:1]'), true);
  assert.equal(requestHostIsLoopback('[::ffff:7f00:1]:7500'), true);
  assert.equal(requestHostIsLoopback('attacker.example:7500'), false);
  assert.equal(requestHostIsLoopback(undefined), false);
});
