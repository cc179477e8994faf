// Per-proxy connection limits with the real programs: a tcp or tls proxy holds at most its max_connections
// (client key) or the server's proxy_max_connections, whichever is lower. A visitor over it gets a TCP RST
// and never reaches the client; the other proxies are untouched; a closed connection frees its slot; the
// refusals are logged and counted in /metrics and the admin API; a reload's new cap applies at once.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import net, { type AddressInfo } from 'node:net';
import { test } from 'node:test';
import tls from 'node:tls';
import { freePorts, withHarness, withTimeout } from './lib/processes.js';
import { issueRoutedToken, makeCa, makeCert, startRoutedClient, startRoutedServer } from './lib/routing.js';
import { startEchoServer } from './lib/services.js';

const ADMIN_TOKEN = 'admin-token-for-limits-0123456789';

type Visitor = net.Socket | tls.TLSSocket;

/** A visitor the tunnel carries: a line goes through the local echo service and comes back. */
async function admitted(connect: () => Visitor, line: string): Promise<Visitor> {
  const socket = connect();
  socket.setEncoding('utf8');
  let got = '';
  return withTimeout(
    new Promise<Visitor>((resolve, reject) => {
      socket.once('error', reject);
      socket.on('data', (d: string) => {
        got += d;
        if (got.includes('\n')) {
          socket.off('error', reject);
          socket.on('error', () => {});
          resolve(socket);
        }
      });
      socket.write(`${line}\n`);
    }),
    10_000,
    () => `no echo of "${line}" (got "${got}")`,
  );
}

/** A visitor over the limit: reset by the server, nothing from the local service. Resolves the error code. */
async function refused(connect: () => Visitor, line: string): Promise<string> {
  const socket = connect();
  let got = '';
  let code = '';
  socket.on('data', (d: Buffer) => {
    got += d.toString();
  });
  socket.on('error', (err: NodeJS.ErrnoException) => {
    code = err.code ?? err.message;
  });
  socket.write(`${line}\n`);
  await withTimeout(
    new Promise((resolve) => socket.once('close', resolve)),
    10_000,
    () => `"${line}" was not closed`,
  );
  assert.equal(got, '', `"${line}" got nothing from the service`);
  return code;
}

async function metrics(adminUrl: string): Promise<string> {
  const res = await fetch(`${adminUrl}/metrics`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(res.status, 200);
  return res.text();
}

function sample(text: string, name: string, proxy: string): number | undefined {
  const line = text.split('\n').find((l) => l.startsWith(`${name}{client="limits",proxy="${proxy}"} `));
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(' ') + 1));
}

