import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

export interface SelfSignedCert {
  cert: Buffer;
  key: Buffer;
  certFile: string;
  keyFile: string;
}

/**
 * A one-day self-signed P-256 certificate made by openssl, as an operator would make one.
 * `altNames` are subjectAltName entries such as "DNS:app.test" or "IP:127.0.0.1".
 */
export function selfSignedCert(options: {
  certFile: string;
  keyFile: string;
  commonName: string;
  altNames: string[];
}): SelfSignedCert {
  const { certFile, keyFile, commonName, altNames } = options;
  execFileSync(
    'openssl',
    ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1']
      .concat(['-keyout', keyFile, '-out', certFile])
      .concat(['-subj', `/CN=${commonName}`, '-addext', `subjectAltName=${altNames.join(',')}`]),
    { stdio: 'ignore' },
  );
  return { cert: readFileSync(certFile), key: readFileSync(keyFile), certFile, keyFile };
}
