// A throwaway self-signed certificate for 127.0.0.1, made by openssl in the harness's temp dir, so the
// wss rows run real TLS with real verification (the client trusts exactly this certificate via ca_file).
import { type Harness, runOk } from '@porthole/e2e/lib/processes';

export interface SelfSignedCert {
  certFile: string;
  keyFile: string;
}

export async function makeLoopbackCert(h: Harness): Promise<SelfSignedCert> {
  const certFile = h.path('bench-cert.pem');
  const keyFile = h.path('bench-key.pem');
  await runOk('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:prime256v1',
    '-nodes',
    '-days',
    '2',
    '-subj',
    '/CN=127.0.0.1',
    '-addext',
    'subjectAltName=IP:127.0.0.1',
    '-keyout',
    keyFile,
    '-out',
    certFile,
  ]);
  return { certFile, keyFile };
}
