// The http-01 answers on a real HTTP server: the exact token for its own name is answered; any other
// token, name or method on the path goes on (here: to a handler standing in for the router).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, request } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { AcmeChallenges } from '../src/acme-challenges.js';

function get(port: number, path: string, host: string, method = 'GET') {
  return new Promise<{ status: number; type: string | undefined; body: string }>((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, headers: { host } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => {
        body += d;
      });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: res.headers['content-type'], body }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('a token in progress is answered for its own name only; the rest falls through to routing', async () => {
  const challenges = new AcmeChallenges();
  const server = createServer((req, res) => {
    if (!challenges.answer(req, res)) res.end(`routed ${req.method} ${req.headers.host} ${req.url}`);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const { port } = server.address() as AddressInfo;
  try {
    const path = '/.well-known/acme-challenge/tok3n';
    assert.equal((await get(port, path, 'app.test')).body, `routed GET app.test ${path}`);
    challenges.add('tok3n', 'app.test', 'tok3n.thumbprint');
    const answered = await get(port, path, 'App.Test:80');
    assert.deepEqual(answered, { status: 200, type: 'application/octet-stream', body: 'tok3n.thumbprint' });
    assert.equal((await get(port, path, 'other.test')).body, `routed GET other.test ${path}`);
    assert.equal((await get(port, `${path}x`, 'app.test')).body, `routed GET app.test ${path}x`);
    assert.equal((await get(port, `${path}?x`, 'app.test')).body, `routed GET app.test ${path}?x`);
    assert.equal((await get(port, path, 'app.test', 'POST')).body, `routed POST app.test ${path}`);
    challenges.remove('tok3n');
    assert.equal((await get(port, path, 'app.test')).body, `routed GET app.test ${path}`);
  } finally {
    server.close();
  }
});
