import assert from 'node:assert/strict';
import { test } from 'node:test';
import { proxySpecOf } from '../src/client.js';
import type { ClientConfig, ProxyConfig } from '../src/config.js';
import { diffProxies, needsReconnect } from '../src/reload.js';
import type { ClientStatus } from '../src/session-status.js';
import { formatStatus } from '../src/status-command.js';

const tcp = (name: string, remotePort: number, localPort = 22): ProxyConfig =>
  ({ name, type: 'tcp', local: { host: '127.0.0.1', port: localPort }, remotePort }) as ProxyConfig;

test('diffProxies: added, removed, changed for the server, changed only locally', () => {
  const running = new Map([
    ['keep', tcp('keep', 2000)],
    ['gone', tcp('gone', 2001)],
    ['moved', tcp('moved', 2002)],
    ['relocal', tcp('relocal', 2003)],
  ]);
  const diff = diffProxies(
    running,
    [tcp('keep', 2000), tcp('moved', 2102), tcp('relocal', 2003, 8080), tcp('new', 2004)],
    proxySpecOf,
  );
  assert.deepEqual(diff, {
    added: ['new'],
    removed: ['gone'],
    changed: ['moved'],
    localChanged: ['relocal'],
    samePort: [],
  });
});

test("diffProxies: an http proxy's new local is registered anew (the server keeps streams to the old one)", () => {
  const web = (port: number) =>
    ({ name: 'web', type: 'http', local: { host: '127.0.0.1', port }, hosts: ['app.test'] }) as ProxyConfig;
  const diff = diffProxies(new Map([['web', web(3000)]]), [web(3001)], proxySpecOf);
  assert.deepEqual(diff, { added: [], removed: [], changed: ['web'], localChanged: [], samePort: [] });
});

test('diffProxies: a tcp proxy changed on its own port is marked samePort (the server keeps its listener)', () => {
  const limited = { ...tcp('limited', 2000), maxConnections: 8 } as ProxyConfig;
  const diff = diffProxies(
    new Map([
      ['limited', tcp('limited', 2000)],
      ['moved', tcp('moved', 2001)],
    ]),
    [limited, { ...tcp('moved', 2101), maxConnections: 8 } as ProxyConfig],
    proxySpecOf,
  );
  assert.deepEqual(diff, {
    added: [],
    removed: [],
    changed: ['limited', 'moved'],
    localChanged: [],
    samePort: ['limited'],
  });
});

test('diffProxies: compression turned on or off is a changed spec, registered again on the same port', () => {
  const packed = { ...tcp('packed', 2000), compression: true } as ProxyConfig;
  const web = (compression: boolean) =>
    ({
      name: 'web',
      type: 'http',
      local: { host: '127.0.0.1', port: 3000 },
      hosts: ['app.test'],
      ...(compression ? { compression } : {}),
    }) as ProxyConfig;
  const on = diffProxies(
    new Map([
      ['packed', tcp('packed', 2000)],
      ['web', web(false)],
    ]),
    [packed, web(true)],
    proxySpecOf,
  );
  assert.deepEqual(on, {
    added: [],
    removed: [],
    changed: ['packed', 'web'],
    localChanged: [],
    samePort: ['packed'],
  });
  const off = diffProxies(new Map([['packed', packed]]), [tcp('packed', 2000)], proxySpecOf);
  assert.deepEqual(off, {
    added: [],
    removed: [],
    changed: ['packed'],
    localChanged: [],
    samePort: ['packed'],
  });
});

test('diffProxies: a udp proxy changed on its own port is samePort too; with a new local as well, its flows end (localChanged)', () => {
  const udp = (name: string, remotePort: number, maxFlows: number, localPort = 53) =>
    ({
      name,
      type: 'udp',
      local: { host: '127.0.0.1', port: localPort },
      remotePort,
      maxFlows,
    }) as ProxyConfig;
  const diff = diffProxies(
    new Map([
      ['dns', udp('dns', 5300, 64)],
      ['game', udp('game', 5301, 64)],
      ['moved', udp('moved', 5302, 64)],
    ]),
    [udp('dns', 5300, 8), udp('game', 5301, 8, 7777), udp('moved', 5402, 8)],
    proxySpecOf,
  );
  assert.deepEqual(diff, {
    added: [],
    removed: [],
    changed: ['dns', 'game', 'moved'],
    localChanged: ['game'],
    samePort: ['dns', 'game'],
  });
});

