// Fast end-to-end smoke tests: the real porthole-server and porthole-client programs, real config files,
// real sockets on loopback. (The heavy end-to-end suite lives in /test.)
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { once } from 'node:events';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { type TestContext, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { scratchDir } from '@porthole/mux/test/scratch-dir';
import { freePort, startRelay, visit } from './harness.js';
import { selfSignedCert } from './self-signed-cert.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '../../../..');
const serverBin = join(root, 'packages/server/bin/porthole-server.js');
const clientBin = join(root, 'packages/client/bin/porthole-client.js');

function run(bin: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [bin, ...args], { timeout: 20_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : 1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

type Line = Record<string, unknown>;

/** A running CLI whose JSON log lines can be awaited; killed when the test ends. */
class Program {
  readonly lines: Line[] = [];
  readonly exited: Promise<number | null>;
  private readonly child: ChildProcess;

  constructor(t: TestContext, bin: string, args: string[]) {
    this.child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.exited = once(this.child, 'exit').then(([code]) => code as number | null);
    createInterface({ input: this.child.stdout! }).on('line', (text) =>
      this.lines.push(JSON.parse(text) as Line),
    );
    t.after(() => this.child.kill('SIGKILL'));
  }

  async waitFor(msg: string, fields: Line = {}, timeoutMs = 10_000, from = 0): Promise<Line> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const line = this.lines
        .slice(from)
        .find((l) => l.msg === msg && Object.entries(fields).every(([k, v]) => l[k] === v));
      if (line) return line;
      await new Promise((r) => setTimeout(r, 20));
    }
    throw new Error(
      `no "${msg}" ${JSON.stringify(fields)} in ${timeoutMs} ms:\n${this.lines.map((l) => JSON.stringify(l)).join('\n')}`,
    );
  }

  async stop(): Promise<number | null> {
    this.child.kill('SIGTERM');
    return this.exited;
  }
}

async function echoService(t: TestContext): Promise<number> {
  const service = createServer({ allowHalfOpen: true }, (socket) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => socket.end(`echo:${Buffer.concat(chunks)}`));
  });
  service.listen(0, '127.0.0.1');
  await once(service, 'listening');
  t.after(() => service.close());
  return (service.address() as AddressInfo).port;
}

function setup(serverToml: string) {
  const dir = scratchDir('porthole-smoke-');
  writeFileSync(join(dir, 'secret'), `${'s3cr3t'.repeat(8)}\n`, { mode: 0o600 });
  writeFileSync(join(dir, 'server.toml'), `${serverToml}\n[auth]\nsecret_file = "secret"\n`);
  return dir;
}

/** Starts porthole-server on a config made by setup(); issues a token for `name` into dir/token. */
async function serverWithToken(t: TestContext, serverToml: string, name: string, ports?: number) {
  const dir = setup(serverToml);
  const config = join(dir, 'server.toml');
  const server = new Program(t, serverBin, ['--config', config]);
  const { addr } = await server.waitFor('server listening');
  const portArgs = ports === undefined ? [] : ['--ports', String(ports)];
  const issued = await run(serverBin, ['token', 'issue', '--config', config, '--name', name, ...portArgs]);
  writeFileSync(join(dir, 'token'), issued.stdout);
  return { dir, server, addr: String(addr), jwt: issued.stdout.trim() };
}

