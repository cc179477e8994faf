import assert from 'node:assert/strict';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { WebSocketServer } from 'ws';
import { MAX_FRAME_PAYLOAD, openWebSocket, Session } from '../src/index.js';

test('many streams writing in one turn never send a WebSocket message past the cap', async (t) => {
  // `ws` assembles whole messages and refuses one over maxPayload (close 1009): a peer with a tight cap.
  const wss = new WebSocketServer({
    host: '127.0.0.1',
    port: 0,
    perMessageDeflate: false,
    maxPayload: MAX_FRAME_PAYLOAD,
  });
  t.after(() => wss.close());
  await once(wss, 'listening');
  const port = (wss.address() as AddressInfo).port;

  const streams = 300;
  const perStream = 4 * 64 * 1024;
  let largest = 0;
  let received = 0;
  const allReceived = new Promise<number | undefined>((resolve) => {
    wss.once('connection', (ws) => {
      ws.on('message', (data: Buffer) => {
        largest = Math.max(largest, data.length);
        received += data.length;
        // Payload plus a 12-byte yamux header per frame and the SYN/window frames: the payload is in.
        if (received >= streams * perStream) resolve(undefined);
      });
      ws.on('close', (code) => resolve(code));
    });
  });

  const conn = await openWebSocket(`ws://127.0.0.1:${port}/`, { timeoutMs: 5000 });
  const client = new Session(conn, { client: true, keepAliveInterval: 0 });
  client.on('error', () => {});
  t.after(() => client.close());
  const chunk = Buffer.alloc(64 * 1024, 7);
  for (let i = 0; i < streams; i++) {
    const stream = client.open();
    stream.on('error', () => {});
    for (let j = 0; j < 4; j++) stream.write(chunk);
  }
  const closeCode = await allReceived;
  assert.equal(closeCode, undefined, `the peer closed with ${closeCode} after ${received} bytes`);
  assert.ok(largest <= MAX_FRAME_PAYLOAD, `largest message ${largest} bytes`);
  assert.ok(largest > 64 * 1024, `writes were coalesced (largest message ${largest} bytes)`);
});
