// A newer server talking to this client (the other direction, a newer client registering with this server,
// is in packages/server/test/client-session.test.ts): a message type the client does not know, or one whose
// shape it cannot validate, is read past with one warn line each, and a register entry the server could not
// read is printed as a refusal; the session and its proxies stay up.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { acceptWebSocket, checkUpgradeRequest, Session, type Stream } from '@porthole/mux';
import { MessageReader, writeMessage, writeStreamHeader } from '@porthole/protocol';
import {
  clientBin,
  freePort,
  type Harness,
  type LogLine,
  run,
  waitFor,
  withHarness,
  withTimeout,
} from './lib/processes.js';
import { startRoutedClient, type TomlValue } from './lib/routing.js';
import { startEchoServer } from './lib/services.js';
import { startClient } from './lib/tunnel.js';

/** The client's control stream on a server peer written from the wire contract (no auth: not under test). */
interface RawControl {
  session: Session;
  stream: Stream;
  reader: MessageReader;
}

/** A server peer that accepts WebSocket sessions and hands over each one's control stream. */
async function startRawServer(): Promise<{ url: string; controls: RawControl[]; close(): void }> {
  const controls: RawControl[] = [];
  const sessions: Session[] = [];
  const server = http.createServer((_req, res) => res.writeHead(404).end());
  server.on('upgrade', (req, socket, head) => {
    const handshake = checkUpgradeRequest(req);
    if (!handshake.ok) {
      socket.destroy();
      return;
    }
    const session = new Session(acceptWebSocket(socket, head, handshake.key), {
      client: false,
      keepAliveInterval: 0,
    });
    sessions.push(session);
    session.once('stream', (stream: Stream) => {
      stream.on('error', () => {});
      controls.push({ session, stream, reader: new MessageReader(stream) });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}/_porthole`,
    controls,
    close() {
      for (const session of sessions) session.close();
      server.close();
    },
  };
}

/** Reads one message, or fails after 5 s. */
async function next(control: RawControl, what: string): Promise<Record<string, unknown>> {
  const message = await withTimeout(control.reader.read(), 5000, () => `no ${what} from the client`);
  assert.ok(message !== null && typeof message === 'object', `${what}: the control stream ended`);
  return message as Record<string, unknown>;
}

/**
 * The raw server's `index`-th control stream (0: the first session) once its client said hello, answered
 * hello_ok as a server of `serverVersion`.
 */
async function answerHello(
  server: { controls: RawControl[] },
  index: number,
  serverVersion: string,
): Promise<RawControl> {
  await waitFor(`the client's control stream #${index + 1}`, () => server.controls.length > index, 10_000);
  const control = server.controls[index]!;
  assert.equal((await next(control, 'hello')).type, 'hello');
  writeMessage(control.stream, {
    type: 'hello_ok',
    client: 'skew',
    session_id: `s${index + 1}`,
    server_version: serverVersion,
  });
  return control;
}

/** Opens a stream to the client for `proxy` as a visitor's would be, sends `payload` and FIN, returns the reply. */
async function visitThrough(
  session: Session,
  proxy: string,
  publicPort: number,
  payload: string,
): Promise<string> {
  const stream = session.open();
  writeStreamHeader(stream, {
    proxy,
    conn: 1,
    remote_addr: '127.0.0.1',
    remote_port: 40000,
    public_addr: `127.0.0.1:${publicPort}`,
  });
  stream.end(payload);
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  await withTimeout(
    new Promise((resolve, reject) => {
      stream.on('end', resolve);
      stream.on('error', reject);
    }),
    5000,
    () => `no reply through proxy ${proxy}`,
  );
  return Buffer.concat(chunks).toString();
}

test(
  'a server message the client cannot read (a newer type, a new shape) is read past with one warn line; a register entry the server could not read is printed as refused',
  {
    timeout: 30_000,
  },
  (t) =>
    withHarness(t, async (h) => {
      const server = await startRawServer();
      h.onCleanup(() => server.close());
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const { proc } = await startClient(
        h,
        {
          server: server.url,
          token: 'not.checked.here',
          proxies: [{ name: 'ssh', local: `127.0.0.1:${echo.port}`, remotePort: 2222 }],
        },
        { waitFor: 'none' },
      );
      const control = await answerHello(server, 0, '9.0.0');
      // What a newer server might send: a message type of its own, twice, and a notice at a level of its own.
      writeMessage(control.stream, { type: 'stats', streams: 1 });
      writeMessage(control.stream, { type: 'stats', streams: 2 });
      writeMessage(control.stream, { type: 'notice', level: 'debug', message: 'hello from the future' });
      const register = await next(control, 'register');
      assert.equal(register.type, 'register');
      assert.deepEqual(
        (register.proxies as { name: string }[]).map((p) => p.name),
        ['ssh'],
      );
      writeMessage(control.stream, {
        type: 'register_result',
        results: [
          { proxy: 'ssh', ok: true, remote_addr: '127.0.0.1:2222' },
          {
            proxy: 'register entry 2 (without a valid name)',
            ok: false,
            reason: 'name: Invalid input: expected string, received number',
          },
        ],
      });
      await proc.waitForMsg('proxy registered', 5000, { fields: { proxy: 'ssh' } });
      const refused = await proc.waitForMsg('proxy refused', 5000, {
        fields: { proxy: 'register entry 2 (without a valid name)' },
      });
      assert.equal(refused.level, 'warn');
      assert.equal(refused.reason, 'name: Invalid input: expected string, received number');
      // The session is the one it was: a visitor's stream on it reaches the local service.
      assert.equal(await visitThrough(control.session, 'ssh', 2222, 'ping'), 'ping');

      const unknown = proc.logs.filter((l) => l.msg === 'unknown control message from the server ignored');
      assert.deepEqual(
        unknown.map((l) => [l.level, l.type]),
        [['warn', 'stats']],
      );
      const unreadable = proc.logs.filter((l) => l.msg === 'control message from the server ignored');
      assert.equal(unreadable.length, 1);
      assert.match(String(unreadable[0]!.reason), /invalid control message \(type notice\) at level: /);
      assert.equal(server.controls.length, 1, 'one session, never redialled');
      assert.deepEqual(
        proc.logs.filter((l) => l.msg === 'session lost' || l.msg === 'reconnecting'),
        [],
      );
    }),
);

test(
  'remote_port = 0 against an older server: its out-of-range refusal says the server cannot pick; against a newer one, the port it gave is asked for again in the next session',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const server = await startRawServer();
      h.onCleanup(() => server.close());
      const echo = await startEchoServer();
      h.onCleanup(() => echo.close());
      const { proc } = await startClient(
        h,
        {
          server: server.url,
          token: 'not.checked.here',
          proxies: [
            { name: 'ssh', local: `127.0.0.1:${echo.port}`, remotePort: 2222 },
            { name: 'any', local: `127.0.0.1:${echo.port}`, remotePort: 0 },
          ],
          reconnectInitial: '100ms',
          reconnectMax: '200ms',
        },
        { waitFor: 'none' },
      );
      const session = async (index: number) => {
        const control = await answerHello(server, index, '0.1.0');
        const register = await next(control, 'register');
        return { control, proxies: register.proxies as Record<string, unknown>[] };
      };

      // An older server: its register schema has remote_port from 1, its results no remote_port.
      const older = await session(0);
      assert.deepEqual(older.proxies, [
        { name: 'ssh', type: 'tcp', remote_port: 2222 },
        { name: 'any', type: 'tcp', remote_port: 0 },
      ]);
      writeMessage(older.control.stream, {
        type: 'register_result',
        results: [
          { proxy: 'ssh', ok: true, remote_addr: '127.0.0.1:2222' },
          { proxy: 'any', ok: false, reason: 'remote_port: Too small: expected number to be >=1' },
        ],
      });
      const registered = await proc.waitForMsg('proxy registered', 5000, { fields: { proxy: 'ssh' } });
      assert.equal(registered.remote_port, 2222, 'the port it named, which an older server does not repeat');
      const refused = await proc.waitForMsg('proxy refused', 5000, { fields: { proxy: 'any' } });
      assert.equal(
        refused.reason,
        'remote_port: Too small: expected number to be >=1 (this server is older than remote_port = 0: it cannot pick a port, so give the proxy one)',
      );

      // A server that picks: 40123. The session ends (a server restart); the next register asks for 40123 again.
      older.control.session.close();
      const newer = await session(1);
      assert.deepEqual(newer.proxies, [
        { name: 'ssh', type: 'tcp', remote_port: 2222 },
        { name: 'any', type: 'tcp', remote_port: 0 },
      ]);
      writeMessage(newer.control.stream, {
        type: 'register_result',
        results: [
          { proxy: 'ssh', ok: true, remote_addr: '127.0.0.1:2222', remote_port: 2222 },
          { proxy: 'any', ok: true, remote_addr: '127.0.0.1:40123', remote_port: 40123 },
        ],
      });
      const picked = await proc.waitForMsg('proxy registered', 5000, {
        fields: { proxy: 'any', remote_port: 40123 },
      });
      assert.equal(picked.remote_addr, '127.0.0.1:40123');
      assert.equal(await visitThrough(newer.control.session, 'any', 40123, 'picked'), 'picked');
      newer.control.session.close();
      const third = await session(2);
      assert.deepEqual(third.proxies, [
        { name: 'ssh', type: 'tcp', remote_port: 2222 },
        { name: 'any', type: 'tcp', remote_port: 0, previous_port: 40123 },
      ]);
      // Given another this time: said at warn, since its visitors must be told.
      writeMessage(third.control.stream, {
        type: 'register_result',
        results: [{ proxy: 'any', ok: true, remote_addr: '127.0.0.1:40124', remote_port: 40124 }],
      });
      const moved = await proc.waitForMsg('proxy given another port than before', 5000);
      assert.deepEqual([moved.level, moved.previous_port, moved.remote_port], ['warn', 40123, 40124]);
      t.diagnostic(`older server's refusal as the client logs it: ${refused.reason}`);
    }),
);

/**
 * A client whose one tcp proxy (`proxy`'s keys, an echo service as its local) has signed in to a raw server
 * and sent its register, not yet answered. `adminListen`: its [admin] listen, for `porthole-client status`.
 */
async function signedInWith(
  h: Harness,
  proxy: { name: string } & Record<string, TomlValue>,
  adminListen?: string,
) {
  const server = await startRawServer();
  h.onCleanup(() => server.close());
  const echo = await startEchoServer();
  h.onCleanup(() => echo.close());
  const { proc } = await startRoutedClient(h, {
    server: server.url,
    token: 'not.checked.here',
    proxies: [{ type: 'tcp', local: `127.0.0.1:${echo.port}`, ...proxy }],
    waitFor: [],
    ...(adminListen === undefined ? {} : { adminListen }),
  });
  const control = await answerHello(server, 0, '0.1.0');
  return { proc, echo, control, register: await next(control, 'register') };
}

/**
 * A visitor's stream for proxy "web" at `publicAddr` (`payload` its bytes) that reached the client before it
 * read an older server's result, which the client cannot serve as asked: the stream is turned away with
 * `reason`, the proxy given back (unregister, `proxy refused` with `reason`), and the local service never sees
 * it. Returns the `proxy refused` line.
 */
async function assertGivenBack(
  { proc, echo, control }: Awaited<ReturnType<typeof signedInWith>>,
  publicAddr: string,
  payload: string,
  reason: string,
): Promise<LogLine> {
  const stream = control.session.open();
  writeStreamHeader(stream, {
    proxy: 'web',
    conn: 1,
    remote_addr: '192.0.2.7',
    remote_port: 40000,
    public_addr: publicAddr,
  });
  stream.end(payload);
  const chunks: Buffer[] = [];
  stream.on('data', (c: Buffer) => chunks.push(c));
  await withTimeout(
    new Promise<void>((resolve) => {
      stream.on('close', () => resolve());
      stream.on('error', () => resolve());
    }),
    5000,
    () => 'the stream of a visitor the client may not serve still open',
  );
  assert.equal(Buffer.concat(chunks).length, 0, 'nothing came back from the local service');
  assert.deepEqual(await next(control, 'unregister'), { type: 'unregister', proxies: ['web'] });
  const refused = await proc.waitForMsg('proxy refused', 5000, { fields: { proxy: 'web' } });
  assert.equal(refused.reason, reason);
  const turnedAway = await proc.waitForMsg('visitor refused', 5000, { fields: { proxy: 'web' } });
  assert.equal(turnedAway.reason, reason);
  assert.equal(echo.accepted, 0, 'the local service never saw the visitor');
  assert.equal(proc.logsWithMsg('proxy registered').length, 0);
  return refused;
}

test(
  'remote_bind against a server older than it (which binds its proxy_bind instead): the client gives the proxy back, says why, and serves none of its visitors',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const signed = await signedInWith(h, { name: 'web', remote_port: 8080, remote_bind: '127.0.0.1' });
      const { control, register } = signed;
      assert.deepEqual(register.proxies, [
        { name: 'web', type: 'tcp', remote_port: 8080, remote_bind: '127.0.0.1' },
      ]);
      // What an older server does: drops the field it does not know and binds its proxy_bind.
      writeMessage(control.stream, {
        type: 'register_result',
        results: [{ proxy: 'web', ok: true, remote_addr: '0.0.0.0:8080' }],
      });
      // A visitor that came in on that address before the client read the result.
      await assertGivenBack(
        signed,
        '0.0.0.0:8080',
        'ping',
        'the server bound it on 0.0.0.0:8080, not on remote_bind 127.0.0.1: it is older than remote_bind and binds its proxy_bind only, so this proxy is not served there',
      );
    }),
);

