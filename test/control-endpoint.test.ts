// The control endpoint as strangers meet it, through curl: what its refusals say, and which paths it is
// on, on its own listener and on the [http] vhost port alike.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { curl } from './lib/curl.js';
import { withHarness } from './lib/processes.js';
import { startRoutedServer } from './lib/routing.js';
import { portOf } from './lib/tunnel.js';

/** The upgrade request curl sends with these flags (a WebSocket handshake, as a client's). */
const UPGRADE = [
  '-H',
  'Connection: Upgrade',
  '-H',
  'Upgrade: websocket',
  '-H',
  'Sec-WebSocket-Version: 13',
  '-H',
  `Sec-WebSocket-Key: ${Buffer.from('porthole-e2e-key').toString('base64')}`,
];

test('a 401 carries a Bearer challenge and a 426 names websocket in Upgrade', { timeout: 30_000 }, (t) =>
  withHarness(t, async (h) => {
    const server = await startRoutedServer(h);
    const control = `http://127.0.0.1:${portOf(new URL(server.url).host)}/_porthole`;

    const noToken = await curl(UPGRADE, control);
    assert.equal(noToken.status, 401, noToken.stderr);
    // RFC 6750 3.1: no credentials sent, so no error code.
    assert.equal(noToken.headers['www-authenticate'], 'Bearer realm="porthole"');

    const badToken = await curl([...UPGRADE, '-H', 'Authorization: Bearer a.b.c'], control);
    assert.equal(badToken.status, 401);
    assert.equal(badToken.headers['www-authenticate'], 'Bearer realm="porthole", error="invalid_token"');
    assert.match(badToken.body, /malformed token/);

    const plain = await curl([], control);
    assert.equal(plain.status, 426);
    assert.equal(plain.headers.upgrade, 'websocket');
    assert.match(plain.headers.connection ?? '', /\bupgrade\b/i);
  }),
);

test(
  '//_porthole and /%5Fporthole are the control path on the vhost port and on the control listener alike',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const server = await startRoutedServer(h);
      const bases = {
        control: `http://127.0.0.1:${portOf(new URL(server.url).host)}`,
        vhost: `http://127.0.0.1:${server.httpPort}`,
      };
      for (const [port, base] of Object.entries(bases)) {
        for (const path of ['/_porthole', '//_porthole', '/%5Fporthole', '/x/../_porthole']) {
          // --path-as-is: curl would otherwise resolve the dot segments itself.
          const r = await curl(
            ['--path-as-is', ...UPGRADE, '-H', 'Authorization: Bearer a.b.c'],
            base + path,
          );
          assert.equal(r.status, 401, `${port} ${path}: ${r.status} ${r.body}`);
        }
        const other = await curl(['--path-as-is', ...UPGRADE], `${base}/_portholes`);
        assert.equal(other.status, 404, `${port} /_portholes`);
      }
    }),
);
