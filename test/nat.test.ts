// The client behind a real NAT: namespaces pub (server), lan (client + local service) and a router that
// MASQUERADEs lan -> pub and drops new connections pub -> lan.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createNatTopology, LAN_ADDR, PUB_ADDR, RTR_PUB_ADDR, skippedWithoutNetns } from './lib/netns.js';
import { withHarness } from './lib/processes.js';
import { issueToken, startClient, startServer } from './lib/tunnel.js';

const SERVICE_PORT = 9000; // inside the lan namespace: nothing else lives there
const CONTROL_PORT = 7000; // inside the pub namespace
const PUBLIC_PORT = 8000;

test('client behind NAT: pub cannot reach lan, yet the tunnel serves pub from the lan service', {
  timeout: 90_000,
}, async (t) => {
  if (await skippedWithoutNetns(t)) return;
  await withHarness(t, async (h) => {
    const net = await createNatTopology(h);

    const service = net.spawnProbe(h, 'lan-service', net.lan, [
      'echo-server',
      '--host',
      LAN_ADDR,
      '--port',
      String(SERVICE_PORT),
      '--banner',
      'served-by-lan-service',
    ]);
    await service.waitForMsg('listening', 10_000);

    // The service works inside lan, so the negative check below is the NAT's doing.
    const inLan = await net.probe(net.lan, [
      'echo',
      '--host',
      LAN_ADDR,
      '--port',
      String(SERVICE_PORT),
      '--bytes',
      '1000',
      '--expect-banner',
    ]);
    assert.equal(inLan.ok, true, `lan reaches its own service: ${JSON.stringify(inLan)}`);

    // pub cannot reach the lan address (it even has a route via the router; the NAT drops new inbound).
    const direct = await net.probe(net.pub, [
      'connect',
      '--host',
      LAN_ADDR,
      '--port',
      String(SERVICE_PORT),
      '--timeout',
      '1500',
    ]);
    assert.notEqual(direct.result, 'connected', 'pub must not reach the lan service directly');
    assert.ok(
      ['timeout', 'unreachable'].includes(String(direct.result)),
      `direct connect from pub: ${direct.result}`,
    );
    t.diagnostic(`pub -> ${LAN_ADDR}:${SERVICE_PORT} directly: ${direct.result}`);

    const server = await startServer(h, {
      listen: `${PUB_ADDR}:${CONTROL_PORT}`,
      proxyBind: '0.0.0.0',
      allowPorts: ['8000-8099'],
      netns: net.pub,
    });
    const token = await issueToken(server.config, { name: 'homelab', ports: '8000-8009' });
    const client = await startClient(h, {
      server: `ws://${PUB_ADDR}:${CONTROL_PORT}/_porthole`,
      token,
      proxies: [{ name: 'web', local: `${LAN_ADDR}:${SERVICE_PORT}`, remotePort: PUBLIC_PORT }],
      netns: net.lan,
    });
    const publicPort = client.ports.get('web')!;

    // The server sees the client only as the router's public address (masqueraded).
    const ss = await net.exec(net.pub, 'ss', [
      '-Htn',
      'state',
      'established',
      `( sport = :${CONTROL_PORT} )`,
    ]);
    assert.match(ss, new RegExp(`${RTR_PUB_ADDR.replace(/\./g, '\\.')}:\\d+`), `server's peers:\n${ss}`);
    assert.doesNotMatch(ss, new RegExp(LAN_ADDR.replace(/\./g, '\\.')), 'the lan address never reaches pub');

    // Connections made in pub to the server's public port are served by the lan service.
    for (const bytes of [1, 64 * 1024, 4 * 1024 * 1024]) {
      const r = await net.probe(net.pub, [
        'echo',
        '--host',
        PUB_ADDR,
        '--port',
        String(publicPort),
        '--bytes',
        String(bytes),
        '--expect-banner',
        '--timeout',
        '15000',
      ]);
      assert.equal(r.ok, true, `pub -> ${PUB_ADDR}:${publicPort} (${bytes} bytes): ${JSON.stringify(r)}`);
      assert.equal(r.banner, 'served-by-lan-service');
      t.diagnostic(`pub -> tunnel -> lan service: ${bytes} bytes echoed in ${r.ms} ms`);
    }
    const closed = await server.proc.waitForMsg('connection closed', 10_000, { fields: { proxy: 'web' } });
    assert.match(
      String(closed.remote_addr),
      new RegExp(`^(::ffff:)?${PUB_ADDR.replace(/\./g, '\\.')}:\\d+$`),
      'remote_addr is the pub peer',
    );
  });
});
