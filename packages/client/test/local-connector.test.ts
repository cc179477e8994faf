import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Session, type Stream } from '@porthole/mux';
import { ConnectionTracker, captureLogs, writeStreamHeader } from '@porthole/protocol';
import type { ProxyConfig } from '../src/config.js';
import { MAX_PENDING_LOCAL_CONNECTS, PendingLocalConnects, serveStream } from '../src/local-connector.js';
import { LocalFailureLog } from '../src/local-failure-log.js';
import { OpenUdpFlows } from '../src/udp-forwarder.js';

/** A mux session pair over a real loopback TCP connection; `client` serves streams with serveStream. */
async function sessionPair(proxies: ProxyConfig[]) {
  const logs = captureLogs();
  const tracker = new ConnectionTracker();
  const listener = createServer();
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  const accepted = once(listener, 'connection') as Promise<[Socket]>;
  const dialed = connect((listener.address() as AddressInfo).port, '127.0.0.1');
  const [serverSocket] = await accepted;
  listener.close();
  const server = new Session(serverSocket, { client: false, keepAliveInterval: 0 });
  const client = new Session(dialed, { client: true, keepAliveInterval: 0 });
  const byName = new Map(proxies.map((p) => [p.name, p]));
  const failures = new LocalFailureLog(logs.logger);
  const pending = new PendingLocalConnects();
  const udpFlows = new OpenUdpFlows();
  client.on(
    'stream',
    (stream: Stream) => void serveStream(stream, byName, tracker, logs.logger, failures, pending, udpFlows),
  );
  return { server, client, logs, tracker };
}

function header(proxy: string) {
  return { proxy, conn: 1, remote_addr: '198.51.100.7', remote_port: 4242, public_addr: '0.0.0.0:2222' };
}

test('a stream is connected to the local service, bytes flow both ways, half-close carried', async (t) => {
  const service = createServer({ allowHalfOpen: true }, (socket) => {
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', () => socket.end(`got ${Buffer.concat(chunks).length}`));
  });
  service.listen(0, '127.0.0.1');
  await once(service, 'listening');
  t.after(() => service.close());
  const proxy: ProxyConfig = {
    name: 'web',
    type: 'tcp',
    local: { host: '127.0.0.1', port: (service.address() as AddressInfo).port },
    remotePort: 2222,
  };
  const { server, client, logs } = await sessionPair([proxy]);
  const stream = server.open();
  writeStreamHeader(stream, header('web'));
  stream.end(Buffer.alloc(1_000_000, 1));
  const reply: Buffer[] = [];
  stream.on('data', (c: Buffer) => reply.push(c));
  await once(stream, 'end');
  assert.equal(Buffer.concat(reply).toString(), 'got 1000000');
  const line = await logs.waitFor('connection closed', { proxy: 'web' });
  assert.equal(line.bytes_in, 1_000_000);
  assert.equal(line.bytes_out, 'got 1000000'.length);
  assert.equal(line.remote_addr, '198.51.100.7:4242');
  assert.equal(line.reason, 'closed');
  server.close();
  client.close();
});

