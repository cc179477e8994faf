import assert from 'node:assert/strict';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import { z } from 'zod';
import {
  ConfigError,
  expandConfigPath,
  expandEnvironmentInTree,
  inlineSecretExposure,
  loadTomlConfig,
  secretFileExposure,
} from '../src/config-file.js';

/** "${NAME}", spelled so that linters do not take it for a template literal gone wrong. */
const ref = (name: string) => `\${${name}}`;

test('expandConfigPath expands environment references and resolves relative to the config file', () => {
  const env = { CREDENTIALS_DIRECTORY: '/run/credentials/porthole-server.service' };
  assert.equal(
    expandConfigPath(
      '/etc/porthole/server.toml',
      'auth.secret_file',
      `${ref('CREDENTIALS_DIRECTORY')}/secret`,
      env,
    ),
    '/run/credentials/porthole-server.service/secret',
  );
  assert.equal(expandConfigPath('/etc/porthole/server.toml', 'k', 'secret', env), '/etc/porthole/secret');
  assert.equal(expandConfigPath('/etc/porthole/server.toml', 'k', '/abs/$HOME/x', env), '/abs/$HOME/x');
});

test('expandConfigPath names file, key and variable when the variable is unset or empty', () => {
  for (const env of [{}, { CREDENTIALS_DIRECTORY: '' }]) {
    assert.throws(
      () =>
        expandConfigPath(
          '/etc/porthole/client.toml',
          'token_file',
          `${ref('CREDENTIALS_DIRECTORY')}/token`,
          env,
        ),
      (err: unknown) =>
        err instanceof ConfigError &&
        /^\/etc\/porthole\/client\.toml: token_file: \$\{CREDENTIALS_DIRECTORY\} in .* is not set \(systemd sets it/.test(
          err.message,
        ),
    );
  }
});

test('expandEnvironmentInTree expands every string value, in tables and arrays, and leaves keys and other types', () => {
  const env = { TOKEN: 'eyJ.x.y', PORT: '8080', HOME_DIR: '/home/me' };
  const day = new Date('2026-11-26T00:00:00Z');
  const tree = {
    token: ref('TOKEN'),
    [ref('KEY')]: 'a key is never expanded',
    heartbeat_interval: 10,
    exit_on_auth_failure: true,
    since: day,
    proxies: [
      { name: 'web', local: `127.0.0.1:${ref('PORT')}`, request_headers: { 'X-Home': ref('HOME_DIR') } },
      { name: 'raw', local: `$${ref('PORT')} stays, $$ and $PORT too` },
    ],
  };
  assert.deepEqual(expandEnvironmentInTree('/etc/porthole/client.toml', tree, env), {
    token: 'eyJ.x.y',
    [ref('KEY')]: 'a key is never expanded',
    heartbeat_interval: 10,
    exit_on_auth_failure: true,
    since: day,
    proxies: [
      { name: 'web', local: '127.0.0.1:8080', request_headers: { 'X-Home': '/home/me' } },
      { name: 'raw', local: `${ref('PORT')} stays, $$ and $PORT too` },
    ],
  });
});

test('expandEnvironmentInTree names the key of an unset variable and of a "${" that names none', () => {
  const problem = (tree: unknown, env: NodeJS.ProcessEnv = {}) => {
    try {
      expandEnvironmentInTree('/etc/porthole/client.toml', tree, env);
    } catch (err) {
      assert.ok(err instanceof ConfigError);
      return err.message;
    }
    assert.fail('expected a ConfigError');
  };
  assert.equal(
    problem({ proxies: [{ name: 'web', request_headers: { 'X-Team': ref('TEAM') } }] }),
    `/etc/porthole/client.toml: proxies[0] ("web").request_headers.X-Team: ${ref('TEAM')} is not set`,
  );
  assert.equal(
    problem({ token: ref('TOKEN') }, { TOKEN: '' }),
    `/etc/porthole/client.toml: token: ${ref('TOKEN')} is not set`,
  );
  assert.match(
    problem({ admin: { token: `ab${'$'}{ TOKEN }` } }),
    /^\/etc\/porthole\/client\.toml: admin\.token: "\$\{" in "ab\$\{ TOKEN \}" starts no environment reference like \$\{NAME\} .*write "\$\$\{" for a literal/,
  );
});

test('loadTomlConfig validates the values as expanded, and refuses an unset variable naming the key', () => {
  const dir = scratchDir('porthole-env-config-');
  const file = join(dir, 'c.toml');
  writeFileSync(file, `server = "ws://${ref('PORTHOLE_TEST_VPS')}/_porthole"\n`);
  process.env.PORTHOLE_TEST_VPS = '127.0.0.1:7000';
  try {
    assert.deepEqual(loadTomlConfig(file, z.object({ server: z.string() })), {
      server: 'ws://127.0.0.1:7000/_porthole',
    });
  } finally {
    delete process.env.PORTHOLE_TEST_VPS;
  }
  assert.throws(
    () => loadTomlConfig(file, z.object({ server: z.string() })),
    /server: \$\{PORTHOLE_TEST_VPS\} in/,
  );
});

test('inlineSecretExposure: a secret written in a config file others can read, not one taken from the environment', () => {
  const dir = scratchDir('porthole-inline-secret-');
  const file = join(dir, 'server.toml');
  const env = {};
  writeFileSync(file, `[auth]\nsecret = "${'k'.repeat(40)}"\n[admin]\ntoken = "${ref('ADMIN_TOKEN')}"\n`, {
    mode: 0o644,
  });
  chmodSync(file, 0o644);
  assert.match(
    inlineSecretExposure(file, ['auth', 'secret'], env) ?? '',
    /is open to other users \(mode 644\)/,
  );
  assert.equal(inlineSecretExposure(file, ['admin', 'token'], env), undefined);
  assert.equal(inlineSecretExposure(file, ['token'], env), undefined, 'not in the file: a flag gave it');
  chmodSync(file, 0o600);
  assert.equal(inlineSecretExposure(file, ['auth', 'secret'], env), undefined);
});

test('secretFileExposure: in $CREDENTIALS_DIRECTORY only the bits for others count, elsewhere the group bits too', () => {
  const dir = scratchDir('porthole-credentials-');
  const secret = join(dir, 'secret');
  writeFileSync(secret, 'x\n');
  const credentials = { CREDENTIALS_DIRECTORY: dir };
  const exposure = (mode: number, env: NodeJS.ProcessEnv) => {
    chmodSync(secret, mode);
    return secretFileExposure(secret, env);
  };
  const open = (mode: string) => `${secret} is open to other users (mode ${mode}); chmod 600 it`;
  // The README's `CREDENTIALS_DIRECTORY=/etc/porthole ... check` reads the real files: a world-readable one is
  // flagged (it was skipped for being in the directory).
  assert.equal(exposure(0o644, credentials), open('644'));
  assert.equal(exposure(0o604, credentials), open('604'));
  // systemd's copy: 0400 and an ACL for the service's user, which stat shows in the group bits.
  assert.equal(exposure(0o440, credentials), undefined);
  assert.equal(exposure(0o400, credentials), undefined);
  assert.equal(exposure(0o440, {}), open('440'));
  assert.equal(exposure(0o440, { CREDENTIALS_DIRECTORY: '' }), open('440'));
  assert.equal(exposure(0o600, {}), undefined);
});
