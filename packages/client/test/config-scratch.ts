// A scratch directory where client.toml files are written and loaded as a user's would be, beside a token
// file: for the tests of one kind of proxy key.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import { ConfigError, issueToken } from '@porthole/protocol';
import { type ClientFlags, loadClientConfig } from '../src/config.js';

/** The top of every config written: the server and the token file next to it. */
export const HEAD = 'server = "wss://vps.example.com/_porthole"\ntoken_file = "token"\n';

export interface ConfigScratch {
  dir: string;
  /** Writes a config file with this text; its path. */
  write(text: string): string;
  /** The problems of a config with this text, without the file's name in front. */
  problems(text: string): string[];
  /** `name`.pem and `name`.key in the directory: a one-day self-signed certificate for `host`, by openssl. */
  selfSigned(name: string, host: string): void;
}

/** The lines of the ConfigError that loading `file` with `flags` throws. */
export function configProblems(file: string | undefined, flags: ClientFlags = {}): readonly string[] {
  try {
    loadClientConfig(file, flags);
  } catch (err) {
    assert.ok(err instanceof ConfigError, String(err));
    return err.problems;
  }
  assert.fail('expected a ConfigError');
}

export async function configScratch(prefix: string): Promise<ConfigScratch> {
  const dir = scratchDir(prefix);
  writeFileSync(
    join(dir, 'token'),
    `${await issueToken('s'.repeat(32), { name: 'homelab', expiresInMs: null })}\n`,
  );
  let serial = 0;
  const write = (text: string): string => {
    serial += 1;
    const file = join(dir, `c${serial}.toml`);
    writeFileSync(file, text);
    return file;
  };
  const problems = (text: string): string[] => {
    const file = write(text);
    return configProblems(file).map((line) => line.replace(`${file}: `, ''));
  };
  const selfSigned = (name: string, host: string): void => {
    const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '1'];
    const files = ['-keyout', join(dir, `${name}.key`), '-out', join(dir, `${name}.pem`)];
    const names = ['-subj', `/CN=${host}`, '-addext', `subjectAltName=DNS:${host}`];
    execFileSync('openssl', ['req', '-x509', ...key, ...files, ...names], { stdio: 'ignore' });
  };
  return { dir, write, problems, selfSigned };
}
