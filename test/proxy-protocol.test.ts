// The real client address at the local service: tcp and tls proxies with proxy_protocol = "v1"/"v2"
// in front of HAProxy (`accept-proxy`), which reports the address it was told. curl connects from
// 127.0.0.2 so the visitor's address differs from the client's own loopback connection.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import {
  assertVisitorReported,
  curlFromSecondLoopback,
  PEER_REPORT,
  startReportingHaproxy,
} from './lib/haproxy.js';
import { freePorts, withHarness } from './lib/processes.js';
import { issueRoutedToken, makeCa, makeCert, startRoutedClient, startRoutedServer } from './lib/routing.js';

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
      await startReportingHaproxy(h, [
        { name: 'v1', bind: `127.0.0.1:${v1Port} accept-proxy`, answer: PEER_REPORT, at: { port: v1Port } },
        { name: 'v2', bind: `127.0.0.1:${v2Port} accept-proxy`, answer: PEER_REPORT, at: { port: v2Port } },
        {
          name: 'tls',
          bind: `127.0.0.1:${tlsPort} accept-proxy ssl crt ${combined}`,
          answer: `tls ${PEER_REPORT} sni=%[ssl_fc_sni]`,
          at: { port: tlsPort },
        },
      ]);
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
        t.diagnostic(`${name}: haproxy says "${await assertVisitorReported(port)}"`);
      }

      const httpsPort = server.httpsPort!;
      const r = await curlFromSecondLoopback(
        ['--resolve', `haproxy.test:${httpsPort}:127.0.0.1`, '--cacert', ca.cert],
        `https://haproxy.test:${httpsPort}/`,
      );
      assert.equal(r.code, 0, `tls: ${r.stderr}`);
      t.diagnostic(`tls: haproxy says "${r.body}"`);
      assert.equal(
        r.body,
        `tls src=127.0.0.2 sport=${r.localPort} dst=127.0.0.1 dport=${httpsPort} sni=haproxy.test`,
      );
    }),
);
