// A proxy the server refused comes back by itself: the client asks again every proxy_retry_interval over
// its live session (as frp does), so a port another client held is taken once it is free, without a
// reload or a restart; the same refusal is logged once, not at every retry.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { freePort, sleep, withHarness } from './lib/processes.js';
import { echoRoundTrip, startEchoServer } from './lib/services.js';
import { issueToken, startClient, startServer } from './lib/tunnel.js';

test(
  'a refused proxy is asked for again every proxy_retry_interval and registered once its port is free',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const [first, second] = [
        await startEchoServer('127.0.0.1', 0, 'first'),
        await startEchoServer('127.0.0.1', 0, 'second'),
      ];
      h.onCleanup(() => Promise.all([first.close(), second.close()]));
      const port = await freePort();
      const server = await startServer(h, { allowPorts: [String(port)] });
      const holder = await startClient(
        h,
        {
          server: server.url,
          token: await issueToken(server.config, { name: 'holder', ports: String(port) }),
          proxies: [{ name: 'svc', local: `127.0.0.1:${first.port}`, remotePort: port }],
        },
        { name: 'holder' },
      );
      assert.equal((await echoRoundTrip('127.0.0.1', port, 100, { banner: true })).banner, 'first');

      const waiting = await startClient(
        h,
        {
          server: server.url,
          token: await issueToken(server.config, { name: 'waiting', ports: String(port) }),
          proxies: [{ name: 'svc', local: `127.0.0.1:${second.port}`, remotePort: port }],
          proxyRetryInterval: '1s',
        },
        { name: 'waiting', waitFor: 'none' },
      );
      const refused = await waiting.proc.waitForMsg('proxy refused', 10_000, { fields: { proxy: 'svc' } });
      assert.match(String(refused.reason), /in use by another client/);
      // Several retries, each refused the same way: one warn line, the server saw them all.
      await sleep(3500);
      assert.equal(waiting.proc.logsWithMsg('proxy refused').length, 1);
      const serverRefusals = server.proc.logsWithMsg('proxy refused').filter((l) => l.client === 'waiting');
      assert.ok(serverRefusals.length >= 3, `the server refused ${serverRefusals.length} registrations`);

      // The holder leaves: within a retry interval the waiting client has the port.
      const mark = waiting.proc.mark();
      await holder.proc.stop();
      const registered = await waiting.proc.waitForMsg('proxy registered', 10_000, {
        from: mark,
        fields: { proxy: 'svc' },
      });
      assert.match(String(registered.remote_addr), new RegExp(`:${port}$`));
      assert.equal((await echoRoundTrip('127.0.0.1', port, 100, { banner: true })).banner, 'second');
      // Registered: no more asking (each ask would be one more line on the server).
      const refusalsOf = () => server.proc.logsWithMsg('proxy refused').filter((l) => l.client === 'waiting');
      const listeningOf = () =>
        server.proc.logsWithMsg('proxy listening').filter((l) => l.client === 'waiting');
      const [refusalsThen, listeningThen] = [refusalsOf().length, listeningOf().length];
      await sleep(2500);
      assert.deepEqual([refusalsOf().length, listeningOf().length], [refusalsThen, listeningThen]);
      assert.equal(listeningThen, 1);
    }),
);
