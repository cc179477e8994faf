import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ConnectionTracker } from '@porthole/protocol';
import { tokenMatches } from '../src/admin-server.js';
import { Exposition, Histogram } from '../src/metrics.js';
import { ProxyTraffic, proxyKey } from '../src/proxy-traffic.js';

test('Exposition writes HELP/TYPE once per family, escapes label values, and accumulates histogram buckets', () => {
  const h = new Histogram([0.01, 0.1, 1]);
  for (const v of [0.005, 0.05, 0.05, 0.5, 3]) h.observe(v);
  const text = new Exposition()
    .family('x_total', 'counter', 'Things.\nCounted.')
    .sample('x_total', 2, { client: 'a"b\\c\nd', proxy: 'p' })
    .histogram('lat_seconds', 'Latency.', h)
    .toString();
  assert.equal(
    text,
    [
      '# HELP x_total Things.\\nCounted.',
      '# TYPE x_total counter',
      'x_total{client="a\\"b\\\\c\\nd",proxy="p"} 2',
      '# HELP lat_seconds Latency.',
      '# TYPE lat_seconds histogram',
      'lat_seconds_bucket{le="0.01"} 1',
      'lat_seconds_bucket{le="0.1"} 3',
      'lat_seconds_bucket{le="1"} 4',
      'lat_seconds_bucket{le="+Inf"} 5',
      'lat_seconds_sum 3.605',
      'lat_seconds_count 5',
      '',
    ].join('\n'),
  );
});

test('tokenMatches accepts exactly "Bearer <token>"', () => {
  const token = 'admin-token-0123456789';
  assert.equal(tokenMatches(`Bearer ${token}`, token), true);
  assert.equal(tokenMatches(`bearer ${token}  `, token), true);
  assert.equal(tokenMatches(`Bearer ${token}x`, token), false);
  assert.equal(tokenMatches(token, token), false);
  assert.equal(tokenMatches('Bearer ', token), false);
  assert.equal(tokenMatches(undefined, token), false);
});

test('per-proxy totals stay bounded when nothing reads them, and the busiest names are kept', () => {
  const traffic = new ProxyTraffic(new ConnectionTracker());
  traffic.countRefused('c', 'kept');
  for (let i = 0; i < 25_000; i++) {
    traffic.countRefused('c', `p${i}`);
    if (i % 1000 === 0) traffic.countRefused('c', 'kept');
  }
  const remembered = (traffic as unknown as { closed: Map<string, unknown> }).closed.size;
  assert.ok(remembered <= 10_000, `${remembered} names remembered`);
  const totals = traffic.snapshot([
    { client: 'c', proxy: 'kept' },
    { client: 'c', proxy: 'p24999' },
  ]);
  assert.equal(totals.get(proxyKey('c', 'p24999'))?.refused, 1, 'the newest name is there');
  assert.equal(totals.get(proxyKey('c', 'kept'))?.refused, 26, 'a name in use keeps its count');
});

test("a removed proxy's totals go at once and its open exchanges no longer count for it; one whose client left keeps them; a name back counts from 0", () => {
  const traffic = new ProxyTraffic(new ConnectionTracker());
  const flow = traffic.begin('c', 'gone', 1, '127.0.0.1:5000');
  flow.bytesIn = 10;
  traffic.end(traffic.begin('c', 'gone', 2, '127.0.0.1:5001'));
  traffic.end(traffic.begin('c', 'away', 3, '127.0.0.1:5002'));
  traffic.countRefused('c', 'gone');
  traffic.remove('c', 'gone');
  traffic.left('c', 'away');
  const names = () => [...traffic.snapshot([]).values()].map((t) => t.proxy);
  assert.deepEqual(names(), ['away'], 'the removed one is gone though a flow of it is open');
  traffic.end(flow);
  traffic.countRefused('c', 'gone');
  assert.deepEqual(names(), ['away'], 'what it did after its removal does not bring it back');
  assert.equal((traffic as unknown as { removed: Set<string> }).removed.size, 0, 'nothing of it is kept');
  traffic.registered('c', 'gone');
  traffic.end(traffic.begin('c', 'gone', 4, '127.0.0.1:5003'));
  assert.equal(traffic.snapshot([{ client: 'c', proxy: 'gone' }]).get(proxyKey('c', 'gone'))?.connections, 1);
});
