import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConnectionTracker } from '@porthole/protocol';
import { SessionStatus } from '../src/session-status.js';
import { OpenUdpFlows } from '../src/udp-forwarder.js';

test("a failed dial's error shows while reconnecting and is gone once a session is established", () => {
  const status = new SessionStatus('ws://127.0.0.1:7000/_porthole');
  const tracker = new ConnectionTracker();
  status.failed('connect ECONNREFUSED 127.0.0.1:7000', 1000);
  const waiting = status.view(new Map(), tracker, new OpenUdpFlows(), 0);
  assert.equal(waiting.state, 'reconnecting');
  assert.equal(waiting.last_error, 'connect ECONNREFUSED 127.0.0.1:7000');
  assert.ok(waiting.retry_at);
  status.connecting();
  status.established('homelab', 'b3853fe7');
  const up = status.view(new Map(), tracker, new OpenUdpFlows(), 1);
  assert.equal(up.state, 'established');
  assert.equal(up.last_error, undefined, JSON.stringify(up));
  assert.equal(up.retry_at, undefined);
});
