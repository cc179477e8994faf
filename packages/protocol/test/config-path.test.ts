import assert from 'node:assert/strict';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import { ConfigError, expandConfigPath, secretFileExposure } from '../src/config-file.js';

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
