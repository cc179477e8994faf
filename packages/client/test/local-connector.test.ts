import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Socket } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Session, type Stream } from '@porthole/mux';
import { ConnectionTracker, captureLogs, nextClose, writeStreamHeader } from '@porthole/protocol';
import { ProxyBandwidth } from '../src/bandwidth-limit.js';
import type { ProxyConfig } from '../src/config.js';
import { DirectoryServer } from '../src/directory-server.js';
import { connectLocal, LOCAL_CONNECT_TIMEOUT_MS } from '../src/local-connect.js';
import {
  BURST_CONNECT_TIMEOUT_MS,
  MAX_BURST_LOCAL_CONNECTS,
  MAX_PENDING_LOCAL_CONNECTS,
  PendingLocalConnects,
  serveStream,
} from '../src/local-connector.js';
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
    (stream: Stream) =>
      void serveStream(
        stream,
        byName,
        tracker,
        logs.logger,
        failures,
        pending,
        udpFlows,
        new ProxyBandwidth(),
        new DirectoryServer(byName, logs.logger),
      ),
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
 * accept queue holds one connection the kernel drops every further SYN and those connects hang. With
 * `acceptAfterMs`, it fills its accept queue itself, so that SYNs are dropped from the start, and after that
 * long empties it and accepts every connection; `received()` is what they sent (up to 1 KiB each).
 */
