import assert from 'node:assert/strict';
import { test } from 'node:test';
import { generateKeyPair, SignJWT } from 'jose';
import { issueToken, TokenError, verifyToken } from '../src/token.js';

const SECRET = 'a-test-secret-that-is-long-enough-0123456789';

test('an issued token verifies and carries its grants', async () => {
  const jwt = await issueToken(SECRET, {
    name: 'homelab',
    ports: '8000-8099,2222',
    hosts: ['app.example.com'],
    expiresInMs: 90 * 86_400_000,
  });
  const claims = await verifyToken(SECRET, jwt);
  assert.equal(claims.sub, 'homelab');
  assert.equal(claims.ports, '8000-8099,2222');
  assert.deepEqual(claims.hosts, ['app.example.com']);
  assert.equal(claims.visit, undefined);
  assert.match(claims.jti, /^[0-9a-f-]{36}$/);
  assert.ok(claims.exp! - claims.iat === 90 * 86_400);
});

test('every refusal has its short reason', async () => {
  const reason = async (jwt: string | undefined, opts = {}) => {
    try {
      await verifyToken(SECRET, jwt, opts);
    } catch (err) {
      assert.ok(err instanceof TokenError);
      return err.message;
    }
    return 'accepted';
  };
  const good = await issueToken(SECRET, { name: 'a', expiresInMs: 60_000 });
  assert.equal(await reason(undefined), 'missing token');
  assert.equal(await reason(''), 'missing token');
  assert.equal(await reason('not-a-jwt'), 'malformed token');
  assert.equal(await reason('a.b.c'), 'malformed token');
  const other = await issueToken(`${SECRET}-other`, { name: 'a', expiresInMs: 60_000 });
  assert.equal(await reason(other), 'bad signature');
  const old = await issueToken(SECRET, { name: 'a', expiresInMs: 1000, now: Date.now() - 10_000 });
  assert.equal(await reason(old), 'token expired');
  const { jti } = await verifyToken(SECRET, good);
  assert.equal(await reason(good, { revoked: new Set([jti]) }), 'token revoked');
  assert.equal(await reason(good), 'accepted');
  const never = await issueToken(SECRET, { name: 'a', expiresInMs: null });
  assert.equal((await verifyToken(SECRET, never)).exp, undefined);
  // alg "none" and tampered payloads never pass.
  const [, payload] = good.split('.');
  const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${payload}.`;
  assert.equal(await reason(none), 'malformed token');
  const tampered = good.replace(
    /\.([^.]+)\./,
    `.${Buffer.from('{"sub":"root","jti":"x","iat":1}').toString('base64url')}.`,
  );
  assert.equal(await reason(tampered), 'bad signature');
});

test('a token signed with the secret but not valid yet, or signed with another algorithm, says so rather than "malformed"', async () => {
  const reason = async (jwt: string) => {
    try {
      await verifyToken(SECRET, jwt);
    } catch (err) {
      assert.ok(err instanceof TokenError);
      return err.message;
    }
    return 'accepted';
  };
  const now = Math.floor(Date.now() / 1000);
  const claims = () => new SignJWT({}).setSubject('a').setJti('j').setIssuedAt(now);
  const key = new TextEncoder().encode(SECRET);
  const early = await claims()
    .setProtectedHeader({ alg: 'HS256' })
    .setNotBefore(now + 3600)
    .sign(key);
  assert.equal(await reason(early), 'token not yet valid');
  const started = await claims()
    .setProtectedHeader({ alg: 'HS256' })
    .setNotBefore(now - 60)
    .sign(key);
  assert.equal(await reason(started), 'accepted');
  const hs512 = await claims().setProtectedHeader({ alg: 'HS512' }).sign(key);
  assert.equal(await reason(hs512), 'token algorithm not accepted (HS256 only)');
  const { privateKey } = await generateKeyPair('ES256');
  const es256 = await claims().setProtectedHeader({ alg: 'ES256' }).sign(privateKey);
  assert.equal(await reason(es256), 'token algorithm not accepted (HS256 only)');
});

test('issuing checks the name, the ports and the secret', async () => {
  await assert.rejects(issueToken(SECRET, { name: 'bad name', expiresInMs: null }), /invalid client name/);
  await assert.rejects(issueToken(SECRET, { name: 'a', ports: '9-1', expiresInMs: null }), /reversed/);
  await assert.rejects(issueToken('short', { name: 'a', expiresInMs: null }), /at least 32/);
});

test('a bandwidth limit is issued as written, checked as the client key is, and a forged one is malformed', async () => {
  const capped = await issueToken(SECRET, { name: 'a', bandwidth_limit: ' 10MB ', expiresInMs: null });
  assert.equal((await verifyToken(SECRET, capped)).bandwidth_limit, '10MB');
  const uncapped = await issueToken(SECRET, { name: 'a', expiresInMs: null });
  assert.equal((await verifyToken(SECRET, uncapped)).bandwidth_limit, undefined);
  await assert.rejects(
    issueToken(SECRET, { name: 'a', bandwidth_limit: '10mb', expiresInMs: null }),
    /--bandwidth-limit "10mb" is not a rate like "1MB"/,
  );
  await assert.rejects(
    issueToken(SECRET, { name: 'a', bandwidth_limit: '0.5KB', expiresInMs: null }),
    /at least 1KB/,
  );
  // Signed with the secret by other means (a script): a limit the server cannot read is not a token it takes.
  const now = Math.floor(Date.now() / 1000);
  const key = new TextEncoder().encode(SECRET);
  const signed = (limit: unknown) =>
    new SignJWT({ bandwidth_limit: limit })
      .setProtectedHeader({ alg: 'HS256' })
      .setSubject('a')
      .setJti('j')
      .setIssuedAt(now)
      .sign(key);
  for (const limit of ['lots', 5, '1000GB'])
    await assert.rejects(verifyToken(SECRET, await signed(limit)), /malformed token/, String(limit));
  assert.equal((await verifyToken(SECRET, await signed('500KB'))).bandwidth_limit, '500KB');
});
