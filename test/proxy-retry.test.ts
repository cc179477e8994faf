// A proxy the server refused comes back by itself: the client asks again every proxy_retry_interval over
// its live session (as frp does), so a port another client held is taken once it is free, without a
// reload or a restart; the same refusal is logged once, not at every retry.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { freePort, type LogLine, sleep, withHarness } from './lib/processes.js';
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
          logLevel: 'debug',
        },
        { name: 'waiting', waitFor: 'none' },
      );
      const refused = await waiting.proc.waitForMsg('proxy refused', 10_000, { fields: { proxy: 'svc' } });
      assert.match(String(refused.reason), /in use by another client/);
      // Several retries, each refused the same way: one warn line on either end, the rest at debug.
      const asking = () => waiting.proc.logsWithMsg('asking again for proxies the server is not serving');
      await sleep(3500);
      assert.ok(asking().length >= 2, `asked again ${asking().length} times`);
      const warned = (lines: LogLine[]) => lines.filter((l) => l.level === 'warn' && l.proxy === 'svc');
      assert.equal(warned(waiting.proc.logsWithMsg('proxy refused')).length, 1);
      assert.equal(
        warned(server.proc.logsWithMsg('proxy refused')).filter((l) => l.client === 'waiting').length,
        1,
      );

      // The holder leaves: within a retry interval the waiting client has the port.
      const mark = waiting.proc.mark();
      await holder.proc.stop();
      const registered = await waiting.proc.waitForMsg('proxy registered', 10_000, {
        from: mark,
        fields: { proxy: 'svc' },
      });
      assert.match(String(registered.remote_addr), new RegExp(`:${port}$`));
      assert.equal((await echoRoundTrip('127.0.0.1', port, 100, { banner: true })).banner, 'second');
      // Registered: no more asking.
      const askedThen = asking().length;
      await sleep(2500);
      assert.equal(asking().length, askedThen);
      assert.equal(
        server.proc.logsWithMsg('proxy listening').filter((l) => l.client === 'waiting').length,
        1,
      );
    }),
);
