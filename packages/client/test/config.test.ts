import assert from 'node:assert/strict';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import { issueToken } from '@porthole/protocol';
import { type ClientFlags, loadClientConfig } from '../src/config.js';
import { describeLocal, proxySpecFields } from '../src/proxy-config.js';
import { configProblems } from './config-scratch.js';

const dir = scratchDir('porthole-client-config-');
/** A token as the server issues it (the client never checks its signature). */
const TOKEN = await issueToken('s'.repeat(32), { name: 'homelab', expiresInMs: null });
writeFileSync(join(dir, 'token'), `${TOKEN}\n`);

function write(text: string): string {
  const file = join(dir, `c${Math.random().toString(36).slice(2)}.toml`);
  writeFileSync(file, text);
  return file;
}

/** The problems of a config file with this text, without the file's name in front. */
function problems(text: string | undefined, flags: ClientFlags = {}): string[] {
  const file = text === undefined ? undefined : write(text);
  return configProblems(file, flags).map((line) => (file ? line.replace(`${file}: `, '') : line));
}

const HEAD = 'server = "wss://vps.example.com/_porthole"\ntoken_file = "token"\n';

test('a config file gives proxies and defaults; token_file is read relative to it', () => {
  const config = loadClientConfig(
    write(`${HEAD}[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = 2222\n`),
  );
  assert.equal(config.token, TOKEN);
  assert.deepEqual(config.proxies, [
    { name: 'ssh', type: 'tcp', local: { host: '127.0.0.1', port: 22 }, remotePort: 2222 },
  ]);
  assert.equal(config.reconnectInitial, 500);
  assert.equal(config.reconnectMax, 30_000);
  assert.equal(config.exitOnAuthFailure, false);
});

test('quick flags alone make a config; both rule forms work; flags override the file', () => {
  const config = loadClientConfig(undefined, {
    server: 'ws://127.0.0.1:7000/_porthole',
    tokenFile: join(dir, 'token'),
    tcp: ['2222:127.0.0.1:22', 'tcp:2223:[::1]:80'],
  });
  assert.equal(config.source, 'command line');
  assert.deepEqual(
    config.proxies.map((p) => [p.name, p.remotePort, describeLocal(p.local)]),
    [
      ['tcp-2222', 2222, '127.0.0.1:22'],
      ['tcp-2223', 2223, '[::1]:80'],
    ],
  );
  const merged = loadClientConfig(write(HEAD), { token: 'x.y.z', tcp: ['9000:localhost:9000'] });
  assert.equal(merged.token, 'x.y.z');
  assert.equal(merged.proxies[0]?.name, 'tcp-9000');
});

test('every mistake is reported as source: key: reason', () => {
  assert.deepEqual(problems('server = "http://x"\ntoken = "t"\n'), ['server: must be a ws:// or wss:// URL']);
  for (const server of ['ws://::1:7000/_porthole', 'wss://2001:db8::1/_porthole', 'ws://fe80::1']) {
    assert.deepEqual(
      problems(`server = "${server}"\ntoken = "t"\n`),
      ['server: an IPv6 address in a URL goes in brackets: "ws://[2001:db8::1]:7000/_porthole"'],
      server,
    );
  }
  const bracketed = 'ws://[::1]:7000/_porthole';
  assert.equal(loadClientConfig(write(`server = "${bracketed}"\ntoken = "t"\n`), {}).server, bracketed);
  assert.deepEqual(problems('server = "ws://127.0.0.1"\n'), [
    'token: set exactly one of token or token_file',
  ]);
  assert.deepEqual(problems(`${HEAD}colour = "blue"\n`), ['colour: unknown key']);
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1"\nremote_port = 70000\nx = 1\n`,
    ),
    [
      'proxies[0] ("ssh").local: invalid address "127.0.0.1" (expected host:port, e.g. 127.0.0.1:22 or [::1]:22)',
      'proxies[0] ("ssh").remote_port: must be at most 65535',
      'proxies[0] ("ssh").x: unknown key',
    ],
  );
  const twice = '[[proxies]]\nname = "a"\ntype = "tcp"\nlocal = "127.0.0.1:1"\nremote_port = 5\n';
  assert.deepEqual(problems(`${HEAD}${twice}${twice}`), [
    'proxies[1] ("a").name: "a" is already the name of proxies[0]',
    'proxies[1] ("a").remote_port: 5 is already the remote_port of proxies[0] ("a")',
  ]);
  assert.deepEqual(
    problems(`${HEAD}[[proxies]]\nname = "u"\ntype = "ftp"\nlocal = "127.0.0.1:1"\nremote_port = 5\n`),
    ['proxies[0] ("u").type: expected one of tcp, udp, http, tls, tcpmux'],
  );
  assert.deepEqual(problems(`${HEAD}reconnect_initial = "1m"\nreconnect_max = "1s"\n`), [
    'reconnect_max: must not be shorter than reconnect_initial',
  ]);
  assert.deepEqual(problems(undefined, { server: 'ws://127.0.0.1', token: 't', tcp: ['22'] }), [
    'command line: --tcp: invalid rule "22" (expected [tcp:][BIND_ADDRESS:]REMOTE_PORT:LOCAL_HOST:LOCAL_PORT or [tcp:][BIND_ADDRESS:]REMOTE_PORT:unix:PATH)',
  ]);
  assert.match(
    problems(`server = "ws://127.0.0.1"\ntoken_file = "nope"\n`)[0]!,
    /^token_file: cannot read .*nope: ENOENT$/,
  );
});

test('a problem names its proxy by name; a --tcp/--udp rule whose port or name is taken is one line naming both', () => {
  assert.deepEqual(problems(`${HEAD}[[proxies]]\ntype = "tcp"\nlocal = "127.0.0.1:1"\nremote_port = 5\n`), [
    'proxies[0].name: required',
  ]);
  const quick = { server: 'ws://127.0.0.1', token: 't' };
  // Before, two lines about a proxies[1] the user never wrote: its name, then its remote_port.
  assert.deepEqual(problems(undefined, { ...quick, tcp: ['2222:127.0.0.1:22', '2222:127.0.0.1:23'] }), [
    'command line: --tcp: "2222:127.0.0.1:23": tcp port 2222 is already taken by --tcp "2222:127.0.0.1:22"',
  ]);
  const ssh = write(
    `${HEAD}[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = 2222\n`,
  );
  assert.deepEqual(configProblems(ssh, { tcp: ['2222:127.0.0.1:23'] }), [
    `command line: --tcp: "2222:127.0.0.1:23": tcp port 2222 is already taken by proxies[0] ("ssh") in ${ssh}`,
  ]);
  // tcp and udp ports are separate spaces.
  assert.equal(loadClientConfig(ssh, { udp: ['2222:127.0.0.1:53'] }).proxies.length, 2);
  const named = write(
    `${HEAD}[[proxies]]\nname = "tcp-2222"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = 2223\n`,
  );
  assert.deepEqual(configProblems(named, { tcp: ['2222:127.0.0.1:23'] }), [
    `command line: --tcp: "2222:127.0.0.1:23": its proxy's name, "tcp-2222", is already that of proxies[0] ("tcp-2222") in ${named}`,
  ]);
});

