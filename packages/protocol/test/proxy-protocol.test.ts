import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { freePort } from '@porthole/mux/test/free-port';
import { Prng, runSeed } from '@porthole/mux/test/prng';
import {
  encodeProxyHeader,
  encodeProxyV1,
  encodeProxyV2,
  formatIp,
  type ProxyEndpoints,
  parseIp,
} from '../src/proxy-protocol.js';

const v4: ProxyEndpoints = {
  sourceAddress: '203.0.113.7',
  sourcePort: 51234,
  destinationAddress: '198.51.100.9',
  destinationPort: 443,
};
const v6: ProxyEndpoints = {
  sourceAddress: '2001:db8::7',
  sourcePort: 40000,
  destinationAddress: '2001:DB8:0:0:1::1',
  destinationPort: 8443,
};

const LOCAL_V2 = '0d0a0d0a000d0a515549540a' + '20' + '00' + '0000';

describe('PROXY protocol v1', () => {
  it('encodes TCP4 and TCP6 lines', () => {
    assert.equal(encodeProxyV1(v4).toString(), 'PROXY TCP4 203.0.113.7 198.51.100.9 51234 443\r\n');
    assert.equal(encodeProxyV1(v6).toString(), 'PROXY TCP6 2001:db8::7 2001:db8::1:0:0:1 40000 8443\r\n');
    assert.deepEqual(encodeProxyHeader('v1', v4), encodeProxyV1(v4));
  });

  it('treats IPv4-mapped IPv6 as IPv4, and carries a mixed pair as IPv6', () => {
    const mapped = { ...v4, sourceAddress: '::ffff:203.0.113.7', destinationAddress: '::FFFF:c633:6409' };
    assert.equal(encodeProxyV1(mapped).toString(), 'PROXY TCP4 203.0.113.7 198.51.100.9 51234 443\r\n');
    const mixed = { ...v6, sourceAddress: '203.0.113.7' };
    assert.equal(
      encodeProxyV1(mixed).toString(),
      'PROXY TCP6 ::ffff:cb00:7107 2001:db8::1:0:0:1 40000 8443\r\n',
    );
  });

  it('says UNKNOWN when any part is missing or unparseable', () => {
    const unknown = 'PROXY UNKNOWN\r\n';
    assert.equal(encodeProxyV1(undefined).toString(), unknown);
    for (const broken of [
      { ...v4, sourceAddress: undefined },
      { ...v4, destinationAddress: '' },
      { ...v4, sourceAddress: 'localhost' },
      { ...v4, sourceAddress: '1.2.3.256' },
      { ...v4, destinationAddress: '2001:db8::1::2' },
      { ...v4, sourcePort: undefined },
      { ...v4, sourcePort: -1 },
      { ...v4, destinationPort: 65536 },
      { ...v4, destinationPort: 1.5 },
      { ...v4, destinationPort: Number.NaN },
    ]) {
      assert.equal(encodeProxyV1(broken).toString(), unknown, JSON.stringify(broken));
      assert.equal(encodeProxyV2(broken).toString('hex'), LOCAL_V2, JSON.stringify(broken));
    }
  });

  it('strips an IPv6 zone id and stays within the 107-byte line limit', () => {
    const zoned = { ...v6, sourceAddress: 'fe80::1%eth0' };
    assert.equal(encodeProxyV1(zoned).toString(), 'PROXY TCP6 fe80::1 2001:db8::1:0:0:1 40000 8443\r\n');
    const longest = {
      sourceAddress: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe',
      sourcePort: 65535,
      destinationAddress: 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe',
      destinationPort: 65535,
    };
    assert.ok(encodeProxyV1(longest).length <= 107);
  });
});

describe('PROXY protocol v2', () => {
  it('encodes TCP over IPv4 byte for byte', () => {
    assert.equal(
      encodeProxyV2(v4).toString('hex'),
      '0d0a0d0a000d0a515549540a' + '21' + '11' + '000c' + 'cb007107' + 'c6336409' + 'c822' + '01bb',
    );
    assert.deepEqual(encodeProxyHeader('v2', v4), encodeProxyV2(v4));
  });

  it('encodes TCP over IPv6 byte for byte', () => {
    assert.equal(
      encodeProxyV2(v6).toString('hex'),
      '0d0a0d0a000d0a515549540a' +
        '21' +
        '21' +
        '0024' +
        '20010db8000000000000000000000007' +
        '20010db8000000000001000000000001' +
        '9c40' +
        '20fb',
    );
  });

  it('uses LOCAL with no addresses when unknown, and IPv4 for IPv4-mapped addresses', () => {
    assert.equal(encodeProxyV2(undefined).toString('hex'), LOCAL_V2);
    const mapped = { ...v4, sourceAddress: '::ffff:203.0.113.7', destinationAddress: '::ffff:198.51.100.9' };
    assert.deepEqual(encodeProxyV2(mapped), encodeProxyV2(v4));
  });
});

