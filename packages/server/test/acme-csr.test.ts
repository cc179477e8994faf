// The certificate request the ACME client finalizes orders with, read back by openssl: the signature
// verifies, and the subject, key and subjectAltName are what was asked for.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { certificateRequest, newCertificateKey } from '../src/acme-csr.js';
import { derObjectIdentifier, derOctetString, derSequence } from '../src/der-encoder.js';

/**
 * `openssl req -inform DER -verify -noout -text` on `der`: all it printed (its verdict goes to stderr, and
 * its exit status is 0 either way).
 */
function opensslReads(der: Buffer): string {
  const dir = mkdtempSync(join(tmpdir(), 'acme-csr-'));
  try {
    const file = join(dir, 'request.der');
    writeFileSync(file, der);
    const r = spawnSync('openssl', ['req', '-inform', 'DER', '-in', file, '-verify', '-noout', '-text'], {
      encoding: 'utf8',
      timeout: 10_000,
    });
    return `${r.stdout}${r.stderr}`;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('openssl verifies the request and reads its CN, P-256 key, ECDSA-SHA256 signature and dNSName', () => {
  const text = opensslReads(certificateRequest('app.example.com', newCertificateKey()));
  assert.match(text, /self-signature verify OK/);
  assert.match(text, /Subject: CN\s?=\s?app\.example\.com/);
  assert.match(text, /ASN1 OID: prime256v1/);
  assert.match(text, /Signature Algorithm: ecdsa-with-SHA256/);
  assert.match(text, /X509v3 Subject Alternative Name:\s*\n\s*DNS:app\.example\.com\s*\n/);
});

test('a name long enough for DER long-form lengths (over 127 bytes) is still a valid request', () => {
  const domain = `${'a'.repeat(63)}.${'b'.repeat(63)}.${'c'.repeat(60)}.example.com`;
  const text = opensslReads(certificateRequest(domain, newCertificateKey()));
  assert.match(text, /self-signature verify OK/);
  assert.match(text, new RegExp(`DNS:${domain.replaceAll('.', '\\.')}`));
});

test('a request whose signature is altered fails openssl verification (the check can fail)', () => {
  const key = newCertificateKey();
  const der = certificateRequest('app.example.com', key);
  // The signature is the last BIT STRING: flip its final byte.
  const broken = Buffer.from(der);
  broken[broken.length - 1] = broken[broken.length - 1]! ^ 0xff;
  const text = opensslReads(broken);
  assert.match(text, /verify failure/);
  assert.doesNotMatch(text, /verify OK/);
});

test('DER: object identifiers in base 128, and long-form lengths', () => {
  assert.equal(derObjectIdentifier('1.2.840.113549.1.9.14').toString('hex'), '06092a864886f70d01090e');
  assert.equal(derObjectIdentifier('2.5.29.17').toString('hex'), '0603551d11');
  const long = derOctetString(Buffer.alloc(300));
  assert.equal(long.subarray(0, 4).toString('hex'), '0482012c');
  assert.equal(long.length, 304);
  assert.equal(derSequence(Buffer.alloc(127)).subarray(0, 2).toString('hex'), '307f');
  assert.equal(derSequence(Buffer.alloc(128)).subarray(0, 3).toString('hex'), '308180');
});
