// The client dials the server through a corporate network's proxy: real tinyproxy (HTTP CONNECT) and real
// microsocks (SOCKS5), set by `proxy` in client.toml or by https_proxy in the client's environment. Each test
// proves the route (the proxy's log, or its refusal) and that the tunnel carries an echo; and that a wrong
// password, a refused CONNECT or a proxy that is down are said so, without a password in any output.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { type AddressInfo, createServer } from 'node:net';
import { test } from 'node:test';
import {
  clientBin,
  freePort,
  type Harness,
  type Proc,
  run,
  withHarness,
  withTimeout,
} from './lib/processes.js';
import {
  issueRoutedToken,
  makeSelfSignedCert,
  type RoutedClientOptions,
  type RoutedServer,
  startRoutedClient,
  startRoutedServer,
} from './lib/routing.js';
import { echoRoundTrip, startEchoServer, waitUntilAccepting } from './lib/services.js';
import { portOf } from './lib/tunnel.js';

const PROXY_USER = 'corp-user';
const PROXY_PASSWORD = 'proxy-pass-7f3a91';

interface Tinyproxy {
  port: number;
  /** tinyproxy's log file so far. */
  log: () => Promise<string>;
}

/**
 * tinyproxy on a free loopback port, in the foreground, letting CONNECT through to `connectPort` alone (and
 * wanting PROXY_USER and PROXY_PASSWORD with `auth`).
 */
async function startTinyproxy(h: Harness, connectPort: number, auth = false): Promise<Tinyproxy> {
  const port = await freePort();
  const logFile = h.path(`tinyproxy-${port}.log`);
  const config = await h.file(
    `tinyproxy-${port}.conf`,
    [
      `Port ${port}`,
      'Listen 127.0.0.1',
      'Timeout 60',
      `LogFile "${logFile}"`,
      'LogLevel Connect',
      'MaxClients 20',
      `ConnectPort ${connectPort}`,
      ...(auth ? [`BasicAuth ${PROXY_USER} ${PROXY_PASSWORD}`] : []),
      '',
    ].join('\n'),
  );
  h.spawn(`tinyproxy-${port}`, 'tinyproxy', ['-d', '-c', config]);
  await waitUntilAccepting({ host: '127.0.0.1', port }, 'tinyproxy');
  return { port, log: () => readFile(logFile, 'utf8').catch(() => '') };
}

/** microsocks on a free loopback port, wanting PROXY_USER and PROXY_PASSWORD with `auth`. */
async function startMicrosocks(h: Harness, auth = false): Promise<number> {
  const port = await freePort();
  const credentials = auth ? ['-u', PROXY_USER, '-P', PROXY_PASSWORD] : [];
  h.spawn(`microsocks-${port}`, 'microsocks', ['-i', '127.0.0.1', '-p', String(port), ...credentials]);
  await waitUntilAccepting({ host: '127.0.0.1', port }, 'microsocks');
  return port;
}

interface Served {
  server: RoutedServer;
  /** The control endpoint's port, which the proxy must let CONNECT through to. */
  controlPort: number;
  echoPort: number;
  remotePort: number;
  token: string;
  caFile: string;
  /** ws://127.0.0.1:PORT/_porthole, or wss://localhost:PORT/_porthole with `tls`. */
  url: string;
}

/** A server (wss:// on a certificate for localhost with `tls`) and an echo service for a tcp proxy. */
async function startServed(h: Harness, tls: boolean): Promise<Served> {
  const cert = await makeSelfSignedCert(h, 'localhost');
  const server = await startRoutedServer(h, { http: false, ...(tls ? { tls: cert } : {}) });
  const controlPort = portOf(new URL(server.url).host);
  const echo = await startEchoServer();
  h.onCleanup(() => echo.close());
  const remotePort = await freePort();
  const token = await issueRoutedToken(server, { name: 'corp', ports: String(remotePort) });
  const url = tls ? `wss://localhost:${controlPort}/_porthole` : server.url;
  return { server, controlPort, echoPort: echo.port, remotePort, token, caFile: cert.cert, url };
}

