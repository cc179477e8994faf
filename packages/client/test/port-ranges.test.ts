import assert from 'node:assert/strict';
import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, issueToken } from '@porthole/protocol';
import { loadClientConfig } from '../src/config.js';
import { MAX_RANGE_PORTS } from '../src/port-range-proxies.js';
import { describeLocal, proxySpecFields } from '../src/proxy-config.js';
import { diffProxies } from '../src/reload.js';
import { configScratch, HEAD } from './config-scratch.js';

const scratch = await configScratch('porthole-client-port-ranges-');
const dir = scratch.dir;
// A token whose port grant the warnings are checked against, readable by its owner alone (no warning of that).
const tokenFile = join(dir, 'token');
writeFileSync(
  tokenFile,
  `${await issueToken('s'.repeat(32), { name: 'homelab', expiresInMs: null, ports: '27015-27020,9000-9100' })}\n`,
);
chmodSync(tokenFile, 0o600);

const write = (text: string): string => scratch.write(`${HEAD}${text}`);
const problems = (text: string): string[] => scratch.problems(`${HEAD}${text}`);

/** A [[proxies]] table with these lines. */
function table(lines: string): string {
  return `[[proxies]]\n${lines.trim()}\n`;
}

const GAME = table(`
name = "game"
type = "udp"
local = "127.0.0.1:27015-27018"
remote_port = "27015-27018"
max_flows = 8
udp_idle_timeout = "30s"
remote_bind = "127.0.0.1"
`);

test("a range table is one proxy per port, named name-PORT, each with the table's other keys", () => {
  const config = loadClientConfig(write(GAME));
  assert.deepEqual(
    config.proxies.map((p) => [p.name, p.remotePort, describeLocal(p.local)]),
    [
      ['game-27015', 27015, '127.0.0.1:27015'],
      ['game-27016', 27016, '127.0.0.1:27016'],
      ['game-27017', 27017, '127.0.0.1:27017'],
      ['game-27018', 27018, '127.0.0.1:27018'],
    ],
  );
  assert.deepEqual(proxySpecFields(config.proxies[2]!), {
    name: 'game-27017',
    type: 'udp',
    remote_port: 27017,
    remote_bind: '127.0.0.1',
    udp_idle_timeout_ms: 30_000,
    max_flows: 8,
  });
  assert.ok(
    config.proxies.every((p) => p.portRange === undefined),
    'what runs is ordinary proxies',
  );
  assert.deepEqual(config.portRanges, [
    { table: 'proxies[0] ("game")', proxies: ['game-27015', 'game-27016', 'game-27017', 'game-27018'] },
  ]);
});

test('lists pair in ascending order on both sides; a single number stays one proxy under its own name', () => {
  const config = loadClientConfig(
    write(
      table(
        'name = "ftp"\ntype = "tcp"\nlocal = "[::1]:8000,8002-8004"\nremote_port = "9000-9003"\nhealth_check = { type = "tcp" }',
      ) + table('name = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = 9022'),
    ),
  );
  assert.deepEqual(
    config.proxies.map((p) => [p.name, p.remotePort, describeLocal(p.local), p.healthCheck?.type]),
    [
      ['ftp-9000', 9000, '[::1]:8000', 'tcp'],
      ['ftp-9001', 9001, '[::1]:8002', 'tcp'],
      ['ftp-9002', 9002, '[::1]:8003', 'tcp'],
      ['ftp-9003', 9003, '[::1]:8004', 'tcp'],
      ['ssh', 9022, '127.0.0.1:22', undefined],
    ],
  );
});

test('ranges that cannot pair are refused naming the table, the key and why', () => {
  assert.deepEqual(
    problems(
      table('name = "game"\ntype = "udp"\nlocal = "127.0.0.1:27015-27030"\nremote_port = "27015-27029"') +
        table(`name = "big"\ntype = "tcp"\nlocal = "127.0.0.1:10000-11024"\nremote_port = "10000-11024"`) +
        table('name = "picked"\ntype = "tcp"\nlocal = "127.0.0.1:80-81"\nremote_port = "0-1"') +
        table('name = "web"\ntype = "http"\nlocal = "127.0.0.1:80-81"\nsubdomain = "web"') +
        table(
          'name = "capped"\ntype = "tcp"\nlocal = "127.0.0.1:80-81"\nremote_port = "80-81"\nbandwidth_limit = "1MB"',
        ) +
        table('name = "one"\ntype = "tcp"\nlocal = "127.0.0.1:80-81"\nremote_port = 80') +
        table('name = "sock"\ntype = "tcp"\nlocal = "unix:/run/a.sock"\nremote_port = "80-81"'),
    ),
    [
      `proxies[0] ("game").remote_port: 27015-27029 is 15 ports and local's 27015-27030 is 16 ports: the two pair port by port, so they must be as many`,
      `proxies[1] ("big").remote_port: 10000-11024 is 1025 ports, more than the ${MAX_RANGE_PORTS} one table may expand to: split it over several tables`,
      'proxies[2] ("picked").remote_port: "0-1": 0 (a port the server picks) cannot be part of a range; the server picks one port per proxy, so write remote_port = 0 in a table of its own',
      'proxies[3] ("web").local: a port range is for tcp and udp proxies, not http',
      'proxies[4] ("capped").bandwidth_limit: a port range expands to 2 proxies, and the limit would apply to each of them, 2 times what it says: write the ports that need a cap as tables of their own',
      `proxies[5] ("one").remote_port: local's 80-81 is 2 ports, so remote_port (80) must be a range of as many, e.g. "80-81"`,
      `proxies[6] ("sock").local: remote_port's 80-81 is 2 ports, so local must be "host:PORTS" with as many, e.g. "127.0.0.1:80-81"`,
    ],
  );
});