test('token issue prints one JWT line; check and bad flags exit 0 / 2 with file: key: reason', async () => {
  const dir = setup('listen = "127.0.0.1:0"');
  const config = join(dir, 'server.toml');
  const issued = await run(serverBin, [
    'token',
    'issue',
    '--config',
    config,
    '--name',
    'homelab',
    '--ports',
    '2222,8000-8099',
  ]);
  assert.equal(issued.code, 0, issued.stderr);
  assert.match(issued.stdout, /^[\w-]+\.[\w-]+\.[\w-]+\n$/);
  assert.deepEqual(await run(serverBin, ['check', '--config', config]), {
    code: 0,
    stdout: `${config}: ok\n`,
    stderr: '',
  });
  // A secret file others can read is worth a warning (not a refusal); so is a client's token file.
  chmodSync(join(dir, 'secret'), 0o644);
  assert.deepEqual(await run(serverBin, ['check', '--config', config]), {
    code: 0,
    stdout: `${config}: ok\n`,
    stderr: `warning: auth.secret_file: ${join(dir, 'secret')} is open to other users (mode 644); chmod 600 it\n`,
  });
  writeFileSync(join(dir, 'token'), `${issued.stdout}`, { mode: 0o640 });
  const clientCheck = await run(clientBin, [
    'check',
    '--server',
    'ws://127.0.0.1:1/_porthole',
    '--token-file',
    join(dir, 'token'),
    '--tcp',
    '2222:127.0.0.1:22',
  ]);
  assert.equal(clientCheck.code, 0, clientCheck.stderr);
  assert.equal(
    clientCheck.stderr,
    `warning: token_file: ${join(dir, 'token')} is open to other users (mode 640); chmod 600 it\n`,
  );
  writeFileSync(
    join(dir, 'bad.toml'),
    'listen = "127.0.0.1:0"\nallow_ports = ["x"]\n[auth]\nsecret_file = "secret"\n',
  );
  const bad = await run(serverBin, ['check', '--config', join(dir, 'bad.toml')]);
  assert.equal(bad.code, 2);
  assert.equal(
    bad.stderr,
    `${join(dir, 'bad.toml')}: allow_ports: invalid port range "x" (expected a port like 8080 or a range like 2000-2999)\n`,
  );
  assert.equal((await run(clientBin, ['--server', 'ws://x', '--tcp', 'nope'])).code, 2);
  assert.equal((await run(clientBin, ['--bogus'])).code, 2);
  assert.match(
    (await run(clientBin, ['--version'])).stdout,
    /^porthole-client \d+\.\d+\.\d+ \(protocol 1\)\n$/,
  );
  assert.match((await run(serverBin, ['--help'])).stdout, /token issue --config server.toml --name NAME/);
});

test('the examples are valid configs (with their file paths pointed at real files)', async () => {
  const dir = setup('');
  writeFileSync(join(dir, 'token'), 'a.b.c\n');
  writeFileSync(join(dir, 'admin-token'), `${'a'.repeat(32)}\n`);
  writeFileSync(join(dir, 'socks-password'), 'a long random password\n', { mode: 0o600 });
  writeFileSync(join(dir, 'http-proxy-password'), 'another long random password\n', { mode: 0o600 });
  // The [[https.certs]] pair of the example: a real self-signed certificate for example.com.
  selfSignedCert({
    certFile: join(dir, 'fullchain.pem'),
    keyFile: join(dir, 'privkey.pem'),
    commonName: 'example.com',
    altNames: ['DNS:example.com', 'DNS:*.example.com'],
  });
  const rewrite = (name: string) => {
    const text = readFileSync(join(root, 'examples', name), 'utf8')
      .replaceAll('/etc/porthole/secret', join(dir, 'secret'))
      .replaceAll('/etc/porthole/token', join(dir, 'token'))
      .replaceAll('/etc/porthole/admin-token', join(dir, 'admin-token'))
      .replaceAll('/etc/porthole/socks-password', join(dir, 'socks-password'))
      .replaceAll('/etc/porthole/http-proxy-password', join(dir, 'http-proxy-password'))
      .replaceAll('/etc/porthole/example.com/', `${dir}/`);
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  };
  const server = await run(serverBin, ['check', '--config', rewrite('server.toml')]);
  assert.equal(server.code, 0, server.stderr);
  const client = await run(clientBin, ['check', '--config', rewrite('client.toml')]);
  assert.equal(client.code, 0, client.stderr);
});

