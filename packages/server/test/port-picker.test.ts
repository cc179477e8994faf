import assert from 'node:assert/strict';
import net from 'node:net';
import { test } from 'node:test';
import { freePorts } from '@porthole/mux/test/free-port';
import { PortRanges } from '@porthole/protocol';
import { MAX_PICK_BINDS, pickablePorts, pickPort, randomOrder } from '../src/port-picker.js';

test('random order gives every port of the set once, and not in ascending order', () => {
  const set = PortRanges.parse('40000-40099,50000');
  const walked = [...randomOrder(set)];
  assert.equal(walked.length, 101);
  assert.deepEqual(
    [...walked].sort((a, b) => a - b),
    Array.from({ length: 101 }, (_, i) => set.at(i)),
  );
  // Two walks of 101 ports in the same order, or both ascending, would be a 1 in 101! coincidence.
  assert.notDeepEqual(walked, [...randomOrder(set)]);
  assert.notDeepEqual(
    walked,
    [...walked].sort((a, b) => a - b),
  );
});

test("the ports to pick from: the grant within allow_ports, or the kernel's ephemeral range when neither narrows it", () => {
  const all = PortRanges.all();
  const grant = PortRanges.parse('40000-40019');
  assert.deepEqual(
    { ...pickablePorts(grant, all), ports: pickablePorts(grant, all).ports.toString() },
    { ports: '40000-40019', described: "the token's grant (40000-40019)" },
  );
  const allow = PortRanges.parse('2000-2999,40010-49999');
  const within = pickablePorts(grant, allow);
  assert.equal(within.ports.toString(), '40010-40019');
  assert.equal(
    within.described,
    "the token's grant (40000-40019) within the server's allow_ports (2000-2999,40010-49999)",
  );
  assert.equal(pickablePorts(undefined, allow).described, "the server's allow_ports (2000-2999,40010-49999)");
  const any = pickablePorts(undefined, all);
  assert.match(any.described, /^the kernel's ephemeral range \(\d+-\d+\)$/);
  assert.ok(any.ports.size > 1000 && !any.ports.contains(22));
});

/** Listens on `port` of 127.0.0.1 as a proxy's listener would; rejects with the errno code. */
function listen(port: number): Promise<net.Server> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

test('picking: the preferred port first, ports held by proxies skipped, ports other programs hold tried past, then a refusal naming the ranges', async () => {
  const ports = await freePorts(3);
  const [a, b, c] = ports as [number, number, number];
  const from = { ports: PortRanges.parse(ports.map(String)), described: 'the test ports' };
  const servers: net.Server[] = [];
  try {
    const first = await pickPort({ from, preferred: b, held: () => false, bind: listen });
    servers.push(first.bound);
    assert.equal(first.port, b);
    assert.equal(first.preferredRefusal, undefined);

    // b is bound by a program of its own now (no proxy holds it), a is held by a proxy: c is left.
    const second = await pickPort({ from, preferred: b, held: (port) => port === a, bind: listen });
    servers.push(second.bound);
    assert.equal(second.port, c);
    assert.match(second.preferredRefusal ?? '', /EADDRINUSE/);

    await assert.rejects(pickPort({ from, held: (port) => port === a, bind: listen }), (err: Error) => {
      assert.match(
        err.message,
        /^no free port to pick in the test ports: all 3 are in use \(1 held by proxies, 2 in use on the server \(.*EADDRINUSE/,
      );
      return true;
    });
    const outside = await pickPort({ from, preferred: 1, held: () => false, bind: async (port) => port });
    assert.ok(ports.includes(outside.port));
    assert.equal(outside.preferredRefusal, 'port 1 is outside the test ports');
  } finally {
    for (const server of servers) server.close();
  }
});

test('picking binds at most MAX_PICK_BINDS ports, and stops at an error no other port would mend', async () => {
  const from = { ports: PortRanges.parse('40000-40999'), described: 'a wide grant' };
  let binds = 0;
  const inUse = async (port: number): Promise<number> => {
    binds++;
    throw Object.assign(new Error(`address 127.0.0.1:${port} is already in use on the server`), {
      code: 'EADDRINUSE',
    });
  };
  await assert.rejects(
    pickPort({ from, held: () => false, bind: inUse }),
    /the 16 ports tried were in use on the server/,
  );
  assert.equal(binds, MAX_PICK_BINDS);
  const gone = async (): Promise<number> => {
    throw Object.assign(new Error('address 192.0.2.1 is not available on the server'), {
      code: 'EADDRNOTAVAIL',
    });
  };
  await assert.rejects(pickPort({ from, held: () => false, bind: gone }), /is not available on the server/);
  await assert.rejects(
    pickPort({
      from: { ports: PortRanges.parse('80').intersect(PortRanges.parse('81')), described: 'X and Y' },
      held: () => false,
      bind: async (p) => p,
    }),
    /^Error: no port to pick: X and Y have no port in common$/,
  );
});