test(
  'compression against a server older than it (which drops the ask and marks no stream): one warn line, status says it runs plain and why, and the proxy carries plain bytes both ways',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const adminPort = await freePort();
      const { proc, control, register } = await signedInWith(
        h,
        { name: 'logs', remote_port: 8080, compression: true },
        `127.0.0.1:${adminPort}`,
      );
      assert.deepEqual(register.proxies, [
        { name: 'logs', type: 'tcp', remote_port: 8080, compression: true },
      ]);
      // What an older server answers: its schema dropped compression, so its result says nothing of it.
      writeMessage(control.stream, {
        type: 'register_result',
        results: [{ proxy: 'logs', ok: true, remote_addr: '127.0.0.1:8080' }],
      });
      const warned = await proc.waitForMsg(
        'proxy runs uncompressed: the server does not offer compression (older than this client)',
        5000,
        { fields: { proxy: 'logs' } },
      );
      assert.equal(warned.level, 'warn');
      // `status` says so too, from the same finding.
      const admin = ['--admin', `127.0.0.1:${adminPort}`];
      const json = await run(clientBin, ['status', ...admin, '--json'], { timeoutMs: 15_000 });
      const [logs] = (JSON.parse(json.stdout) as { proxies: Record<string, unknown>[] }).proxies;
      assert.equal(logs?.compression, false);
      assert.equal(logs?.compression_unavailable, warned.msg?.replace('proxy runs uncompressed: ', ''));
      const table = (await run(clientBin, ['status', ...admin], { timeoutMs: 15_000 })).stdout;
      assert.match(table, /^logs .* registered +0 +off \(server older\) +public /m, table);
      // Its streams carry no mark: what comes is plain, and what goes back is too (the echo, byte for byte).
      const text = 'plain text that an older server reads as it is\n'.repeat(200);
      assert.equal(await visitThrough(control.session, 'logs', 8080, text), text);
      assert.equal(proc.logsWithMsg('proxy registered')[0]?.compression, undefined);
      t.diagnostic(`the warn line: ${warned.msg}`);
    }),
);

