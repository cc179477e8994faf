import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatDuration, parseDuration } from '../src/duration.js';
import { formatHostPort, formatPeerAddress, parseHostPort } from '../src/host-port.js';
import { formatLocalAddress, parseLocalAddress } from '../src/local-address.js';
import { PortRanges } from '../src/port-ranges.js';
import { parseRule } from '../src/rules.js';

test('durations parse every unit and reject junk with the reason', () => {
  assert.equal(parseDuration('250ms'), 250);
  assert.equal(parseDuration('10s'), 10_000);
  assert.equal(parseDuration('5m'), 300_000);
  assert.equal(parseDuration('2h'), 7_200_000);
  assert.equal(parseDuration('90d'), 90 * 86_400_000);
  assert.equal(parseDuration('1.5s'), 1500);
  for (const bad of ['', '10', 's', '10 s', '-1s', '10x', '1e3s']) {
    assert.throws(() => parseDuration(bad), /invalid duration/, bad);
  }
  assert.equal(formatDuration(30_000), '30s');
  assert.equal(formatDuration(1500), '1500ms');
  assert.equal(formatDuration(90 * 86_400_000), '90d');
});

test('port ranges parse lists and ranges, contain what they say and print canonically', () => {
  const ranges = PortRanges.parse('2000-2999, 8080');
  assert.ok(ranges.contains(2000));
  assert.ok(ranges.contains(2999));
  assert.ok(ranges.contains(8080));
  assert.ok(!ranges.contains(1999));
  assert.ok(!ranges.contains(3000));
  assert.ok(!ranges.contains(8081));
  assert.equal(ranges.toString(), '2000-2999,8080');
  assert.equal(PortRanges.parse(['2000-2999', 8080, '9000,9001']).toString(), '2000-2999,8080,9000,9001');
  assert.ok(PortRanges.all().contains(65535));
  assert.throws(() => PortRanges.parse('3000-2000'), /reversed/);
  assert.throws(() => PortRanges.parse('0'), /outside 1-65535/);
  assert.throws(() => PortRanges.parse('70000'), /outside/);
  assert.throws(() => PortRanges.parse('80,,81'), /empty port range/);
  assert.throws(() => PortRanges.parse('http'), /invalid port range "http"/);
});

test('the ports of one set outside another, in canonical text', () => {
  const allowed = PortRanges.parse('2222,8000-8099');
  const outside = (spec: string) => PortRanges.parse(spec).outside(allowed);
  assert.equal(outside('2222'), '');
  assert.equal(outside('8000-8099,2222'), '');
  assert.equal(outside('2222,8000-8200'), '8100-8200');
  assert.equal(outside('2221-2223'), '2221,2223');
  assert.equal(outside('7990-8005,8095-8105'), '7990-7999,8100-8105');
  assert.equal(outside('1-65535'), '1-2221,2223-7999,8100-65535');
  assert.equal(PortRanges.parse('9000').outside(PortRanges.all()), '');
  // The other set's ranges need not be in order.
  assert.equal(PortRanges.parse('1-100').outside(PortRanges.parse('50-60,10-20')), '1-9,21-49,61-100');
});

test('port sets intersect, count and index their ports in ascending order', () => {
  const grant = PortRanges.parse('8090-8110,2222,2220-2223');
  const allowed = PortRanges.parse('2000-2999,8100-8199');
  const both = grant.intersect(allowed);
  assert.equal(both.toString(), '2220-2223,8100-8110');
  assert.equal(both.size, 15);
  assert.deepEqual(
    [0, 3, 4, 14].map((i) => both.at(i)),
    [2220, 2223, 8100, 8110],
  );
  assert.throws(() => both.at(15), RangeError);
  assert.equal(grant.size, 25, 'a port listed twice counts once');
  assert.equal(PortRanges.parse('80').intersect(PortRanges.parse('81')).size, 0);
  assert.equal(PortRanges.all().intersect(PortRanges.all()).size, 65535);
});