test('a failed local connect resets the stream at once and is logged with the reason', async () => {
  const closedPort = await new Promise<number>((resolve) => {
    const s = createServer().listen(0, '127.0.0.1', () => {
      const { port } = s.address() as AddressInfo;
      s.close(() => resolve(port));
    });
  });
  const proxy: ProxyConfig = {
    name: 'db',
    type: 'tcp',
    local: { host: '127.0.0.1', port: closedPort },
    remotePort: 1,
  };
  const { server, client, logs } = await sessionPair([proxy]);
  const started = Date.now();
  const stream = server.open();
  stream.on('error', () => {});
  writeStreamHeader(stream, header('db'));
  await new Promise((resolve) => stream.once('close', resolve));
  assert.equal((stream.errored as NodeJS.ErrnoException | null)?.code, 'ERR_STREAM_RESET');
  assert.ok(Date.now() - started < 1000, 'reset promptly');
  const line = await logs.waitFor('local connect failed', { proxy: 'db' });
  assert.equal(line.reason, 'ECONNREFUSED');
  assert.equal(line.local, `127.0.0.1:${closedPort}`);

  const unknown = server.open();
  writeStreamHeader(unknown, header('nope'));
  unknown.on('error', () => {});
  await new Promise((resolve) => unknown.once('close', resolve));
  assert.equal((unknown.errored as NodeJS.ErrnoException | null)?.code, 'ERR_STREAM_RESET');

  // A scan of the port while the service is down: twenty lines, then the rest summed up.
  const resets = [];
  for (let i = 0; i < 40; i++) {
    const probe = server.open();
    probe.on('error', () => {});
    writeStreamHeader(probe, header('db'));
    resets.push(new Promise((resolve) => probe.once('close', resolve)));
  }
  await Promise.all(resets);
  const summary = await logs.waitFor('local connect failures not logged one by one', { proxy: 'db' });
  assert.ok(Number(summary.unlogged) >= 1);
  assert.equal(logs.lines.filter((l) => l.msg === 'local connect failed' && l.proxy === 'db').length, 20);
  server.close();
  client.close();
});

/**
 * A local service that drops SYNs: python listens with a backlog of 0 and never accepts, so once its
 * accept queue holds one connection the kernel drops every further SYN and those connects hang.
 */
async function startSynDroppingService(t: { after: (fn: () => void) => void }): Promise<number> {
  const script = [
    'import socket, time',
    'listener = socket.socket()',
    'listener.bind(("127.0.0.1", 0))',
    'listener.listen(0)',
    'print(listener.getsockname()[1], flush=True)',
    'time.sleep(120)',
  ].join('\n');
  const python = spawn('python3', ['-c', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.after(() => python.kill());
  const [first] = (await once(python.stdout, 'data')) as [Buffer];
  return Number(first.toString().trim());
}

test('connects pending on a local service that drops SYNs are bounded: past the bound a stream is reset at once', {
  timeout: 30_000,
}, async (t) => {
  const port = await startSynDroppingService(t);
  const proxy: ProxyConfig = {
    name: 'stuck',
    type: 'tcp',
    local: { host: '127.0.0.1', port },
    remotePort: 1,
  };
  const { server, client, logs } = await sessionPair([proxy]);
  t.after(() => {
    server.close();
    client.close();
  });
  const extra = 40;
  const opened: Stream[] = [];
  const reset = new Set<Stream>();
  const open = (n: number) => {
    for (let i = 0; i < n; i++) {
      const stream = server.open();
      stream.on('error', () => {});
      writeStreamHeader(stream, header('stuck'));
      stream.once('close', () => reset.add(stream));
      opened.push(stream);
    }
  };
  open(MAX_PENDING_LOCAL_CONNECTS + extra);
  // The service's accept queue takes one or two; every other connect hangs for the 10 s connect timeout,
  // so before then the only resets are the streams past the bound.
  const deadline = Date.now() + 8000;
  while (reset.size < extra - 2 && Date.now() < deadline) await sleep(50);
  await sleep(200);
  assert.ok(reset.size >= extra - 2 && reset.size <= extra, `${reset.size} streams reset at once`);
  const line = await logs.waitFor('local connect failed', { proxy: 'stuck' });
  assert.equal(line.reason, `${MAX_PENDING_LOCAL_CONNECTS} connects to the local service already pending`);

  // Visitors that leave while their connect is pending give their places back at once.
  for (const stream of opened) if (!reset.has(stream)) stream.destroy();
  await sleep(500);
  const before = opened.length;
  open(extra);
  await sleep(1500);
  const lateResets = opened.slice(before).filter((stream) => reset.has(stream)).length;
  assert.equal(lateResets, 0, 'new visitors wait for the service instead of being turned away');
});
