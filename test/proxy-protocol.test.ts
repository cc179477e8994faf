// The real client address at the local service: tcp and tls proxies with proxy_protocol = "v1"/"v2"
// in front of HAProxy (`accept-proxy`), which reports the address it was told. curl connects from
// 127.0.0.2 so the visitor's address differs from the client's own loopback connection.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { freePorts, type Harness, run, sleep, withHarness } from './lib/processes.js';
import { issueRoutedToken, makeCa, makeCert, startRoutedClient, startRoutedServer } from './lib/routing.js';
import { tryConnect } from './lib/services.js';

async function startHaproxy(h: Harness, config: string, ports: number[]): Promise<void> {
  const file = await h.file('haproxy.cfg', config);
  const proc = h.spawn('haproxy', 'haproxy', ['-db', '-f', file]);
  const deadline = Date.now() + 10_000;
  for (const port of ports) {
    while ((await tryConnect('127.0.0.1', port, 500)) !== 'connected') {
      if (!proc.alive || Date.now() > deadline)
        throw new Error(`haproxy did not listen on ${port}\n${proc.tail(20)}`);
      await sleep(100);
    }
  }
}

test(
  "PROXY v1 and v2 headers give HAProxy the visitor's real address, over tcp and tls proxies",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const ca = await makeCa(h);
      const cert = await makeCert(h, ca, 'haproxy.test', ['haproxy.test']);
      const combined = h.path('haproxy.pem');
      await writeFile(combined, Buffer.concat([await readFile(cert.cert), await readFile(cert.key)]));
      const [v1Port, v2Port, tlsPort, remoteV1, remoteV2] = (await freePorts(5)) as [
        number,
        number,
        number,
        number,
        number,
      ];
      const report = 'src=%[src] sport=%[src_port] dst=%[dst] dport=%[dst_port]';
      await startHaproxy(
        h,
        [
          'defaults',
          '  mode http',
          '  timeout connect 5s',
          '  timeout client 10s',
          '  timeout server 10s',
          'frontend v1',
          `  bind 127.0.0.1:${v1Port} accept-proxy`,
          `  http-request return status 200 content-type text/plain lf-string "${report}\\n"`,
          'frontend v2',
          `  bind 127.0.0.1:${v2Port} accept-proxy`,
          `  http-request return status 200 content-type text/plain lf-string "${report}\\n"`,
          'frontend tls',
          `  bind 127.0.0.1:${tlsPort} accept-proxy ssl crt ${combined}`,
          `  http-request return status 200 content-type text/plain lf-string "tls ${report} sni=%[ssl_fc_sni]\\n"`,
          '',
        ].join('\n'),
        [v1Port, v2Port, tlsPort],
      );
      const server = await startRoutedServer(h, { http: false, https: { certs: [] } });
      const token = await issueRoutedToken(server, {
        name: 'pp',
        ports: `${remoteV1},${remoteV2}`,
        hosts: ['haproxy.test'],
      });
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          {
            name: 'v1',
            type: 'tcp',
            local: `127.0.0.1:${v1Port}`,
            remote_port: remoteV1,
            proxy_protocol: 'v1',
          },
          {
            name: 'v2',
            type: 'tcp',
            local: `127.0.0.1:${v2Port}`,
            remote_port: remoteV2,
            proxy_protocol: 'v2',
          },
          {
            name: 'tls',
            type: 'tls',
            local: `127.0.0.1:${tlsPort}`,
            hosts: ['haproxy.test'],
            proxy_protocol: 'v2',
          },
        ],
      });

      for (const [name, port] of [
        ['v1', remoteV1],
        ['v2', remoteV2],
      ] as const) {
        const r = await run(
          'curl',
          [
            '-sS',
            '--max-time',
            '10',
            '--interface',
            '127.0.0.2',
            '-w',
            '|%{local_port}',
            `http://127.0.0.1:${port}/`,
          ],
          { timeoutMs: 15_000 },
        );
        assert.equal(r.code, 0, `${name}: ${r.stderr}`);
        const [body = '', localPort = ''] = r.stdout.split('|');
        t.diagnostic(`${name}: haproxy says "${body.trim()}" (curl's port ${localPort})`);
        assert.equal(body.trim(), `src=127.0.0.2 sport=${localPort} dst=127.0.0.1 dport=${port}`);
      }

      const httpsPort = server.httpsPort!;
      const r = await run(
        'curl',
        [
          '-sS',
          '--max-time',
          '10',
          '--interface',
          '127.0.0.2',
          '--resolve',
          `haproxy.test:${httpsPort}:127.0.0.1`,
          '--cacert',
          ca.cert,
          '-w',
          '|%{local_port}',
          `https://haproxy.test:${httpsPort}/`,
        ],
        { timeoutMs: 15_000 },
      );
      assert.equal(r.code, 0, `tls: ${r.stderr}`);
      const [body = '', localPort = ''] = r.stdout.split('|');
      t.diagnostic(`tls: haproxy says "${body.trim()}"`);
      assert.equal(
        body.trim(),
        `tls src=127.0.0.2 sport=${localPort} dst=127.0.0.1 dport=${httpsPort} sni=haproxy.test`,
      );
    }),
);