test('a tcp tunnel end to end: bytes and half-close through it, a bad token refused with its reason, SIGTERM exits 0', async (t) => {
  const servicePort = await echoService(t);
  const publicPort = await freePort();
  const { dir, server, addr, jwt } = await serverWithToken(
    t,
    `listen = "127.0.0.1:0"\nproxy_bind = "127.0.0.1"\nallow_ports = ["${publicPort}"]\nshutdown_timeout = "2s"`,
    'smoke',
    publicPort,
  );
  const url = `ws://${addr}/_porthole`;
  writeFileSync(
    join(dir, 'client.toml'),
    `server = "${url}"\ntoken_file = "token"\nreconnect_initial = "100ms"\nreconnect_max = "500ms"\n` +
      `[[proxies]]\nname = "echo"\ntype = "tcp"\nlocal = "127.0.0.1:${servicePort}"\nremote_port = ${publicPort}\n`,
  );
  const client = new Program(t, clientBin, ['--config', join(dir, 'client.toml')]);
  const registered = await client.waitFor('proxy registered', { proxy: 'echo' });
  assert.equal(registered.remote_addr, `127.0.0.1:${publicPort}`);

  assert.deepEqual(await visit(publicPort, 'hello'), { data: 'echo:hello' });
  const closed = await server.waitFor('connection closed', { proxy: 'echo' });
  assert.equal(closed.bytes_in, 5);
  assert.equal(closed.bytes_out, 10);
  assert.equal(closed.reason, 'closed');

  // A client with a token signed by another secret: a clear reason, retried; the tunnel keeps working.
  writeFileSync(join(dir, 'forged'), `${jwt.slice(0, -4)}AAAA\n`);
  const forged = new Program(t, clientBin, [
    '--server',
    url,
    '--token-file',
    join(dir, 'forged'),
    '--tcp',
    `${publicPort}:127.0.0.1:1`,
  ]);
  const failed = await forged.waitFor('connect failed');
  assert.equal(failed.reason, '401: bad signature');
  assert.ok(typeof failed.retry_ms === 'number');
  await forged.waitFor('connect failed', {}, 5000, forged.lines.indexOf(failed) + 1);
  assert.deepEqual(await visit(publicPort, 'still'), { data: 'echo:still' });

  assert.equal(await forged.stop(), 0);
  assert.equal(await client.stop(), 0);
  await server.waitFor('proxy closed', { proxy: 'echo', reason: 'unregistered by client' });
  assert.equal(await server.stop(), 0);
});

test('the client notices a dead network by keepalive, reconnects and takes its port back from its half-open session', async (t) => {
  const servicePort = await echoService(t);
  const publicPort = await freePort();
  // The server's heartbeat is slow, so on the server the old session is still there (half-open).
  const { dir, server, addr } = await serverWithToken(
    t,
    `listen = "127.0.0.1:0"\nproxy_bind = "127.0.0.1"\nheartbeat_interval = "10s"\nheartbeat_timeout = "60s"`,
    'nat',
  );
  const relay = await startRelay({ host: '127.0.0.1', port: Number(addr.split(':')[1]) });
  t.after(() => relay.close());
  writeFileSync(
    join(dir, 'client.toml'),
    `server = "ws://127.0.0.1:${relay.port}/_porthole"\ntoken_file = "token"\n` +
      'heartbeat_interval = "200ms"\nheartbeat_timeout = "800ms"\nreconnect_initial = "100ms"\nreconnect_max = "300ms"\n' +
      `[[proxies]]\nname = "echo"\ntype = "tcp"\nlocal = "127.0.0.1:${servicePort}"\nremote_port = ${publicPort}\n`,
  );
  const client = new Program(t, clientBin, ['--config', join(dir, 'client.toml')]);
  await client.waitFor('proxy registered', { proxy: 'echo' });
  const darkAt = Date.now();
  relay.darkenExisting();
  const lost = await client.waitFor('session lost', {}, 5000);
  assert.match(String(lost.reason), /keepalive/);
  const from = client.lines.indexOf(lost);
  await client.waitFor('proxy registered', { proxy: 'echo' }, 5000, from);
  // About heartbeat_timeout plus a reconnect, with room for a stalled machine; the server's own heartbeat
  // would have taken 60 s to let the port go.
  assert.ok(Date.now() - darkAt < 8000, `back within ${Date.now() - darkAt} ms`);
  await server.waitFor('client replaced', { client: 'nat' });
  assert.deepEqual(await visit(publicPort, 'back'), { data: 'echo:back' });
  assert.equal(await client.stop(), 0);
  assert.equal(await server.stop(), 0);
});

