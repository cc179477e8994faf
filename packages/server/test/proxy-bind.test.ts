import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { ProxySpec } from '@porthole/protocol';
import { bindAddressOf, customBindOf, remoteBindRefusal } from '../src/proxy-bind.js';

const tcp = (remote_bind?: string): ProxySpec => ({
  name: 'web',
  type: 'tcp',
  remote_port: 8080,
  ...(remote_bind === undefined ? {} : { remote_bind }),
});

test('a proxy is bound on proxy_bind unless it asks for an address allow_bind lists, compared in one spelling', () => {
  const open = { proxyBind: '0.0.0.0', allowBind: ['127.0.0.1', '::1'] };
  assert.equal(bindAddressOf(open, tcp()), '0.0.0.0');
  assert.equal(bindAddressOf(open, tcp('0:0:0:0:0:0:0:1')), '::1');
  assert.equal(remoteBindRefusal(open, tcp('0:0:0:0:0:0:0:1')), undefined);
  assert.equal(remoteBindRefusal(open, tcp('0.0.0.0')), undefined, 'proxy_bind itself is always allowed');
  assert.equal(customBindOf(open, tcp('::1')), '::1');
  assert.equal(
    customBindOf(open, tcp('0.0.0.0')),
    undefined,
    'proxy_bind asked for by name is not shown apart',
  );
  assert.equal(customBindOf({ proxyBind: '0:0::0', allowBind: [] }, tcp()), undefined);
  assert.equal(
    remoteBindRefusal(open, tcp('192.0.2.1')),
    'remote_bind 192.0.2.1 is not allowed: this server binds proxies on 0.0.0.0, 127.0.0.1, ::1 (proxy_bind and allow_bind)',
  );
  assert.equal(
    remoteBindRefusal({ proxyBind: '0.0.0.0', allowBind: [] }, tcp('127.0.0.1')),
    'remote_bind 127.0.0.1 is not allowed: this server binds proxies on its proxy_bind (0.0.0.0) only (its allow_bind names no other address)',
  );
  assert.equal(
    remoteBindRefusal(open, tcp('localhost')),
    'remote_bind: bind address "localhost": write the loopback address itself: "127.0.0.1" or "::1"',
  );
  assert.equal(
    remoteBindRefusal(open, { name: 'app', type: 'http', subdomain: 'app', remote_bind: '127.0.0.1' }),
    "remote_bind applies to tcp and udp proxies, not http (those share the server's [http] and [https] ports)",
  );
});
