// remote_port = 0: the server picks a tcp or udp proxy's port within the token's grant (ssh -R 0:..., frp's
// remotePort = 0), says which, gives it again after a restart or a reload, and says so when none is left.
import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { startUdpEcho, udpClient } from './lib/http-backend.js';
import {
  clientBin,
  freePort,
  freePorts,
  type Harness,
  type LogLine,
  run,
  waitFor,
  withHarness,
} from './lib/processes.js';
import { type RoutedProxy, rewriteRoutedClientProxies, startRoutedClient } from './lib/routing.js';
import { echoRoundTrip, startEchoServer } from './lib/services.js';
import { issueToken, portOf, startServer, writeServerConfig } from './lib/tunnel.js';

const ADMIN_TOKEN = 'admin-token-for-picked-ports-0123456789';
/** A grant as an operator would give one client: 20 ports (distinct free ones, not one block: see freePort). */
const GRANT_SIZE = 20;

/** The port a "proxy registered" line reports: its remote_port field, the same as its remote_addr's. */
function reportedPort(line: LogLine | undefined): number {
  assert.ok(line, 'a "proxy registered" line');
  assert.equal(typeof line.remote_port, 'number', `remote_port in ${JSON.stringify(line)}`);
  assert.equal(line.remote_port, portOf(line.remote_addr), 'remote_port is the port of remote_addr');
  return line.remote_port as number;
}

async function clientStatus(adminPort: number): Promise<{
  code: number | null;
  json: { proxies: { name: string; state: string; remote_port?: number; reason?: string }[] };
  text: string;
}> {
  const json = await run(clientBin, ['status', '--admin', `127.0.0.1:${adminPort}`, '--json'], {
    timeoutMs: 15_000,
  });
  const text = await run(clientBin, ['status', '--admin', `127.0.0.1:${adminPort}`], { timeoutMs: 15_000 });
  return { code: json.code, json: JSON.parse(json.stdout), text: text.stdout };
}

