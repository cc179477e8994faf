import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, request } from 'node:http';
import { type AddressInfo, connect, type Socket } from 'node:net';
import { test } from 'node:test';
import { setImmediate as nextTurn } from 'node:timers/promises';
import { TunnelAgent } from '../src/http-tunnel-agent.js';

test('a pooled stream carries request after request: reuse is marked, no listener piles up', async (t) => {
  const backend = createServer((_req, res) => res.end('ok'));
  backend.listen(0, '127.0.0.1');
  await once(backend, 'listening');
  t.after(() => backend.close());
  const port = (backend.address() as AddressInfo).port;
  // Real connections to a real HTTP server stand in for tunnel streams: the agent sees a Duplex either way.
  let opened = 0;
  const agent = new TunnelAgent({
    openStream: () => {
      opened++;
      return connect(port, '127.0.0.1');
    },
    maxStreams: 4,
    maxFreeStreams: 4,
  });
  t.after(() => agent.destroy());

  let stream: Socket | undefined;
  for (let i = 0; i < 30; i++) {
    const { body, reused } = await new Promise<{ body: string; reused: boolean }>((resolve, reject) => {
      const req = request({ agent, host: 'app.test', path: `/${i}` }, (res) => {
        stream = req.socket as Socket;
        let body = '';
        res.on('data', (chunk: Buffer) => {
          body += chunk;
        });
        res.on('end', () => resolve({ body, reused: req.reusedSocket }));
      });
      req.on('error', reject);
      req.end();
    });
    assert.equal(body, 'ok');
    assert.equal(reused, i > 0, `request ${i} ${i > 0 ? 'reused' : 'opened'} the stream`);
    await nextTurn(); // the stream goes back to the pool
  }
  assert.equal(opened, 1, 'one stream for 30 sequential requests');
  assert.ok(stream, 'the stream');
  assert.ok(
    stream.listenerCount('error') <= 2,
    `${stream.listenerCount('error')} error listeners after 30 requests`,
  );
});