test('remote_port = 0 (the server picks) for any number of tcp and udp proxies, in a file and as rules', () => {
  const picked = (name: string, type: string) =>
    `[[proxies]]\nname = "${name}"\ntype = "${type}"\nlocal = "127.0.0.1:1"\nremote_port = 0\n`;
  const file = write(`${HEAD}${picked('a', 'tcp')}${picked('b', 'tcp')}${picked('c', 'udp')}`);
  const config = loadClientConfig(file, {
    tcp: ['0:127.0.0.1:80', '0:127.0.0.1:81'],
    udp: ['0:127.0.0.1:53'],
  });
  assert.deepEqual(
    config.proxies.map((p) => [p.name, p.type, p.remotePort]),
    [
      ['a', 'tcp', 0],
      ['b', 'tcp', 0],
      ['c', 'udp', 0],
      ['tcp-0', 'tcp', 0],
      ['tcp-0-2', 'tcp', 0],
      ['udp-0', 'udp', 0],
    ],
  );
  assert.equal(proxySpecFields(config.proxies[0]!).remote_port, 0, 'the server is told to pick');
  assert.deepEqual(problems(`${HEAD}${picked('a', 'tcp').replace('= 0', '= -1')}`), [
    'proxies[0] ("a").remote_port: must be at least 0',
  ]);
});

test("remote_bind: an IP address for tcp and udp proxies, in a file and before a rule's port, sent to the server in one spelling", () => {
  const proxy = (type: string, bind: string, more = 'remote_port = 8080\n') =>
    `[[proxies]]\nname = "p"\ntype = "${type}"\nlocal = "127.0.0.1:1"\n${more}remote_bind = "${bind}"\n`;
  const config = loadClientConfig(write(`${HEAD}${proxy('udp', '0:0:0:0:0:0:0:1')}`), {
    tcp: ['127.0.0.1:8080:localhost:80', '[::1]:0:unix:/run/app.sock', '8081:127.0.0.1:80'],
    udp: ['0.0.0.0:5353:127.0.0.1:53'],
  });
  assert.deepEqual(
    config.proxies.map((p) => [p.name, p.type, p.remoteBind, p.remotePort]),
    [
      ['p', 'udp', '::1', 8080],
      ['tcp-8080', 'tcp', '127.0.0.1', 8080],
      ['tcp-0', 'tcp', '::1', 0],
      ['tcp-8081', 'tcp', undefined, 8081],
      ['udp-5353', 'udp', '0.0.0.0', 5353],
    ],
  );
  assert.equal(proxySpecFields(config.proxies[0]!).remote_bind, '::1');
  assert.equal(
    proxySpecFields(config.proxies[3]!).remote_bind,
    undefined,
    "none asked: the server's proxy_bind",
  );
  assert.deepEqual(problems(`${HEAD}${proxy('tcp', 'localhost')}`), [
    'proxies[0] ("p").remote_bind: bind address "localhost": write the loopback address itself: "127.0.0.1" or "::1"',
  ]);
  assert.deepEqual(problems(`${HEAD}${proxy('tcp', '127.0.0.1:8080')}`), [
    'proxies[0] ("p").remote_bind: bind address "127.0.0.1:8080": must be an IP address such as "127.0.0.1", "::1" or "0.0.0.0"',
  ]);
  assert.deepEqual(problems(`${HEAD}${proxy('http', '127.0.0.1', 'subdomain = "app"\n')}`), [
    'proxies[0] ("p").remote_bind: applies to tcp and udp proxies, not http',
  ]);
});