/** A client of `served` with one tcp proxy to its echo service, its config's other keys and env given. */
function startClientOf(
  h: Harness,
  served: Served,
  more: Pick<RoutedClientOptions, 'keys' | 'env' | 'waitFor' | 'name' | 'adminListen'>,
) {
  return startRoutedClient(h, {
    server: served.url,
    token: served.token,
    caFile: served.caFile,
    proxies: [
      { name: 'echo', type: 'tcp', local: `127.0.0.1:${served.echoPort}`, remote_port: served.remotePort },
    ],
    ...more,
  });
}

async function assertEchoes(port: number): Promise<void> {
  const result = await echoRoundTrip('127.0.0.1', port, 256 * 1024, { timeoutMs: 15_000 });
  assert.ok(result.ok, `echo through the tunnel: ${JSON.stringify(result)}`);
}

/** No process of the test printed `secret` anywhere. */
function assertNowhere(h: Harness, secret: string): void {
  for (const proc of h.procs)
    assert.equal(proc.outputContains(secret), false, `${proc.name} printed the password:\n${proc.tail(40)}`);
}

/** The `connect failed` line whose reason matches `reason`. */
function connectFailed(client: Proc, reason: RegExp) {
  return client.waitForLog(
    (line) => line.msg === 'connect failed' && reason.test(String(line.reason)),
    15_000,
    0,
    `connect failed with a reason matching ${reason}`,
  );
}

test('ws:// and wss:// through tinyproxy (CONNECT): the tunnel echoes, and tinyproxy logged the CONNECT', async (t) => {
  await withHarness(t, async (h) => {
    // ws://, no credentials.
    const plain = await startServed(h, false);
    const open = await startTinyproxy(h, plain.controlPort);
    const first = await startClientOf(h, plain, {
      keys: { proxy: `http://127.0.0.1:${open.port}` },
      name: 'client-ws',
    });
    await assertEchoes(plain.remotePort);
    const starting = await first.proc.waitForMsg('client starting', 5000);
    assert.equal(starting.via, `http://127.0.0.1:${open.port}`);
    assert.equal(starting.via_from, 'config');
    assert.match(await open.log(), new RegExp(`CONNECT .*127\\.0\\.0\\.1:${plain.controlPort}`));

    // wss:// on a name (TLS over the CONNECT, checked against localhost's certificate), credentials with
    // the password in proxy_password_file.
    const secure = await startServed(h, true);
    const guarded = await startTinyproxy(h, secure.controlPort, true);
    const passwordFile = await h.file('proxy-password', `${PROXY_PASSWORD}\n`, 0o600);
    await startClientOf(h, secure, {
      keys: {
        proxy: `http://${PROXY_USER}@127.0.0.1:${guarded.port}`,
        proxy_password_file: passwordFile,
      },
      name: 'client-wss',
    });
    await assertEchoes(secure.remotePort);
    assert.match(await guarded.log(), new RegExp(`CONNECT .*localhost:${secure.controlPort}`));
    assertNowhere(h, PROXY_PASSWORD);
  });
});

test('socks5:// through microsocks, without and with a password; the name is resolved by the proxy', async (t) => {
  await withHarness(t, async (h) => {
    const plain = await startServed(h, false);
    const open = await startMicrosocks(h);
    const first = await startClientOf(h, plain, {
      keys: { proxy: `socks5://127.0.0.1:${open}` },
      name: 'c1',
    });
    await assertEchoes(plain.remotePort);
    assert.equal((await first.proc.waitForMsg('client starting', 5000)).via, `socks5://127.0.0.1:${open}`);
    // Only microsocks can have carried it: stopped, the client's next dial has nowhere to go.
    const microsocks = h.procs.find((p) => p.name === `microsocks-${open}`)!;
    await microsocks.stop();
    plain.server.proc.kill('SIGTERM');
    await connectFailed(first.proc, new RegExp(`ECONNREFUSED proxy 127\\.0\\.0\\.1:${open}`));

    // wss://localhost: socks5h-style, the name goes to microsocks (the password inline in client.toml).
    const secure = await startServed(h, true);
    const guarded = await startMicrosocks(h, true);
    await startClientOf(h, secure, {
      keys: { proxy: `socks5h://${PROXY_USER}:${PROXY_PASSWORD}@127.0.0.1:${guarded}` },
      name: 'c2',
    });
    await assertEchoes(secure.remotePort);
    assertNowhere(h, PROXY_PASSWORD);
  });
});