describe('IP address text and bytes', () => {
  it('formats IPv6 as RFC 5952, like the WHATWG URL serializer', (t) => {
    const seed = runSeed();
    t.diagnostic(`seed ${seed}`);
    const rng = new Prng(seed);
    for (let i = 0; i < 3000; i++) {
      const bytes = rng.bytes(16);
      // Zero runs are what compression is about: zero some groups.
      for (let g = 0; g < 8; g++) if (rng.chance(0.5)) bytes.writeUInt16BE(0, g * 2);
      if (bytes.subarray(0, 12).equals(Buffer.from('00000000000000000000ffff', 'hex'))) continue;
      const text = formatIp({ family: 6, bytes });
      assert.equal(`[${text}]`, new URL(`http://[${text}]/`).hostname, `seed ${seed}, case ${i}`);
      const parsed = parseIp(text);
      assert.ok(parsed?.family === 6, `seed ${seed}, case ${i}: ${text}`);
      assert.deepEqual(parsed.bytes, bytes, `seed ${seed}, case ${i}: ${text}`);
    }
  });

  it('parses the forms Node reports and refuses the rest', () => {
    assert.equal(formatIp(parseIp('::1')!), '::1');
    assert.equal(formatIp(parseIp('::')!), '::');
    assert.equal(formatIp(parseIp('1::')!), '1::');
    assert.equal(formatIp(parseIp('1:0:0:2:0:0:0:3')!), '1:0:0:2::3');
    assert.equal(formatIp(parseIp('::ffff:127.0.0.1')!), '127.0.0.1');
    assert.equal(formatIp(parseIp('64:ff9b::192.0.2.33')!), '64:ff9b::c000:221');
    assert.equal(parseIp('::ffff:127.0.0.1')!.family, 4);
    for (const bad of ['', ' 1.2.3.4', '1.2.3', '01.2.3.4x', ':::', '1:2:3:4:5:6:7:8:9', 'g::1', '[::1]']) {
      assert.equal(parseIp(bad), undefined, bad);
    }
  });
});

