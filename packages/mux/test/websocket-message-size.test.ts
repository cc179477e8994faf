import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { WebSocket, WebSocketServer } from 'ws';
import { Session, webSocketDuplex } from '../src/index.js';

test('many streams writing in one turn never build a WebSocket message past the cap', async (t) => {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: 0, perMessageDeflate: false });
  t.after(() => wss.close());
  await new Promise((resolve) => wss.once('listening', resolve));
  const port = (wss.address() as AddressInfo).port;

  const streams = 300;
  const perStream = 4 * 64 * 1024;
  let largest = 0;
  let received = 0;
  const allReceived = new Promise<void>((resolve) => {
    wss.once('connection', (ws) => {
      ws.on('message', (data: Buffer) => {
        largest = Math.max(largest, data.length);
      });
      const server = new Session(webSocketDuplex(ws), { client: false, keepAliveInterval: 0 });
      server.on('stream', (stream) => {
        stream.on('error', () => {}); // the client closes the session with these streams still open
        stream.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (received === streams * perStream) resolve();
        });
      });
    });
  });

  const ws = new WebSocket(`ws://127.0.0.1:${port}/`, { perMessageDeflate: false });
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  const client = new Session(webSocketDuplex(ws), { client: true, keepAliveInterval: 0 });
  t.after(() => client.close());
  const chunk = Buffer.alloc(64 * 1024, 7);
  for (let i = 0; i < streams; i++) {
    const stream = client.open();
    stream.on('error', () => {});
    for (let j = 0; j < 4; j++) stream.write(chunk);
  }
  await allReceived;
  assert.equal(received, streams * perStream);
  // The promise to peers: messages stay near 1 MiB (one 128 KiB data frame may take one past it).
  assert.ok(largest <= 1024 * 1024 + 128 * 1024 + 12, `largest message ${largest} bytes`);
  assert.ok(largest > 64 * 1024, `writes were coalesced (largest message ${largest} bytes)`);
});