async function serverProxies(
  adminUrl: string,
): Promise<{ name: string; remote_port: number; public_addr: string }[]> {
  const res = await fetch(`${adminUrl}/api/proxies`, { headers: { Authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(res.status, 200);
  return ((await res.json()) as { proxies: { name: string; remote_port: number; public_addr: string }[] })
    .proxies;
}

/** Sends `word` to the udp port and waits for the echo's `tag|word`. */
async function udpEchoes(h: Harness, port: number, word: string, tag: string): Promise<void> {
  const { socket, replies } = await udpClient();
  h.onCleanup(() => socket.close());
  socket.send(word, port, '127.0.0.1');
  await waitFor(`the udp echo of "${word}" through port ${port}`, () => replies.length > 0, 5000);
  assert.equal(replies[0]!.toString(), `${tag}|${word}`);
}

/** A tcp and a udp proxy, each on a port the server picks. */
function pickedProxies(
  tcpLocal: number,
  udpLocal: number,
  more: Record<string, Record<string, string | number>> = {},
) {
  return [
    { name: 'web', type: 'tcp', local: `127.0.0.1:${tcpLocal}`, remote_port: 0, ...more.web },
    { name: 'dns', type: 'udp', local: `127.0.0.1:${udpLocal}`, remote_port: 0, ...more.dns },
  ] satisfies RoutedProxy[];
}

test(
  'remote_port = 0: a tcp and a udp proxy get ports of the token grant, both ends show them, data goes through, and a second client gets others',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const grant = await freePorts(GRANT_SIZE);
      const server = await startServer(h, { allowPorts: ['1024-65535'], admin: { token: ADMIN_TOKEN } });
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const udpEcho = await startUdpEcho('dns');
      h.onCleanup(() => udpEcho.close());
      const adminPort = await freePort();
      const alpha = await startRoutedClient(h, {
        name: 'alpha',
        server: server.url,
        token: await issueToken(server.config, { name: 'alpha', ports: grant.join(',') }),
        adminListen: `127.0.0.1:${adminPort}`,
        proxies: pickedProxies(echo.port, udpEcho.port),
      });
      const webPort = reportedPort(alpha.registered.get('web'));
      const dnsPort = reportedPort(alpha.registered.get('dns'));
      t.diagnostic(`picked: web tcp ${webPort}, dns udp ${dnsPort}`);
      assert.ok(grant.includes(webPort), `${webPort} is one of the grant's ports`);
      assert.ok(grant.includes(dnsPort), `${dnsPort} is one of the grant's ports`);

      const status = await clientStatus(adminPort);
      assert.equal(status.code, 0, status.text);
      assert.deepEqual(
        status.json.proxies.map((p) => [p.name, p.state, p.remote_port]),
        [
          ['web', 'registered', webPort],
          ['dns', 'registered', dnsPort],
        ],
      );
      assert.match(
        status.text,
        new RegExp(`\\nweb +tcp +127\\.0\\.0\\.1:${echo.port} +${webPort} +registered`),
      );
      const listed = await serverProxies(server.adminUrl!);
      assert.deepEqual(listed.map((p) => [p.name, p.remote_port, p.public_addr]).sort(), [
        ['dns', dnsPort, `127.0.0.1:${dnsPort}`],
        ['web', webPort, `127.0.0.1:${webPort}`],
      ]);
      const listening = server.proc.logsWithMsg('proxy listening').find((l) => l.proxy === 'web');
      assert.equal(listening?.remote_port, webPort);
      assert.equal(listening?.picked, true);

      const echoed = await echoRoundTrip('127.0.0.1', webPort, 64 * 1024);
      assert.ok(echoed.ok, echoed.error);
      await udpEchoes(h, dnsPort, 'ping', 'dns');

      // Another client of the same grant, asking for two tcp ports at once: each its own.
      const beta = await startRoutedClient(h, {
        name: 'beta',
        server: server.url,
        token: await issueToken(server.config, { name: 'beta', ports: grant.join(',') }),
        proxies: [
          { name: 'one', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: 0 },
          { name: 'two', type: 'tcp', local: `127.0.0.1:${echo.port}`, remote_port: 0 },
        ],
      });
      const betaPorts = ['one', 'two'].map((name) => reportedPort(beta.registered.get(name)));
      assert.equal(
        new Set([webPort, ...betaPorts]).size,
        3,
        `tcp ports ${webPort}, ${betaPorts} are distinct`,
      );
      for (const port of betaPorts) {
        assert.ok(grant.includes(port));
        assert.ok((await echoRoundTrip('127.0.0.1', port, 1000)).ok, `an echo through ${port}`);
      }
    }),
);

test(
  'remote_port = 0: the same ports again after the server is killed and restarted, and after a reload that changes the proxies',
  { timeout: 90_000 },
  (t) =>
    withHarness(t, async (h) => {
      const grant = await freePorts(GRANT_SIZE);
      const first = await startServer(h, { allowPorts: ['1024-65535'] }, 'server#1');
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const udpEcho = await startUdpEcho('dns');
      h.onCleanup(() => udpEcho.close());
      const client = await startRoutedClient(h, {
        server: first.url,
        token: await issueToken(first.config, { name: 'sticky', ports: grant.join(',') }),
        proxies: pickedProxies(echo.port, udpEcho.port),
      });
      const webPort = reportedPort(client.registered.get('web'));
      const dnsPort = reportedPort(client.registered.get('dns'));
      t.diagnostic(`picked: web tcp ${webPort}, dns udp ${dnsPort}`);

      let mark = client.proc.mark();
      first.proc.kill('SIGKILL');
      await first.proc.exited;
      await client.proc.waitForMsg('connect failed', 10_000, { from: mark });
      const config = await writeServerConfig(h, {
        ...first.config.options,
        listen: `127.0.0.1:${first.port}`,
        secretFile: first.config.secretFile,
      });
      const second = await startServer(h, config, 'server#2');
      const again = async (proxy: string) =>
        reportedPort(
          await client.proc.waitForMsg('proxy registered', 15_000, { from: mark, fields: { proxy } }),
        );
      assert.equal(await again('web'), webPort, 'web: the tcp port it had, from a server that forgot it');
      assert.equal(await again('dns'), dnsPort, 'dns: the udp port it had');
      // The server's lines leave in batches: its 'proxy listening' may come after the client's 'proxy registered'.
      const restarted = await second.proc.waitForMsg('proxy listening', 5000, { fields: { proxy: 'web' } });
      assert.equal(restarted.remote_port, webPort);
      assert.ok((await echoRoundTrip('127.0.0.1', webPort, 1000)).ok, 'an echo after the restart');
      await udpEchoes(h, dnsPort, 'after restart', 'dns');

      // Changed in other ways: the tcp proxy keeps its listener (proxy changed), the udp proxy its port.
      mark = client.proc.mark();
      const serverMark = second.proc.mark();
      await rewriteRoutedClientProxies(
        client.configPath,
        pickedProxies(echo.port, udpEcho.port, {
          web: { max_connections: 8 },
          dns: { udp_idle_timeout: '30s' },
        }),
      );
      client.proc.kill('SIGHUP');
      const reloaded = await client.proc.waitForMsg('config reloaded', 10_000, { from: mark });
      assert.deepEqual(reloaded.changed, ['web', 'dns']);
      assert.equal(await again('web'), webPort, 'web keeps its port through the reload');
      assert.equal(await again('dns'), dnsPort, 'dns keeps its port through the reload');
      await second.proc.waitForMsg('proxy changed', 5000, { from: serverMark, fields: { proxy: 'web' } });
      assert.ok((await echoRoundTrip('127.0.0.1', webPort, 1000)).ok, 'an echo after the reload');
      await udpEchoes(h, dnsPort, 'after reload', 'dns');
      assert.deepEqual(await client.proc.settledLogsWithMsg('proxy given another port than before'), []);
    }),
);

test(
  'remote_port = 0 when every port of the grant is in use: the proxy is refused naming the grant; a port another program holds is passed over',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const grant = await freePorts(3);
      // A program of the server's own on one of the grant's ports: no proxy holds it, but it does not bind.
      const squatter = net.createServer();
      await new Promise<void>((resolve) => squatter.listen(grant[1], '127.0.0.1', resolve));
      h.onCleanup(() => squatter.close());
      const server = await startServer(h, { allowPorts: grant.map(String) });
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const adminPort = await freePort();
      const proxies = ['a', 'b', 'c'].map((name) => ({
        name,
        type: 'tcp' as const,
        local: `127.0.0.1:${echo.port}`,
        remote_port: 0,
      }));
      const client = await startRoutedClient(h, {
        server: server.url,
        token: await issueToken(server.config, { name: 'full', ports: grant.join(',') }),
        adminListen: `127.0.0.1:${adminPort}`,
        proxies,
        waitFor: ['a', 'b'],
      });
      const given = ['a', 'b'].map((name) => reportedPort(client.registered.get(name)));
      assert.deepEqual(
        [...given].sort(),
        [grant[0], grant[2]].sort(),
        `the two ports no program holds (${grant[1]} is held)`,
      );
      const refused = await client.proc.waitForMsg('proxy refused', 10_000, { fields: { proxy: 'c' } });
      t.diagnostic(`refusal: ${refused.reason}`);
      const expected = `no free port to pick in the token's grant (${grant.join(',')}) within the server's allow_ports (${grant.join(',')}): all 3 are in use (2 held by proxies, 1 in use on the server (address 127.0.0.1:${grant[1]} is already in use on the server))`;
      assert.equal(refused.reason, expected);
      const status = await clientStatus(adminPort);
      assert.equal(status.code, 5, 'status exits 5: a proxy is not served');
      const c = status.json.proxies.find((p) => p.name === 'c');
      assert.deepEqual([c?.state, c?.remote_port, c?.reason], ['refused', 0, expected]);
      assert.match(status.text, /\nc +tcp +\S+ +any \(server picks\) +refused/);
    }),
);