test('udp, http, tls and tcpmux proxies take their own keys, and say which key is wrong', () => {
  const file = write(
    `${HEAD}[[proxies]]\nname = "dns"\ntype = "udp"\nlocal = "127.0.0.1:53"\nremote_port = 5353\nudp_idle_timeout = "30s"\nmax_flows = 10\n` +
      `[[proxies]]\nname = "dns-tcp"\ntype = "tcp"\nlocal = "127.0.0.1:53"\nremote_port = 5353\nproxy_protocol = "v2"\nmax_connections = 64\n` +
      `[[proxies]]\nname = "web"\ntype = "http"\nlocal = "127.0.0.1:3000"\nhosts = ["App.Example.com", "*.home.example.com"]\n` +
      `subdomain = "app"\nlocations = ["/", "/api"]\nhttp_user = "u"\nhttp_password = "p"\nhost_header_rewrite = "internal.lan"\n` +
      `request_headers = { "X-From" = "porthole" }\n` +
      `[[proxies]]\nname = "vault"\ntype = "tls"\nlocal = "127.0.0.1:8200"\nhosts = ["vault.example.com"]\nproxy_protocol = "v1"\n`,
  );
  const config = loadClientConfig(file);
  assert.deepEqual(config.proxies[0], {
    name: 'dns',
    type: 'udp',
    local: { host: '127.0.0.1', port: 53 },
    remotePort: 5353,
    udpIdleTimeout: 30_000,
    maxFlows: 10,
  });
  assert.equal(config.proxies[1]?.proxyProtocol, 'v2');
  assert.equal(config.proxies[1]?.maxConnections, 64);
  assert.equal(proxySpecFields(config.proxies[1]!).max_connections, 64, 'the server is told');
  assert.deepEqual(config.proxies[2]?.hosts, ['app.example.com', '*.home.example.com']);
  assert.deepEqual(config.proxies[2]?.requestHeaders, { 'X-From': 'porthole' });
  assert.equal(config.proxies[3]?.type, 'tls');

  const http = '[[proxies]]\nname = "w"\ntype = "http"\nlocal = "127.0.0.1:1"\n';
  assert.deepEqual(problems(`${HEAD}${http}`), [
    'proxies[0] ("w").hosts: a http proxy needs hosts or subdomain',
  ]);
  assert.deepEqual(problems(`${HEAD}${http}hosts = ["a.test"]\nremote_port = 80\nproxy_protocol = "v1"\n`), [
    'proxies[0] ("w").remote_port: applies to tcp and udp proxies, not http',
    'proxies[0] ("w").proxy_protocol: applies to tcp, tls and tcpmux proxies, not http',
  ]);
  assert.deepEqual(problems(`${HEAD}${http}hosts = ["bad host"]\n`), [
    'proxies[0] ("w").hosts[0]: invalid hostname "bad host" (labels are letters, digits and "-", not starting or ending with "-")',
  ]);
  assert.deepEqual(problems(`${HEAD}${http}hosts = ["a.test"]\nhttp_user = "u"\nlocations = ["api"]\n`), [
    'proxies[0] ("w").locations[0]: must start with "/" and contain no spaces, "?" or "#"',
    'proxies[0] ("w").http_password: http_user and http_password go together',
  ]);
  assert.deepEqual(problems(`${HEAD}${http}hosts = ["a.test"]\nrequest_headers = { Host = "x" }\n`), [
    'proxies[0] ("w").request_headers.Host: cannot be set here (use host_header_rewrite)',
  ]);
  // The fields the server owns, refused whatever their case; the others are sent as written.
  const owned = `response_headers = { "X-Frame-Options" = "DENY", "Content-Length" = "0", "proxy-authenticate" = "x" }\n`;
  assert.deepEqual(problems(`${HEAD}${http}hosts = ["a.test"]\n${owned}`), [
    'proxies[0] ("w").response_headers.Content-Length: cannot be set here: it frames the body, which the server frames itself as it passes the body on',
    `proxies[0] ("w").response_headers.proxy-authenticate: cannot be set here: a hop-by-hop field: it describes the server's own connection to the visitor, which the server manages`,
  ]);
  // The wire's own rules (http-field-syntax), checked here so `check` names the key rather than the server
  // refusing the proxy: one line, no NUL, nothing Latin-1 cannot carry, a token for a name, 64 fields.
  const oneLine = 'must be one line of text: no control characters but tab, none beyond U+00FF';
  assert.deepEqual(
    problems(
      `${HEAD}${http}hosts = ["a.test"]\nresponse_headers = { "X-A" = "one\\ntwo", "X-B" = "a\\u0000b", "X-C" = "5 \u20ac" }\n`,
    ),
    [
      `proxies[0] ("w").response_headers.X-A: ${oneLine}`,
      `proxies[0] ("w").response_headers.X-B: ${oneLine}`,
      `proxies[0] ("w").response_headers.X-C: ${oneLine}`,
    ],
  );
  assert.deepEqual(problems(`${HEAD}${http}hosts = ["a.test"]\nrequest_headers = { "X Bad" = "1" }\n`), [
    `proxies[0] ("w").request_headers.X Bad: is not an HTTP header name (letters, digits and !#$%&'*+-.^_\`|~)`,
  ]);
  const fields = (n: number) => Array.from({ length: n }, (_, i) => `"X-${i}" = "v"`).join(', ');
  assert.deepEqual(problems(`${HEAD}${http}hosts = ["a.test"]\nrequest_headers = { ${fields(65)} }\n`), [
    'proxies[0] ("w").request_headers: has 65 fields; at most 64 are allowed',
  ]);
  assert.deepEqual(
    problems(
      `${HEAD}${http}hosts = ["a.test"]\nrequest_headers = { ${fields(64)}, "X-Latin" = "caf\u00e9" }\n`,
    ),
    ['proxies[0] ("w").request_headers: has 65 fields; at most 64 are allowed'],
  );
  const sixtyFour = `${HEAD}${http}hosts = ["a.test"]\nrequest_headers = { ${fields(63)}, "X-Latin" = "caf\u00e9" }\n`;
  const latin = loadClientConfig(write(sixtyFour)).proxies[0]!;
  assert.equal(latin.requestHeaders?.['X-Latin'], 'caf\u00e9');
  const hsts = `response_headers = { "Strict-Transport-Security" = "max-age=63072000" }\n`;
  const secured = loadClientConfig(write(`${HEAD}${http}hosts = ["a.test"]\n${hsts}`)).proxies[0]!;
  assert.deepEqual(proxySpecFields(secured).response_headers, {
    'Strict-Transport-Security': 'max-age=63072000',
  });
  const tcpProxy = '[[proxies]]\nname = "t"\ntype = "tcp"\nlocal = "127.0.0.1:1"\nremote_port = 8080\n';
  assert.deepEqual(problems(`${HEAD}${tcpProxy}response_headers = { "X-Frame-Options" = "DENY" }\n`), [
    'proxies[0] ("t").response_headers: applies to http proxies, not tcp',
  ]);
  const tcpmux = '[[proxies]]\nname = "m"\ntype = "tcpmux"\nlocal = "unix:/run/sshd.sock"\n';
  assert.deepEqual(problems(`${HEAD}${tcpmux}`), [
    'proxies[0] ("m").hosts: a tcpmux proxy needs hosts or subdomain',
  ]);
  assert.deepEqual(problems(`${HEAD}${tcpmux}hosts = ["nas.test"]\nmultiplexer = "sni"\n`), [
    'proxies[0] ("m").multiplexer: expected "httpconnect"',
  ]);
  assert.deepEqual(problems(`${HEAD}${tcpmux}hosts = ["nas.test"]\nlocations = ["/"]\n`), [
    'proxies[0] ("m").locations: applies to http proxies, not tcpmux',
  ]);
  const mux = loadClientConfig(
    write(
      `${HEAD}${tcpmux}hosts = ["NAS.test"]\nmultiplexer = "httpconnect"\nhttp_user = "u"\nhttp_password = "p"\n`,
    ),
  ).proxies[0]!;
  assert.deepEqual(proxySpecFields(mux), {
    name: 'm',
    type: 'tcpmux',
    hosts: ['nas.test'],
    http_user: 'u',
    http_password: 'p',
  });
  const udp = '[[proxies]]\nname = "u"\ntype = "udp"\nlocal = "127.0.0.1:1"\n';
  assert.deepEqual(problems(`${HEAD}${udp}`), [
    'proxies[0] ("u").remote_port: required for a udp proxy: its port on the server, or 0 for one the server picks (or private = true for one only visitors reach)',
  ]);
  assert.deepEqual(problems(`${HEAD}${udp}remote_port = 53\nmax_connections = 5\n`), [
    'proxies[0] ("u").max_connections: applies to tcp, tls, http and tcpmux proxies, not udp',
  ]);
  const tcp = '[[proxies]]\nname = "t"\ntype = "tcp"\nlocal = "127.0.0.1:1"\nremote_port = 2222\n';
  assert.deepEqual(problems(`${HEAD}${tcp}max_connections = 0\n`), [
    'proxies[0] ("t").max_connections: must be at least 1',
  ]);
  const quick = loadClientConfig(undefined, {
    server: 'ws://127.0.0.1',
    token: 't',
    udp: ['5353:127.0.0.1:53'],
  });
  assert.deepEqual(quick.proxies[0], {
    name: 'udp-5353',
    type: 'udp',
    local: { host: '127.0.0.1', port: 53 },
    remotePort: 5353,
  });
});

