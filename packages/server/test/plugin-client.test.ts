// PluginClient against a real HTTP service on loopback: what counts as an answer, and how many asks one plugin
// can have at once.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { test } from 'node:test';
import { captureLogs } from '@porthole/protocol';
import { PluginClient } from '../src/plugin-client.js';

/** A plugin service answering each request with `answer`; counts the connections open at once. */
async function service(answer: (req: IncomingMessage, res: ServerResponse) => void) {
  const sockets = new Set<Socket>();
  let mostConnections = 0;
  const server = createServer(answer);
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    mostConnections = Math.max(mostConnections, sockets.size);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: new URL(`http://127.0.0.1:${port}/handler`),
    mostConnections: () => mostConnections,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

function clientFor(url: URL, timeoutMs = 2000) {
  const logs = captureLogs();
  const client = new PluginClient({ name: 'p', url, ops: ['Login'], timeoutMs, headers: {} }, logs.logger);
  return { client, logs };
}

test('an answer is frp-shaped JSON; anything else refuses with the reason, as frps does', async () => {
  const answers: Record<string, string | number> = {
    '/allow': '{"reject":false,"unchange":true}',
    '/reject': '{"reject":true,"reject_reason":"no such user"}',
    '/bare-reject': '{"reject":true}',
    '/string-reject': '{"reject":"true"}',
    '/string-unchange': '{"unchange":"false"}',
    '/not-json': '<html>',
    '/array': '[]',
    '/status': 500,
    '/huge': `{"reject":false,"pad":"${'x'.repeat(70_000)}"}`,
  };
  const svc = await service((req, res) => {
    const answer = answers[new URL(req.url!, 'http://x').pathname]!;
    req.resume();
    if (typeof answer === 'number') res.writeHead(answer).end();
    else res.end(answer);
  });
  try {
    const ask = (path: string) => clientFor(new URL(path, svc.url)).client.ask('Login', {});
    assert.deepEqual(await ask('/allow'), { allowed: true });
    assert.deepEqual(await ask('/reject'), { allowed: false, failed: false, reason: 'no such user' });
    assert.deepEqual(await ask('/bare-reject'), { allowed: false, failed: false, reason: 'rejected' });
    assert.deepEqual(await ask('/string-reject'), {
      allowed: false,
      failed: true,
      reason: '"reject" is not a boolean',
    });
    assert.deepEqual(await ask('/string-unchange'), {
      allowed: false,
      failed: true,
      reason: '"unchange" is not a boolean',
    });
    assert.deepEqual(await ask('/not-json'), {
      allowed: false,
      failed: true,
      reason: 'the answer is not JSON',
    });
    assert.deepEqual(await ask('/array'), {
      allowed: false,
      failed: true,
      reason: 'the answer is not a JSON object',
    });
    assert.deepEqual(await ask('/status'), { allowed: false, failed: true, reason: 'answered HTTP 500' });
    assert.deepEqual(await ask('/huge'), {
      allowed: false,
      failed: true,
      reason: 'answered more than 65536 bytes',
    });
  } finally {
    svc.close();
  }
});

test('an allow without "unchange": true keeps the original content, said once per plugin', async () => {
  const svc = await service((req, res) => {
    req.resume();
    res.end('{"reject":false,"unchange":false,"content":{"user":"someone-else"}}');
  });
  try {
    const { client, logs } = clientFor(svc.url);
    assert.deepEqual(await client.ask('Login', {}), { allowed: true });
    assert.deepEqual(await client.ask('Login', {}), { allowed: true });
    const said = logs.lines.filter((line) => String(line.msg).includes('does not take changed content'));
    assert.equal(said.length, 1);
    assert.equal(said[0]!.plugin, 'p');
  } finally {
    svc.close();
  }
});

test('a flood of asks: at most 16 connections to the plugin, 256 asks waiting, the rest refused at once; a slow plugin times out', async () => {
  const held: ServerResponse[] = [];
  const svc = await service((req, res) => {
    req.resume();
    held.push(res);
  });
  try {
    const { client } = clientFor(svc.url, 1500);
    const verdicts = await Promise.all(Array.from({ length: 300 }, () => client.ask('NewUserConn', {})));
    const reasons = new Map<string, number>();
    for (const verdict of verdicts) {
      assert.equal(verdict.allowed, false);
      if (!verdict.allowed) reasons.set(verdict.reason, (reasons.get(verdict.reason) ?? 0) + 1);
    }
    assert.deepEqual(Object.fromEntries(reasons), {
      '256 requests already waiting for it': 44,
      'no answer within 1500 ms': 256,
    });
    assert.ok(svc.mostConnections() <= 16, `${svc.mostConnections()} connections`);
    client.close();
  } finally {
    for (const res of held) res.destroy();
    svc.close();
  }
});
