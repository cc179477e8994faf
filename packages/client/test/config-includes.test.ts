import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { issueToken } from '@porthole/protocol';
import { loadClientConfig } from '../src/config.js';
import { configProblems, configScratch, HEAD } from './config-scratch.js';

const scratch = await configScratch('porthole-client-includes-');
chmodSync(join(scratch.dir, 'token'), 0o600);
let serial = 0;

/** A fresh directory beside the token: client.toml (HEAD, then `main`) and the included files `files` name. */
function setUp(main: string, files: Record<string, string>): string {
  serial += 1;
  const dir = join(scratch.dir, `case${serial}`);
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(join(dir, name, '..'), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  mkdirSync(dir, { recursive: true });
  const file = join(dir, 'client.toml');
  writeFileSync(file, `${HEAD.replace('"token"', '"../token"')}${main}`, { mode: 0o600 });
  return file;
}

function tcp(name: string, remotePort: number, local = '127.0.0.1:22'): string {
  return `[[proxies]]\nname = "${name}"\ntype = "tcp"\nlocal = "${local}"\nremote_port = ${remotePort}\n`;
}

test("included files' tables follow client.toml's, in name order; a relative path resolves next to its own file", () => {
  const file = setUp(`includes = ["conf.d/*.toml", "extra/one.toml"]\n${tcp('main', 2000)}`, {
    'conf.d/b.toml': tcp('b', 2002),
    'conf.d/a.toml': `${tcp('a', 2001, 'unix:app.sock')}[[visitors]]\nname = "v"\nservice = "homelab/ssh"\nbind = "127.0.0.1:2222"\n`,
    'conf.d/notes.txt': 'not toml',
    'extra/one.toml': `${tcp('web', 2003)}\n[[proxies]]\nname = "site"\ntype = "http"\nlocal = "dir:site"\nhosts = ["site.example.com"]\n`,
  });
  const dir = join(file, '..');
  const config = loadClientConfig(file);
  assert.deepEqual(
    config.proxies.map((proxy) => proxy.name),
    ['main', 'a', 'b', 'web', 'site'],
  );
  assert.deepEqual(config.proxies[1]!.local, { path: join(dir, 'conf.d', 'app.sock') });
  assert.deepEqual(config.proxies[4]!.local, { dir: join(dir, 'extra', 'site') });
  assert.deepEqual(
    config.visitors.map((visitor) => visitor.name),
    ['v'],
  );
  assert.deepEqual(config.includedFiles, [
    join(dir, 'conf.d', 'a.toml'),
    join(dir, 'conf.d', 'b.toml'),
    join(dir, 'extra', 'one.toml'),
  ]);
  assert.deepEqual(config.includes, [
    { key: 'includes[0]', pattern: 'conf.d/*.toml', matched: 2 },
    { key: 'includes[1]', pattern: 'extra/one.toml', matched: 1 },
  ]);
});

test('an included table is named by its own file and its index there, its unknown keys with their hints', () => {
  const file = setUp(`includes = ["conf.d/*.toml"]\n${tcp('main', 2000)}`, {
    'conf.d/web.toml': `${tcp('ssh', 2001)}${tcp('web', 70000)}remote_prot = 3\n`,
  });
  const web = join(file, '..', 'conf.d', 'web.toml');
  assert.deepEqual(configProblems(file), [
    `${web}: proxies[1] ("web").remote_port: must be at most 65535`,
    `${web}: proxies[1] ("web").remote_prot: unknown key (did you mean "remote_port"?)`,
  ]);
});

test("client.toml's keys, and includes, are refused in an included file, at its top or below a table", () => {
  const file = setUp('includes = ["conf.d/*.toml"]\n', {
    'conf.d/a.toml': `log_level = "debug"\nincludes = ["more/*.toml"]\n${tcp('a', 2001)}`,
  });
  const a = join(file, '..', 'conf.d', 'a.toml');
  assert.deepEqual(configProblems(file), [
    `${a}: log_level: only [[proxies]] and [[visitors]] belong in an included file; log_level goes in ${file}`,
    `${a}: includes: only [[proxies]] and [[visitors]] belong in an included file; includes are read from ${file} alone`,
  ]);
  writeFileSync(a, `${tcp('a', 2001)}server = "wss://other.example.com/_porthole"\n`);
  assert.deepEqual(configProblems(file), [
    `${a}: proxies[0] ("a").server: only [[proxies]] and [[visitors]] belong in an included file; server goes in ${file}`,
  ]);
  writeFileSync(a, '[[proxy]]\nname = "a"\n');
  assert.deepEqual(configProblems(file), [
    `${a}: proxy: only [[proxies]] and [[visitors]] belong in an included file (did you mean [[proxies]]?)`,
  ]);
  writeFileSync(a, 'remote_port = 2001\n');
  assert.deepEqual(configProblems(file), [
    `${a}: remote_port: unknown key (a key of [[proxies]]: write it below the [[proxies]] line)`,
  ]);
});

test('a clash across files names both places: proxy names and ports, visitor names and binds', () => {
  const file = setUp(`includes = ["conf.d/*.toml"]\n${tcp('web', 2000)}`, {
    'conf.d/a.toml': `${tcp('ssh', 2001)}[[visitors]]\nname = "v"\nservice = "homelab/ssh"\nbind = "127.0.0.1:2222"\n`,
    'conf.d/b.toml': `${tcp('web', 2002)}${tcp('other', 2001)}[[visitors]]\nname = "v"\nservice = "homelab/web"\nbind = "127.0.0.1:2222"\n`,
  });
  const [a, b] = ['a', 'b'].map((name) => join(file, '..', 'conf.d', `${name}.toml`));
  assert.deepEqual(configProblems(file), [
    `${b}: proxies[0] ("web").name: "web" is already the name of proxies[0] in ${file}`,
    `${b}: proxies[1] ("other").remote_port: 2001 is already the remote_port of proxies[0] ("ssh") in ${a}`,
    `${b}: visitors[0] ("v").name: "v" is already the name of visitors[0] in ${a}`,
    `${b}: visitors[0] ("v").bind: is already the bind of visitors[0] ("v") in ${a}`,
  ]);
});

test("a port range in an included file expands as client.toml's, its clashes and check's line naming the file", () => {
  const range =
    '[[proxies]]\nname = "game"\ntype = "udp"\nlocal = "127.0.0.1:27015-27016"\nremote_port = "27015-27016"\n';
  const file = setUp(`includes = ["conf.d/*.toml"]\n${tcp('game-27016', 2000)}`, {
    'conf.d/game.toml': range,
  });
  const game = join(file, '..', 'conf.d', 'game.toml');
  assert.deepEqual(configProblems(file), [
    `${game}: proxies[0] ("game").name: "game-27016", the name of its port 27016, is already the name of proxies[0] in ${file}`,
  ]);
  writeFileSync(file, `${HEAD.replace('"token"', '"../token"')}includes = ["conf.d/*.toml"]\n`, {
    mode: 0o600,
  });
  const config = loadClientConfig(file);
  assert.deepEqual(
    config.proxies.map((proxy) => proxy.name),
    ['game-27015', 'game-27016'],
  );
  assert.deepEqual(config.portRanges, [
    { table: `${game}: proxies[0] ("game")`, proxies: ['game-27015', 'game-27016'] },
  ]);
});

test('a missing plain path is an error naming includes[N]; a pattern may match nothing; an environment variable in it is expanded', () => {
  const file = setUp('includes = ["conf.d/*.toml", "extra/one.toml"]\n', {});
  assert.deepEqual(configProblems(file), [
    `${file}: includes[1]: ${join(file, '..', 'extra', 'one.toml')}: no such file`,
  ]);
  writeFileSync(file, `${HEAD.replace('"token"', '"../token"')}includes = ["*/x.toml"]\n`, { mode: 0o600 });
  assert.deepEqual(configProblems(file), [
    `${file}: includes[0]: "*/x.toml": * and ? may stand in the file name only, not in a directory`,
  ]);
  writeFileSync(file, `${HEAD.replace('"token"', '"../token"')}includes = ["\${PORTHOLE_CONFD}/*.toml"]\n`, {
    mode: 0o600,
  });
  const confd = join(file, '..', 'elsewhere');
  mkdirSync(confd);
  writeFileSync(join(confd, 'x.toml'), tcp('x', 2001));
  process.env.PORTHOLE_CONFD = confd;
  try {
    const config = loadClientConfig(file);
    assert.deepEqual(config.includedFiles, [join(confd, 'x.toml')]);
  } finally {
    delete process.env.PORTHOLE_CONFD;
  }
  assert.match(configProblems(file)[0]!, /: includes\[0\]: \$\{PORTHOLE_CONFD\} in .* is not set/);
  writeFileSync(file, `${HEAD.replace('"token"', '"../token"')}includes = ["none/*.toml"]\n`, {
    mode: 0o600,
  });
  const empty = loadClientConfig(file);
  assert.deepEqual(empty.includes, [{ key: 'includes[0]', pattern: 'none/*.toml', matched: 0 }]);
  assert.deepEqual(empty.includedFiles, []);
});

test('a file matched twice, or client.toml itself, is read once', () => {
  const file = setUp(`includes = ["*.toml", "conf.d/*.toml", "conf.d/a.toml"]\n${tcp('main', 2000)}`, {
    'conf.d/a.toml': tcp('a', 2001),
  });
  const config = loadClientConfig(file);
  assert.deepEqual(
    config.proxies.map((proxy) => proxy.name),
    ['main', 'a'],
  );
  assert.deepEqual(config.includedFiles, [join(file, '..', 'conf.d', 'a.toml')]);
});

test("a --tcp rule is checked against included tables as against client.toml's, naming the file", () => {
  const file = setUp('includes = ["conf.d/*.toml"]\n', { 'conf.d/a.toml': tcp('a', 2001) });
  const a = join(file, '..', 'conf.d', 'a.toml');
  assert.deepEqual(configProblems(file, { tcp: ['2001:127.0.0.1:22'] }), [
    `command line: --tcp: "2001:127.0.0.1:22": tcp port 2001 is already taken by proxies[0] ("a") in ${a}`,
  ]);
  const config = loadClientConfig(file, { tcp: ['2002:127.0.0.1:22'] });
  assert.deepEqual(
    config.proxies.map((proxy) => proxy.name),
    ['a', 'tcp-2002'],
  );
});

test("an included table's warnings name its file: an inline password in a file others can read", () => {
  const socks =
    '[[proxies]]\nname = "socks"\ntype = "tcp"\nlocal = "socks5"\nremote_port = 1080\nsocks_user = "u"\nsocks_password = "p"\n';
  const file = setUp('includes = ["conf.d/*.toml"]\n', { 'conf.d/socks.toml': socks });
  const included = join(file, '..', 'conf.d', 'socks.toml');
  chmodSync(included, 0o644);
  const config = loadClientConfig(file);
  assert.deepEqual(config.warnings, [
    `${included}: proxies[0] ("socks").socks_password: ${included} is open to other users (mode 644); chmod 600 it`,
  ]);
});

test("the token's grant is checked against included tables too, each warning naming the table's file", async () => {
  const file = setUp('includes = ["conf.d/*.toml"]\n', { 'conf.d/web.toml': tcp('web', 3000) });
  const granted = await issueToken('s'.repeat(32), {
    name: 'homelab',
    expiresInMs: null,
    ports: '2000-2001',
  });
  writeFileSync(join(file, '..', 'granted-token'), `${granted}\n`, { mode: 0o600 });
  writeFileSync(
    file,
    `server = "wss://vps.example.com/_porthole"\ntoken_file = "granted-token"\nincludes = ["conf.d/*.toml"]\n`,
  );
  const web = join(file, '..', 'conf.d', 'web.toml');
  assert.deepEqual(loadClientConfig(file).warnings, [
    `${web}: proxies[0] ("web").remote_port: port 3000 is outside the token's grant (2000-2001); the server will refuse this proxy`,
  ]);
});

test("an included file's environment references are expanded as client.toml's are, and an unset one names that file", () => {
  const ref = (name: string) => `$\{${name}}`;
  const file = setUp(`includes = ["${ref('PORTHOLE_TEST_CONFD')}/*.toml"]\n`, {
    'conf.d/app.toml': tcp('app', 2001, `127.0.0.1:${ref('PORTHOLE_TEST_APP_PORT')}`),
  });
  process.env.PORTHOLE_TEST_CONFD = 'conf.d';
  try {
    const included = join(file, '..', 'conf.d', 'app.toml');
    assert.deepEqual(configProblems(file), [
      `${included}: proxies[0] ("app").local: ${ref('PORTHOLE_TEST_APP_PORT')} in "127.0.0.1:${ref('PORTHOLE_TEST_APP_PORT')}" is not set`,
    ]);
    process.env.PORTHOLE_TEST_APP_PORT = '8080';
    assert.deepEqual(loadClientConfig(file).proxies[0]!.local, { host: '127.0.0.1', port: 8080 });
  } finally {
    delete process.env.PORTHOLE_TEST_CONFD;
    delete process.env.PORTHOLE_TEST_APP_PORT;
  }
});
