import assert from 'node:assert/strict';
import { test } from 'node:test';
import { tokenMatches } from '../src/admin-server.js';
import { Exposition, Histogram } from '../src/metrics.js';

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
