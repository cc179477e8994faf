// A PEM certificate in a file the config names (the server's cert_file, the client's ca_file), read as the
// config is loaded: handed to TLS unchecked, a wrong file is refused only at the first handshake, in words
// that name no file or blame the peer.
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
