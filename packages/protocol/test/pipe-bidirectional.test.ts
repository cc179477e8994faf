import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import { type PipeResult, pipeBidirectional } from '../src/pipe-bidirectional.js';
import { countSocketWrites } from './count-socket-writes.js';

/**
 * A relay on loopback built from real sockets: visitor -> [relay: accepted socket <-> socket to service]
 * -> service. The relay uses pipeBidirectional exactly as server and client do.
 */
const PIPE_EVENTS = ['data', 'end', 'drain', 'close', 'error'] as const;

function listenerCounts(side: Duplex): Record<string, number> {
  return Object.fromEntries(PIPE_EVENTS.map((event) => [event, side.listenerCount(event)]));
}

/**
 * Pipes `a` and `b`; the function returned waits up to `ms` for how the pipe ended (undefined: it had not
 * by then).
 */
function pipeWatched(a: Duplex, b: Duplex, labels: [string, string]) {
  const finished = new Promise<PipeResult>((resolve) => pipeBidirectional(a, b, { labels }, resolve));
  return (ms: number): Promise<PipeResult | undefined> =>
    Promise.race([finished, sleep(ms, undefined, { ref: false })]);
}

async function relayTo(onService: (socket: Socket) => void) {
  const results: PipeResult[] = [];
  const upstreams: Socket[] = [];
  /** Both relay sockets' listener counts before the pipe, and when it reported done. */
  const listeners: { before: Record<string, number>[]; atDone: Record<string, number>[] }[] = [];
  const service = createServer({ allowHalfOpen: true }, onService);
  service.listen(0, '127.0.0.1');
  await once(service, 'listening');
  const relay: Server = createServer({ allowHalfOpen: true }, (visitor) => {
    const upstream = connect({
      port: (service.address() as AddressInfo).port,
      host: '127.0.0.1',
      allowHalfOpen: true,
    });
    upstreams.push(upstream);
    upstream.once('connect', () => {
      const before = [listenerCounts(visitor), listenerCounts(upstream)];
      pipeBidirectional(visitor, upstream, { labels: ['visitor', 'service'] }, (r) => {
        listeners.push({ before, atDone: [listenerCounts(visitor), listenerCounts(upstream)] });
        results.push(r);
      });
    });
  });
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  const dial = () =>
    connect({ port: (relay.address() as AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const close = () => {
    relay.close();
    service.close();
  };
  const waitResult = async () => {
    for (let i = 0; i < 200 && results.length === 0; i++) await sleep(10);
    assert.equal(results.length, 1, 'pipe finished');
    return results[0]!;
  };
  return { dial, close, waitResult, upstreams, listeners };
}

/** The pipe let go of both sockets: only a no-op 'error' listener is left in place of its own. */
function assertLetGo(snapshot: { before: Record<string, number>[]; atDone: Record<string, number>[] }) {
  for (const [i, before] of snapshot.before.entries()) {
    assert.deepEqual(snapshot.atDone[i], { ...before, error: before.error! + 1 }, `socket ${i}'s listeners`);
  }
}

/** A loopback service (half-open allowed) and a socket connected to it. */
async function dialService(onConnection: (socket: Socket) => void) {
  const service = createServer({ allowHalfOpen: true }, onConnection);
  service.listen(0, '127.0.0.1');
  await once(service, 'listening');
  const socket = connect({
    port: (service.address() as AddressInfo).port,
    host: '127.0.0.1',
    allowHalfOpen: true,
  });
  await once(socket, 'connect');
  return { service, socket };
}

test('half-close: the visitor ends its side and still receives the reply; bytes are counted', async () => {
  const relay = await relayTo((socket) => {
    let received = 0;
    socket.on('data', (c: Buffer) => {
      received += c.length;
    });
    socket.on('end', () => socket.end(`got ${received}`));
  });
  const visitor = relay.dial();
  const payload = Buffer.alloc(5 * 1024 * 1024, 7);
  visitor.end(payload);
  const reply: Buffer[] = [];
  visitor.on('data', (c: Buffer) => reply.push(c));
  await once(visitor, 'end');
  assert.equal(Buffer.concat(reply).toString(), `got ${payload.length}`);
  const result = await relay.waitResult();
  assert.equal(result.reason, 'closed');
  assert.equal(result.bytesAtoB, payload.length);
  assert.equal(result.bytesBtoA, `got ${payload.length}`.length);
  visitor.destroy();
  relay.close();
  assertLetGo(relay.listeners[0]!);
});

test('a reset on one side resets the other', async () => {
  const relay = await relayTo((socket) => {
    socket.once('data', () => socket.resetAndDestroy());
  });
  const visitor = relay.dial();
  visitor.write('hello');
  const [err] = (await once(visitor, 'error')) as [NodeJS.ErrnoException];
  assert.equal(err.code, 'ECONNRESET');
  const result = await relay.waitResult();
  assert.match(result.reason, /^service reset/);
  relay.close();
  assertLetGo(relay.listeners[0]!);
});

test('a paused reader stops the writer (backpressure), and nothing is lost when it resumes', async (t) => {
  let serviceSocket: Socket | undefined;
  const relay = await relayTo((socket) => {
    serviceSocket = socket;
    socket.pause();
  });
  const visitor = relay.dial();
  t.after(() => {
    for (const socket of [visitor, serviceSocket, ...relay.upstreams]) socket?.destroy();
    relay.close();
  });
  const chunk = Buffer.alloc(64 * 1024, 1);
  let written = 0;
  // Write until the kernel buffers and the relay's buffers are full; bounded in count.
  for (let i = 0; i < 4096; i++) {
    written += chunk.length;
    if (!visitor.write(chunk)) {
      const drained = await Promise.race([
        once(visitor, 'drain').then(() => true),
        new Promise((r) => setTimeout(() => r(false), 300)),
      ]);
      if (!drained) break;
    }
  }
  assert.ok(written < 4096 * chunk.length, `the writer was stopped after ${written} bytes`);
  // What the relay holds for the stalled service: at most what it gathers for a socket (1 MiB) and one more
  // read; without that cap, one turn's reads (2 MiB).
  const held = relay.upstreams[0]!.writableLength;
  assert.ok(held <= 1024 * 1024 + 64 * 1024, `the relay holds ${held} bytes for the stalled service`);
  let received = 0;
  serviceSocket!.on('data', (c: Buffer) => {
    received += c.length;
  });
  serviceSocket!.resume();
  visitor.end();
  await once(serviceSocket!, 'end');
  assert.equal(received, written);
  serviceSocket!.end();
  await relay.waitResult();
  relay.close();
});

test('large pieces that reach a socket in one turn leave in one writev; a small one leaves at once', async (t) => {
  const received: Buffer[] = [];
  const { service, socket } = await dialService((s) => {
    s.on('data', (c: Buffer) => received.push(c));
    s.on('end', () => s.end());
  });
  t.after(() => {
    socket.destroy();
    service.close();
  });
  const writes = countSocketWrites(socket);
  const tunnel = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
  const pipeResult = pipeWatched(tunnel, socket, ['tunnel', 'local']);
  // Four 16 KiB pieces in one go, the way TLS passes on one read's records.
  const pieces = [1, 2, 3, 4].map((n) => Buffer.alloc(16 * 1024, n));
  for (const piece of pieces) tunnel.push(piece);
  await sleep(50);
  assert.deepEqual(writes, [4], 'one writev carried the four pieces');
  tunnel.push(Buffer.from('bye'));
  assert.deepEqual(writes, [4, 1], 'the small piece was written at once');
  tunnel.push(null);
  const result = await pipeResult(2_000);
  assert.ok(Buffer.concat(received).equals(Buffer.concat([...pieces, Buffer.from('bye')])), 'bytes in order');
  assert.equal(result?.reason, 'closed');
  assert.equal(result?.bytesAtoB, 4 * 16 * 1024 + 3);
});

test('a source paused while its first bytes were inspected flows once piped, those bytes first', async () => {
  const echo = createServer({ allowHalfOpen: true }, (socket) => {
    socket.on('data', (c: Buffer) => socket.write(c));
    socket.on('end', () => socket.end());
  });
  echo.listen(0, '127.0.0.1');
  await once(echo, 'listening');
  const echoPort = (echo.address() as AddressInfo).port;
  const sni = createServer({ allowHalfOpen: true }, (visitor) => {
    // The way the tls listener reads a ClientHello: take the first bytes, pause, put them back, carry on.
    visitor.once('data', (first: Buffer) => {
      visitor.pause();
      visitor.unshift(first);
      const upstream = connect({ port: echoPort, host: '127.0.0.1', allowHalfOpen: true });
      upstream.once('connect', () => pipeBidirectional(visitor, upstream, () => {}));
    });
  });
  sni.listen(0, '127.0.0.1');
  await once(sni, 'listening');
  const visitor = connect({ port: (sni.address() as AddressInfo).port, host: '127.0.0.1' });
  visitor.end('hello, then the rest');
  const reply: Buffer[] = [];
  visitor.on('data', (c: Buffer) => reply.push(c));
  const ended = await Promise.race([
    once(visitor, 'end').then(() => true),
    new Promise((r) => setTimeout(() => r(false), 3000)),
  ]);
  visitor.destroy();
  sni.close();
  echo.close();
  assert.ok(ended, 'the reply ended');
  assert.equal(Buffer.concat(reply).toString(), 'hello, then the rest');
});

/**
 * Reads a paused socket (allowHalfOpen) to its end: 'end', or the error's code, and how many bytes came
 * before it. An 'end' is checked with an empty write, which a socket the peer reset refuses: libuv reports
 * a reset that landed behind unread bytes as an ordinary end, so the event alone cannot tell FIN from RST.
 */
function readToTheEnd(socket: Socket): Promise<{ outcome: string; received: number }> {
  let received = 0;
  return new Promise((resolve) => {
    const settle = (err?: NodeJS.ErrnoException | null) =>
      resolve({ outcome: err ? (err.code ?? err.message) : 'end', received });
    socket.on('data', (c: Buffer) => {
      received += c.length;
    });
    socket.on('end', () => socket.write(Buffer.alloc(0), settle));
    socket.on('error', settle);
    socket.resume();
  });
}

test('an abort while the socket is still sending its FIN closes it anyway (libuv cannot reset a shutting-down stream)', {
  timeout: 10_000,
}, async () => {
  const { service, socket } = await dialService((s) => s.resume());
  const tunnel = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
  const pipeResult = pipeWatched(tunnel, socket, ['tunnel', 'local']);
  // The tunnel's FIN reaches the socket (shutdown begins) and the tunnel is reset in the same tick: the
  // way a yamux FIN followed by an RST in one WebSocket message arrives.
  socket.end();
  tunnel.destroy(Object.assign(new Error('reset by peer'), { code: 'ERR_STREAM_RESET' }));
  const result = await pipeResult(2_000);
  service.close();
  assert.ok(result, 'the pipe finished: both sides closed');
  assert.equal(result.reason, 'tunnel reset');
  assert.equal(socket.destroyed, true);
});

test('bytes that arrived whole before the tunnel failed still reach a slow reader, then its FIN', {
  timeout: 20_000,
}, async () => {
  let serviceSide!: Socket;
  const { service, socket } = await dialService((s) => {
    serviceSide = s;
    s.pause(); // a slow reader: what the pipe writes stays queued
  });
  await sleep(50);
  const tunnel = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
  const pipeResult = pipeWatched(tunnel, socket, ['tunnel', 'local']);
  // 16 MiB and the tunnel's FIN arrive, far more than the kernel takes at once; then the tunnel is reset
  // (its session dropped) while most of it still waits in the socket's queue.
  const total = 16 * 1024 * 1024;
  tunnel.push(Buffer.alloc(total, 1));
  tunnel.push(null);
  await sleep(100);
  assert.ok(socket.writableLength > 0, 'bytes are still queued when the tunnel fails');
  const finishListeners = socket.listenerCount('finish');
  tunnel.destroy(Object.assign(new Error('reset by peer'), { code: 'ERR_STREAM_RESET' }));
  await new Promise((r) => setImmediate(r));
  const finishListenersAdded = socket.listenerCount('finish') - finishListeners;
  const { outcome, received } = await readToTheEnd(serviceSide);
  const result = await pipeResult(3_000);
  service.close();
  serviceSide.destroy();
  assert.equal(outcome, 'end');
  assert.equal(received, total, 'every byte the tunnel had delivered reached the reader');
  assert.equal(result?.reason, 'tunnel reset');
  assert.equal(socket.destroyed, true);
  // The reset came as an 'error' and then a 'close': the socket was let finish once, not twice.
  assert.equal(finishListenersAdded, 1);
});

test('a socket whose FIN is already out is closed, not reset, when the tunnel fails: what the kernel holds still arrives', {
  timeout: 20_000,
}, async () => {
  let serviceSide!: Socket;
  const { service, socket } = await dialService((s) => {
    serviceSide = s;
    s.pause(); // a slow reader: the bytes wait in the kernel
  });
  await sleep(50);
  const tunnel = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
  const pipeResult = pipeWatched(tunnel, socket, ['tunnel', 'local']);
  // Little enough for the kernel to take it all: the socket finishes (its FIN sent) with the bytes unread.
  const total = 512 * 1024;
  tunnel.push(Buffer.alloc(total, 1));
  tunnel.push(null);
  await new Promise((resolve) => socket.once('finish', resolve));
  tunnel.destroy(Object.assign(new Error('reset by peer'), { code: 'ERR_STREAM_RESET' }));
  await sleep(100);
  const { outcome, received } = await readToTheEnd(serviceSide);
  const result = await pipeResult(3_000);
  service.close();
  serviceSide.destroy();
  assert.equal(outcome, 'end');
  assert.equal(received, total, 'every byte the tunnel had delivered reached the reader');
  assert.equal(result?.reason, 'tunnel reset');
  assert.equal(socket.destroyed, true);
});

/** A listener whose connections wait unread (pauseOnConnect) until the test hands them to a pipe. */
async function listenPaused() {
  const server = createServer({ allowHalfOpen: true, pauseOnConnect: true });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const dial = () =>
    connect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  return { server, dial, accepted: accepted.then(([socket]) => socket) };
}

/** Less than one 64 KiB read: the read that takes it is short, which is when libuv reports a reset as an end. */
const UNDER_ONE_READ = 50_000;

test('a visitor reset behind bytes not yet read resets the service, not a FIN after a cut upload', {
  timeout: 10_000,
}, async () => {
  let serviceSide!: Socket;
  const { service, socket: upstream } = await dialService((s) => {
    serviceSide = s;
    s.pause();
  });
  const relay = await listenPaused();
  const visitor = relay.dial();
  visitor.on('error', () => {});
  await once(visitor, 'connect');
  // The visitor sends part of an upload and aborts it: its bytes and its RST wait unread at the relay.
  visitor.write(Buffer.alloc(UNDER_ONE_READ, 3));
  await sleep(50);
  visitor.resetAndDestroy();
  await sleep(50);
  const relaySide = await relay.accepted;
  const pipeResult = pipeWatched(relaySide, upstream, ['visitor', 'service']);
  const { outcome } = await readToTheEnd(serviceSide);
  const result = await pipeResult(2_000);
  service.close();
  relay.server.close();
  serviceSide.destroy();
  assert.equal(outcome, 'ECONNRESET', 'the service sees the upload aborted');
  assert.equal(result?.reason, 'visitor reset (ECONNRESET)');
});

test('a service reset behind bytes not yet read resets the visitor, not a FIN after a cut download', {
  timeout: 10_000,
}, async () => {
  const { server: service, dial: dialServicePaused, accepted } = await listenPaused();
  const upstream = dialServicePaused();
  upstream.pause(); // read nothing until the pipe does
  await once(upstream, 'connect');
  const serviceSide = await accepted;
  // The service sends part of a download and aborts it: its bytes and its RST wait unread at the relay.
  await new Promise((r) => serviceSide.write(Buffer.alloc(UNDER_ONE_READ, 4), r));
  await sleep(50);
  serviceSide.resetAndDestroy();
  await sleep(50);
  const relay = await listenPaused();
  const visitor = relay.dial();
  visitor.pause();
  await once(visitor, 'connect');
  const relaySide = await relay.accepted;
  const pipeResult = pipeWatched(relaySide, upstream, ['visitor', 'service']);
  const { outcome } = await readToTheEnd(visitor);
  const result = await pipeResult(2_000);
  service.close();
  relay.server.close();
  visitor.destroy();
  assert.equal(outcome, 'ECONNRESET', 'the visitor sees the download aborted');
  assert.equal(result?.reason, 'service reset (ECONNRESET)');
});

test('a visitor reset behind unread bytes while its download is queued resets the service too', {
  timeout: 10_000,
}, async () => {
  let serviceSide!: Socket;
  const { service, socket: upstream } = await dialService((s) => {
    serviceSide = s;
    s.pause();
  });
  const relay = await listenPaused();
  const visitor = relay.dial();
  visitor.on('error', () => {});
  visitor.pause(); // it reads none of its download: the relay's writes to it stay queued
  await once(visitor, 'connect');
  const relaySide = await relay.accepted;
  const pipeResult = pipeWatched(relaySide, upstream, ['visitor', 'service']);
  serviceSide.write(Buffer.alloc(8 * 1024 * 1024, 5));
  await sleep(100);
  assert.ok(relaySide.writableLength > 0, 'the download is queued at the relay');
  // Bytes and reset in one go: they land together, and are read while the relay's writes wait.
  visitor.write(Buffer.alloc(UNDER_ONE_READ, 3));
  visitor.resetAndDestroy();
  const { outcome } = await readToTheEnd(serviceSide);
  const result = await pipeResult(2_000);
  service.close();
  relay.server.close();
  serviceSide.destroy();
  assert.equal(outcome, 'ECONNRESET', 'the service sees the upload aborted');
  assert.equal(result?.reason, 'visitor reset (ECONNRESET)');
});

const gc = (() => {
  v8.setFlagsFromString('--expose-gc');
  return vm.runInNewContext('gc') as () => void;
})();

/**
 * A socket left to write out what it holds (its source had ended when the tunnel failed) whose slow reader
 * then resets it: returns a weak reference to it once the pipe is done, and the pipe's reason.
 */
async function flushingSocketResetByItsReader(): Promise<{ socket: WeakRef<Socket>; reason?: string }> {
  let serviceSide!: Socket;
  const { service, socket } = await dialService((s) => {
    serviceSide = s;
    s.pause();
  });
  await sleep(50);
  const tunnel = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
  const pipeResult = pipeWatched(tunnel, socket, ['tunnel', 'local']);
  tunnel.push(Buffer.alloc(16 * 1024 * 1024, 1));
  tunnel.push(null);
  await sleep(100);
  tunnel.destroy(Object.assign(new Error('reset by peer'), { code: 'ERR_STREAM_RESET' }));
  await sleep(50);
  serviceSide.resetAndDestroy();
  const result = await pipeResult(2_000);
  service.close();
  return result ? { socket: new WeakRef(socket), reason: result.reason } : { socket: new WeakRef(socket) };
}

test('a side left to flush that closes before it finishes is let go at once, not kept until its grace ends', {
  timeout: 10_000,
}, async () => {
  const { socket, reason } = await flushingSocketResetByItsReader();
  assert.equal(reason, 'tunnel reset');
  await sleep(50);
  gc();
  await new Promise((r) => setImmediate(r));
  gc();
  // Held by the 10 s grace timer before the fix, and by nothing else.
  assert.equal(socket.deref(), undefined, 'the closed socket was collected');
});