test('a wrong proxy password is said so, no password in any output; exit_on_auth_failure stops on it', async (t) => {
  await withHarness(t, async (h) => {
    const served = await startServed(h, false);
    const http = await startTinyproxy(h, served.controlPort, true);
    const wrong = 'not-the-proxy-password-52c1';
    const retrying = await startClientOf(h, served, {
      keys: { proxy: `http://${PROXY_USER}:${wrong}@127.0.0.1:${http.port}` },
      waitFor: [],
      name: 'http-wrong',
    });
    const refusal = await connectFailed(
      retrying.proc,
      // tinyproxy answers a wrong password with 401, none with 407.
      /proxy http:\/\/127\.0\.0\.1:\d+ refused the credentials \(401 Unauthorized\)/,
    );
    // Retried with backoff, like any refusal, when exit_on_auth_failure is not set.
    await retrying.proc.waitForMsg('connect failed', 15_000, {
      from: retrying.proc.logs.indexOf(refusal) + 1,
    });
    const none = await startClientOf(h, served, {
      keys: { proxy: `http://127.0.0.1:${http.port}` },
      waitFor: [],
      name: 'http-none',
    });
    await connectFailed(none.proc, /wants credentials \(407/);

    const socks = await startMicrosocks(h, true);
    const stopping = await startClientOf(h, served, {
      keys: { proxy: `socks5://${PROXY_USER}:${wrong}@127.0.0.1:${socks}`, exit_on_auth_failure: true },
      waitFor: [],
      name: 'socks-wrong',
    });
    const { code } = await stopping.proc.exited;
    assert.equal(code, 4, stopping.proc.tail(20));
    assert.match(
      String(stopping.proc.logsWithMsg('connect failed: giving up (exit_on_auth_failure)')[0]?.reason),
      new RegExp(`proxy socks5://127\\.0\\.0\\.1:${socks} refused the credentials`),
    );
    assertNowhere(h, wrong);
    assertNowhere(h, PROXY_PASSWORD);
  });
});

test('a reload that fixes the proxy password dials at once, not after the backoff of the refusals', async (t) => {
  await withHarness(t, async (h) => {
    const served = await startServed(h, false);
    const http = await startTinyproxy(h, served.controlPort, true);
    const wrong = 'not-the-proxy-password-9d04';
    const client = await startClientOf(h, served, {
      keys: {
        proxy: `http://${PROXY_USER}:${wrong}@127.0.0.1:${http.port}`,
        reconnect_initial: '60s',
        reconnect_max: '120s',
      },
      waitFor: [],
      name: 'fixing',
    });
    // A refusal whose retry is far off: attempt 0 waits up to 60 s, 1 and on up to 120 s, so one in 20 s
    // or more comes first or soon after (each shorter one passes within 20 s).
    await client.proc.waitForLog(
      (line) => line.msg === 'connect failed' && Number(line.retry_ms) >= 20_000,
      120_000,
      0,
      'a proxy refusal retried in 20 s or more',
    );
    const config = await readFile(client.configPath, 'utf8');
    await writeFile(client.configPath, config.replace(`:${wrong}@`, `:${PROXY_PASSWORD}@`));
    const from = client.proc.mark();
    client.proc.kill('SIGHUP');
    // Before, the fixed password waited out the refusal's retry_ms, as a reload keeps the backoff.
    await client.proc.waitForMsg('session established', 8000, { from });
    await client.proc.waitForMsg('proxy registered', 5000, { from });
    await assertEchoes(served.remotePort);
    assertNowhere(h, wrong);
    assertNowhere(h, PROXY_PASSWORD);
  });
});

test('config reloaded names a changed proxy or proxy_password_file, and the new route, never a password', async (t) => {
  await withHarness(t, async (h) => {
    const served = await startServed(h, false);
    const client = await startClientOf(h, served, { name: 'reloading' });
    const original = await readFile(client.configPath, 'utf8');
    const passwordFile = await h.file('proxy-password', `${PROXY_PASSWORD}\n`, 0o600);
    const port = await freePort();
    const passwords = [
      PROXY_PASSWORD,
      'second-password-4c1e',
      'inline-password-77ab',
      'inline-password-88cd',
    ];
    // Each step's top-level keys (before the [[proxies]]), and what the line must say. Not dialled: the
    // running session is kept, a new proxy is for the next dial.
    const steps: { keys: string; changed: string[]; via?: string; password?: string }[] = [
      { keys: `proxy = "http://127.0.0.1:${port}"`, changed: ['proxy'], via: `http://127.0.0.1:${port}` },
      {
        keys: `proxy = "http://${PROXY_USER}@127.0.0.1:${port}"\nproxy_password_file = "${passwordFile}"`,
        changed: ['proxy', 'proxy_password_file'],
        via: `http://127.0.0.1:${port}`,
      },
      {
        keys: `proxy = "http://${PROXY_USER}@127.0.0.1:${port}"\nproxy_password_file = "${passwordFile}"`,
        password: passwords[1],
        changed: ['proxy_password_file'],
        via: `http://127.0.0.1:${port}`,
      },
      {
        keys: `proxy = "http://${PROXY_USER}@127.0.0.1:${port}"\nproxy_password_file = "${passwordFile}"`,
        changed: [],
      },
      {
        keys: `proxy = "http://${PROXY_USER}:${passwords[2]}@127.0.0.1:${port}"`,
        changed: ['proxy', 'proxy_password_file'],
        via: `http://127.0.0.1:${port}`,
      },
      {
        keys: `proxy = "http://${PROXY_USER}:${passwords[3]}@127.0.0.1:${port}"`,
        changed: ['proxy'],
        via: `http://127.0.0.1:${port}`,
      },
      { keys: 'proxy = "none"', changed: ['proxy'], via: 'direct' },
    ];
    for (const step of steps) {
      if (step.password) await writeFile(passwordFile, `${step.password}\n`);
      await writeFile(client.configPath, `${step.keys}\n${original}`);
      const from = client.proc.mark();
      client.proc.kill('SIGHUP');
      const line = await client.proc.waitForMsg('config reloaded', 10_000, { from });
      t.diagnostic(JSON.stringify(line));
      assert.deepEqual(line.dial_proxy_changed, step.changed, step.keys);
      assert.equal(line.via, step.via, step.keys);
      // "none" with no proxy in the environment: nothing was set aside, so no via_from.
      assert.equal(line.via_from, step.via?.startsWith('http:') ? 'config' : undefined);
      assert.equal(line.reconnect, false);
    }
    assert.equal(client.proc.logsWithMsg('session established').length, 1, 'the session was kept');
    for (const password of passwords) assertNowhere(h, password);
  });
});

test('--proxy-password-file carries the password of the user in --proxy; a password in --proxy itself is warned about, never printed', async (t) => {
  await withHarness(t, async (h) => {
    const served = await startServed(h, false);
    const http = await startTinyproxy(h, served.controlPort, true);
    const tokenFile = await h.file('token', `${served.token}\n`);
    const passwordFile = await h.file('proxy-password', `${PROXY_PASSWORD}\n`);
    const quick = (proxyArgs: string[]) => [
      '--server',
      served.url,
      '--token-file',
      tokenFile,
      '--tcp',
      `${served.remotePort}:127.0.0.1:${served.echoPort}`,
      ...proxyArgs,
    ];
    const viaFile = h.spawn('from-file', clientBin, [
      ...quick([
        '--proxy',
        `http://${PROXY_USER}@127.0.0.1:${http.port}`,
        '--proxy-password-file',
        passwordFile,
      ]),
    ]);
    await viaFile.waitForMsg('proxy registered', 15_000);
    await assertEchoes(served.remotePort);
    assert.equal(viaFile.logsWithMsg('config warning').length, 0, viaFile.tail(20));
    assert.match(await http.log(), /CONNECT/);
    await viaFile.stop();

    const inline = h.spawn('inline', clientBin, [
      ...quick(['--proxy', `http://${PROXY_USER}:${PROXY_PASSWORD}@127.0.0.1:${http.port}`]),
    ]);
    const warning = await inline.waitForMsg('config warning', 10_000);
    assert.match(
      String(warning.reason),
      /^--proxy: its password shows in ps to every user of this machine; put it in a file for --proxy-password-file/,
    );
    await inline.waitForMsg('proxy registered', 15_000);
    await inline.stop();

    // check says the same, and names the flag when it cannot go with --proxy.
    const checked = await run(clientBin, [
      'check',
      ...quick(['--proxy', `http://${PROXY_USER}:${PROXY_PASSWORD}@127.0.0.1:${http.port}`]),
    ]);
    assert.equal(checked.code, 0, checked.stderr);
    assert.match(checked.stderr, /^warning: --proxy: its password shows in ps/m);
    const both = await run(clientBin, [
      'check',
      ...quick([
        '--proxy',
        `http://${PROXY_USER}:x@127.0.0.1:${http.port}`,
        '--proxy-password-file',
        passwordFile,
      ]),
    ]);
    assert.equal(both.code, 2);
    assert.equal(
      both.stderr,
      "command line: --proxy-password-file: set the password in --proxy's URL or in --proxy-password-file, not both\n",
    );
    assertNowhere(h, PROXY_PASSWORD);
    for (const r of [checked, both]) assert.ok(!`${r.stdout}${r.stderr}`.includes(PROXY_PASSWORD));
  });
});

test('https_proxy in the environment carries a wss:// dial; no_proxy and proxy = "none" dial directly', async (t) => {
  await withHarness(t, async (h) => {
    const served = await startServed(h, true);
    const tinyproxy = await startTinyproxy(h, served.controlPort);
    const https_proxy = `http://127.0.0.1:${tinyproxy.port}`;
    // http_proxy names a proxy that is down: a wss:// server takes https_proxy's.
    const env = { https_proxy, http_proxy: `http://127.0.0.1:${await freePort()}` };
    const adminListen = `127.0.0.1:${await freePort()}`;
    const proxied = await startClientOf(h, served, { env, name: 'env', adminListen });
    const starting = await proxied.proc.waitForMsg('client starting', 5000);
    assert.deepEqual([starting.via, starting.via_from], [https_proxy, 'env https_proxy']);
    await assertEchoes(served.remotePort);
    // status says it too: before, only the start line told that the environment's proxy carried the dial.
    const status = await run(clientBin, ['status', '--config', proxied.configPath]);
    assert.equal(status.code, 0, status.stdout + status.stderr);
    assert.equal(
      status.stdout.split('\n')[0],
      `server:   ${served.url} (via ${https_proxy}, from env https_proxy)`,
    );
    const json = JSON.parse(
      (await run(clientBin, ['status', '--config', proxied.configPath, '--json'])).stdout,
    );
    assert.deepEqual([json.via, json.via_from], [https_proxy, 'env https_proxy']);
    assert.match(await tinyproxy.log(), new RegExp(`CONNECT .*localhost:${served.controlPort}`));
    await proxied.proc.stop();

    // tinyproxy stopped: a dial that went to it would fail. no_proxy and proxy = "none" go straight there.
    await h.procs.find((p) => p.name === `tinyproxy-${tinyproxy.port}`)!.stop();
    const excluded = await startClientOf(h, served, {
      env: { ...env, no_proxy: 'example.com,localhost' },
      name: 'no',
    });
    const direct = await excluded.proc.waitForMsg('client starting', 5000);
    assert.deepEqual([direct.via, direct.via_from], ['direct', 'env no_proxy']);
    await assertEchoes(served.remotePort);
    await excluded.proc.stop();

    const off = await startClientOf(h, served, { env, keys: { proxy: 'none' }, name: 'none' });
    const none = await off.proc.waitForMsg('client starting', 5000);
    assert.deepEqual([none.via, none.via_from], ['direct', 'config']);
    await assertEchoes(served.remotePort);
  });
});

test('proxy = "none" and --proxy none ignore an environment proxy porthole cannot read, as its error says', async (t) => {
  await withHarness(t, async (h) => {
    const served = await startServed(h, false);
    // A typo and a scheme porthole does not speak: each refuses to start without "none".
    for (const http_proxy of ['https://127.0.0.1:3128', 'http//proxy.corp:3128']) {
      const env = { http_proxy };
      const unread = await startClientOf(h, served, { env, waitFor: [], name: 'unread' });
      const exit = await withTimeout(unread.proc.exited, 10_000, () => unread.proc.tail(10));
      assert.equal(exit.code, 2, unread.proc.tail(10));
      assert.match(
        unread.proc.tail(10),
        /environment: http_proxy: .*proxy = "none" in the config \(or --proxy none\) ignores it/,
      );

      const checked = await run(clientBin, ['check', '--config', unread.configPath, '--proxy', 'none'], {
        env,
      });
      assert.equal(checked.code, 0, checked.stdout + checked.stderr);

      const off = await startClientOf(h, served, { env, keys: { proxy: 'none' }, name: 'none' });
      const starting = await off.proc.waitForMsg('client starting', 5000);
      assert.deepEqual([starting.via, starting.via_from], ['direct', 'config']);
      await assertEchoes(served.remotePort);
      await off.proc.stop();
    }
  });
});

test('no_proxy takes address ranges as curl does (127.0.0.0/8, ::1/128): a server dialled by its address goes direct', async (t) => {
  await withHarness(t, async (h) => {
    const served = await startServed(h, false);
    // A proxy that is down: a dial that went to it would fail.
    const env = { http_proxy: `http://127.0.0.1:${await freePort()}` };
    for (const no_proxy of ['10.0.0.0/8,127.0.0.0/8', '::1/128, 127.0.0.1/32']) {
      const client = await startClientOf(h, served, { env: { ...env, no_proxy }, name: 'ranges' });
      const starting = await client.proc.waitForMsg('client starting', 5000);
      // Before, the ranges matched nothing: via the proxy, and every dial "ECONNREFUSED proxy ...".
      assert.deepEqual([starting.via, starting.via_from], ['direct', 'env no_proxy'], no_proxy);
      await assertEchoes(served.remotePort);
      await client.proc.stop();
    }
  });
});

test('a proxy that is down, and one that refuses the CONNECT, are named in connect failed', async (t) => {
  await withHarness(t, async (h) => {
    const served = await startServed(h, false);
    const down = await freePort();
    const client = await startClientOf(h, served, {
      keys: { proxy: `http://127.0.0.1:${down}` },
      waitFor: [],
      name: 'down',
    });
    await connectFailed(client.proc, new RegExp(`^ECONNREFUSED proxy 127\\.0\\.0\\.1:${down}$`));

    // tinyproxy lets CONNECT through to another port only.
    const elsewhere = await startTinyproxy(h, await freePort());
    const refused = await startClientOf(h, served, {
      keys: { proxy: `http://127.0.0.1:${elsewhere.port}` },
      waitFor: [],
      name: 'refused',
    });
    await connectFailed(
      refused.proc,
      new RegExp(
        `proxy http://127\\.0\\.0\\.1:${elsewhere.port} answered 403 .* to CONNECT 127\\.0\\.0\\.1:${served.controlPort}`,
      ),
    );
  });
});

test('a proxy that answers the CONNECT with 200 and then closes is named as the one that closed, not the server', async (t) => {
  await withHarness(t, async (h) => {
    // What a proxy does whose upstream connection fails after it said yes (or a filtering box in front).
    const yesThenGone = createServer((socket) => {
      socket.once('data', () => socket.end('HTTP/1.1 200 Connection established\r\n\r\n'));
      socket.on('error', () => {});
    });
    await new Promise<void>((resolve) => yesThenGone.listen(0, '127.0.0.1', resolve));
    h.onCleanup(() => yesThenGone.close());
    const proxyPort = (yesThenGone.address() as AddressInfo).port;
    for (const tls of [false, true]) {
      const served = await startServed(h, tls);
      const client = await startClientOf(h, served, {
        keys: { proxy: `http://127.0.0.1:${proxyPort}` },
        waitFor: [],
        name: tls ? 'wss' : 'ws',
      });
      const line = await connectFailed(
        client.proc,
        new RegExp(
          `^the proxy http://127\\.0\\.0\\.1:${proxyPort} answered 200 to CONNECT (127\\.0\\.0\\.1|localhost):${served.controlPort}, then closed the tunnel before the server answered`,
        ),
      );
      t.diagnostic(String(line.reason));
      assert.doesNotMatch(
        String(line.reason),
        /wss:\/\/ here|TLS handshake|\[https\]/,
        'no hint about the server',
      );
      await client.proc.stop();
    }
  });
});

test('check shows the dial proxy as the start line and status do: which one, from where, or direct because of what; never its password', async (t) => {
  await withHarness(t, async (h) => {
    await h.file('token', 'a.b.c\n');
    const server = 'wss://vps.example.com/_porthole';
    const config = await h.file('check.toml', `server = "${server}"\ntoken_file = "token"\n`);
    const withProxy = await h.file(
      'check-proxy.toml',
      `server = "${server}"\ntoken_file = "token"\nproxy = "http://${PROXY_USER}:${PROXY_PASSWORD}@127.0.0.1:3128"\n`,
    );
    const envProxy = `http://${PROXY_USER}:${PROXY_PASSWORD}@127.0.0.1:3129`;
    const cases: { args: string[]; env: Record<string, string>; route?: string }[] = [
      { args: ['--config', config], env: {} },
      { args: ['--config', withProxy], env: {}, route: '(via http://127.0.0.1:3128, from config)' },
      {
        args: ['--config', config, '--proxy', 'socks5://[::1]:1080'],
        env: { https_proxy: envProxy },
        route: '(via socks5://[::1]:1080, from --proxy)',
      },
      {
        args: ['--config', config],
        env: { https_proxy: envProxy },
        route: '(via http://127.0.0.1:3129, from env https_proxy)',
      },
      {
        args: ['--config', config],
        env: { https_proxy: envProxy, no_proxy: 'example.com' },
        route: '(direct, from env no_proxy)',
      },
      {
        args: ['--config', config, '--proxy', 'none'],
        env: { https_proxy: envProxy },
        route: '(direct, from --proxy)',
      },
    ];
    for (const { args, env, route } of cases) {
      const r = await run(clientBin, ['check', ...args], { env, cwd: h.dir });
      t.diagnostic(r.stdout.trim());
      assert.equal(r.code, 0, r.stderr);
      const file = args[1]!;
      assert.equal(r.stdout, `${file}: ok (0 proxies)\n${route ? `server:   ${server} ${route}\n` : ''}`);
      assert.ok(!`${r.stdout}${r.stderr}`.includes(PROXY_PASSWORD), 'the password is not printed');
    }
  });
});
