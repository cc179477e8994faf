import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import { proxySpecOf } from '../src/client.js';
import { loadClientConfig } from '../src/config.js';
import { describeProxyLocal } from '../src/proxy-config.js';
import { diffProxies } from '../src/reload.js';
import { configScratch, HEAD } from './config-scratch.js';

const { dir, write, problems, selfSigned } = await configScratch('porthole-client-terminate-tls-');

selfSigned('app', 'app.example.com');
selfSigned('renewed', 'app.example.com');

function proxy(type: string, local: string, terminate: string, extra = ''): string {
  const where = type === 'tcp' || type === 'udp' ? 'remote_port = 8443\n' : 'hosts = ["app.example.com"]\n';
  return `${HEAD}[[proxies]]\nname = "app"\ntype = "${type}"\nlocal = "${local}"\n${where}terminate_tls = ${terminate}\n${extra}`;
}

const PAIR = '{ cert_file = "app.pem", key_file = "app.key" }';

test('terminate_tls on tls and tcp proxies: the pair read next to the config file, the timeout, status and the server not told', () => {
  const tls = loadClientConfig(write(proxy('tls', '127.0.0.1:8080', PAIR))).proxies[0]!;
  assert.equal(tls.terminateTls?.certFile, join(dir, 'app.pem'));
  assert.equal(tls.terminateTls?.keyFile, join(dir, 'app.key'));
  assert.match(tls.terminateTls?.pair.key.toString() ?? '', /PRIVATE KEY/);
  assert.equal(tls.terminateTls?.handshakeTimeoutMs, 10_000);
  assert.equal(describeProxyLocal(tls), 'tls ended here -> 127.0.0.1:8080');
  assert.equal('terminate_tls' in proxySpecOf(tls), false);

  const again = loadClientConfig(
    write(
      proxy(
        'tcp',
        'unix:/run/app.sock',
        '{ cert_file = "app.pem", key_file = "app.key", handshake_timeout = "3s" }',
      ),
    ),
  ).proxies[0]!;
  assert.equal(again.terminateTls?.handshakeTimeoutMs, 3_000);
  assert.equal(describeProxyLocal(again), 'tls ended here -> unix:/run/app.sock');

  // https2https: TLS again towards the service, which a tls proxy passing TLS through refuses.
  const twice = loadClientConfig(
    write(proxy('tls', '127.0.0.1:8443', PAIR, 'local_tls = { server_name = "pve.lan" }')),
  ).proxies[0]!;
  assert.equal(twice.localTls?.serverName, 'pve.lan');
  assert.equal(describeProxyLocal(twice), 'tls ended here -> 127.0.0.1:8443 (tls)');
});

test('a renewed certificate is a changed local for a reload: the next visitor gets it', () => {
  const before = loadClientConfig(write(proxy('tls', '127.0.0.1:8080', PAIR))).proxies[0]!;
  const same = loadClientConfig(write(proxy('tls', '127.0.0.1:8080', PAIR))).proxies[0]!;
  const renewed = loadClientConfig(
    write(proxy('tls', '127.0.0.1:8080', '{ cert_file = "renewed.pem", key_file = "renewed.key" }')),
  ).proxies[0]!;
  const running = new Map([['app', before]]);
  assert.deepEqual(diffProxies(running, [same], proxySpecOf).localChanged, []);
  assert.deepEqual(diffProxies(running, [renewed], proxySpecOf).localChanged, ['app']);
});

test('terminate_tls is refused, naming the proxy and the key, where it cannot apply or its files are wrong', () => {
  assert.deepEqual(problems(proxy('http', '127.0.0.1:8080', PAIR)), [
    'proxies[0] ("app").terminate_tls: applies to tcp and tls proxies, not http',
  ]);
  assert.deepEqual(problems(proxy('udp', '127.0.0.1:8080', PAIR)), [
    'proxies[0] ("app").terminate_tls: applies to tcp and tls proxies, not udp',
  ]);
  assert.deepEqual(
    problems(proxy('tcp', 'socks5', PAIR, 'socks_no_auth = true\nsocks_allow = ["10.0.0.0/8"]\n')),
    [
      'proxies[0] ("app").terminate_tls: a socks5 proxy is not supported with terminate_tls: use a local service at "host:port"',
    ],
  );
  assert.deepEqual(problems(proxy('tcp', 'dir:/srv', PAIR)), [
    'proxies[0] ("app").terminate_tls: a directory proxy is not supported with terminate_tls: use a local service at "host:port"',
  ]);
  assert.deepEqual(problems(proxy('tls', '127.0.0.1:8080', '{ cert_file = "app.pem" }')), [
    'proxies[0] ("app").terminate_tls.key_file: required',
  ]);
  assert.deepEqual(
    problems(
      proxy(
        'tls',
        '127.0.0.1:8080',
        '{ cert_file = "app.pem", key_file = "app.key", handshake_timeout = "0s" }',
      ),
    ),
    [
      'proxies[0] ("app").terminate_tls.handshake_timeout: must be longer than 0 ("0s" would drop every visitor)',
    ],
  );
  assert.deepEqual(
    problems(proxy('tls', '127.0.0.1:8080', '{ cert_file = "app.pem", key_file = "renewed.key" }')),
    [
      `proxies[0] ("app").terminate_tls.key_file: the key in ${join(dir, 'renewed.key')} does not match the certificate in ${join(dir, 'app.pem')} (proxies[0] ("app").terminate_tls.cert_file)`,
    ],
  );
  assert.deepEqual(
    problems(proxy('tls', '127.0.0.1:8080', '{ cert_file = "app.key", key_file = "app.pem" }')),
    [
      `proxies[0] ("app").terminate_tls.cert_file: ${join(dir, 'app.key')} is not a PEM certificate (it holds a private key: are cert_file and key_file swapped?)`,
    ],
  );
  const missing = problems(
    proxy('tls', '127.0.0.1:8080', '{ cert_file = "gone.pem", key_file = "app.key" }'),
  );
  assert.equal(missing.length, 1);
  assert.match(missing[0]!, /^proxies\[0\] \("app"\)\.terminate_tls\.cert_file: .*gone\.pem/);
});
