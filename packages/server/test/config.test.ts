import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError } from '@porthole/protocol';
import { loadServerConfig } from '../src/config.js';

const dir = mkdtempSync(join(tmpdir(), 'porthole-server-config-'));
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
