// The ACME manager against a CA that takes connections and never answers (a real socket): stop() (the
// server's shutdown) abandons the order under way, closing its connection, and logs no failure for it.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { type AddressInfo, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { captureLogs } from '@porthole/protocol';
import { AcmeManager } from '../src/acme-manager.js';
import { TlsCertStore } from '../src/tls-cert-store.js';

async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out: ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('stop() abandons an order in progress: its connection to the CA is closed and no failure is logged', async () => {
  const held: Socket[] = [];
  const closed: Socket[] = [];
  const silentCa = createServer((socket) => {
    held.push(socket);
    socket.on('close', () => closed.push(socket));
    socket.on('error', () => {});
    // Read (and drop) what comes, so that the client's close is seen.
    socket.resume();
  });
  silentCa.listen(0, '127.0.0.1');
  await once(silentCa, 'listening');
  const storage = mkdtempSync(join(tmpdir(), 'acme-manager-'));
  const logs = captureLogs();
  const manager = new AcmeManager(
    {
      domains: ['app.test'],
      email: undefined,
      directory: `https://127.0.0.1:${(silentCa.address() as AddressInfo).port}/dir`,
      storage,
      ca: undefined,
    },
    { logger: logs.logger, explicit: () => new TlsCertStore([]), onChange: () => {} },
  );
  try {
    manager.start();
    await until('the order reached the CA', () => held.length === 1);
    assert.equal(closed.length, 0);
    manager.stop();
    await until('the abandoned order closed its connection', () => closed.length === 1);
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(
      logs.lines.filter((line) => line.msg === 'acme order failed'),
      [],
    );
  } finally {
    for (const socket of held) socket.destroy();
    silentCa.close();
    rmSync(storage, { recursive: true, force: true });
  }
});
