// A tcp proxy with `local = "socks5"`: the server's public port speaks SOCKS5 and connections leave from the
// client's side, as chisel's R:socks and `ssh -R 1080` give. curl through it by name (resolved on the client)
// and by address, a wrong password, a destination outside socks_allow, a closed port, a command other than
// CONNECT, a visitor that stalls in the handshake, and what `check` refuses.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import { test } from 'node:test';
import { FORWARD_PASSWORD, FORWARD_USER, startForwardProxyTunnel } from './lib/forward-proxy.js';
import { startHttpBackend } from './lib/http-backend.js';
import { clientBin, freePorts, type Harness, run, withHarness } from './lib/processes.js';

const USER = FORWARD_USER;
const PASSWORD = FORWARD_PASSWORD;

/** A server and a client whose socks5 proxy (user and password from a file, `extra` keys) is on its port. */
function startSocksTunnel(h: Harness, extra: Record<string, string | string[]> = {}) {
  return startForwardProxyTunnel(h, { name: 'socks', local: 'socks5', extra });
}

/** curl through the SOCKS port: [exit code, stdout, stderr]. */
async function curlVia(proxyUrl: string, url: string): Promise<[number | null, string, string]> {
  const r = await run('curl', ['-sS', '--max-time', '15', '--proxy', proxyUrl, url], { timeoutMs: 20_000 });
  return [r.code, r.stdout, r.stderr];
}

/**
 * A raw SOCKS5 visitor: greeting with username/password, then a CONNECT (or `command`) to an IPv4 `host`;
 * resolves with every byte the server sent back until it closed (or 15 s passed).
 */
function rawSocksRequest(port: number, host: string, destPort: number, command = 0x01): Promise<Buffer> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => socket.destroy(), 15_000);
    const user = Buffer.from(USER);
    const password = Buffer.from(PASSWORD);
    const request = Buffer.alloc(10);
    request.set([0x05, command, 0x00, 0x01, ...host.split('.').map(Number)]);
    request.writeUInt16BE(destPort, 8);
    socket.on('connect', () =>
      socket.write(
        Buffer.concat([
          Buffer.from([0x05, 0x01, 0x02]),
          Buffer.from([0x01, user.length]),
          user,
          Buffer.from([password.length]),
          password,
          request,
        ]),
      ),
    );
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks));
    });
  });
}

/** The REP byte of the request's reply in what rawSocksRequest got: after method choice (2) and auth (2). */
function replyCode(answer: Buffer): number | undefined {
  assert.deepEqual([...answer.subarray(0, 4)], [0x05, 0x02, 0x01, 0x00], 'method and auth accepted');
  assert.equal(answer[4], 0x05, 'a SOCKS5 reply');
  return answer[5];
}