test('wss: the server serves TLS from [tls]; the client trusts a private CA only through ca_file', async (t) => {
  const dir = setup('');
  selfSignedCert({
    certFile: join(dir, 'cert.pem'),
    keyFile: join(dir, 'key.pem'),
    commonName: 'localhost',
    altNames: ['IP:127.0.0.1'],
  });
  const tls = '\n[tls]\ncert_file = "cert.pem"\nkey_file = "key.pem"\n';
  writeFileSync(
    join(dir, 'server.toml'),
    `listen = "127.0.0.1:0"\nproxy_bind = "127.0.0.1"\n[auth]\nsecret_file = "secret"${tls}`,
  );
  const server = new Program(t, serverBin, ['--config', join(dir, 'server.toml')]);
  const { addr, tls: served } = await server.waitFor('server listening');
  assert.equal(served, true);
  const issued = await run(serverBin, [
    'token',
    'issue',
    '--config',
    join(dir, 'server.toml'),
    '--name',
    'tls',
  ]);
  writeFileSync(join(dir, 'token'), issued.stdout);
  const servicePort = await echoService(t);
  const publicPort = await freePort();
  const args = [
    '--server',
    `wss://${addr}/_porthole`,
    '--token-file',
    join(dir, 'token'),
    '--tcp',
    `${publicPort}:127.0.0.1:${servicePort}`,
  ];
  const untrusting = new Program(t, clientBin, args);
  assert.equal(
    (await untrusting.waitFor('connect failed')).reason,
    "self-signed certificate (the server's certificate is not signed by a CA this machine trusts: for a private CA, set ca_file (--ca-file) to the CA's certificate)",
  );
  assert.equal(await untrusting.stop(), 0);
  const trusting = new Program(t, clientBin, [...args, '--ca-file', join(dir, 'cert.pem')]);
  await trusting.waitFor('proxy registered');
  assert.deepEqual(await visit(publicPort, 'over tls'), { data: 'echo:over tls' });
});

test('npm run demo: the demo script reaches the service through the tunnel and exits 0 with --once', async () => {
  const demo = await run(join(root, 'examples/demo.mjs'), ['--once']);
  assert.equal(demo.code, 0, demo.stdout + demo.stderr);
  assert.match(demo.stdout, /curl http:\/\/127\.0\.0\.1:\d+\/through-the-tunnel/);
  assert.match(
    demo.stdout,
    /Reply through the tunnel \(HTTP 200\): hello from the service behind the tunnel/,
  );
  assert.match(demo.stdout, /stopped: server exited 0, client exited 0/);
});

test('npm run demo: Ctrl-C in its terminal (SIGINT to the whole process group) stops the server and client once each, all exit 0', async (t) => {
  // A process group of its own stands for the terminal's foreground group, which Ctrl-C signals whole.
  const demo = spawn(process.execPath, [join(root, 'examples/demo.mjs')], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const exited = once(demo, 'exit').then(([code]) => code as number | null);
  t.after(async () => {
    if (demo.exitCode !== null || demo.signalCode !== null) return;
    process.kill(-demo.pid!, 'SIGTERM');
    const timer = setTimeout(() => process.kill(-demo.pid!, 'SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  });
  let output = '';
  demo.stdout!.on('data', (chunk: Buffer) => {
    output += chunk;
  });
  demo.stderr!.on('data', (chunk: Buffer) => {
    output += chunk;
  });
  const deadline = Date.now() + 30_000;
  while (!output.includes('press Ctrl-C to stop') && Date.now() < deadline && demo.exitCode === null)
    await new Promise((r) => setTimeout(r, 50));
  assert.match(output, /press Ctrl-C to stop/);

  process.kill(-demo.pid!, 'SIGINT');
  const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timed out'), 15_000))]);
  assert.equal(code, 0, output);
  assert.match(output, /stopped: server exited 0, client exited 0/);
  assert.doesNotMatch(output, /second signal/);
});