test("a range member's name or port another table has is one line for the table", () => {
  assert.deepEqual(
    problems(
      GAME +
        table('name = "game-27016"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = 2222') +
        table('name = "voice"\ntype = "udp"\nlocal = "127.0.0.1:5000-5009"\nremote_port = "27010-27019"'),
    ),
    [
      'proxies[1] ("game-27016").name: "game-27016" is already the name of proxies[0] ("game")\'s port 27016',
      'proxies[2] ("voice").remote_port: 27015 is already in the remote_port of proxies[0] ("game")',
    ],
  );
});

test("the token's port grant is checked for every port of a range, in one line for the table", () => {
  const config = loadClientConfig(
    write(
      table('name = "game"\ntype = "udp"\nlocal = "127.0.0.1:27015-27030"\nremote_port = "27015-27030"') +
        table('name = "web"\ntype = "tcp"\nlocal = "127.0.0.1:8000-8001"\nremote_port = "9000-9001"') +
        table('name = "far"\ntype = "tcp"\nlocal = "127.0.0.1:8000-8001"\nremote_port = "7000-7001"'),
    ),
  );
  assert.deepEqual(config.warnings, [
    `proxies[0] ("game").remote_port: ports 27021-27030 are outside the token's grant (27015-27020,9000-9100), of 27015-27030; the server will refuse the proxies of those ports`,
    `proxies[2] ("far").remote_port: ports 7000-7001 are all outside the token's grant (27015-27020,9000-9100); the server will refuse the proxies of those ports`,
  ]);
});

test('a reload that widens or moves a range adds and removes exactly the ports that changed', () => {
  const running = new Map(loadClientConfig(write(GAME)).proxies.map((p) => [p.name, p]));
  const wider = loadClientConfig(write(GAME.replace(/27018/g, '27020'))).proxies;
  assert.deepEqual(diffProxies(running, wider, proxySpecFields), {
    added: ['game-27019', 'game-27020'],
    removed: [],
    changed: [],
    localChanged: [],
    samePort: [],
  });
  const moved = loadClientConfig(write(GAME.replace(/27015-27018/g, '27016-27019'))).proxies;
  const diff = diffProxies(running, moved, proxySpecFields);
  assert.deepEqual([diff.added, diff.removed, diff.changed], [['game-27019'], ['game-27015'], []]);
});

test('--tcp and --udp take ranges too: proxies named TYPE-PORT, checked as a table is and against the file', () => {
  const flags = { server: 'wss://vps.example.com/_porthole', tokenFile: join(dir, 'token') };
  const config = loadClientConfig(undefined, {
    ...flags,
    udp: ['27015-27017:127.0.0.1:27015-27017'],
    tcp: ['127.0.0.1:9000,9002:[::1]:80-81'],
  });
  assert.deepEqual(
    config.proxies.map((p) => [p.name, p.type, p.remoteBind, p.remotePort, describeLocal(p.local)]),
    [
      // --tcp rules come first, as they do for single ports.
      ['tcp-9000', 'tcp', '127.0.0.1', 9000, '[::1]:80'],
      ['tcp-9002', 'tcp', '127.0.0.1', 9002, '[::1]:81'],
      ['udp-27015', 'udp', undefined, 27015, '127.0.0.1:27015'],
      ['udp-27016', 'udp', undefined, 27016, '127.0.0.1:27016'],
      ['udp-27017', 'udp', undefined, 27017, '127.0.0.1:27017'],
    ],
  );
  const refusal = (options: Parameters<typeof loadClientConfig>[1], file?: string) => {
    try {
      loadClientConfig(file, { ...flags, ...options });
    } catch (err) {
      assert.ok(err instanceof ConfigError, String(err));
      return err.problems.map((line) => (file ? line.replace(file, 'FILE') : line));
    }
    assert.fail('expected a ConfigError');
  };
  assert.deepEqual(refusal({ udp: ['27015-27016:127.0.0.1:27015-27017'] }), [
    `command line: --udp: "27015-27016:127.0.0.1:27015-27017": 27015-27016 is 2 ports and local's 27015-27017 is 3 ports: the two pair port by port, so they must be as many`,
  ]);
  assert.deepEqual(refusal({ udp: ['27010-27016:127.0.0.1:27010-27016'] }, write(GAME)), [
    `command line: --udp: "27010-27016:127.0.0.1:27010-27016": udp port 27015 is already taken by proxies[0] ("game") in FILE`,
  ]);
  assert.deepEqual(refusal({ udp: ['5000:127.0.0.1:5000', '4999-5000:127.0.0.1:4999-5000'] }), [
    `command line: --udp: "4999-5000:127.0.0.1:4999-5000": udp port 5000 is already taken by --udp "5000:127.0.0.1:5000"`,
  ]);
});
