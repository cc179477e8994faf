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

/** Said after "is not a PEM certificate" when the file holds a private key instead. */
export function privateKeyHint(pem: Buffer, whatToGive: string): string {
  return pem.includes('PRIVATE KEY-----') ? ` (it holds a private key: ${whatToGive})` : '';
}
