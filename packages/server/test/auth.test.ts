import assert from 'node:assert/strict';
import { test } from 'node:test';
import { issueToken } from '@porthole/protocol';
import { SignJWT } from 'jose';
import { WebSocket } from 'ws';
import { FailureLimiter, failureSource } from '../src/auth.js';
import { SECRET, startServer, token } from './harness.js';

/** Attempts the upgrade; resolves "open" or "<status>: <body>". */
function attempt(url: string, authorization?: string): Promise<string> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, authorization ? { headers: { Authorization: authorization } } : {});
    ws.once('open', () => {
      ws.close();
      resolve('open');
    });
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => {
        body += c.toString();
      });
      res.on('end', () => resolve(`${res.statusCode}: ${body.trim()}`));
    });
    ws.once('error', (err) => resolve(`error: ${err.message}`));
  });
}

test('every bad token gets 401 with its reason before any upgrade; logged as auth failed', async (t) => {
  const { server, url, logs, config } = await startServer({
    auth: { secret: SECRET, revoked: new Set(['revoked-id']), failureLimit: 20, failureWindow: 60_000 },
  });
  t.after(() => server.shutdown());
  assert.equal(await attempt(url), '401: missing token');
  assert.equal(await attempt(url, 'Bearer nonsense'), '401: malformed token');
  assert.equal(await attempt(url, 'Basic dXNlcjpwYXNz'), '401: malformed token');
  const foreign = await issueToken(`${SECRET}x`, { name: 'a', expiresInMs: 60_000 });
  assert.equal(await attempt(url, `Bearer ${foreign}`), '401: bad signature');
  const expired = await issueToken(SECRET, { name: 'a', expiresInMs: 1000, now: Date.now() - 5000 });
  assert.equal(await attempt(url, `Bearer ${expired}`), '401: token expired');
  assert.equal(await attempt(url, `Bearer ${await token('a')}`), 'open');
  const line = await logs.waitFor('auth failed', { reason: 'token expired' });
  assert.match(String(line.remote_addr), /^127\.0\.0\.1:\d+$/);
  // Whose token expired, for the operator (its signature checked out); a forgery names nobody.
  const { jti } = JSON.parse(Buffer.from(expired.split('.')[1]!, 'base64url').toString()) as { jti: string };
  assert.equal(line.client, 'a');
  assert.equal(line.jti, jti);
  const forged = await logs.waitFor('auth failed', { reason: 'bad signature' });
  assert.equal(forged.client, undefined);
  assert.equal(forged.jti, undefined);
  assert.ok(!JSON.stringify(logs.lines).includes(expired), 'tokens never reach the log');
  const wrongPath = url.replace(config.path, '/elsewhere');
  assert.equal(await attempt(wrongPath, `Bearer ${await token('a')}`), '404: not found');
});

test('a correctly signed token that is not valid yet gets 401 saying so, not "malformed token"', async (t) => {
  const { server, url, logs } = await startServer();
  t.after(() => server.shutdown());
  // What a script holding the secret signs: HS256 with nbf an hour ahead (jose, as verifyToken uses).
  const now = Math.floor(Date.now() / 1000);
  const early = await new SignJWT({})
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject('early')
    .setJti('early-1')
    .setIssuedAt(now)
    .setNotBefore(now + 3600)
    .sign(new TextEncoder().encode(SECRET));
  assert.equal(await attempt(url, `Bearer ${early}`), '401: token not yet valid');
  const line = await logs.waitFor('auth failed', { reason: 'token not yet valid' });
  assert.equal(line.client, 'early');
  assert.equal(line.jti, 'early-1');
});

test('a source over its failure limit gets 429, logged once; a valid token from it still gets in', async (t) => {
  const { server, url, logs } = await startServer({
    auth: { secret: SECRET, revoked: new Set(), failureLimit: 3, failureWindow: 60_000 },
  });
  t.after(() => server.shutdown());
  for (let i = 0; i < 3; i++) assert.equal(await attempt(url, 'Bearer x'), '401: malformed token');
  assert.match(await attempt(url, 'Bearer x'), /^429: malformed token \(too many failed attempts/);
  assert.match(await attempt(url, 'Bearer x'), /^429/);
  assert.equal(await attempt(url, `Bearer ${await token('good')}`), 'open');
  assert.equal(logs.lines.filter((l) => l.msg === 'auth failed').length, 4);
});

test('the failure limiter counts per source, forgets after its window, and stays bounded', () => {
  const limiter = new FailureLimiter(2, 1000);
  assert.equal(limiter.fail('a', 0), true);
  assert.equal(limiter.fail('a', 10), true);
  assert.equal(limiter.fail('a', 20), false);
  assert.equal(limiter.justExceeded('a'), true);
  assert.equal(limiter.fail('b', 20), true);
  assert.equal(limiter.fail('a', 1500), true);
  assert.equal(limiter.retryAfterSeconds('a', 1500), 1, "a's new window began at 1500 and ends at 2500");
  assert.equal(limiter.retryAfterSeconds('b', 21), 1, 'rounded up, never 0');
  const minute = new FailureLimiter(1, 60_000);
  minute.fail('c', 0);
  minute.fail('c', 100);
  assert.equal(minute.retryAfterSeconds('c', 100), 60, '59.9 s left: 60');
  assert.equal(minute.retryAfterSeconds('c', 30_000), 30);
  for (let i = 0; i < 20_000; i++) limiter.fail(`s${i}`, 2000);
  assert.ok((limiter as unknown as { windows: Map<string, unknown> }).windows.size <= 10_000);
});

test('failures count per IPv4 address and per IPv6 /64, so rotating addresses in one /64 gains nothing', () => {
  const cases: Array<[string, string]> = [
    ['203.0.113.7', '203.0.113.7'],
    ['::ffff:203.0.113.7', '203.0.113.7'],
    ['2001:db8:1:2::1', '2001:db8:1:2::/64'],
    ['2001:0DB8:0001:0002:ffff:1:2:3', '2001:db8:1:2::/64'],
    ['2001:db8:1:2:3::', '2001:db8:1:2::/64'],
    // The /64 in RFC 5952 form, as the 429 text gives it: the longest run of zero groups as "::".
    ['2001:db8::1', '2001:db8::/64'],
    ['fe80::1%eth0', 'fe80::/64'],
    ['64:ff9b::192.0.2.1', '64:ff9b::/64'],
    ['::1', '::/64'],
    ['2001:0:0:1::5', '2001:0:0:1::/64'],
    ['0:0:0:1::5', '0:0:0:1::/64'],
  ];
  for (const [address, source] of cases) assert.equal(failureSource(address), source, address);
  const limiter = new FailureLimiter(2, 60_000);
  const results = ['2001:db8:1:2::a', '2001:db8:1:2::b', '2001:db8:1:2::c'].map((a) =>
    limiter.fail(failureSource(a), 0),
  );
  assert.deepEqual(results, [true, true, false], 'the third address of the /64 is over the shared limit');
  assert.equal(limiter.fail(failureSource('2001:db8:1:3::a'), 0), true, 'the next /64 has its own');
});
