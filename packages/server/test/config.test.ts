import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync, X509Certificate } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import { ConfigError, issueToken, loadCertFiles } from '@porthole/protocol';
import { loadServerConfig } from '../src/config.js';
import { selfSignedCert } from './self-signed-cert.js';

const dir = scratchDir('porthole-server-config-');
const secret = 'f'.repeat(64);
writeFileSync(join(dir, 'secret'), `${secret}\n`);

function write(name: string, text: string): string {
  const file = join(dir, name);
  writeFileSync(file, text);
  return file;
}

function problems(text: string): string[] {
  const file = write('bad.toml', text);
  try {
    loadServerConfig(file);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems.map((line) => line.replace(`${file}: `, ''));
  }
  assert.fail('expected a ConfigError');
}

test('the minimal config gets documented defaults; secret_file is read relative to the config', () => {
  const config = loadServerConfig(write('ok.toml', '[auth]\nsecret_file = "secret"\n'));
  assert.deepEqual(config.listen, { host: '0.0.0.0', port: 7000 });
  assert.equal(config.path, '/_porthole');
  assert.equal(config.proxyBind, '0.0.0.0');
  assert.equal(config.allowPorts.toString(), '1-65535');
  assert.equal(config.heartbeatInterval, 10_000);
  assert.equal(config.heartbeatTimeout, 30_000);
  assert.equal(config.shutdownTimeout, 10_000);
  assert.equal(config.proxyMaxConnections, 16_384);
  assert.equal(config.auth.secret, secret);
  assert.equal(config.tls, undefined);
});

test('every mistake is reported as file: key: reason', () => {
  assert.deepEqual(problems('listen = "nope"\n[auth]\nsecret_file = "secret"\n'), [
    'listen: invalid address "nope" (expected host:port, e.g. 127.0.0.1:22 or [::1]:22)',
  ]);
  assert.deepEqual(problems('allow_ports = ["80-70"]\n[auth]\nsecret_file = "secret"\n'), [
    'allow_ports: port range "80-70" is reversed',
  ]);
  assert.deepEqual(problems('lisen = "1.2.3.4:5"\n[auth]\nsecret_file = "secret"\n'), [
    'lisen: unknown key (did you mean "listen"?)',
  ]);
  assert.deepEqual(problems('heartbeat_interval = "1m"\n[auth]\nsecret_file = "secret"\n'), [
    'heartbeat_timeout: must be longer than heartbeat_interval',
  ]);
  assert.deepEqual(problems('shutdown_timeout = 5\n[auth]\nsecret_file = "secret"\n'), [
    'shutdown_timeout: expected a duration string like "10s"',
  ]);
  assert.deepEqual(problems('listen = "0.0.0.0:7000"\n'), ['auth: required']);
  assert.deepEqual(problems('[auth]\nsecret = "x"\nsecret_file = "secret"\n'), [
    'auth: set exactly one of secret or secret_file',
  ]);
  assert.deepEqual(problems('[auth]\nsecret = "short"\n'), [
    'auth.secret: the secret must be at least 32 characters (make one with: openssl rand -hex 32)',
  ]);
  assert.match(
    problems('[auth]\nsecret_file = "missing"\n')[0]!,
    /^auth\.secret_file: cannot read .*missing: ENOENT$/,
  );
  assert.match(
    problems('[auth]\nsecret_file = "secret"\n[tls]\ncert_file = "c.pem"\nkey_file = "k.pem"\n')[0]!,
    /^tls\.cert_file: cannot read .*c\.pem: ENOENT$/,
  );
  assert.deepEqual(problems('[auth]\nsecret_file = "secret"\n[tls]\ncert_file = "c.pem"\n'), [
    'tls.key_file: required',
  ]);
  assert.deepEqual(problems('proxy_max_connections = 0\n[auth]\nsecret_file = "secret"\n'), [
    'proxy_max_connections: must be at least 1',
  ]);
  assert.deepEqual(problems('proxy_max_connections = "many"\n[auth]\nsecret_file = "secret"\n'), [
    'proxy_max_connections: expected a number of connections',
  ]);
  assert.deepEqual(problems('path = "no-slash"\n[auth]\nsecret_file = "secret"\n'), [
    'path: must start with "/" and contain no spaces, "?" or "#"',
  ]);
});

