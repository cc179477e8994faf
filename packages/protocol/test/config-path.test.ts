import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConfigError, expandConfigPath } from '../src/config-file.js';

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