test('a token other users can read is warned about, under the key that holds it', () => {
  const shared = join(dir, 'shared-token');
  writeFileSync(shared, `${TOKEN}\n`, { mode: 0o644 });
  const viaFile = loadClientConfig(write(`server = "ws://127.0.0.1"\ntoken_file = "shared-token"\n`));
  assert.deepEqual(viaFile.warnings, [
    `token_file: ${shared} is open to other users (mode 644); chmod 600 it`,
  ]);
  const inline = write(`server = "ws://127.0.0.1"\ntoken = "${TOKEN}"\n`);
  chmodSync(inline, 0o640);
  assert.deepEqual(loadClientConfig(inline).warnings, [
    `token: ${inline} is open to other users (mode 640); chmod 600 it`,
  ]);
  const closed = write(`server = "ws://127.0.0.1"\ntoken = "${TOKEN}"\n`);
  chmodSync(closed, 0o600);
  assert.deepEqual(loadClientConfig(closed).warnings, []);
});

test('a token the server will refuse, or end soon, is warned about before the dial: its shape, expiry and grants', async () => {
  const secret = 's'.repeat(32);
  const day = 86_400_000;
  const warningsOf = (text: string): string[] => {
    const file = write(text);
    chmodSync(file, 0o600);
    return loadClientConfig(file).warnings;
  };
  const withToken = (token: string, proxies = '') =>
    warningsOf(`server = "ws://127.0.0.1"\ntoken = "${token}"\n${proxies}`);

  const notJwt = withToken('paste-the-token-here');
  assert.equal(notJwt.length, 1);
  assert.match(
    notJwt[0]!,
    /^token: the token is not a porthole token .* the server will refuse it as "malformed token"$/,
  );
  assert.ok(!notJwt[0]!.includes('paste-the-token-here'), 'the token itself is never repeated');

  const expired = await issueToken(secret, { name: 'lab', expiresInMs: day, now: Date.now() - 3 * day });
  assert.deepEqual(
    withToken(expired).map((w) => w.replace(/at \S+Z/, 'at T')),
    [
      'token: the token expired at T, 2d 0h ago; the server will refuse it: issue a new one with "porthole-server token issue"',
    ],
  );
  const soon = await issueToken(secret, { name: 'lab', expiresInMs: 5 * 3_600_000 });
  assert.match(
    withToken(soon)[0]!,
    /^token: the token expires at \S+Z, in (4h 59m|5h 0m), and the server ends the session then/,
  );
  assert.deepEqual(withToken(await issueToken(secret, { name: 'lab', expiresInMs: 30 * day })), []);

  const granted = await issueToken(secret, {
    name: 'lab',
    expiresInMs: null,
    ports: '2222,8000-8099',
    hosts: ['*.home.example.com', 'app.example.com'],
  });
  const proxies =
    '[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = 2222\n' +
    '[[proxies]]\nname = "dns"\ntype = "udp"\nlocal = "127.0.0.1:53"\nremote_port = 5353\n' +
    '[[proxies]]\nname = "web"\ntype = "http"\nlocal = "127.0.0.1:80"\n' +
    'hosts = ["app.example.com", "nas.home.example.com", "App.Example.org."]\n' +
    '[[proxies]]\nname = "sub"\ntype = "http"\nlocal = "127.0.0.1:80"\nsubdomain = "anything"\n';
  assert.deepEqual(withToken(granted, proxies), [
    `proxies[1] ("dns").remote_port: port 5353 is outside the token's grant (2222,8000-8099); the server will refuse this proxy`,
    `proxies[2] ("web").hosts: hostname app.example.org is outside the token's grant (*.home.example.com,app.example.com); the server will refuse this proxy`,
  ]);
  // No grants in the token: any port and any name.
  assert.deepEqual(withToken(TOKEN, proxies), []);
});

test('ws:// to anything but loopback is warned about: the token crosses the network in clear', () => {
  const warningsFor = (server: string) => {
    const file = write(`server = "${server}"\ntoken = "${TOKEN}"\n`);
    chmodSync(file, 0o600);
    return loadClientConfig(file).warnings;
  };
  assert.deepEqual(warningsFor('ws://vps.example.com:7000/_porthole'), [
    'server: ws:// carries the token and every tunnelled byte in clear across the network; use wss:// (a [tls] table on the server, or nginx/Caddy in front of it)',
  ]);
  for (const quiet of [
    'wss://vps.example.com/_porthole',
    'ws://127.0.0.1:7000/_porthole',
    'ws://[::1]:7000/_porthole',
    'ws://localhost:7000/_porthole',
  ])
    assert.deepEqual(warningsFor(quiet), [], quiet);
  const flagged = loadClientConfig(undefined, { server: 'ws://192.168.1.10:7000/_porthole', token: TOKEN });
  assert.match(flagged.warnings[0]!, /^--server: ws:\/\/ carries the token/);
});

test('passwords written inline in a config file others can read are warned about, each under its key', () => {
  const proxies =
    '[[proxies]]\nname = "web"\ntype = "http"\nlocal = "127.0.0.1:80"\nhosts = ["app.example.com"]\n' +
    'http_user = "me"\nhttp_password = "inline-http"\n' +
    '[[proxies]]\nname = "socks"\ntype = "tcp"\nlocal = "socks5"\nremote_port = 1080\n' +
    'socks_user = "lab"\nsocks_password = "inline-socks"\n';
  chmodSync(join(dir, 'token'), 0o600);
  const open = write(`server = "ws://127.0.0.1"\ntoken_file = "token"\n${proxies}`);
  chmodSync(open, 0o644);
  const warnings = loadClientConfig(open).warnings;
  assert.deepEqual(warnings, [
    `proxies[0] ("web").http_password: ${open} is open to other users (mode 644); chmod 600 it`,
    `proxies[1] ("socks").socks_password: ${open} is open to other users (mode 644); chmod 600 it`,
  ]);
  assert.ok(!warnings.join('\n').includes('inline-'), 'no password in a warning');
  chmodSync(open, 0o600);
  assert.deepEqual(loadClientConfig(open).warnings, []);
});