test('host:port accepts names, IPv4 and bracketed IPv6', () => {
  assert.deepEqual(parseHostPort('127.0.0.1:22'), { host: '127.0.0.1', port: 22 });
  assert.deepEqual(parseHostPort('localhost:8080'), { host: 'localhost', port: 8080 });
  assert.deepEqual(parseHostPort('[::1]:22'), { host: '::1', port: 22 });
  assert.deepEqual(parseHostPort('0.0.0.0:0', { allowZeroPort: true }), { host: '0.0.0.0', port: 0 });
  assert.throws(() => parseHostPort('0.0.0.0:0'), /port 0 is outside 1-65535/);
  assert.throws(() => parseHostPort('::1:22'), /invalid address/);
  assert.throws(() => parseHostPort('127.0.0.1'), /invalid address/);
  assert.throws(() => parseHostPort('127.0.0.1:99999'), /outside/);
  assert.throws(() => parseHostPort('bad host:22'), /invalid/);
  assert.deepEqual(parseHostPort('[fe80::1%eth0]:22'), { host: 'fe80::1%eth0', port: 22 });
  // Brackets around something that is not IPv6: a host:port inside passed, and the listen failed later.
  assert.throws(
    () => parseHostPort('[127.0.0.1:80]:7000'),
    /^Error: invalid host "127\.0\.0\.1:80" in "\[127\.0\.0\.1:80\]:7000"$/,
  );
  assert.throws(() => parseHostPort('[1:2:3]:22'), /invalid host "1:2:3"/);
  assert.throws(() => parseHostPort('[a_b]:22'), /invalid host "a_b"/);
  assert.equal(formatHostPort('::1', 22), '[::1]:22');
  assert.equal(formatHostPort('127.0.0.1', 22), '127.0.0.1:22');
});

test('a peer is written one way: an IPv4-mapped address as IPv4, IPv6 in brackets', () => {
  assert.equal(formatPeerAddress('::ffff:127.0.0.1', 40312), '127.0.0.1:40312');
  assert.equal(formatPeerAddress('::FFFF:192.0.2.7', 1), '192.0.2.7:1');
  assert.equal(formatPeerAddress('127.0.0.1', 40312), '127.0.0.1:40312');
  assert.equal(formatPeerAddress('2001:db8::7', 40312), '[2001:db8::7]:40312');
});

