import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import { z } from 'zod';
import {
  ConfigError,
  durationField,
  hostPortField,
  loadTomlConfig,
  portRangesField,
} from '../src/config-file.js';

const schema = z.strictObject({
  listen: hostPortField({ allowZero: true }),
  timeout: durationField.default(10_000),
  ports: portRangesField.optional(),
  list: z.array(z.strictObject({ name: z.string() })).default([]),
});

function configFile(text: string): string {
  const file = join(scratchDir('porthole-config-'), 'c.toml');
  writeFileSync(file, text);
  return file;
}

function problems(text: string, against: z.ZodType = schema): string[] {
  const file = configFile(text);
  try {
    loadTomlConfig(file, against);
  } catch (err) {
    assert.ok(err instanceof ConfigError);
    return err.problems.map((p) => p.replace(`${file}: `, ''));
  }
  assert.fail('expected a ConfigError');
}

test('a valid file gives typed values', () => {
  const config = loadTomlConfig(
    configFile('listen = "127.0.0.1:0"\ntimeout = "5m"\nports = ["80", 81]\n'),
    schema,
  );
  assert.deepEqual(config.listen, { host: '127.0.0.1', port: 0 });
  assert.equal(config.timeout, 300_000);
  assert.equal(config.ports?.toString(), '80,81');
});

test('every problem names the key and the reason', () => {
  assert.deepEqual(problems('listen = "nope"\n'), [
    'listen: invalid address "nope" (expected host:port, e.g. 127.0.0.1:22 or [::1]:22)',
  ]);
  assert.deepEqual(problems('timeout = "5m"\n'), ['listen: required']);
  assert.deepEqual(problems('listen = "a:1"\ntimeout = 10\n'), [
    'timeout: expected a duration string like "10s"',
  ]);
  // A table in an array is named by its name, when it has one: users find [[proxies]] by name, not by index.
  assert.deepEqual(problems('listen = "a:1"\nextra = 1\n[[list]]\nname = "x"\nnam = "y"\n'), [
    'list[0] ("x").nam: unknown key (did you mean "name"?)',
    'extra: unknown key',
  ]);
  assert.deepEqual(problems('listen = "a:1"\n[[list]]\nnam = "y"\n[[list]]\nname = "a \\"b\\""\nnam = 1\n'), [
    'list[0].name: required',
    'list[0].nam: unknown key (did you mean "name"?)',
    'list[1] ("a \\"b\\"").nam: unknown key (did you mean "name"?)',
  ]);
  assert.deepEqual(problems('listen = "a:1"\nports = ["9-1"]\n'), ['ports: port range "9-1" is reversed']);
  assert.deepEqual(problems('listen = = 1\n'), ['line 1, column 10: invalid TOML: invalid value']);
  assert.match(
    (() => {
      try {
        loadTomlConfig('/nonexistent/x.toml', schema);
      } catch (err) {
        return (err as Error).message;
      }
      return '';
    })(),
    /^\/nonexistent\/x.toml: \(file\): cannot read: ENOENT/,
  );
});

test('a list or a string of the wrong length is said in words, as a number out of range is', () => {
  // Before, zod's own: "Too small: expected array to have >=1 items" (client.toml's `locations = []`).
  const lengths = z.strictObject({
    paths: z.array(z.string()).min(1).max(2).optional(),
    user: z.string().min(1).max(3).optional(),
    name: z.string().min(2).optional(),
  });
  const said = (text: string) => problems(text, lengths);
  assert.deepEqual(said('paths = []\nuser = ""\nname = "a"\n'), [
    'paths: must have at least 1 entry',
    'user: must not be empty',
    'name: must have at least 2 characters',
  ]);
  assert.deepEqual(said('paths = ["/a", "/b", "/c"]\nuser = "abcd"\n'), [
    'paths: must have at most 2 entries',
    'user: must have at most 3 characters',
  ]);
});

test('a key of another table, written outside it, is named with the table it belongs to', () => {
  // Before, "failure_limit: unknown key" for [auth]'s key written at the top, and a guess among the
  // wrong table's keys for one written under a neighbour.
  const tables = z.strictObject({
    listen: z.string().optional(),
    auth: z.strictObject({ secret: z.string().optional(), limit: z.number().optional() }).optional(),
    admin: z.strictObject({ token: z.string().optional(), secret: z.string().optional() }).optional(),
    list: z.array(z.strictObject({ name: z.string(), port: z.number().optional() })).optional(),
  });
  const said = (text: string) => problems(text, tables);
  assert.deepEqual(said('limit = 5\nport = 1\nsecret = "x"\n[auth]\ntoken = "t"\n'), [
    'auth.token: unknown key (a key of [admin]: write it below the [admin] line)',
    'limit: unknown key (a key of [auth]: write it below the [auth] line)',
    'port: unknown key (a key of [[list]]: write it below the [[list]] line)',
    'secret: unknown key (a key of [auth] or [admin]: write it below one of those lines)',
  ]);
  // A key of a table around it, and a misspelling, are named as before.
  assert.deepEqual(said('[auth]\nlisten = "x"\nsecrt = "y"\n'), [
    'auth.listen: unknown key (a top-level key, but TOML puts every key below the [auth] line into [auth]: move it above the first table)',
    'auth.secrt: unknown key (did you mean "secret"?)',
  ]);
});

test("keys of a table's inline tables, inside the braces or beside them, are named with the inline table", () => {
  // Before, "tls.ca_flie: unknown key" with no guess inside a union (`tls = true` or a table), and ca_file
  // beside `tls = { ... }` told to move above the first table, as the top-level ca_file.
  const inline = z.strictObject({
    ca_file: z.string().optional(),
    list: z
      .array(
        z.strictObject({
          name: z.string(),
          port: z.number().optional(),
          tls: z
            .union([z.boolean(), z.strictObject({ ca_file: z.string(), server_name: z.string() })])
            .optional(),
          check: z.strictObject({ interval: z.string().optional() }).optional(),
        }),
      )
      .optional(),
  });
  const said = (text: string) => problems(text, inline);
  assert.deepEqual(
    said('[[list]]\nname = "a"\ntls = { ca_flie = "x", ca_file = "x", server_name = "s" }\nca_file = "x"\n'),
    [
      'list[0] ("a").tls.ca_flie: unknown key (did you mean "ca_file"?)',
      'list[0] ("a").ca_file: unknown key (did you mean tls = { ca_file = ... }?)',
    ],
  );
  assert.deepEqual(said('[[list]]\nname = "a"\ninterval = "1s"\ncheck = { intervl = "1s", port = 1 }\n'), [
    'list[0] ("a").check.intervl: unknown key (did you mean "interval"?)',
    'list[0] ("a").check.port: unknown key (a key of [[list]] itself, not of check: write it outside the braces)',
    'list[0] ("a").interval: unknown key (did you mean check = { interval = ... }?)',
  ]);
  // An inline table has no header line to write a key below.
  assert.deepEqual(said('server_name = "s"\n'), [
    "server_name: unknown key (a key of [[list]]'s tls = { ... }: write it inside those braces)",
  ]);
});