test(
  'curl reaches a service by name (resolved on the client) and by address through the socks5 port; each connection is logged with its dest',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('lab-web');
      h.onCleanup(() => backend.close());
      const { port, client } = await startSocksTunnel(h);
      assert.equal(client.registered.get('socks')?.local, 'socks5');
      const proxy = `socks5h://${USER}:${encodeURIComponent(PASSWORD)}@127.0.0.1:${port}`;

      const [byName, nameBody, nameErr] = await curlVia(proxy, `http://localhost:${backend.port}/by-name`);
      assert.equal(byName, 0, nameErr);
      assert.equal(JSON.parse(nameBody).url, '/by-name');
      const [byAddress, addressBody, addressErr] = await curlVia(
        proxy.replace('socks5h:', 'socks5:'),
        `http://127.0.0.1:${backend.port}/by-address`,
      );
      assert.equal(byAddress, 0, addressErr);
      assert.equal(JSON.parse(addressBody).url, '/by-address');

      const named = await client.proc.waitForMsg('connection closed', 10_000, {
        fields: { dest: `localhost:${backend.port}` },
      });
      assert.equal(named.local, 'socks5');
      assert.equal(named.dest_addr, `127.0.0.1:${backend.port}`);
      assert.ok((named.bytes_in as number) > 0 && (named.bytes_out as number) > 0, JSON.stringify(named));
      await client.proc.waitForMsg('connection closed', 10_000, {
        fields: { dest: `127.0.0.1:${backend.port}` },
      });
      t.diagnostic(`by name: ${JSON.stringify(named)}`);

      // An IPv6 destination (address type 4): a service on ::1 only.
      const v6 = createServer((_req, res) => res.end('over ipv6\n'));
      await new Promise<void>((resolve) => v6.listen(0, '::1', resolve));
      h.onCleanup(() => v6.close());
      const v6Port = (v6.address() as AddressInfo).port;
      const [byV6, v6Body, v6Err] = await curlVia(
        proxy.replace('socks5h:', 'socks5:'),
        `http://[::1]:${v6Port}/`,
      );
      assert.equal(byV6, 0, v6Err);
      assert.equal(v6Body, 'over ipv6\n');
      await client.proc.waitForMsg('connection closed', 10_000, { fields: { dest: `[::1]:${v6Port}` } });
    }),
);

test(
  'a wrong password, a destination outside socks_allow, a closed port and BIND are refused with their reply codes; no password in the logs',
  { timeout: 60_000 },
  (t) =>
    withHarness(t, async (h) => {
      const backend = await startHttpBackend('lab-web');
      h.onCleanup(() => backend.close());
      const [closedPort] = (await freePorts(1)) as [number];
      const { port, client } = await startSocksTunnel(h, {
        socks_allow: ['127.0.0.1/32'],
        socks_allow_ports: `${backend.port},${closedPort}`,
      });

      const wrong = `socks5h://${USER}:not-the-password@127.0.0.1:${port}`;
      const [wrongCode, , wrongErr] = await curlVia(wrong, `http://localhost:${backend.port}/`);
      t.diagnostic(`wrong password: curl exit ${wrongCode}: ${wrongErr.trim()}`);
      assert.notEqual(wrongCode, 0);
      assert.match(wrongErr, /authentication|User was rejected/i);
      const authLine = await client.proc.waitForMsg('socks request failed', 10_000);
      assert.match(String(authLine.reason), /wrong username or password/);

      // 127.0.0.2 is loopback too, but not in socks_allow: RFC 1928's "connection not allowed by ruleset".
      assert.equal(replyCode(await rawSocksRequest(port, '127.0.0.2', backend.port)), 0x02);
      const disallowed = await client.proc.waitForMsg('socks request failed', 10_000, {
        fields: { dest: `127.0.0.2:${backend.port}` },
      });
      assert.match(String(disallowed.reason), /not in socks_allow/);
      // A port outside socks_allow_ports, on an allowed address.
      assert.equal(replyCode(await rawSocksRequest(port, '127.0.0.1', 22)), 0x02);

      assert.equal(replyCode(await rawSocksRequest(port, '127.0.0.1', closedPort)), 0x05);
      const [refusedCode, , refusedErr] = await curlVia(
        `socks5://${USER}:${encodeURIComponent(PASSWORD)}@127.0.0.1:${port}`,
        `http://127.0.0.1:${closedPort}/`,
      );
      t.diagnostic(`closed port: curl exit ${refusedCode}: ${refusedErr.trim()}`);
      assert.match(refusedErr, /refused|\(5\)/i);

      assert.equal(replyCode(await rawSocksRequest(port, '127.0.0.1', backend.port, 0x02)), 0x07, 'BIND');
      assert.equal(replyCode(await rawSocksRequest(port, '127.0.0.1', backend.port, 0x03)), 0x07, 'UDP');
      // And a good request still works after all that.
      assert.equal(replyCode(await rawSocksRequest(port, '127.0.0.1', backend.port)), 0x00);

      const everything = client.proc.output.map((line) => line.text).join('\n');
      assert.ok(!everything.includes(PASSWORD), 'the password is never logged');
      assert.ok(!everything.includes('not-the-password'), "a visitor's password is never logged");
    }),
);