test(
  'response_headers against a server older than it (which drops the key and would serve the answers without them): the client gives the proxy back, says why, and serves none of its visitors',
  { timeout: 30_000 },
  (t) =>
    withHarness(t, async (h) => {
      const signed = await signedInWith(h, {
        name: 'web',
        type: 'http',
        hosts: ['app.test'],
        response_headers: { 'X-Frame-Options': 'DENY' },
      });
      const { control, register } = signed;
      assert.deepEqual(register.proxies, [
        { name: 'web', type: 'http', hosts: ['app.test'], response_headers: { 'X-Frame-Options': 'DENY' } },
      ]);
      // What an older server does: its schema drops response_headers, it routes the proxy, and says nothing.
      writeMessage(control.stream, {
        type: 'register_result',
        results: [{ proxy: 'web', ok: true, remote_addr: '127.0.0.1:80', urls: ['http://app.test/'] }],
      });
      // A request that reached the client before it read the result: its stream has no response_headers mark.
      const refused = await assertGivenBack(
        signed,
        '127.0.0.1:80',
        'GET / HTTP/1.1\r\nHost: app.test\r\n\r\n',
        'the server does not set response_headers (it is older than response_headers), so this proxy is not served without them',
      );
      t.diagnostic(`the refusal as the client logs it: ${refused.reason}`);
    }),
);
