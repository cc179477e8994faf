import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { BandwidthLimit } from '@porthole/protocol';
import { ClientBandwidth } from '../src/client-bandwidth.js';

const MIB = 1024 * 1024;

test("a token's limit wins over the server's default; without either there is no cap and no budget", () => {
  let serverDefault: BandwidthLimit | undefined = { text: '5MB', bytesPerSecond: 5 * MIB };
  const fromToken = new ClientBandwidth('1MB', () => serverDefault);
  assert.deepEqual(fromToken.limit, { text: '1MB', bytesPerSecond: MIB, source: 'token' });
  const fromServer = new ClientBandwidth(undefined, () => serverDefault);
  assert.deepEqual(fromServer.limit, { text: '5MB', bytesPerSecond: 5 * MIB, source: 'server' });
  serverDefault = undefined;
  const none = new ClientBandwidth(undefined, () => serverDefault);
  assert.equal(none.limit, undefined);
  assert.equal(none.limits(), undefined);
  assert.equal(none.budgets(), undefined);
});

test("connections share one budget per direction; a reload's new default reaches them, one removed frees them", () => {
  let serverDefault: BandwidthLimit | undefined = { text: '64KB', bytesPerSecond: 64 * 1024 };
  const bandwidth = new ClientBandwidth(undefined, () => serverDefault);
  const first = bandwidth.limits();
  assert.ok(first?.aToB && first.bToA);
  assert.notEqual(first.aToB, first.bToA, 'each direction its own');
  assert.equal(bandwidth.limits(), first, 'every connection the same budgets');
  assert.equal(first.aToB.bytesPerSecond, 64 * 1024);
  serverDefault = { text: '1MB', bytesPerSecond: MIB };
  bandwidth.apply();
  assert.equal(first.aToB.bytesPerSecond, MIB);
  assert.equal(first.bToA?.bytesPerSecond, MIB);
  serverDefault = undefined;
  bandwidth.apply();
  assert.equal(first.aToB.bytesPerSecond, Number.POSITIVE_INFINITY, 'open connections run free');
  assert.equal(bandwidth.limits(), undefined, 'new connections carry no budget');
});