test('a visitor that stalls in the SOCKS handshake is dropped after 10 s', { timeout: 60_000 }, (t) =>
  withHarness(t, async (h) => {
    const { port, client } = await startSocksTunnel(h);
    const started = Date.now();
    // When the visitor hears the end of its connection (a FIN, or a reset if the tunnel was reset instead).
    const closedAfter = await new Promise<number>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port });
      const done = () => {
        clearTimeout(timer);
        socket.destroy();
        resolve(Date.now() - started);
      };
      const timer = setTimeout(done, 30_000);
      // A greeting offering username/password, then half of the credentials, then nothing.
      socket.on('connect', () => socket.write(Buffer.from([0x05, 0x01, 0x02, 0x01, 0x07, 0x68])));
      socket.resume();
      socket.on('end', done);
      socket.on('error', done);
      socket.on('close', done);
    });
    t.diagnostic(`stalled visitor's connection ended after ${closedAfter} ms`);
    assert.ok(closedAfter >= 9_000 && closedAfter < 20_000, `${closedAfter} ms`);
    const line = await client.proc.waitForMsg('socks request failed', 5_000);
    assert.match(String(line.reason), /SOCKS handshake timed out/);
  }),
);

test(
  'check refuses a socks5 proxy that would be an open proxy, and socks keys elsewhere',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const base =
        'server = "ws://127.0.0.1:7000/_porthole"\ntoken = "x"\n[[proxies]]\nname = "socks"\ntype = "tcp"\nremote_port = 1080\n';
      const cases: [string, RegExp][] = [
        ['local = "socks5"\n', /socks_user: a socks5 proxy needs socks_user and socks_password_file/],
        ['local = "socks5"\nsocks_no_auth = true\n', /socks_allow: required with socks_no_auth = true/],
        [
          'local = "socks5"\nsocks_user = "u"\n',
          /socks_user and socks_password \(or socks_password_file\) go together/,
        ],
        [
          'local = "127.0.0.1:22"\nsocks_user = "u"\nsocks_password = "p"\n',
          /applies to proxies with local = "socks5" or "http-proxy" only/,
        ],
      ];
      for (const [keys, problem] of cases) {
        const file = await h.file('client.toml', base + keys);
        const r = await run(clientBin, ['check', '--config', file], { timeoutMs: 15_000 });
        assert.equal(r.code, 2, `${keys}: ${r.stdout}${r.stderr}`);
        assert.match(r.stderr, problem);
      }
      // A private one has no port on the server: its refusals say who does reach it, not "the internet".
      const privateBase = base.replace('remote_port = 1080\n', 'private = true\n');
      const privateCases: [string, RegExp][] = [
        ['local = "socks5"\n', /this private one is reached by every client whose token may visit it/],
        [
          'local = "socks5"\nsocks_no_auth = true\n',
          /socks_allow: required with socks_no_auth = true: .*every client whose token may visit it/,
        ],
      ];
      for (const [keys, problem] of privateCases) {
        const file = await h.file('client.toml', privateBase + keys);
        const r = await run(clientBin, ['check', '--config', file], { timeoutMs: 15_000 });
        assert.equal(r.code, 2, `private ${keys}: ${r.stdout}${r.stderr}`);
        assert.match(r.stderr, problem);
        assert.doesNotMatch(r.stderr, /server's port|from the internet/);
      }
      const ok = await h.file(
        'client.toml',
        `${base}local = "socks5"\nsocks_no_auth = true\nsocks_allow = ["192.168.1.0/24"]\n`,
      );
      const r = await run(clientBin, ['check', '--config', ok], { timeoutMs: 15_000 });
      assert.equal(r.code, 0, r.stderr);
    }),
);