test('a whole token in revoked_tokens is refused with its id to write instead, and the token is not repeated', async () => {
  const token = await issueToken(secret, { name: 'lab', expiresInMs: null });
  const { jti } = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { jti: string };
  const refused = problems(`[auth]\nsecret_file = "secret"\nrevoked_tokens = ["${jti}", "${token}"]\n`);
  assert.deepEqual(refused, [
    `auth.revoked_tokens[1]: this is a whole token, not a token id: write its id (jti) "${jti}" here instead, and keep the token itself out of this file`,
  ]);
  const config = loadServerConfig(
    write('ids.toml', `[auth]\nsecret_file = "secret"\nrevoked_tokens = ["${jti}", "other-id"]\n`),
  );
  assert.deepEqual([...config.auth.revoked], [jti, 'other-id']);
});

test('"0s" where it would switch off what the key is for, unasked, is refused with what it would do', () => {
  const auth = '[auth]\nsecret_file = "secret"\n';
  // Before, each was taken: the failure limit never applied, slowloris was never cut, an idle visitor
  // connection was kept for idle_timeout, and a stalled visitor kept its tunnel stream.
  assert.deepEqual(problems(`${auth}failure_window = "0s"\n`), [
    'auth.failure_window: must be longer than 0 ("0s" would start a new window at every failure, so failure_limit would never be reached)',
  ]);
  assert.deepEqual(problems(`${auth}[http]\nheaders_timeout = "0s"\n`), [
    'http.headers_timeout: must be longer than 0 ("0s" would let a visitor trickle its headers for ever (slowloris))',
  ]);
  assert.deepEqual(problems(`${auth}[http]\nkeep_alive_timeout = "0ms"\n`), [
    'http.keep_alive_timeout: must be longer than 0 ("0s" would not turn keep-alive off but keep idle connections open until idle_timeout)',
  ]);
  assert.deepEqual(problems(`${auth}[http]\nidle_timeout = "0s"\n`), [
    'http.idle_timeout: must be longer than 0 ("0s" would let a visitor that stops reading hold its tunnel stream for good)',
  ]);
  // The keys where 0 is documented as "no limit" keep it.
  const config = loadServerConfig(
    write('off.toml', `${auth}[http]\nrequest_timeout = "0s"\nresponse_timeout = 0\n`),
  );
  assert.equal(config.routing?.httpLimits.requestTimeout, 0);
  assert.equal(config.routing?.httpLimits.responseTimeout, 0);
});

test('allow_bind: IP addresses a proxy may ask to be bound on, each in one spelling; none by default', () => {
  const load = (line: string) =>
    loadServerConfig(write('allow-bind.toml', `${line}\n[auth]\nsecret_file = "secret"\n`));
  assert.deepEqual(load('').allowBind, []);
  assert.deepEqual(load('allow_bind = ["127.0.0.1", "0:0:0:0:0:0:0:1", "::1", "0.0.0.0"]').allowBind, [
    '127.0.0.1',
    '::1',
    '0.0.0.0',
  ]);
  assert.deepEqual(problems('allow_bind = ["localhost", "127.0.0.1:80"]\n[auth]\nsecret_file = "secret"\n'), [
    'allow_bind[0]: bind address "localhost": write the loopback address itself: "127.0.0.1" or "::1"',
    'allow_bind[1]: bind address "127.0.0.1:80": must be an IP address such as "127.0.0.1", "::1" or "0.0.0.0"',
  ]);
});

