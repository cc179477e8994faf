// A certificate and key pair a config names (server.toml's [tls] and [[https.certs]], a client proxy's
// terminate_tls), read and checked as the config is loaded, so that `check`, the start and a reload refuse a
// pair TLS cannot use (naming the key). Left to
// createSecureContext, a bad pair is refused only where one is built, in OpenSSL's words that name no file
// ("key values mismatch", "no start line"), and a key of another type than the certificate's (an RSA key
// beside an EC certificate) is not refused at all: every handshake fails instead.
import { createPrivateKey, type KeyObject, type X509Certificate } from 'node:crypto';
import { createSecureContext } from 'node:tls';
import { ConfigError, readConfigFile, resolveConfigPath } from './config-file.js';
import { firstPemCertificate, heldInsteadHint } from './pem-certificate.js';

export interface CertFiles {
  cert_file: string;
  key_file: string;
}

export interface PemPair {
  cert: Buffer;
  key: Buffer;
}

const SWAPPED = 'are cert_file and key_file swapped?';

function certificateIn(file: string, key: string, path: string, pem: Buffer): X509Certificate {
  const certificate = firstPemCertificate(pem);
  if (certificate) return certificate;
  throw ConfigError.at(
    file,
    key,
    `${path} is not a PEM certificate${heldInsteadHint(pem, 'PRIVATE KEY', SWAPPED)}`,
  );
}

function privateKeyIn(file: string, key: string, path: string, pem: Buffer): KeyObject {
  if (pem.includes('ENCRYPTED')) {
    throw ConfigError.at(file, key, `${path} is encrypted (has a passphrase); TLS needs the key unencrypted`);
  }
  try {
    return createPrivateKey(pem);
  } catch {
    throw ConfigError.at(
      file,
      key,
      `${path} is not a PEM private key${heldInsteadHint(pem, 'CERTIFICATE', SWAPPED)}`,
    );
  }
}

/**
 * Reads a ca_file at `path` (named `key` in `file`) and checks that it holds a PEM certificate: given to TLS
 * unchecked, any other file failed every handshake as "self-signed certificate" or "unable to get local
 * issuer certificate", naming no file. `keyInstead` is the hint for a private key given instead.
 */
export function readCaFile(file: string, key: string, path: string, keyInstead: string): Buffer {
  const pem = readConfigFile(file, key, path);
  if (!firstPemCertificate(pem))
    throw ConfigError.at(
      file,
      key,
      `${path} is not a PEM certificate${heldInsteadHint(pem, 'PRIVATE KEY', keyInstead)}`,
    );
  return pem;
}

/** "error:0A00018F:SSL routines::ee key too small" -> "ee key too small". */
function openSslReason(err: Error): string {
  return err.message.replace(/^error:[0-9A-F]+:[^:]*:[^:]*:/, '');
}

/**
 * Reads `prefix`.cert_file and `prefix`.key_file ("tls", "https.certs[0]", "proxies[web].terminate_tls") and checks that TLS can use
 * them: a PEM certificate (its chain may follow), a PEM private key, and the key the certificate's.
 * Throws ConfigError naming the key at fault. A certificate out of its dates is only a warning: a renewal
 * may be on its way, and until then TLS is still served to peers told to accept it.
 */
export function loadCertFiles(
  file: string,
  prefix: string,
  files: CertFiles,
  warnings: string[],
  now = Date.now(),
): PemPair {
  const certKey = `${prefix}.cert_file`;
  const keyKey = `${prefix}.key_file`;
  const certPath = resolveConfigPath(file, files.cert_file);
  const keyPath = resolveConfigPath(file, files.key_file);
  const pair = { cert: readConfigFile(file, certKey, certPath), key: readConfigFile(file, keyKey, keyPath) };
  const certificate = certificateIn(file, certKey, certPath, pair.cert);
  const privateKey = privateKeyIn(file, keyKey, keyPath, pair.key);
  if (!certificate.checkPrivateKey(privateKey)) {
    throw ConfigError.at(
      file,
      keyKey,
      `the key in ${keyPath} does not match the certificate in ${certPath} (${certKey})`,
    );
  }
  try {
    createSecureContext(pair);
  } catch (err) {
    throw ConfigError.at(file, certKey, `TLS cannot use ${certPath}: ${openSslReason(err as Error)}`);
  }
  if (Date.parse(certificate.validTo) < now) {
    warnings.push(
      `${certKey}: the certificate in ${certPath} expired on ${certificate.validTo} (clients will refuse it)`,
    );
  } else if (Date.parse(certificate.validFrom) > now) {
    warnings.push(
      `${certKey}: the certificate in ${certPath} is not valid until ${certificate.validFrom} (clients will refuse it until then)`,
    );
  }
  return pair;
}