test('needsReconnect: server, token or CA', () => {
  const base = { server: 'ws://a/_porthole', token: 't1' } as ClientConfig;
  assert.equal(needsReconnect(base, { ...base }), false);
  assert.equal(needsReconnect(base, { ...base, token: 't2' }), true);
  assert.equal(needsReconnect(base, { ...base, server: 'ws://b/_porthole' }), true);
  assert.equal(needsReconnect(base, { ...base, ca: Buffer.from('x') }), true);
});

test('formatStatus: the session line and one row per proxy', () => {
  const now = Date.parse('2026-01-01T12:00:00Z');
  const status = {
    state: 'established',
    server: 'wss://vps.example.com/_porthole',
    client: 'homelab',
    session_id: 'abcd1234',
    since: '2026-01-01T10:54:30Z',
    open_connections: 1,
    streams: 2,
    process: { rss: 1, heapUsed: 1, openFds: 1, resources: {} },
    proxies: [
      {
        name: 'ssh',
        type: 'tcp',
        local: '127.0.0.1:22',
        remote_port: 2222,
        state: 'registered',
        remote_addr: '0.0.0.0:2222',
        open_connections: 1,
      },
      {
        name: 'web',
        type: 'tcp',
        local: '127.0.0.1:80',
        remote_port: 9999,
        state: 'refused',
        reason: 'port 9999 is outside the grant',
        open_connections: 0,
      },
      {
        name: 'app',
        type: 'http',
        local: '127.0.0.1:3000',
        remote_port: undefined,
        state: 'registered',
        remote_addr: '0.0.0.0:80',
        urls: ['http://app.example.com/', 'https://app.example.com/'],
        open_connections: 0,
      },
    ],
  } as ClientStatus;
  assert.equal(
    formatStatus(status, now),
    [
      'server:   wss://vps.example.com/_porthole',
      'session:  established as "homelab" (session abcd1234), for 1h 5m',
      'open connections: 1',
      '',
      'PROXY  TYPE  LOCAL           REMOTE PORT  STATE       OPEN  DETAIL',
      'ssh    tcp   127.0.0.1:22    2222         registered  1     public 0.0.0.0:2222',
      'web    tcp   127.0.0.1:80    9999         refused     0     port 9999 is outside the grant',
      'app    http  127.0.0.1:3000  -            registered  0     http://app.example.com/ https://app.example.com/',
      '',
    ].join('\n'),
  );
  const waiting = { ...status, state: 'reconnecting', since: '2026-01-01T11:59:58Z', last_error: 'refused' };
  const between = formatStatus({ ...waiting, retry_at: '2026-01-01T12:00:03Z' } as ClientStatus, now);
  assert.match(between, /^session: {2}reconnecting for 2s, next attempt in 3s$/m);
  const during = formatStatus(waiting as ClientStatus, now);
  assert.match(during, /^session: {2}reconnecting for 2s, connecting now$/m);
  assert.match(during, /^last error: refused$/m);
});

test('formatStatus: a LIMIT column once some proxy has a bandwidth_limit', () => {
  const row = { type: 'tcp', local: '127.0.0.1:22', state: 'registered', open_connections: 0 };
  const status = {
    state: 'established',
    server: 'wss://vps.example.com/_porthole',
    client: 'homelab',
    session_id: 'abcd1234',
    since: '2026-01-01T12:00:00Z',
    open_connections: 0,
    streams: 1,
    process: { rss: 1, heapUsed: 1, openFds: 1, resources: {} },
    proxies: [
      { ...row, name: 'ssh', remote_port: 2222, remote_addr: '0.0.0.0:2222' },
      { ...row, name: 'media', remote_port: 8096, remote_addr: '0.0.0.0:8096', bandwidth_limit: '2.5MB' },
    ],
  } as ClientStatus;
  assert.deepEqual(formatStatus(status, Date.parse('2026-01-01T12:00:00Z')).split('\n').slice(4, 7), [
    'PROXY  TYPE  LOCAL         REMOTE PORT  STATE       OPEN  LIMIT    DETAIL',
    'ssh    tcp   127.0.0.1:22  2222         registered  0     -        public 0.0.0.0:2222',
    'media  tcp   127.0.0.1:22  8096         registered  0     2.5MB/s  public 0.0.0.0:8096',
  ]);
});