test('proxy: a URL (its password inline warned about like a token, or in proxy_password_file), "none", or --proxy', () => {
  chmodSync(join(dir, 'token'), 0o600);
  const inline = write(`${HEAD}proxy = "http://me:inline-proxy@proxy.corp:3128"\n`);
  chmodSync(inline, 0o644);
  const config = loadClientConfig(inline);
  assert.deepEqual(config.dialProxy, {
    proxy: {
      kind: 'http',
      host: 'proxy.corp',
      port: 3128,
      credentials: { user: 'me', password: 'inline-proxy' },
    },
    from: 'config',
  });
  assert.deepEqual(config.warnings, [`proxy: ${inline} is open to other users (mode 644); chmod 600 it`]);

  writeFileSync(join(dir, 'proxy-password'), 'from-file\n', { mode: 0o600 });
  const fromFile = loadClientConfig(
    write(`${HEAD}proxy = "socks5://me@proxy.corp"\nproxy_password_file = "proxy-password"\n`),
  );
  assert.deepEqual(fromFile.dialProxy?.proxy.credentials, { user: 'me', password: 'from-file' });
  // --proxy replaces the file's proxy, and the file's password for it.
  const flagged = loadClientConfig(
    write(`${HEAD}proxy = "socks5://me@proxy.corp"\nproxy_password_file = "proxy-password"\n`),
    {
      proxy: 'none',
    },
  );
  assert.equal(flagged.dialProxy, undefined);

  assert.deepEqual(problems(`${HEAD}proxy = "http://me:pw@p:1"\nproxy_password_file = "proxy-password"\n`), [
    "proxy_password_file: set the password in proxy's URL or in proxy_password_file, not both",
  ]);
  assert.deepEqual(problems(`${HEAD}proxy = "http://p:1"\nproxy_password_file = "proxy-password"\n`), [
    `proxy_password_file: needs the user in proxy's URL ("http://user@proxy.corp:3128")`,
  ]);
  assert.deepEqual(problems(`${HEAD}proxy = "ftp://u:secret-pw@p:1"\n`), [
    'proxy: ftp:// is not a proxy scheme porthole speaks: "http://proxy.corp:3128" or "socks5://proxy.corp:1080"',
  ]);
  assert.deepEqual(
    problems(undefined, {
      server: 'ws://127.0.0.1:7000/_porthole',
      tokenFile: join(dir, 'token'),
      proxy: 'https://p:1',
    }),
    [
      'command line: --proxy: an https:// proxy (TLS to the proxy itself) is not supported: use http:// (a wss:// server stays encrypted end to end through the CONNECT)',
    ],
  );
});

test('intervals that would spin or switch themselves off, and waits no timer can take, are refused', () => {
  assert.deepEqual(problems(`${HEAD}reconnect_initial = "0s"\n`), [
    'reconnect_initial: must be at least 100ms',
  ]);
  assert.deepEqual(problems(`${HEAD}heartbeat_interval = "0s"\n`), [
    'heartbeat_interval: must be at least 100ms',
  ]);
  assert.deepEqual(problems(`${HEAD}reconnect_max = "30d"\n`), [
    'reconnect_max: 30d is longer than a timer can wait (at most 24d)',
  ]);
});

test('local = "unix:PATH": resolved next to the file (flags: the working directory), refused for udp and past 107 bytes', () => {
  const sub = join(dir, 'sub');
  mkdirSync(sub, { recursive: true });
  const file = join(sub, 'client.toml');
  writeFileSync(
    file,
    `server = "wss://vps.example.com/_porthole"\ntoken = "${TOKEN}"\n` +
      `[[proxies]]\nname = "fpm"\ntype = "tcp"\nlocal = "unix:run/fpm.sock"\nremote_port = 9000\n` +
      `[[proxies]]\nname = "web"\ntype = "http"\nlocal = "unix:\${SOCKET_DIR}/web.sock"\nsubdomain = "web"\n` +
      `[[proxies]]\nname = "docker"\ntype = "tls"\nlocal = "unix:/run/docker.sock"\nhosts = ["docker.example.com"]\nproxy_protocol = "v2"\n`,
  );
  process.env.SOCKET_DIR = '/run/web';
  try {
    const config = loadClientConfig(file, { tcp: ['8080:unix:app.sock'] });
    assert.deepEqual(
      config.proxies.map((p) => [p.name, describeLocal(p.local)]),
      [
        ['fpm', `unix:${join(sub, 'run/fpm.sock')}`],
        ['web', 'unix:/run/web/web.sock'],
        ['docker', 'unix:/run/docker.sock'],
        ['tcp-8080', `unix:${join(process.cwd(), 'app.sock')}`],
      ],
    );
  } finally {
    delete process.env.SOCKET_DIR;
  }
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "dns"\ntype = "udp"\nlocal = "unix:/run/dns.sock"\nremote_port = 53\n`,
    ),
    ['proxies[0] ("dns").local: a udp proxy cannot reach a Unix socket: give its service as "host:port"'],
  );
  assert.deepEqual(
    problems(`${HEAD}[[proxies]]\nname = "a"\ntype = "tcp"\nlocal = "/run/a.sock"\nremote_port = 80\n`),
    ['proxies[0] ("a").local: "/run/a.sock" looks like a path: a Unix socket is written "unix:/run/a.sock"'],
  );
  const long = `/run/${'d'.repeat(100)}/a.sock`;
  assert.deepEqual(
    problems(`${HEAD}[[proxies]]\nname = "a"\ntype = "tcp"\nlocal = "unix:${long}"\nremote_port = 80\n`),
    [
      `proxies[0] ("a").local: the socket path ${long} is 112 bytes, and a Unix socket's path holds at most 107 (name a symlink to its directory instead)`,
    ],
  );
  assert.deepEqual(
    problems(undefined, { token: TOKEN, server: 'ws://127.0.0.1:1/x', udp: ['53:unix:/run/dns.sock'] }),
    ['command line: --udp: "53:unix:/run/dns.sock": a udp proxy cannot reach a Unix socket'],
  );
});