test('rules accept the plain and the typed form', () => {
  const expected = { type: 'tcp', remotePort: 2222, local: { host: '127.0.0.1', port: 22 } };
  assert.deepEqual(parseRule('2222:127.0.0.1:22'), expected);
  assert.deepEqual(parseRule('tcp:2222:127.0.0.1:22'), expected);
  assert.deepEqual(parseRule('2222:[::1]:22'), { ...expected, local: { host: '::1', port: 22 } });
  assert.deepEqual(parseRule('udp:5353:127.0.0.1:53'), {
    type: 'udp',
    remotePort: 5353,
    local: { host: '127.0.0.1', port: 53 },
  });
  assert.equal(parseRule('5353:127.0.0.1:53', 'udp').type, 'udp');
  const range = parseRule('udp:127.0.0.1:27015-27016:[::1]:8000,8002');
  assert.deepEqual(
    [range.remoteBind, range.remotePort, range.local, `${range.ranges?.remote}`, `${range.ranges?.local}`],
    ['127.0.0.1', 27015, { host: '::1', port: 8000 }, '27015-27016', '8000,8002'],
  );
  assert.equal(parseRule('2222:127.0.0.1:22').ranges, undefined, 'a single port is no range');
  assert.throws(() => parseRule('http:80:127.0.0.1:3000'), /unsupported proxy type "http"/);
  assert.throws(() => parseRule('2222'), /invalid rule "2222"/);
  assert.throws(() => parseRule('x:127.0.0.1:22'), /unsupported proxy type "x"/);
  // A host name where ssh -R takes a bind address: not read as a type.
  assert.throws(
    () => parseRule('myhost:8080:127.0.0.1:80'),
    /"myhost" is neither a proxy type \(tcp, udp\) nor an address to bind \(bind address "myhost": must be an IP address/,
  );
  assert.throws(() => parseRule('2222:127.0.0.1'), /invalid rule "2222:127.0.0.1": invalid address/);
  // Remote port 0: the server picks one (ssh -R 0:...); the local service needs a real one.
  assert.deepEqual(parseRule('0:127.0.0.1:22'), { ...expected, remotePort: 0 });
  assert.throws(() => parseRule('2222:127.0.0.1:0'), /port 0 is outside/);
  assert.throws(() => parseRule('70000:127.0.0.1:22'), /port 70000 is outside 0-65535/);
});

test('a rule may start with the address the server binds its port on, as ssh -R [bind_address:]port does', () => {
  const local = { host: 'localhost', port: 80 };
  assert.deepEqual(parseRule('127.0.0.1:8080:localhost:80'), {
    type: 'tcp',
    remoteBind: '127.0.0.1',
    remotePort: 8080,
    local,
  });
  assert.deepEqual(parseRule('[::1]:5353:localhost:53', 'udp'), {
    type: 'udp',
    remoteBind: '::1',
    remotePort: 5353,
    local: { host: 'localhost', port: 53 },
  });
  // The one spelling the server compares: "0:0:0:0:0:0:0:1" asks for "::1".
  assert.equal(parseRule('tcp:[0:0:0:0:0:0:0:1]:2222:[::1]:22').remoteBind, '::1');
  assert.deepEqual(parseRule('udp:0.0.0.0:5353:127.0.0.1:53'), {
    type: 'udp',
    remoteBind: '0.0.0.0',
    remotePort: 5353,
    local: { host: '127.0.0.1', port: 53 },
  });
  assert.deepEqual(parseRule('127.0.0.1:0:localhost:80'), {
    type: 'tcp',
    remoteBind: '127.0.0.1',
    remotePort: 0,
    local,
  });
  assert.deepEqual(parseRule('127.0.0.1:8080:unix:/run/app.sock'), {
    type: 'tcp',
    remoteBind: '127.0.0.1',
    remotePort: 8080,
    local: { path: '/run/app.sock' },
  });
  // Three fields are still port, host, port: no address is read into a local host.
  assert.deepEqual(parseRule('8080:[::1]:80'), {
    type: 'tcp',
    remotePort: 8080,
    local: { host: '::1', port: 80 },
  });
  assert.equal(parseRule('8080:127.0.0.1:80').remoteBind, undefined);
});

test('a rule whose first field is neither a port nor an address says how to write one', () => {
  const how =
    'a rule starts with the remote port, or with the address the server binds it on and then the port, e.g. 2222:[::1]:22 or 127.0.0.1:2222:[::1]:22';
  for (const [rule, remote, why] of [
    ['localhost:8080:localhost:80', 'localhost', 'write the loopback address itself: "127.0.0.1" or "::1"'],
    [
      'tcp:localhost:8080:localhost:80',
      'localhost',
      'write the loopback address itself: "127.0.0.1" or "::1"',
    ],
    ['*:8080:localhost:80', '*', 'write the address for every interface: "0.0.0.0" (IPv4) or "::" (IPv6)'],
    [
      'vps.example.com:8080:localhost:80',
      'vps.example.com',
      'must be an IP address such as "127.0.0.1", "::1" or "0.0.0.0"',
    ],
    ['::1:8080:localhost:80', '', 'an IPv6 address is written in brackets, e.g. [::1]'],
    [
      '[fe80::1%eth0]:8080:localhost:80',
      '[fe80::1%eth0]',
      'must be an IP address such as "127.0.0.1", "::1" or "0.0.0.0"',
    ],
  ] as const) {
    assert.throws(
      () => parseRule(rule),
      (err: Error) => {
        const bind = `bind address "${remote}": `;
        const said = why.startsWith('an IPv6') ? why : `${bind}${why}`;
        return (
          err.message ===
          `invalid rule "${rule}": "${remote}" is neither a port nor an address to bind (${said}); ${how}`
        );
      },
      rule,
    );
  }
  assert.throws(
    () => parseRule('[::1:2222:22'),
    /invalid rule "\[::1:2222:22" \(expected \[tcp:\]\[BIND_ADDRESS:\]REMOTE_PORT/,
  );
  assert.throws(() => parseRule('127.0.0.1:8080'), /invalid rule "127.0.0.1:8080" \(expected/);
  assert.throws(
    () => parseRule('127.0.0.1:8080:localhost'),
    /invalid rule "127.0.0.1:8080:localhost": invalid address "localhost"/,
  );
  assert.throws(() => parseRule('[::1]:70000:localhost:80'), /port 70000 is outside 0-65535/);
});

test('a local address is host:port or unix:PATH, and a bare path is told how to write it', () => {
  assert.deepEqual(parseLocalAddress('127.0.0.1:22'), { host: '127.0.0.1', port: 22 });
  assert.deepEqual(parseLocalAddress('unix:/run/app.sock'), { path: '/run/app.sock' });
  assert.deepEqual(parseLocalAddress('unix:app.sock'), { path: 'app.sock' });
  for (const text of ['127.0.0.1:22', '[::1]:22', 'unix:/run/app.sock'])
    assert.equal(formatLocalAddress(parseLocalAddress(text)), text);
  assert.throws(() => parseLocalAddress('unix:'), /"unix:" names no socket/);
  assert.throws(
    () => parseLocalAddress('/run/app.sock'),
    /looks like a path: a Unix socket is written "unix:\/run\/app.sock"/,
  );
  assert.throws(() => parseLocalAddress('./app.sock'), /looks like a path/);
  assert.deepEqual(parseRule('8080:unix:/run/app.sock'), {
    type: 'tcp',
    remotePort: 8080,
    local: { path: '/run/app.sock' },
  });
  assert.throws(
    () => parseRule('8080:/run/app.sock'),
    /invalid rule "8080:\/run\/app.sock": "\/run\/app.sock" looks like a path/,
  );
});