// A real consumer: HAProxy (Debian's, /usr/sbin/haproxy) with `accept-proxy` answers every request with the
// client address it believes, so the test sees exactly what a PROXY-aware local service would.
describe('HAProxy accepts our headers', () => {
  const HAPROXY = '/usr/sbin/haproxy';
  let haproxy: ChildProcess | undefined;
  let haproxyLog = '';
  let port = 0;
  let dir = '';

  async function canConnect(): Promise<boolean> {
    const socket = net.connect(port, '127.0.0.1');
    try {
      await Promise.race([once(socket, 'connect'), once(socket, 'error').then(() => Promise.reject())]);
      return true;
    } catch {
      return false;
    } finally {
      socket.destroy();
    }
  }

  async function startHaproxy(): Promise<void> {
    port = await freePort();
    const config = [
      'global',
      '  maxconn 64',
      'defaults',
      '  mode http',
      '  timeout connect 5s',
      '  timeout client 5s',
      '  timeout server 5s',
      'frontend porthole_test',
      `  bind 127.0.0.1:${port} accept-proxy`,
      '  http-request return status 200 content-type text/plain lf-string "%[src]|%[src_port]|%[dst]|%[dst_port]"',
      '',
    ].join('\n');
    const file = path.join(dir, 'haproxy.cfg');
    await writeFile(file, config);
    haproxyLog = '';
    const child = spawn(HAPROXY, ['-db', '-f', file], { stdio: ['ignore', 'pipe', 'pipe'] });
    haproxy = child;
    child.stdout?.on('data', (chunk: Buffer) => {
      haproxyLog += chunk;
    });
    child.stderr?.on('data', (chunk: Buffer) => {
      haproxyLog += chunk;
    });
    for (let i = 0; i < 100; i++) {
      if (child.exitCode !== null) break;
      if (await canConnect()) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(`haproxy did not listen on 127.0.0.1:${port}: ${haproxyLog}`);
  }

  async function stopHaproxy(): Promise<void> {
    const child = haproxy;
    haproxy = undefined;
    if (child === undefined || child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
    await exited;
    clearTimeout(timer);
  }

  before(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'porthole-haproxy-'));
    // A port taken between freePort() and haproxy's bind is the only expected failure: retry then.
    for (let attempt = 1; ; attempt++) {
      try {
        await startHaproxy();
        return;
      } catch (err) {
        await stopHaproxy();
        if (attempt === 3) throw err;
      }
    }
  });

  after(async () => {
    await stopHaproxy();
    await rm(dir, { recursive: true, force: true });
  });

  /** Sends `header` + one HTTP request; returns HAProxy's status and body (status 0: closed without one). */
  async function ask(header: Buffer): Promise<{ status: number; body: string; localPort: number }> {
    const socket = net.connect(port, '127.0.0.1');
    socket.setTimeout(5000, () => socket.destroy(new Error('haproxy did not answer in 5 s')));
    await once(socket, 'connect');
    const localPort = socket.localPort!;
    socket.end(
      Buffer.concat([header, Buffer.from('GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n')]),
    );
    const chunks: Buffer[] = [];
    try {
      for await (const chunk of socket) chunks.push(chunk as Buffer);
    } catch (err) {
      // HAProxy resets connections whose header it refuses.
      if ((err as NodeJS.ErrnoException).code !== 'ECONNRESET') throw err;
    }
    const response = Buffer.concat(chunks).toString('latin1');
    if (response === '') return { status: 0, body: '', localPort };
    const status = Number(/^HTTP\/1\.1 (\d{3})/.exec(response)?.[1] ?? -1);
    return { status, body: response.slice(response.indexOf('\r\n\r\n') + 4), localPort };
  }

  it('v1 and v2 over IPv4: HAProxy sees the visitor and the public address we put in', async () => {
    for (const version of ['v1', 'v2'] as const) {
      const answer = await ask(encodeProxyHeader(version, v4));
      assert.equal(answer.status, 200, `${version}: ${JSON.stringify(answer)} ${haproxyLog}`);
      assert.equal(answer.body, '203.0.113.7|51234|198.51.100.9|443', version);
    }
  });

  it('v1 and v2 over IPv6', async () => {
    for (const version of ['v1', 'v2'] as const) {
      const answer = await ask(encodeProxyHeader(version, v6));
      assert.equal(answer.status, 200, `${version}: ${JSON.stringify(answer)}`);
      assert.equal(answer.body, '2001:db8::7|40000|2001:db8::1:0:0:1|8443', version);
    }
  });

  it('IPv4-mapped visitors arrive as IPv4; a mixed pair as IPv4-mapped IPv6', async () => {
    const mapped = { ...v4, sourceAddress: '::ffff:203.0.113.8', destinationAddress: '::ffff:198.51.100.9' };
    const mixed = { ...v6, sourceAddress: '203.0.113.9' };
    for (const version of ['v1', 'v2'] as const) {
      assert.equal(
        (await ask(encodeProxyHeader(version, mapped))).body,
        '203.0.113.8|51234|198.51.100.9|443',
      );
      assert.equal(
        (await ask(encodeProxyHeader(version, mixed))).body,
        '::ffff:203.0.113.9|40000|2001:db8::1:0:0:1|8443',
      );
    }
  });

  it('UNKNOWN (v1) and LOCAL (v2): HAProxy falls back to the real connection', async () => {
    for (const version of ['v1', 'v2'] as const) {
      const answer = await ask(encodeProxyHeader(version, undefined));
      assert.equal(answer.status, 200, `${version}: ${JSON.stringify(answer)}`);
      assert.equal(answer.body, `127.0.0.1|${answer.localPort}|127.0.0.1|${port}`, version);
    }
  });

  it('refuses a broken header, so the checks above are real', async () => {
    const truncated = encodeProxyV2(v4);
    truncated.writeUInt16BE(8, 14); // claims fewer address bytes than TCP over IPv4 needs
    assert.notEqual((await ask(truncated.subarray(0, 24))).status, 200);
    assert.notEqual((await ask(Buffer.from('PROXY TCP4 203.0.113.7 198.51.100.9 51234\r\n'))).status, 200);
    assert.notEqual((await ask(Buffer.alloc(0))).status, 200, 'accept-proxy requires a header');
  });
});