test('hosts: a tls proxy is not named by an IP address (SNI carries none)', () => {
  const tls = '[[proxies]]\nname = "v"\ntype = "tls"\nlocal = "127.0.0.1:1"\n';
  assert.deepEqual(problems(`${HEAD}${tls}hosts = ["vault.test", "127.0.0.1", "[::1]"]\n`), [
    'proxies[0] ("v").hosts[1]: 127.0.0.1 is an IP address, which SNI does not carry (RFC 6066): a tls proxy is found by a hostname',
    'proxies[0] ("v").hosts[2]: ::1 is an IP address, which SNI does not carry (RFC 6066): a tls proxy is found by a hostname',
  ]);
});

test('a socks5 proxy reads socks_password_file next to the config file, warns when others can read it, and parses socks_allow', () => {
  const sub = join(dir, 'socks');
  mkdirSync(sub, { recursive: true });
  writeFileSync(join(sub, 'socks-password'), 'from the file\n', { mode: 0o600 });
  const file = join(sub, 'client.toml');
  const write = (extra: string) =>
    writeFileSync(
      file,
      `server = "wss://vps.example.com/_porthole"\ntoken = "${TOKEN}"\n` +
        `[[proxies]]\nname = "socks"\ntype = "tcp"\nlocal = "socks5"\nremote_port = 1080\n${extra}`,
      { mode: 0o600 },
    );
  write(
    'socks_user = "lab"\nsocks_password_file = "socks-password"\nsocks_allow = ["192.168.1.0/24", "fd00::/8"]\nsocks_allow_ports = "22,8000-8999"\n',
  );
  const config = loadClientConfig(file);
  const socks = config.proxies[0]!.socks!;
  assert.equal(describeLocal(config.proxies[0]!.local), 'socks5');
  assert.deepEqual(socks.credentials, { user: 'lab', password: 'from the file' });
  assert.ok(socks.allow?.contains('192.168.1.20') && socks.allow.contains('fd00::1'));
  assert.ok(!socks.allow?.contains('192.168.2.1') && !socks.allow?.contains('127.0.0.1'));
  assert.ok(socks.allowPorts?.contains(8080) && !socks.allowPorts.contains(80));
  assert.deepEqual(config.warnings, []);
  // What the server is told: a tcp proxy like any other.
  assert.deepEqual(proxySpecFields(config.proxies[0]!), { name: 'socks', type: 'tcp', remote_port: 1080 });

  chmodSync(join(sub, 'socks-password'), 0o644);
  assert.match(
    loadClientConfig(file).warnings.join('\n'),
    /socks_password_file: .*open to other users \(mode 644\)/,
  );

  write('socks_user = "lab"\nsocks_password = "x"\nsocks_allow = ["192.168.1.0/33"]\n');
  assert.throws(
    () => loadClientConfig(file),
    /socks_allow.*"192\.168\.1\.0\/33" is not an IP address or CIDR/,
  );
  write('socks_no_auth = true\nsocks_allow = ["10.0.0.0/8"]\nproxy_protocol = "v1"\n');
  assert.throws(() => loadClientConfig(file), /proxy_protocol: a socks5 proxy has no one local service/);
  write('');
  assert.throws(() => loadClientConfig(file), /needs socks_user and socks_password_file/);
  assert.throws(
    () =>
      loadClientConfig(undefined, {
        token: TOKEN,
        server: 'wss://vps.example.com/_porthole',
        tcp: ['1080:socks5'],
      }),
    /--tcp: "1080:socks5": a socks5 proxy is written in a config file/,
  );
});

test('bandwidth_limit: frp\'s "KB" and "MB" (1024 and 1048576 bytes per second), for every proxy type', () => {
  const limitOf = (value: string, type = 'tcp') => {
    const keys = type === 'http' ? 'subdomain = "app"' : `remote_port = ${type === 'udp' ? 5353 : 2222}`;
    const config = loadClientConfig(
      write(
        `${HEAD}[[proxies]]\nname = "p"\ntype = "${type}"\nlocal = "127.0.0.1:22"\n${keys}\nbandwidth_limit = ${JSON.stringify(value)}\n`,
      ),
    );
    return config.proxies[0]?.bandwidthLimit;
  };
  assert.deepEqual(limitOf('1MB'), { text: '1MB', bytesPerSecond: 1_048_576 });
  assert.deepEqual(limitOf('500KB', 'udp'), { text: '500KB', bytesPerSecond: 512_000 });
  assert.deepEqual(limitOf(' 0.5MB ', 'http'), { text: '0.5MB', bytesPerSecond: 524_288 });
  assert.deepEqual(limitOf('1.5KB'), { text: '1.5KB', bytesPerSecond: 1536 });
  const proxy = (value: string) =>
    `${HEAD}[[proxies]]\nname = "p"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = 2222\nbandwidth_limit = ${value}\n`;
  const wrongRate = (text: string) =>
    `proxies[0] ("p").bandwidth_limit: "${text}" is not a rate like "1MB" or "500KB" (bytes per second, "KB" or "MB" in capitals: 1MB = 1024KB = 1048576 bytes)`;
  assert.deepEqual(problems(proxy('"1mb"')), [wrongRate('1mb')]);
  assert.deepEqual(problems(proxy('"10Mbit"')), [wrongRate('10Mbit')]);
  assert.deepEqual(problems(proxy('"1GB"')), [wrongRate('1GB')]);
  assert.deepEqual(problems(proxy('"-1MB"')), [wrongRate('-1MB')]);
  assert.deepEqual(problems(proxy('"0MB"')), [
    'proxies[0] ("p").bandwidth_limit: must be at least 1KB (leave the key out for no limit)',
  ]);
  // The ceiling: 100 GiB/s. Past it, a slip ("99999999MB" is 95 TiB/s), and a rate the bucket cannot count in.
  assert.deepEqual(limitOf('102400MB'), { text: '102400MB', bytesPerSecond: 107_374_182_400 });
  for (const text of ['102401MB', '99999999MB', '200000000KB', `${'9'.repeat(400)}MB`]) {
    assert.deepEqual(problems(proxy(`"${text}"`)), [
      `proxies[0] ("p").bandwidth_limit: "${text}" is more than 102400MB (100 GiB/s), the most a limit may be (leave the key out for no limit)`,
    ]);
  }
  assert.deepEqual(problems(proxy('1048576')), [
    'proxies[0] ("p").bandwidth_limit: expected a rate like "1MB" or "500KB"',
  ]);
  // The server is not told: a changed limit is no reason to register the proxy again.
  assert.equal(
    'bandwidth_limit' in proxySpecFields(loadClientConfig(write(proxy('"1MB"'))).proxies[0]!),
    false,
  );
});

