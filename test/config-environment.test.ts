// `${NAME}` in any string of a config file (frp's `{{ .Envs.NAME }}`): a container's or a unit's
// environment fills in the server's secret, the client's token, the server URL and a service's address,
// through the real CLIs. `status` reads [admin] alone, so it works where the token's variable is unset.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { clientBin, freePort, run, serverBin, withHarness } from './lib/processes.js';
import { echoRoundTrip, startEchoServer } from './lib/services.js';
import { portOf } from './lib/tunnel.js';

/** "${NAME}", spelled so that it is not taken for a template literal's placeholder. */
const ref = (name: string) => `$\{${name}}`;

test(
  'config values from the environment: secret, token, server URL and local address; an unset one is named by key; status needs only [admin]',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const [remotePort, adminPort] = [await freePort(), await freePort()];
      const secret = 'e'.repeat(48);
      const serverEnv = { PORTHOLE_SECRET: secret, PORTHOLE_PORTS: `${remotePort}` };
      const serverToml = await h.file(
        'server.toml',
        [
          'listen = "127.0.0.1:0"',
          'proxy_bind = "127.0.0.1"',
          `allow_ports = ["${ref('PORTHOLE_PORTS')}"]`,
          '[auth]',
          `secret = "${ref('PORTHOLE_SECRET')}"`,
          '',
        ].join('\n'),
        // Readable by all, as a config file in an image is: the secret is not in it, so nothing to warn of.
        0o644,
      );

      const unset = await run(serverBin, ['check', '--config', serverToml], { env: { PORTHOLE_PORTS: '1' } });
      assert.equal(unset.code, 2, unset.stderr);
      assert.match(unset.stderr, /server\.toml: auth\.secret: \$\{PORTHOLE_SECRET\} is not set/);

      const server = h.spawn('server', serverBin, ['--config', serverToml], { env: serverEnv });
      const listening = await server.waitForMsg('server listening', 15_000);
      const issued = await run(serverBin, ['token', 'issue', '--config', serverToml, '--name', 'container'], {
        env: serverEnv,
      });
      assert.equal(issued.code, 0, issued.stderr);
      const token = issued.stdout.trim();

      const clientEnv = {
        PORTHOLE_SERVER: `127.0.0.1:${portOf(listening.addr)}`,
        PORTHOLE_TOKEN: token,
        ECHO_ADDRESS: `127.0.0.1:${echo.port}`,
        ADMIN_PORT: `${adminPort}`,
      };
      const clientToml = await h.file(
        'client.toml',
        [
          `server = "ws://${ref('PORTHOLE_SERVER')}/_porthole"`,
          `token = "${ref('PORTHOLE_TOKEN')}"`,
          '[admin]',
          `listen = "127.0.0.1:${ref('ADMIN_PORT')}"`,
          '[[proxies]]',
          'name = "echo"',
          'type = "tcp"',
          `local = "${ref('ECHO_ADDRESS')}"`,
          `remote_port = ${remotePort}`,
          '',
        ].join('\n'),
        0o644,
      );
      for (const [bin, file, env] of [
        [serverBin, serverToml, serverEnv],
        [clientBin, clientToml, clientEnv],
      ] as const) {
        const checked = await run(bin, ['check', '--config', file], { env });
        assert.equal(checked.code, 0, checked.stderr);
        assert.doesNotMatch(
          checked.stdout + checked.stderr,
          /warning/,
          `${file}: no secret is written in it`,
        );
      }

      const noToken = await run(clientBin, ['check', '--config', clientToml], {
        env: { ...clientEnv, PORTHOLE_TOKEN: '' },
      });
      assert.equal(noToken.code, 2, noToken.stderr);
      assert.match(noToken.stderr, /client\.toml: token: \$\{PORTHOLE_TOKEN\} is not set/);
      assert.doesNotMatch(noToken.stderr, /proxies/, 'the other values expanded');

      const client = h.spawn('client', clientBin, ['--config', clientToml], { env: clientEnv });
      await client.waitForMsg('proxy registered', 15_000, { fields: { proxy: 'echo' } });
      const roundTrip = await echoRoundTrip('127.0.0.1', remotePort, 256 * 1024, { timeoutMs: 15_000 });
      assert.ok(roundTrip.ok, roundTrip.error);

      // A shell without the token's variable (an operator's, next to the service's unit) still finds the
      // admin endpoint; its port comes from the environment too.
      const status = await run(clientBin, ['status', '--config', clientToml], {
        env: { ADMIN_PORT: `${adminPort}` },
      });
      assert.equal(status.code, 0, status.stderr);
      assert.match(status.stdout, /echo/);

      for (const proc of [server, client]) {
        const logged = proc.tail(500);
        assert.ok(!logged.includes(secret), `${proc.name} logged the secret`);
        assert.ok(!logged.includes(token), `${proc.name} logged the token`);
      }
    }),
);
