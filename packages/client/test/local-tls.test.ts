import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { proxySpecOf } from '../src/client.js';
import { loadClientConfig } from '../src/config.js';
import { parseFingerprint } from '../src/local-tls.js';
import { describeProxyLocal } from '../src/proxy-config.js';
import { diffProxies } from '../src/reload.js';
import { configScratch, HEAD } from './config-scratch.js';

const { dir, write, problems, selfSigned } = await configScratch('porthole-client-local-tls-');
const HEX = 'AB'.repeat(32);
const COLONS = HEX.match(/../g)!.join(':');

function proxy(type: string, local: string, localTls: string, extra = ''): string {
  const where = type === 'tcp' || type === 'udp' ? 'remote_port = 8006\n' : 'hosts = ["pve.example.com"]\n';
  return `${HEAD}[[proxies]]\nname = "pve"\ntype = "${type}"\nlocal = "${local}"\n${where}local_tls = ${localTls}\n${extra}`;
}

test("fingerprints as openssl prints them, with or without colons and its label, any case, in Node's spelling", () => {
  for (const text of [
    `sha256:${COLONS}`,
    `sha256 Fingerprint=${COLONS}`,
    `SHA256 Fingerprint=${COLONS}`,
    COLONS.toLowerCase(),
    HEX,
    `sha256:${HEX.toLowerCase()}`,
  ])
    assert.equal(parseFingerprint(text), COLONS, text);
  for (const text of ['', 'sha1:AB:CD', `${HEX}AB`, HEX.slice(2), `md5:${COLONS}`, `${COLONS.slice(0, -1)}Z`])
    assert.equal(parseFingerprint(text), undefined, text);
});

test('local_tls = true or a table; ca_file is read next to the config file; status shows "(tls)"', () => {
  selfSigned('pve', 'pve.lan');
  const short = loadClientConfig(write(proxy('http', '192.168.1.10:8006', 'true'))).proxies[0]!;
  assert.deepEqual(short.localTls, { insecureSkipVerify: false });
  assert.equal(describeProxyLocal(short), '192.168.1.10:8006 (tls)');
  const off = loadClientConfig(write(proxy('tcp', '127.0.0.1:8006', 'false'))).proxies[0]!;
  assert.equal(off.localTls, undefined);
  assert.equal(describeProxyLocal(off), '127.0.0.1:8006');
  const table = loadClientConfig(
    write(proxy('tcp', '127.0.0.1:8006', '{ server_name = "pve.lan", ca_file = "pve.pem" }')),
  ).proxies[0]!;
  assert.deepEqual(table.localTls, {
    insecureSkipVerify: false,
    serverName: 'pve.lan',
    caFile: join(dir, 'pve.pem'),
    ca: readFileSync(join(dir, 'pve.pem')),
  });
  const pinned = loadClientConfig(write(proxy('http', '127.0.0.1:8006', `{ fingerprint = "${HEX}" }`)))
    .proxies[0]!;
  assert.equal(pinned.localTls?.fingerprint, COLONS);
  // A tcpmux proxy is a tcp proxy chosen by name: its local connection is made the same way.
  const named = loadClientConfig(write(proxy('tcpmux', '127.0.0.1:8006', 'true'))).proxies[0]!;
  assert.deepEqual(named.localTls, { insecureSkipVerify: false });
  // The server is not told: it is the client's business how it reaches the service.
  assert.equal('local_tls' in proxySpecOf(table), false);
});

test('insecure_skip_verify = true is taken, with a config warning naming the proxy and the key', () => {
  const config = loadClientConfig(write(proxy('http', '127.0.0.1:8006', '{ insecure_skip_verify = true }')));
  assert.equal(config.proxies[0]!.localTls?.insecureSkipVerify, true);
  const warning = config.warnings.find((line) => line.includes('insecure_skip_verify'));
  assert.match(warning ?? '', /^proxies\[0\] \("pve"\)\.local_tls\.insecure_skip_verify: .*not checked/);
});