test('group and health_check: members of one group share a remote_port; checks get defaults and are checked', () => {
  const member = (name: string, port: number, extra = '') =>
    `[[proxies]]\nname = "${name}"\ntype = "tcp"\nlocal = "127.0.0.1:${port}"\nremote_port = 8080\n${extra}`;
  const config = loadClientConfig(
    write(
      `${HEAD}${member('a', 1, 'group = "web"\nhealth_check = { type = "tcp" }\n')}${member('b', 2, 'group = "web"\n')}`,
    ),
  );
  assert.deepEqual(
    config.proxies.map((p) => [p.name, p.group, p.healthCheck]),
    [
      ['a', 'web', { type: 'tcp', intervalMs: 10_000, timeoutMs: 3_000, maxFailed: 3 }],
      ['b', 'web', undefined],
    ],
  );
  assert.equal(proxySpecFields(config.proxies[0]!).group, 'web');
  assert.deepEqual(problems(`${HEAD}${member('a', 1, 'group = "web"\n')}${member('b', 2)}`), [
    'proxies[1] ("b").remote_port: 8080 is already the remote_port of proxies[0] ("a") (in group "web"; only proxies of one group share a port)',
  ]);
  assert.deepEqual(
    problems(
      `${HEAD}${member('a', 1, 'health_check = { type = "http", interval = "10ms", max_failed = 0 }\n')}`,
    ),
    [
      'proxies[0] ("a").health_check.interval: must be at least 100ms',
      'proxies[0] ("a").health_check.max_failed: must be at least 1',
      'proxies[0] ("a").health_check.path: required for an http check, e.g. "/healthz"',
    ],
  );
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "files"\ntype = "tcp"\nlocal = "dir:/srv"\nremote_port = 8080\nhealth_check = { type = "tcp" }\n`,
    ),
    [
      'proxies[0] ("files").health_check: a directory proxy is served by the client itself: there is no local service to check',
    ],
  );
  const picked =
    '[[proxies]]\nname = "a"\ntype = "tcp"\nlocal = "127.0.0.1:1"\nremote_port = 0\ngroup = "g"\n';
  assert.deepEqual(problems(`${HEAD}${picked}`), [
    'proxies[0] ("a").remote_port: a proxy in a group shares the port it names with the others: 0 would be a port of its own',
  ]);
});

test('private = true: a tcp proxy without remote_port, told to the server as private; never with a port or on udp', () => {
  const config = loadClientConfig(
    write(`${HEAD}[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nprivate = true\n`),
  );
  assert.deepEqual(proxySpecFields(config.proxies[0]!), { name: 'ssh', type: 'tcp', private: true });
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nprivate = true\nremote_port = 2222\n`,
    ),
    [
      'proxies[0] ("ssh").remote_port: a private proxy has no port on the server: visitors reach it by name ([[visitors]] service = "CLIENT/NAME")',
    ],
  );
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nprivate = true\nremote_bind = "127.0.0.1"\ngroup = "g"\n`,
    ),
    [
      'proxies[0] ("ssh").remote_bind: a private proxy has no public port for the server to bind: visitors reach it by name',
      'proxies[0] ("ssh").group: a private proxy has no public port for a group to share: visitors reach it by name',
    ],
  );
  // A udp proxy may be private (frp's sudp), on the same terms as a tcp one.
  const dns = loadClientConfig(
    write(`${HEAD}[[proxies]]\nname = "dns"\ntype = "udp"\nlocal = "127.0.0.1:53"\nprivate = true\n`),
  ).proxies[0]!;
  assert.deepEqual([dns.type, dns.private, proxySpecFields(dns).private], ['udp', true, true]);
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "dns"\ntype = "udp"\nlocal = "127.0.0.1:53"\nprivate = true\nremote_port = 5353\nremote_bind = "127.0.0.1"\ngroup = "g"\n`,
    ),
    [
      'proxies[0] ("dns").remote_port: a private proxy has no port on the server: visitors reach it by name ([[visitors]] service = "CLIENT/NAME")',
      'proxies[0] ("dns").remote_bind: a private proxy has no public port for the server to bind: visitors reach it by name',
      'proxies[0] ("dns").group: a private proxy has no public port for a group to share: visitors reach it by name',
    ],
  );
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "web"\ntype = "http"\nlocal = "127.0.0.1:80"\nhosts = ["a.example.com"]\nprivate = true\n`,
    ),
    ['proxies[0] ("web").private: applies to tcp and udp proxies, not http'],
  );
});

test('[[visitors]] and --visit rules: a service "owner/proxy", a bind; names and binds unique', () => {
  const config = loadClientConfig(
    write(`${HEAD}[[visitors]]\nname = "home-ssh"\nservice = "homelab/ssh"\nbind = "127.0.0.1:2222"\n`),
    { visit: ['2223:homelab/db', '[::1]:2224:nas/web'] },
  );
  assert.deepEqual(
    config.visitors.map((v) => [v.name, v.service, v.bind.host, v.bind.port]),
    [
      ['home-ssh', 'homelab/ssh', '127.0.0.1', 2222],
      ['visit-2223', 'homelab/db', '127.0.0.1', 2223],
      ['visit-2224', 'nas/web', '::1', 2224],
    ],
  );
  assert.deepEqual(
    problems(undefined, {
      server: 'ws://127.0.0.1:7000/_porthole',
      tokenFile: join(dir, 'token'),
      visit: ['2222:homelab'],
    }),
    [
      'command line: --visit: "2222:homelab": expected [udp:][BIND_HOST:]PORT:OWNER/PROXY, e.g. 2222:homelab/ssh or udp:5353:homelab/dns',
    ],
  );
  assert.deepEqual(
    problems(`${HEAD}[[visitors]]\nname = "a"\nservice = "homelab"\nbind = "127.0.0.1:2222"\n`),
    [
      'visitors[0] ("a").service: must be "owner/proxy": the owning client\'s name and its proxy\'s, each letters, digits, ".", "_" or "-", starting with a letter or digit, at most 64 characters',
    ],
  );
  assert.deepEqual(
    problems(
      `${HEAD}[[visitors]]\nname = "a"\nservice = "homelab/ssh"\nbind = "127.0.0.1:2222"\n[[visitors]]\nname = "a"\nservice = "homelab/db"\nbind = "127.0.0.1:2222"\n`,
    ),
    [
      'visitors[1] ("a").name: "a" is already the name of visitors[0]',
      'visitors[1] ("a").bind: is already the bind of visitors[0] ("a")',
    ],
  );
});

test('udp visitors: type = "udp" (tcp by default), max_flows for udp only, --visit udp:..., a bind per type', () => {
  const config = loadClientConfig(
    write(
      `${HEAD}[[visitors]]\nname = "dns"\ntype = "udp"\nservice = "homelab/dns"\nbind = "127.0.0.1:5353"\nmax_flows = 16\n[[visitors]]\nname = "ssh"\nservice = "homelab/ssh"\nbind = "127.0.0.1:5353"\n`,
    ),
    { visit: ['udp:5354:homelab/dns', 'tcp:5355:homelab/ssh', 'udp:[::1]:5356:nas/game'] },
  );
  assert.deepEqual(
    config.visitors.map((v) => [v.name, v.type, v.service, v.bind.host, v.bind.port, v.maxFlows]),
    [
      ['dns', 'udp', 'homelab/dns', '127.0.0.1', 5353, 16],
      ['ssh', 'tcp', 'homelab/ssh', '127.0.0.1', 5353, undefined],
      ['visit-udp-5354', 'udp', 'homelab/dns', '127.0.0.1', 5354, undefined],
      ['visit-5355', 'tcp', 'homelab/ssh', '127.0.0.1', 5355, undefined],
      ['visit-udp-5356', 'udp', 'nas/game', '::1', 5356, undefined],
    ],
  );
  assert.deepEqual(
    problems(
      `${HEAD}[[visitors]]\nname = "a"\ntype = "sudp"\nservice = "homelab/dns"\nbind = "127.0.0.1:5353"\n`,
    ),
    ['visitors[0] ("a").type: expected "tcp" or "udp"'],
  );
  assert.deepEqual(
    problems(
      `${HEAD}[[visitors]]\nname = "b"\nservice = "homelab/ssh"\nbind = "127.0.0.1:2222"\nmax_flows = 4\n[[visitors]]\nname = "c"\ntype = "udp"\nservice = "homelab/dns"\nbind = "127.0.0.1:5354"\n[[visitors]]\nname = "d"\ntype = "udp"\nservice = "homelab/dns"\nbind = "127.0.0.1:5354"\n`,
    ),
    [
      'visitors[0] ("b").max_flows: applies to udp visitors, not tcp (set type = "udp")',
      'visitors[2] ("d").bind: is already the bind of visitors[1] ("c")',
    ],
  );
  assert.deepEqual(
    problems(undefined, {
      server: 'ws://127.0.0.1:7000/_porthole',
      tokenFile: join(dir, 'token'),
      visit: ['udp:homelab/dns'],
    }),
    [
      'command line: --visit: "udp:homelab/dns": expected [udp:][BIND_HOST:]PORT:OWNER/PROXY, e.g. 2222:homelab/ssh or udp:5353:homelab/dns',
    ],
  );
});

test('metadata: a table of strings for the server plugins (frp metadatas), bounded, each mistake named', () => {
  assert.deepEqual(loadClientConfig(write(HEAD)).metadata, {});
  assert.deepEqual(
    loadClientConfig(write(`metadata = { team = "ops", site = "basement" }\n${HEAD}`)).metadata,
    {
      team: 'ops',
      site: 'basement',
    },
  );
  assert.deepEqual(problems(`metadata = "ops"\n${HEAD}`), [
    'metadata: expected a table of strings like { team = "ops" }',
  ]);
  assert.deepEqual(problems(`metadata = { port = 22 }\n${HEAD}`), ['metadata.port: expected a string']);
  const many = Array.from({ length: 33 }, (_, i) => `k${i} = "v"`).join(', ');
  assert.deepEqual(problems(`metadata = { ${many} }\n${HEAD}`), ['metadata: at most 32 entries']);
  assert.deepEqual(problems(`metadata = { team = "${'x'.repeat(1025)}" }\n${HEAD}`), [
    'metadata.team: must have at most 1024 characters',
  ]);
});

test('compression = true: asked of the server for tcp, tls, tcpmux and http proxies; refused on udp and on socks5/http-proxy locals, naming the key', () => {
  const config = loadClientConfig(
    write(
      `${HEAD}[[proxies]]\nname = "logs"\ntype = "tcp"\nlocal = "127.0.0.1:9000"\nremote_port = 9000\ncompression = true\n` +
        `[[proxies]]\nname = "web"\ntype = "http"\nlocal = "127.0.0.1:80"\nhosts = ["a.example.com"]\ncompression = false\n`,
    ),
  );
  assert.deepEqual(
    config.proxies.map((p) => proxySpecFields(p).compression),
    [true, undefined],
  );
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "game"\ntype = "udp"\nlocal = "127.0.0.1:27015"\nremote_port = 27015\ncompression = true\n`,
    ),
    [
      'proxies[0] ("game").compression: compression applies to tcp, tls, tcpmux and http proxies; udp datagrams are too small to gain from it',
    ],
  );
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "lan"\ntype = "tcp"\nlocal = "socks5"\nremote_port = 1080\nsocks_no_auth = true\nsocks_allow = ["10.0.0.0/8"]\ncompression = true\n`,
    ),
    ['proxies[0] ("lan").compression: a socks5 proxy does not compress (yet)'],
  );
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "logs"\ntype = "tcp"\nlocal = "127.0.0.1:9000"\nremote_port = 9000\ncompression = "yes"\n`,
    ),
    ['proxies[0] ("logs").compression: expected true or false'],
  );
});

test('remote_port written as a string of one port (as an environment variable gives it) is that port, not a range of one', () => {
  process.env.PORTHOLE_TEST_SSH_PORT = '2222';
  try {
    const ref = '$' + '{PORTHOLE_TEST_SSH_PORT}';
    const config = loadClientConfig(
      write(
        `${HEAD}[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = "${ref}"\n`,
      ),
      {},
    );
    assert.deepEqual(
      config.proxies.map((p) => [p.name, p.remotePort]),
      [['ssh', 2222]],
    );
    assert.deepEqual(config.portRanges, []);
  } finally {
    delete process.env.PORTHOLE_TEST_SSH_PORT;
  }
  assert.deepEqual(
    problems(
      `${HEAD}[[proxies]]\nname = "ssh"\ntype = "tcp"\nlocal = "127.0.0.1:22"\nremote_port = "70000"\n`,
    ),
    ['proxies[0] ("ssh").remote_port: must be at most 65535'],
  );
});
