import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  describeDialProxy,
  noProxyExcludes,
  parseProxyUrl,
  proxyFromEnvironment,
} from '../src/dial-proxy.js';

test('a proxy URL: http or socks5 (socks5h the same), default ports, credentials decoded, never described', () => {
  assert.deepEqual(parseProxyUrl('http://proxy.corp:3128'), { kind: 'http', host: 'proxy.corp', port: 3128 });
  assert.deepEqual(parseProxyUrl('socks5h://[::1]'), { kind: 'socks5', host: '::1', port: 1080 });
  assert.equal(parseProxyUrl('http://proxy.corp').port, 80);
  const withCredentials = parseProxyUrl('socks5://me%40corp:p%3Ass@10.0.0.1:1080/');
  assert.deepEqual(withCredentials.credentials, { user: 'me@corp', password: 'p:ss' });
  assert.equal(describeDialProxy(withCredentials), 'socks5://10.0.0.1:1080');
  assert.equal(describeDialProxy(parseProxyUrl('socks5://[::1]:9050')), 'socks5://[::1]:9050');
  // Without a scheme, only where curl takes one so: from the environment.
  assert.deepEqual(parseProxyUrl('proxy.corp:3128', true), { kind: 'http', host: 'proxy.corp', port: 3128 });
  for (const [text, reason] of [
    ['proxy.corp:3128', /proxy scheme/],
    ['https://proxy.corp:3128', /https:\/\/ proxy .* not supported/],
    ['socks4://proxy.corp:1080', /socks4:\/\/ is not a proxy scheme/],
    ['http://proxy.corp:3128/path', /path/],
    ['http://:secret@proxy.corp:3128', /password without a user/],
    ['not a url', /must be a URL/],
  ] as const) {
    assert.throws(
      () => parseProxyUrl(text),
      (err: Error) => reason.test(err.message) && !err.message.includes('secret'),
    );
  }
});

test('no_proxy: "*", a name and the names under it, an exact IP address; case and ports do not matter', () => {
  assert.equal(noProxyExcludes('*', 'vps.example.com'), true);
  assert.equal(noProxyExcludes('example.com', 'vps.example.com'), true);
  assert.equal(noProxyExcludes('.EXAMPLE.com', 'vps.example.com'), true);
  assert.equal(noProxyExcludes('example.com', 'example.com'), true);
  assert.equal(noProxyExcludes('ample.com', 'vps.example.com'), false);
  assert.equal(noProxyExcludes('intranet, 10.1.2.3:7000', '10.1.2.3'), true);
  assert.equal(noProxyExcludes('2.3', '10.1.2.3'), false, 'an address is not matched by its end');
  assert.equal(noProxyExcludes('[::1]', '[::1]'), true);
  assert.equal(noProxyExcludes('', 'vps.example.com'), false);
});

test('no_proxy: address ranges as curl takes them, for a server named by its address only', () => {
  assert.equal(noProxyExcludes('10.0.0.0/8', '10.1.2.3'), true);
  assert.equal(noProxyExcludes('10.0.0.0/8', '11.1.2.3'), false);
  assert.equal(noProxyExcludes('fd00::/8', '[fd12::7]'), true);
  assert.equal(noProxyExcludes('[fd00::]/8', 'fd12::7'), true);
  assert.equal(noProxyExcludes('fd00::/8', '10.1.2.3'), false, 'another family');
  assert.equal(noProxyExcludes('10.0.0.0/8', 'ten.example.com'), false, 'a name is not resolved for it');
  assert.equal(noProxyExcludes('10.0.0.0/33', '10.1.2.3'), false, 'not a range');
});

test('the environment: https_proxy for wss://, http_proxy for ws://, then all_proxy; no_proxy excludes', () => {
  const env = {
    http_proxy: 'http://plain:3128',
    HTTPS_PROXY: 'http://secure:3128',
    ALL_PROXY: 'socks5://all:1080',
  };
  assert.deepEqual(proxyFromEnvironment('wss://vps.example.com/_porthole', env), {
    proxy: { kind: 'http', host: 'secure', port: 3128 },
    from: 'env HTTPS_PROXY',
  });
  assert.equal(proxyFromEnvironment('ws://vps.example.com/_porthole', env)?.from, 'env http_proxy');
  assert.equal(
    proxyFromEnvironment('ws://h/_porthole', { ALL_PROXY: 'socks5://all:1080' })?.from,
    'env ALL_PROXY',
  );
  assert.deepEqual(
    proxyFromEnvironment('wss://vps.example.com/_porthole', { ...env, no_proxy: 'example.com' }),
    {
      excludedBy: 'no_proxy',
      from: 'env HTTPS_PROXY',
    },
  );
  assert.equal(
    proxyFromEnvironment('wss://vps.example.com/_porthole', { http_proxy: 'http://p:1' }),
    undefined,
  );
  assert.throws(
    () => proxyFromEnvironment('wss://h/', { https_proxy: 'ftp://u:hunter2@p:1' }),
    (err: Error) => /^https_proxy: ftp:\/\/ is not/.test(err.message) && !err.message.includes('hunter2'),
  );
});
