import assert from 'node:assert/strict';
import { once } from 'node:events';
import { type AddressInfo, connect, createServer, type Server, type Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { test } from 'node:test';
import { type PipeResult, pipeBidirectional } from '../src/pipe-bidirectional.js';

/**
 * A relay on loopback built from real sockets: visitor -> [relay: accepted socket <-> socket to service]
 * -> service. The relay uses pipeBidirectional exactly as server and client do.
 */
async function relayTo(onService: (socket: Socket) => void) {
  const results: PipeResult[] = [];
  const service = createServer({ allowHalfOpen: true }, onService);
  service.listen(0, '127.0.0.1');
  await once(service, 'listening');
  const relay: Server = createServer({ allowHalfOpen: true }, (visitor) => {
    const upstream = connect({
      port: (service.address() as AddressInfo).port,
      host: '127.0.0.1',
      allowHalfOpen: true,
    });
    upstream.once('connect', () =>
      pipeBidirectional(visitor, upstream, { labels: ['visitor', 'service'] }, (r) => results.push(r)),
    );
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
    for (let i = 0; i < 200 && results.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.equal(results.length, 1, 'pipe finished');
    return results[0]!;
  };
  return { dial, close, waitResult };
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
});

test('a paused reader stops the writer (backpressure), and nothing is lost when it resumes', async () => {
  let serviceSocket: Socket | undefined;
  const relay = await relayTo((socket) => {
    serviceSocket = socket;
    socket.pause();
  });
  const visitor = relay.dial();
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

test('an abort while the socket is still sending its FIN closes it anyway (libuv cannot reset a shutting-down stream)', {
  timeout: 10_000,
}, async () => {
  const service = createServer({ allowHalfOpen: true }, (s) => s.resume());
  service.listen(0, '127.0.0.1');
  await once(service, 'listening');
  const socket = connect({
    port: (service.address() as AddressInfo).port,
    host: '127.0.0.1',
    allowHalfOpen: true,
  });
  await once(socket, 'connect');
  const tunnel = new Duplex({ read() {}, write: (_chunk, _encoding, callback) => callback() });
  let result: PipeResult | undefined;
  pipeBidirectional(tunnel, socket, { labels: ['tunnel', 'local'] }, (r) => {
    result = r;
  });
  // The tunnel's FIN reaches the socket (shutdown begins) and the tunnel is reset in the same tick: the
  // way a yamux FIN followed by an RST in one WebSocket message arrives.
  socket.end();
  tunnel.destroy(Object.assign(new Error('reset by peer'), { code: 'ERR_STREAM_RESET' }));
  for (let i = 0; i < 200 && result === undefined; i++) await new Promise((r) => setTimeout(r, 10));
  service.close();
  assert.ok(result, 'the pipe finished: both sides closed');
  assert.equal(result.reason, 'tunnel reset');
  assert.equal(socket.destroyed, true);
});
