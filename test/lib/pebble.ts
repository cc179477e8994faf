// pebble, Let's Encrypt's ACME test server (Debian's pebble, in .ci/run), as the CA of the ACME tests: it
// validates http-01 on `httpPort` of the addresses dnsmasq gives for the names (every name under "test"
// is 127.0.0.1), rejects 5% of nonces on purpose, and signs with a root made at its start.

import { readFile } from 'node:fs/promises';
import { request } from 'node:https';
import { startDnsmasq } from './dnsmasq.js';
import { freePorts, type Harness } from './processes.js';
import { makeSelfSigned } from './routing.js';

export interface Pebble {
  /** The ACME directory URL. */
  directory: string;
  /** The certificate of pebble's own HTTPS listeners: [https.acme] ca_file. */
  caFile: string;
  /** The root pebble's certificates chain to (fetched from its management port), for curl --cacert. */
  rootFile: string;
}

export interface PebbleOptions {
  /** The port it connects to for http-01: the porthole server's [http] port. */
  httpPort: number;
  /** certificateValidityPeriod in seconds (pebble's default: about 5 years). */
  validitySeconds?: number;
}

function httpsGet(url: string, ca: Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = request(url, { ca, timeout: 10_000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () =>
        res.statusCode === 200 ? resolve(body) : reject(new Error(`${url}: ${res.statusCode} ${body}`)),
      );
    });
    req.on('timeout', () => req.destroy(new Error(`${url}: timed out`)));
    req.on('error', reject);
    req.end();
  });
}

export async function startPebble(h: Harness, opts: PebbleOptions): Promise<Pebble> {
  const dnsPort = await startDnsmasq(h, 'test', '127.0.0.1');
  const own = await makeSelfSigned(h, 'pebble', ['subjectAltName=DNS:localhost,IP:127.0.0.1']);
  const [listenPort, managementPort, tlsPort] = await freePorts(3);
  const config = await h.file(
    `pebble-${listenPort}.json`,
    JSON.stringify({
      pebble: {
        listenAddress: `127.0.0.1:${listenPort}`,
        managementListenAddress: `127.0.0.1:${managementPort}`,
        certificate: own.cert,
        privateKey: own.key,
        httpPort: opts.httpPort,
        tlsPort,
        ocspResponderURL: '',
        externalAccountBindingRequired: false,
        ...(opts.validitySeconds === undefined ? {} : { certificateValidityPeriod: opts.validitySeconds }),
      },
    }),
  );
  const proc = h.spawn('pebble', 'pebble', ['-config', config, '-dnsserver', `127.0.0.1:${dnsPort}`], {
    env: { PEBBLE_VA_NOSLEEP: '1' },
  });
  await proc.waitForOutput(/ACME directory available at/, 20_000);
  const ca = await readFile(own.cert);
  const root = await httpsGet(`https://127.0.0.1:${managementPort}/roots/0`, ca);
  return {
    directory: `https://127.0.0.1:${listenPort}/dir`,
    caFile: own.cert,
    rootFile: await h.file(`pebble-root-${listenPort}.pem`, root),
  };
}