test('proxy_bind is an IPv4 or IPv6 address or a host name, never with a port', () => {
  const proxyBind = (value: string) =>
    loadServerConfig(write('bind.toml', `proxy_bind = "${value}"\n[auth]\nsecret_file = "secret"\n`))
      .proxyBind;
  // "127.0.0.1:80" passed for an IPv6 address; every proxy was then refused: getaddrinfo ENOTFOUND 127.0.0.1:80.
  const bad = (value: string) => problems(`proxy_bind = "${value}"\n[auth]\nsecret_file = "secret"\n`);
  assert.deepEqual(bad('127.0.0.1:80'), [
    'proxy_bind: must be a host without a port, e.g. "127.0.0.1" (each proxy binds its own remote_port)',
  ]);
  assert.deepEqual(bad('[::1]:80'), [
    'proxy_bind: must be a host without a port, e.g. "::1" (each proxy binds its own remote_port)',
  ]);
  assert.deepEqual(bad('localhost:8080'), [
    'proxy_bind: must be a host without a port, e.g. "localhost" (each proxy binds its own remote_port)',
  ]);
  assert.deepEqual(bad('[::1]'), ['proxy_bind: write an IPv6 address without brackets: "::1"']);
  for (const value of ['1:2:3', ':::', 'a b', '', '1.2.3.4:']) {
    assert.deepEqual(bad(value), ['proxy_bind: must be an IP address or a host name'], value);
  }
  for (const good of [
    '0.0.0.0',
    '127.0.0.1',
    '::',
    '::1',
    '::ffff:127.0.0.1',
    'fe80::1%eth0',
    'localhost',
    'vps.example.com',
  ]) {
    assert.equal(proxyBind(good), good);
  }
});

/** A one-day self-signed certificate for `name`, as name.pem and name.key in the test directory. */
function certFiles(name: string) {
  return selfSignedCert({
    certFile: join(dir, `${name}.pem`),
    keyFile: join(dir, `${name}.key`),
    commonName: name,
    altNames: [`DNS:${name}.test`],
  });
}

function withTls(certFile: string, keyFile: string): string {
  return `[auth]\nsecret_file = "secret"\n[tls]\ncert_file = "${certFile}"\nkey_file = "${keyFile}"\n`;
}

test('a [tls] pair TLS cannot use is refused at load, naming the key at fault and why', () => {
  const a = certFiles('a');
  const b = certFiles('b');
  // Before, only an [https] table had these checked (by OpenSSL, in its words); without one, check said ok
  // and the start failed with exit 1: "key values mismatch", "no start line", naming no file.
  assert.deepEqual(problems(withTls(a.certFile, b.keyFile)), [
    `tls.key_file: the key in ${b.keyFile} does not match the certificate in ${a.certFile} (tls.cert_file)`,
  ]);
  assert.deepEqual(problems(withTls(a.keyFile, a.certFile)), [
    `tls.cert_file: ${a.keyFile} is not a PEM certificate (it holds a private key: are cert_file and key_file swapped?)`,
  ]);
  assert.deepEqual(problems(withTls(a.certFile, a.certFile)), [
    `tls.key_file: ${a.certFile} is not a PEM private key (it holds a certificate: are cert_file and key_file swapped?)`,
  ]);
  assert.deepEqual(problems(withTls(join(dir, 'secret'), a.keyFile)), [
    `tls.cert_file: ${join(dir, 'secret')} is not a PEM certificate`,
  ]);
  // A key of another type than the certificate's: createSecureContext takes it, every handshake would fail.
  const rsaKey = write(
    'rsa.key',
    generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    }) as string,
  );
  assert.deepEqual(problems(withTls(a.certFile, rsaKey)), [
    `tls.key_file: the key in ${rsaKey} does not match the certificate in ${a.certFile} (tls.cert_file)`,
  ]);
  const encrypted = write(
    'encrypted.key',
    generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
      cipher: 'aes-256-cbc',
      passphrase: 'x',
    }) as string,
  );
  assert.deepEqual(problems(withTls(a.certFile, encrypted)), [
    `tls.key_file: ${encrypted} is encrypted (has a passphrase); TLS needs the key unencrypted`,
  ]);
  const good = loadServerConfig(write('tls.toml', withTls(a.certFile, a.keyFile)));
  assert.deepEqual(good.tls, { cert: a.cert, key: a.key });
  assert.deepEqual(
    good.warnings.filter((w) => w.startsWith('tls.cert_file')),
    [],
    'in its dates: no warning',
  );
});

