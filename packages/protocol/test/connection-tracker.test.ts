import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { test } from 'node:test';
import { ConnectionTracker } from '../src/connection-tracker.js';
import { captureLogs } from '../src/logger.js';

/** A Duplex whose readable side the test feeds and whose writes are counted and dropped. */
function endpoint() {
  let written = 0;
  const side = new Duplex({
    allowHalfOpen: true,
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      written += chunk.length;
      callback();
    },
  });
  return { side, written: () => written };
}

test('ConnectionTracker lists open connections with live byte counts and reports each close', async () => {
  const { logger, waitFor } = captureLogs();
  const tracker = new ConnectionTracker();
  const closed: string[] = [];
  tracker.onClosed((connection, result) =>
    closed.push(`${connection.fields.proxy}:${result.bytesAtoB}:${result.bytesBtoA}`),
  );
  const a = endpoint();
  const b = endpoint();
  const conn = tracker.carry(a.side, b.side, { labels: ['a', 'b'], logger, fields: { proxy: 'p', conn: 7 } });
  assert.equal(tracker.size, 1);
  assert.deepEqual([...tracker.connections()], [conn]);
  a.side.push(Buffer.alloc(300));
  b.side.push(Buffer.alloc(20));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual({ ...conn.progress }, { bytesAtoB: 300, bytesBtoA: 20 });
  assert.equal(b.written(), 300);
  a.side.push(null);
  b.side.push(null);
  assert.equal(await tracker.waitIdle(2000), true);
  assert.equal(tracker.size, 0);
  assert.deepEqual([...tracker.connections()], []);
  assert.deepEqual(closed, ['p:300:20']);
  await waitFor('connection closed', { proxy: 'p', conn: 7, bytes_in: 300, bytes_out: 20 });
});