async function startSynDroppingService(
  t: { after: (fn: () => void) => void },
  acceptAfterMs?: number,
): Promise<{ port: number; received: () => string }> {
  const script = [
    'import socket, sys, time',
    'accept_after = float(sys.argv[1])',
    'listener = socket.socket()',
    'listener.bind(("127.0.0.1", 0))',
    'listener.listen(0)',
    'port = listener.getsockname()[1]',
    'fillers = []',
    'for _ in range(2 if accept_after >= 0 else 0):',
    '    filler = socket.socket()',
    '    filler.setblocking(False)',
    '    filler.connect_ex(("127.0.0.1", port))',
    '    fillers.append(filler)',
    'print(port, flush=True)',
    'time.sleep(accept_after if accept_after >= 0 else 120)',
    'for filler in fillers: filler.close()',
    'listener.settimeout(0.1)',
    'deadline = time.time() + 60',
    'while time.time() < deadline:',
    '    try: conn, _ = listener.accept()',
    '    except socket.timeout: continue',
    '    conn.settimeout(1)',
    '    try: data = conn.recv(1024)',
    '    except OSError: data = b""',
    '    if data: print(data.decode(errors="replace"), end="", flush=True)',
    '    conn.close()',
  ].join('\n');
  const python = spawn('python3', ['-c', script, String((acceptAfterMs ?? -1000) / 1000)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.after(() => python.kill());
  // Its port on the first line, then what it received: read as text, since a line may come in two chunks.
  let output = '';
  python.stdout.setEncoding('utf8');
  python.stdout.on('data', (chunk: string) => {
    output += chunk;
  });
  while (!output.includes('\n')) await once(python.stdout, 'data');
  const firstLine = output.indexOf('\n') + 1;
  return { port: Number(output.slice(0, firstLine)), received: () => output.slice(firstLine) };
}

test('connects pending on a local service that drops SYNs are bounded: 256 wait the connect timeout, a burst past them 2 s, past 1024 a stream is reset at once', {
  timeout: 30_000,
}, async (t) => {
  const { port } = await startSynDroppingService(t);
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
  const resetAt = new Map<Stream, number>();
  const open = (n: number) => {
    for (let i = 0; i < n; i++) {
      const stream = server.open();
      stream.on('error', () => {});
      writeStreamHeader(stream, header('stuck'));
      stream.once('close', () => resetAt.set(stream, Date.now()));
      opened.push(stream);
    }
  };
  const start = Date.now();
  open(MAX_BURST_LOCAL_CONNECTS + extra);
  // The service's accept queue takes one or two; every other connect hangs. Past the burst bound the
  // streams are reset at once, long before any connect's timeout.
  const waitForResets = async (n: number, ms: number) => {
    const deadline = Date.now() + ms;
    while (resetAt.size < n && Date.now() < deadline) await sleep(50);
  };
  await waitForResets(extra - 2, 1500);
  assert.ok(Date.now() - start < BURST_CONNECT_TIMEOUT_MS, 'the refusals came before any connect timed out');
  assert.ok(resetAt.size >= extra - 2 && resetAt.size <= extra, `${resetAt.size} streams reset at once`);
  const refused = await logs.waitFor('local connect failed', { proxy: 'stuck' });
  assert.equal(refused.reason, `${MAX_BURST_LOCAL_CONNECTS} connects to the local service already pending`);

  // The burst's connects (past the first 256) give up at their short timeout; the first 256 wait on.
  const burst = MAX_BURST_LOCAL_CONNECTS - MAX_PENDING_LOCAL_CONNECTS;
  await waitForResets(extra + burst - 2, 6000);
  await sleep(300);
  const early = [...resetAt.values()].filter((at) => at - start < LOCAL_CONNECT_TIMEOUT_MS).length;
  assert.ok(
    early >= extra + burst - 2 && early <= extra + burst,
    `${early} streams reset before the connect timeout; expected ${extra} refused and ${burst} timed out`,
  );
  assert.ok(
    Date.now() - start < LOCAL_CONNECT_TIMEOUT_MS - 1000,
    'checked before the first 256 could time out',
  );
  // Visitors that leave while their connect is pending give their places back at once.
  for (const stream of opened) if (!resetAt.has(stream)) stream.destroy();
  await sleep(500);
  const before = opened.length;
  open(extra);
  await sleep(1500);
  const lateResets = opened.slice(before).filter((stream) => resetAt.has(stream)).length;
  assert.equal(lateResets, 0, 'new visitors wait for the service instead of being turned away');
});

test('a burst of 1,000 visitors at once reaches a service that answers: none is turned away', {
  timeout: 30_000,
}, async (t) => {
  const service = createServer((socket) => {
    socket.on('error', () => {}); // the visitor's stream is reset once it has its answer
    socket.pipe(socket);
  });
  service.listen({ port: 0, host: '127.0.0.1', backlog: 2048 });
  await once(service, 'listening');
  t.after(() => service.close());
  const proxy: ProxyConfig = {
    name: 'echo',
    type: 'tcp',
    local: { host: '127.0.0.1', port: (service.address() as AddressInfo).port },
    remotePort: 1,
  };
  const { server, client, logs } = await sessionPair([proxy]);
  t.after(() => {
    server.close();
    client.close();
  });
  const visitors = 1000;
  const answered = await Promise.all(
    Array.from({ length: visitors }, (_, i) => {
      const stream = server.open();
      stream.on('error', () => {});
      writeStreamHeader(stream, header('echo'));
      const ping = `ping ${i}`;
      stream.write(ping);
      return new Promise<boolean>((resolve) => {
        let got = '';
        stream.on('data', (d: Buffer) => {
          got += d.toString();
          if (got === ping) {
            stream.destroy();
            resolve(true);
          }
        });
        stream.once('close', () => resolve(got === ping));
      });
    }),
  );
  const failed = answered.filter((ok) => !ok).length;
  assert.equal(failed, 0, `${failed} of ${visitors} visitors were not answered`);
  assert.deepEqual(
    logs.lines.filter((line) => line.msg === 'local connect failed'),
    [],
  );
});

test('a connect that times out says after how long, and why it had that long', {
  timeout: 10_000,
}, async (t) => {
  const { port } = await startSynDroppingService(t, 5000); // its queue filled: our SYN is dropped until then
  const { server, client } = await sessionPair([]);
  t.after(() => {
    server.close();
    client.close();
  });
  const stream = server.open();
  stream.on('error', () => {});
  await assert.rejects(connectLocal({ host: '127.0.0.1', port }, stream, 300, ' (a burst)'), (err: Error) => {
    assert.equal(err.message, `connect to 127.0.0.1:${port} timed out after 300ms (a burst)`);
    return true;
  });
  stream.destroy();
});

test('a local_tls service that accepts and never answers the ClientHello times out as a TLS handshake, its socket closed', {
  timeout: 10_000,
}, async (t) => {
  const accepted: Socket[] = [];
  // Reads (so that the client's FIN shows as 'end') and never answers.
  const silent = createServer((socket) => accepted.push(socket.resume()));
  silent.listen(0, '127.0.0.1');
  await once(silent, 'listening');
  t.after(() => silent.close());
  const port = (silent.address() as AddressInfo).port;
  const { server, client } = await sessionPair([]);
  t.after(() => {
    server.close();
    client.close();
  });
  const stream = server.open();
  stream.on('error', () => {});
  const tls = { insecureSkipVerify: false };
  const outcome = await connectLocal({ host: '127.0.0.1', port }, stream, 300, '', { tls }).then(
    (socket) => {
      socket.destroy();
      return 'connected';
    },
    (err: Error) => err.message,
  );
  assert.equal(outcome, `TLS handshake with 127.0.0.1:${port} timed out after 300ms`);
  // Given up, the connection is closed, not left to the service.
  const [socket] = accepted;
  assert.ok(socket);
  if (!socket.readableEnded) await once(socket, 'end');
  stream.destroy();
});

test('a connect pending when the session is lost is given up: the service never gets the request of a visitor it cannot answer', {
  timeout: 20_000,
}, async (t) => {
  // SYNs dropped until 0.5 s; the connector's first SYN is dropped and the kernel sends it again 1 s later.
  const service = await startSynDroppingService(t, 500);
  const proxy: ProxyConfig = {
    name: 'late',
    type: 'tcp',
    local: { host: '127.0.0.1', port: service.port },
    remotePort: 1,
  };
  const { server, client, logs } = await sessionPair([proxy]);
  t.after(() => client.close());
  const served: Stream[] = [];
  client.on('stream', (stream: Stream) => served.push(stream));
  const stream = server.open();
  stream.on('error', () => {});
  writeStreamHeader(stream, header('late'));
  // A visitor that sends its request and half-closes to wait for the answer (printf ... | nc -N, HTTP/1.0).
  stream.end('POST /transfer\n');
  await sleep(300);
  // The session is lost (the server's end of it goes) while the connect is pending.
  server.close(new Error('network gone'));
  await nextClose(client);
  // Past the SYN sent again at 1 s (and at 3 s, should the first one come before the queue was emptied).
  await sleep(3700);
  assert.equal(service.received(), '', 'the request reached the service after its session was lost');
  assert.equal(served.length, 1);
  assert.ok(served[0]!.destroyed, 'the stream is let go');
  assert.deepEqual(
    logs.lines.filter((line) => line.msg === 'local connect failed'),
    [],
    'a lost session is not a failure of the local service',
  );
});

test('SOCKS visitors stalled in the handshake hold pending places of their proxy: past the bound a stream is reset at once', {
  timeout: 30_000,
}, async (t) => {
  const proxy: ProxyConfig = {
    name: 'socks',
    type: 'tcp',
    local: 'socks5',
    remotePort: 1,
    socks: { credentials: { user: 'u', password: 'p' } },
  };
  const { server, client, logs } = await sessionPair([proxy]);
  t.after(() => {
    server.close();
    client.close();
  });
  const extra = 10;
  const closed = new Set<Stream>();
  for (let i = 0; i < MAX_PENDING_LOCAL_CONNECTS + extra; i++) {
    const stream = server.open();
    stream.on('error', () => {});
    writeStreamHeader(stream, header('socks'));
    // A greeting's first byte, then nothing.
    stream.write(Buffer.from([0x05]));
    stream.once('close', () => closed.add(stream));
  }
  const deadline = Date.now() + 5000;
  while (closed.size < extra && Date.now() < deadline) await sleep(50);
  await sleep(200);
  assert.equal(closed.size, extra, 'only the streams past the bound are reset before the handshake timeout');
  const line = await logs.waitFor('local connect failed', { proxy: 'socks' });
  assert.equal(line.reason, `${MAX_PENDING_LOCAL_CONNECTS} connects to the local service already pending`);
});