test('a [tls] certificate out of its dates is a warning naming the date, not an error', () => {
  const a = certFiles('dated');
  const csr = join(dir, 'expired.csr');
  const expired = join(dir, 'expired.pem');
  const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: 'ignore' });
  openssl(['req', '-new', '-key', a.keyFile, '-subj', '/CN=expired', '-out', csr]);
  // -days -1: valid until a day ago.
  openssl(['x509', '-req', '-in', csr, '-signkey', a.keyFile, '-days', '-1', '-out', expired]);
  const config = loadServerConfig(write('expired.toml', withTls(expired, a.keyFile)));
  const dateWarnings = config.warnings.filter((w) => w.startsWith('tls.cert_file'));
  assert.equal(dateWarnings.length, 1, config.warnings.join('\n'));
  assert.match(
    dateWarnings[0]!,
    /^tls\.cert_file: the certificate in \S+\/expired\.pem expired on \w{3} +\d+ [\d:]+ \d{4} GMT \(clients will refuse it\)$/,
  );
  const validFrom = Date.parse(new X509Certificate(a.cert).validFrom);
  const warnings: string[] = [];
  loadCertFiles(
    write('x.toml', ''),
    'tls',
    { cert_file: a.certFile, key_file: a.keyFile },
    warnings,
    validFrom - 1,
  );
  assert.match(
    warnings[0]!,
    /^tls\.cert_file: the certificate in .* is not valid until \w{3} .* GMT \(clients will refuse it until then\)$/,
  );
});

test('[[plugins]]: frp httpPlugins tables (url, or addr and path), each mistake named by its key', () => {
  const base = '[auth]\nsecret_file = "secret"\n';
  const config = loadServerConfig(
    write(
      'plugins.toml',
      `${base}[[plugins]]\nname = "user-manager"\naddr = "127.0.0.1:9000"\npath = "/handler"\nops = ["Login"]\n` +
        '[[plugins]]\nname = "ports"\nurl = "https://policy.example/frp"\nops = ["NewProxy", "NewUserConn"]\n' +
        'timeout = "500ms"\nheaders = { Authorization = "Bearer s3cret" }\n',
    ),
  );
  assert.deepEqual(
    config.plugins.map((p) => [p.name, p.url.href, p.ops, p.timeoutMs, p.headers]),
    [
      ['user-manager', 'http://127.0.0.1:9000/handler', ['Login'], 3000, {}],
      [
        'ports',
        'https://policy.example/frp',
        ['NewProxy', 'NewUserConn'],
        500,
        { Authorization: 'Bearer s3cret' },
      ],
    ],
  );
  assert.deepEqual(loadServerConfig(write('none.toml', base)).plugins, []);
  const table = (keys: string) => `${base}[[plugins]]\nname = "p"\n${keys}\n`;
  assert.deepEqual(problems(table('url = "http://127.0.0.1:9000/h"\nops = ["Ping"]')), [
    `plugins[0] ("p").ops[0]: frp's Ping is not sent by porthole; supported: Login, NewProxy, NewUserConn, CloseProxy`,
  ]);
  assert.deepEqual(problems(table('url = "http://127.0.0.1:9000/h"\nops = ["login"]')), [
    'plugins[0] ("p").ops[0]: "login" is not a plugin op; expected one of Login, NewProxy, NewUserConn, CloseProxy (frp\'s names, case as written)',
  ]);
  assert.deepEqual(problems(table('ops = ["Login"]')), [
    'plugins[0] ("p"): set exactly one of url, or addr (with path, as in frp)',
  ]);
  assert.deepEqual(problems(table('url = "ftp://x/"\nops = ["Login"]')), [
    'plugins[0] ("p").url: url must be http:// or https://, not ftp:',
  ]);
  assert.deepEqual(problems(table('url = "http://127.0.0.1:9000/h"\nops = ["Login"]\ntimeout = "9s"')), [
    'plugins[0] ("p").timeout: must be at most 8s (a client gives up its sign-in after 10s)',
  ]);
  assert.deepEqual(problems(table('url = "http://127.0.0.1:9000/h"\nops = []')), [
    'plugins[0] ("p").ops: must have at least 1 entry',
  ]);
  assert.deepEqual(
    problems(
      `${table('url = "http://127.0.0.1:9000/h"\nops = ["Login"]')}[[plugins]]\nname = "p"\nurl = "http://127.0.0.1:9001/h"\nops = ["Login"]\n`,
    ),
    ['plugins[1] ("p").name: "p" is named twice'],
  );
  assert.deepEqual(problems(table('url = "http://127.0.0.1:9000/h"\nops = ["Login"]\npaht = "/x"')), [
    'plugins[0] ("p").paht: unknown key (did you mean "path"?)',
  ]);
});