test('local_tls is refused, naming the proxy and the key, where there is no one TLS service to reach', () => {
  const one = (text: string) => problems(text);
  assert.deepEqual(one(proxy('tls', '127.0.0.1:8006', 'true')), [
    `proxies[0] ("pve").local_tls: a tls proxy passes the visitor's TLS through to the service untouched, so the service already speaks TLS with the visitor: leave local_tls out, or set terminate_tls to end the visitor's TLS on this client and speak TLS again to the service (frp's https2https)`,
  ]);
  assert.deepEqual(one(proxy('udp', '127.0.0.1:8006', 'true')), [
    'proxies[0] ("pve").local_tls: applies to tcp, tcpmux, http and tls (with terminate_tls) proxies, not udp',
  ]);
  assert.deepEqual(one(proxy('http', 'unix:/run/pve.sock', 'true')), [
    'proxies[0] ("pve").local_tls: applies to a local service at "host:port", not a Unix socket',
  ]);
  assert.deepEqual(one(proxy('http', 'dir:/srv', 'true')), [
    'proxies[0] ("pve").local_tls: a directory is served by the client itself: there is no local service to speak TLS to',
  ]);
  assert.deepEqual(one(proxy('tcp', '127.0.0.1:8006', '"yes"')), [
    'proxies[0] ("pve").local_tls: expected true or a table like { server_name = "pve.lan", ca_file = "pve.pem" }',
  ]);
  assert.deepEqual(one(proxy('tcp', '127.0.0.1:8006', '{ fingerprint = "AB:CD" }')), [
    'proxies[0] ("pve").local_tls.fingerprint: must be a SHA-256 fingerprint: 32 bytes in hex, with or without colons, as `openssl x509 -noout -fingerprint -sha256` prints it',
  ]);
  assert.deepEqual(
    one(proxy('tcp', '127.0.0.1:8006', `{ fingerprint = "${HEX}", insecure_skip_verify = true }`)),
    [
      'proxies[0] ("pve").local_tls.insecure_skip_verify: set fingerprint or insecure_skip_verify = true, not both',
    ],
  );
  assert.deepEqual(one(proxy('tcp', '127.0.0.1:8006', `{ fingerprint = "${HEX}", ca_file = "pve.pem" }`)), [
    'proxies[0] ("pve").local_tls.ca_file: a fingerprint replaces the check against CAs: set ca_file or fingerprint, not both',
  ]);
  assert.deepEqual(one(proxy('tcp', '127.0.0.1:8006', '{ servername = "pve.lan" }')), [
    'proxies[0] ("pve").local_tls.servername: unknown key (did you mean "server_name"?)',
  ]);
  // Written beside local_tls, not in it: the proxy's line, not the client's own ca_file.
  assert.deepEqual(one(proxy('tcp', '127.0.0.1:8006', 'true', 'ca_file = "pve.pem"\n')), [
    'proxies[0] ("pve").ca_file: unknown key (did you mean local_tls = { ca_file = ... }?)',
  ]);
  writeFileSync(join(dir, 'key.pem'), '-----BEGIN PRIVATE KEY-----\nMC4CAQA=\n-----END PRIVATE KEY-----\n');
  const [notPem] = one(proxy('tcp', '127.0.0.1:8006', '{ ca_file = "key.pem" }'));
  assert.match(
    notPem ?? '',
    /^proxies\[0\] \("pve"\)\.local_tls\.ca_file: .*key\.pem is not a PEM certificate \(it holds a private key/,
  );
  const [missing] = one(proxy('tcp', '127.0.0.1:8006', '{ ca_file = "none.pem" }'));
  assert.match(missing ?? '', /^proxies\[0\] \("pve"\)\.local_tls\.ca_file: cannot read .*none\.pem: ENOENT/);
});

test('a reload that changes local_tls applies to new connections as a changed local does', () => {
  const load = (localTls: string, type = 'tcp') =>
    loadClientConfig(write(proxy(type, '127.0.0.1:8006', localTls))).proxies[0]!;
  const running = (p: ReturnType<typeof load>) => new Map([[p.name, p]]);
  const tcp = diffProxies(running(load('true')), [load('{ insecure_skip_verify = true }')], proxySpecOf);
  assert.deepEqual(tcp.localChanged, ['pve']);
  assert.deepEqual(tcp.changed, []);
  // An http proxy is registered anew: the server's kept-alive streams lead to the old settings.
  const http = diffProxies(running(load('true', 'http')), [load('false', 'http')], proxySpecOf);
  assert.deepEqual(http.changed, ['pve']);
  assert.deepEqual(diffProxies(running(load('true')), [load('true')], proxySpecOf).localChanged, []);
});