test(
  'max_connections: visitors over a proxy limit are reset before reaching the client; slots free on close; reload applies at once',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const ca = await makeCa(h);
      const vaultCert = await makeCert(h, ca, 'vault.test', ['vault.test']);
      const caPem = await readFile(ca.cert);
      const vaultService = tls.createServer(
        { cert: await readFile(vaultCert.cert), key: await readFile(vaultCert.key) },
        (socket) => {
          socket.on('error', () => {});
          socket.pipe(socket);
        },
      );
      await new Promise<void>((resolve) => vaultService.listen(0, '127.0.0.1', resolve));
      h.onCleanup(() => new Promise((resolve) => vaultService.close(resolve)));
      const vaultPort = (vaultService.address() as AddressInfo).port;

      const [cappedPort, openPort] = await freePorts(2);
      const server = await startRoutedServer(h, {
        top: { proxy_max_connections: 3 },
        http: false,
        https: { certs: [] },
        admin: { token: ADMIN_TOKEN },
      });
      const token = await issueRoutedToken(server, {
        name: 'limits',
        ports: `${cappedPort},${openPort}`,
        hosts: ['vault.test'],
      });
      const local = `127.0.0.1:${echo.port}`;
      await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [
          { name: 'capped', type: 'tcp', local, remote_port: cappedPort!, max_connections: 2 },
          { name: 'open', type: 'tcp', local, remote_port: openPort! },
          {
            name: 'vault',
            type: 'tls',
            local: `127.0.0.1:${vaultPort}`,
            hosts: ['vault.test'],
            max_connections: 1,
          },
        ],
      });
      const visitors: Visitor[] = [];
      h.onCleanup(() => {
        for (const v of visitors) v.destroy();
      });
      const tcpTo = (port: number) => () => net.connect(port, '127.0.0.1');
      const tlsTo = () =>
        tls.connect({ host: '127.0.0.1', port: server.httpsPort!, servername: 'vault.test', ca: caPem });
      const closedLines = (proxy: string) =>
        server.proc.logsWithMsg('connection closed').filter((l) => l.proxy === proxy).length;

      // The client's own max_connections (2) is below the server's cap (3).
      const capped = [
        await admitted(tcpTo(cappedPort!), 'capped-1'),
        await admitted(tcpTo(cappedPort!), 'capped-2'),
      ];
      visitors.push(...capped);
      assert.equal(await refused(tcpTo(cappedPort!), 'capped-3'), 'ECONNRESET');
      await server.proc.waitForMsg('connection limit reached: new visitors refused', 5000, {
        fields: { client: 'limits', proxy: 'capped', max_connections: 2, open: 2, refused: 1 },
      });

      // A full proxy does not hold back another one; that one gets the server's cap.
      for (let i = 1; i <= 3; i++) visitors.push(await admitted(tcpTo(openPort!), `open-${i}`));
      assert.equal(await refused(tcpTo(openPort!), 'open-4'), 'ECONNRESET');
      await server.proc.waitForMsg('connection limit reached: new visitors refused', 5000, {
        fields: { proxy: 'open', max_connections: 3, open: 3 },
      });
      // Refused visitors never reached the client: the service saw the five admitted ones only.
      assert.equal(echo.accepted, 5);

      // A tls proxy, limited by SNI on the shared TLS port.
      visitors.push(await admitted(tlsTo, 'vault-1'));
      assert.equal(await refused(tlsTo, 'vault-2'), 'ECONNRESET');

      // Closing a connection frees its slot.
      capped[0]!.destroy();
      await server.proc.waitForLog(() => closedLines('capped') === 1, 5000, 0, 'capped-1 closed');
      visitors.push(await admitted(tcpTo(cappedPort!), 'capped-4'));

      const text = await metrics(server.adminUrl!);
      assert.equal(sample(text, 'porthole_proxy_connections_refused_total', 'capped'), 1, text);
      assert.equal(sample(text, 'porthole_proxy_connections_refused_total', 'open'), 1, text);
      assert.equal(sample(text, 'porthole_proxy_connections_refused_total', 'vault'), 1, text);
      assert.equal(sample(text, 'porthole_proxy_open_connections', 'capped'), 2, text);
      const api = await fetch(`${server.adminUrl}/api/proxies`, {
        headers: { Authorization: `Bearer ${ADMIN_TOKEN}` },
      });
      const { proxies } = (await api.json()) as { proxies: { name: string; refused_connections: number }[] };
      assert.deepEqual(proxies.map((p) => [p.name, p.refused_connections]).sort(), [
        ['capped', 1],
        ['open', 1],
        ['vault', 1],
      ]);

      // The operator lowers the cap to 1, and it applies at once to the proxies already registered.
      const configText = await readFile(server.config.configPath, 'utf8');
      assert.match(configText, /^proxy_max_connections = 3$/m);
      await writeFile(
        server.config.configPath,
        configText.replace(/^proxy_max_connections = 3$/m, 'proxy_max_connections = 1'),
      );
      const mark = server.proc.mark();
      server.proc.kill('SIGHUP');
      await server.proc.waitForMsg('config reloaded', 10_000, { from: mark });
      // Each proxy is below its old limit, at or over the new one.
      const [, capped2, open1, open2, open3] = visitors as [Visitor, Visitor, Visitor, Visitor, Visitor];
      capped2.destroy();
      open1.destroy();
      await server.proc.waitForLog(() => closedLines('capped') === 2, 5000, 0, 'capped-2 closed');
      await server.proc.waitForLog(() => closedLines('open') === 1, 5000, 0, 'open-1 closed');
      assert.equal(await refused(tcpTo(cappedPort!), 'capped-5'), 'ECONNRESET');
      assert.equal(await refused(tcpTo(openPort!), 'open-5'), 'ECONNRESET');
      // The connections that were open carry on.
      const reply = new Promise<string>((resolve) => open2.once('data', (d: string) => resolve(d)));
      open2.write('open-2 again\n');
      assert.equal(
        await withTimeout(reply, 5000, () => 'no echo on open-2 after the reload'),
        'open-2 again\n',
      );
      // Once they are gone, one visitor at a time gets in.
      open2.destroy();
      open3.destroy();
      await server.proc.waitForLog(() => closedLines('open') === 3, 5000, 0, 'open-2 and open-3 closed');
      visitors.push(await admitted(tcpTo(openPort!), 'open-6'));
      assert.equal(await refused(tcpTo(openPort!), 'open-7'), 'ECONNRESET');
      const after = await metrics(server.adminUrl!);
      assert.equal(sample(after, 'porthole_proxy_connections_refused_total', 'open'), 3, after);
      assert.equal(sample(after, 'porthole_proxy_connections_refused_total', 'capped'), 2, after);
    }),
);

test(
  "a client's reload that changes a proxy's max_connections keeps counting the connections already open on it",
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const echo = await startEchoServer('127.0.0.1', 0);
      h.onCleanup(() => echo.close());
      const [port] = await freePorts(1);
      const server = await startRoutedServer(h, { http: false });
      const token = await issueRoutedToken(server, { name: 'relimit', ports: `${port}` });
      const proxy = { name: 'a', type: 'tcp' as const, local: `127.0.0.1:${echo.port}`, remote_port: port! };
      const client = await startRoutedClient(h, {
        server: server.url,
        token,
        proxies: [{ ...proxy, max_connections: 1 }],
      });
      const visitors: Visitor[] = [];
      h.onCleanup(() => {
        for (const v of visitors) v.destroy();
      });
      const tcp = () => net.connect(port!, '127.0.0.1');
      visitors.push(await admitted(tcp, 'first'));
      assert.equal(await refused(tcp, 'over 1'), 'ECONNRESET');

      // max_connections 1 -> 2: the client unregisters the proxy and registers it again.
      const text = await readFile(client.configPath, 'utf8');
      assert.match(text, /^max_connections = 1$/m);
      await writeFile(client.configPath, text.replace(/^max_connections = 1$/m, 'max_connections = 2'));
      const mark = client.proc.mark();
      client.proc.kill('SIGHUP');
      await client.proc.waitForMsg('proxy registered', 10_000, { from: mark, fields: { proxy: 'a' } });
      // The first visitor is still open and counts: one more fits, not two.
      visitors.push(await admitted(tcp, 'second'));
      const code = await refused(tcp, 'over 2');
      t.diagnostic(`the third visitor after the reload: ${code}`);
      assert.equal(code, 'ECONNRESET');
      const reply = new Promise<string>((resolve) => visitors[0]!.once('data', (d: string) => resolve(d)));
      visitors[0]!.write('first again\n');
      assert.equal(await withTimeout(reply, 5000, () => 'no echo on the first visitor'), 'first again\n');
    }),
);
