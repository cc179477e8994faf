// A PEM certificate in a file the config names (the server's cert_file, the client's ca_file and
// terminate_tls.cert_file), read as the config is loaded: handed to TLS unchecked, a wrong file is refused
// only at the first handshake, in words that name no file or blame the peer.
import { X509Certificate } from 'node:crypto';

/** The first certificate in `pem` (a chain or CA bundle may follow), or undefined if it holds none. */
export function firstPemCertificate(pem: Buffer): X509Certificate | undefined {
  // X509Certificate takes DER too, which TLS (PEM only) would refuse later.
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) return undefined;
  try {
    return new X509Certificate(pem);
  } catch {
    return undefined;
  }
}

/**
 * Said after "is not a PEM certificate" (or "private key") when the file holds the other kind instead, most
 * likely the file meant for another key: " (it holds a private key: `advice`)", or nothing.
 */
export function heldInsteadHint(pem: Buffer, holds: 'PRIVATE KEY' | 'CERTIFICATE', advice: string): string {
  if (!pem.includes(`${holds}-----`)) return '';
  return ` (it holds a ${holds === 'CERTIFICATE' ? 'certificate' : 'private key'}: ${advice})`;
}

/** The DNS names a certificate covers: its subjectAltName DNS entries, else its subject CN. */
export function certificateNames(pem: Buffer): string[] {
  const x509 = new X509Certificate(pem);
  const names: string[] = [];
  for (const part of (x509.subjectAltName ?? '').split(',')) {
    const match = /^\s*DNS:(.+)$/.exec(part);
    if (match) names.push(match[1]!.trim().toLowerCase());
  }
  if (names.length === 0) {
    const cn = /(?:^|\n)CN=([^\n]+)/.exec(x509.subject);
    if (cn) names.push(cn[1]!.trim().toLowerCase());
  }
  return names;
}

/**
 * Whether a certificate's `names` (certificateNames) cover `host`, a name or a "*.suffix" pattern: a name
 * itself or by a wildcard one label up (TLS wildcards cover exactly one label), a pattern only by the same
 * wildcard.
 */
export function namesCover(names: readonly string[], host: string): boolean {
  const name = host.toLowerCase();
  if (names.includes(name)) return true;
  const dot = name.indexOf('.');
  return !name.startsWith('*.') && dot > 0 && names.includes(`*${name.slice(dot)}`);
}
