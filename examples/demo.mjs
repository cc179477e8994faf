#!/usr/bin/env node
// `npm run demo`: a whole tunnel on this machine, with the real programs and real config files.
// Starts a small HTTP service, porthole-server and porthole-client on loopback, waits until the proxy is
// registered, fetches the service THROUGH the tunnel and prints the curl command that does the same.
// Runs until Ctrl-C; with --once it stops everything and exits 0 after printing (tests use that).
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const serverBin = join(root, 'packages/server/bin/porthole-server.js');
const clientBin = join(root, 'packages/client/bin/porthole-client.js');
const once = process.argv.includes('--once');
const STARTUP_TIMEOUT_MS = 15_000;

const dir = mkdtempSync(join(tmpdir(), 'porthole-demo-'));
const children = [];

function say(text) {
  process.stdout.write(`${text}\n`);
}

/** A port that was free a moment ago; the demo's public port (it must be named in allow_ports). */
function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createTcpServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

/**
 * Starts a porthole program; resolves lines as they come, prints them compactly, prefixed. Each runs in a
 * process group of its own (detached): a terminal's Ctrl-C signals its whole foreground group, so the
 * programs got that SIGINT and then the demo's SIGTERM, read it as a second signal ("exiting without
 * waiting for open connections") and exited 1. Now only the demo hears Ctrl-C and stops them once each.
 */
function start(name, bin, args) {
  const child = spawn(process.execPath, [bin, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const waiters = [];
  const lines = createInterface({ input: child.stdout });
  lines.on('line', (text) => {
    let record;
    try {
      record = JSON.parse(text);
    } catch {
      say(`[${name}] ${text}`);
      return;
    }
    const { level, time, msg, ...fields } = record;
    const rest = Object.entries(fields)
      .map(([k, v]) => `${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`)
      .join(' ');
    say(`[${name}] ${level.padEnd(5)} ${msg}${rest ? ` ${rest}` : ''}`);
    for (const waiter of [...waiters]) waiter(record);
  });
  createInterface({ input: child.stderr }).on('line', (text) => say(`[${name}] ${text}`));
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve(code ?? signal)));
  const waitFor = (msg) =>
    new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`${name}: no "${msg}" within ${STARTUP_TIMEOUT_MS} ms`)),
        STARTUP_TIMEOUT_MS,
      );
      const waiter = (record) => {
        if (record.msg !== msg) return;
        clearTimeout(timer);
        waiters.splice(waiters.indexOf(waiter), 1);
        resolve(record);
      };
      waiters.push(waiter);
      exited.then((code) => reject(new Error(`${name} exited (${code}) before "${msg}"`)));
    });
  const entry = { name, child, exited, waitFor };
  children.push(entry);
  return entry;
}

function get(port, path) {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, timeout: 5000, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => {
        body += chunk;
      });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('timeout', () => req.destroy(new Error('timed out')));
    req.on('error', reject);
    req.end();
  });
}

let stopping;
/** Stops every program once, whichever asks first (--once, Ctrl-C, SIGTERM, the terminal closing, a failure). */
function stopAll() {
  stopping ??= (async () => {
    for (const { child } of children) if (child.exitCode === null) child.kill('SIGTERM');
    const codes = await Promise.all(children.map(async ({ name, exited }) => [name, await exited]));
    service.close();
    rmSync(dir, { recursive: true, force: true });
    return codes;
  })();
  return stopping;
}

// In groups of their own the programs no longer share the demo's fate: whatever ends the demo stops them.
process.on('exit', () => {
  for (const { child } of children) if (child.exitCode === null) child.kill('SIGKILL');
});

// 1. The local service: what the tunnel exposes.
const service = createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain; charset=utf-8' });
  res.end(`hello from the service behind the tunnel (you asked for ${req.url})\n`);
});
await new Promise((resolve) => service.listen(0, '127.0.0.1', resolve));
const servicePort = service.address().port;
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'])
  process.once(signal, async () => {
    const codes = await stopAll();
    say(`stopped: ${codes.map(([name, code]) => `${name} exited ${code}`).join(', ')}`);
    process.exit(0);
  });
const publicPort = await freePort();

try {
  // 2. The server: a fresh secret and a config file that allows exactly the demo's public port.
  writeFileSync(join(dir, 'secret'), `${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  writeFileSync(
    join(dir, 'server.toml'),
    [
      'listen = "127.0.0.1:0"',
      'proxy_bind = "127.0.0.1"',
      `allow_ports = ["${publicPort}"]`,
      'shutdown_timeout = "2s"',
      '[auth]',
      'secret_file = "secret"',
      '',
    ].join('\n'),
  );
  const server = start('server', serverBin, ['--config', join(dir, 'server.toml')]);
  const listening = await server.waitFor('server listening');

  // 3. A token for the client, as an operator would issue it on the VPS.
  const token = execFileSync(
    process.execPath,
    [
      serverBin,
      'token',
      'issue',
      '--config',
      join(dir, 'server.toml'),
      '--name',
      'demo',
      '--ports',
      String(publicPort),
    ],
    { encoding: 'utf8' },
  );
  writeFileSync(join(dir, 'token'), token, { mode: 0o600 });

  // 4. The client: exposes the local service on the server's public port.
  writeFileSync(
    join(dir, 'client.toml'),
    [
      `server = "ws://${listening.addr}${listening.path}"`,
      'token_file = "token"',
      'shutdown_timeout = "2s"',
      // The server is on this machine: a proxy from the environment (http_proxy) would not reach it.
      'proxy = "none"',
      '[[proxies]]',
      'name = "web"',
      'type = "tcp"',
      `local = "127.0.0.1:${servicePort}"`,
      `remote_port = ${publicPort}`,
      '',
    ].join('\n'),
  );
  const client = start('client', clientBin, ['--config', join(dir, 'client.toml')]);
  const registered = await client.waitFor('proxy registered');

  // 5. Through the tunnel: visitor -> server's public port -> WebSocket -> client -> local service.
  const reply = await get(publicPort, '/through-the-tunnel');
  say('');
  say(
    `The local service on 127.0.0.1:${servicePort} is reachable through the tunnel at ${registered.remote_addr}:`,
  );
  say('');
  say(`  curl http://${registered.remote_addr}/through-the-tunnel`);
  say('');
  say(`Reply through the tunnel (HTTP ${reply.status}): ${reply.body.trim()}`);
  say(`Config files and the token are in ${dir} (removed when the demo stops).`);
  say('');
  if (reply.status !== 200 || !reply.body.includes('hello from the service'))
    throw new Error('unexpected reply');
  if (once) {
    const codes = await stopAll();
    say(`stopped: ${codes.map(([name, code]) => `${name} exited ${code}`).join(', ')}`);
    process.exit(codes.every(([, code]) => code === 0) ? 0 : 1);
  }
  say('Running; press Ctrl-C to stop.');
} catch (err) {
  say(`demo failed: ${err.message}`);
  await stopAll();
  process.exit(1);
}
