import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import type { Duplex } from 'node:stream';
import { before, describe, test } from 'node:test';
import { Session, type Stream } from '../src/index.js';
import { describeRun, type PeerServer, runPeer, startPeerServer, yamuxPeerBinary } from './go-peer.js';
import { receiveAll, sendPattern } from './payload.js';
import { waitFor, withTimeout } from './timeouts.js';
import { dialWebSocket, listenWebSocket } from './transports.js';

/**
 * Wire compatibility with the reference implementation: hashicorp/yamux (Debian's df201c7) in Go, in both
 * roles, over raw TCP and over a WebSocket whose message boundaries fall anywhere (the Go side sends a
 * data frame's header and body as two messages unless -ws-coalesce).
 */

const MiB = 1024 * 1024;
const GO_TIMEOUT = '60s';
const TEST_TIMEOUT = 90_000;

interface Transport {
  name: string;
  goFlags: string[];
  ws: boolean;
}

const transports: Transport[] = [
  { name: 'tcp', goFlags: [], ws: false },
  { name: 'ws (header and body in separate messages)', goFlags: ['-ws'], ws: true },
  { name: 'ws-coalesce', goFlags: ['-ws', '-ws-coalesce'], ws: true },
];

async function dial(t: Transport, port: number): Promise<Duplex> {
  if (t.ws) return dialWebSocket(`ws://127.0.0.1:${port}/`);
  const socket = net.connect(port, '127.0.0.1');
  await withTimeout(once(socket, 'connect'), 10_000, 'tcp connect to yamuxpeer');
  socket.setNoDelay(true);
  return socket;
}

interface Listener {
  port: number;
  close(): void;
}

async function listen(t: Transport, onConn: (conn: Duplex) => void): Promise<Listener> {
  if (t.ws) return listenWebSocket((conn) => onConn(conn));
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
    socket.setNoDelay(true);
    onConn(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return {
    port: (server.address() as net.AddressInfo).port,
    close() {
      for (const s of sockets) s.destroy();
      server.close();
    },
  };
}

/** What our echo side saw of one stream the Go side opened. */
interface EchoedStream {
  id: number;
  received: number;
  remoteFin: boolean;
  localFinished: boolean;
  error?: Error;
}

/** Our echo: every byte goes back, and our FIN follows the peer's FIN (stream.pipe(stream)). */
function echoStreams(session: Session): EchoedStream[] {
  const seen: EchoedStream[] = [];
  session.on('stream', (stream: Stream) => {
    const st: EchoedStream = { id: stream.id, received: 0, remoteFin: false, localFinished: false };
    seen.push(st);
    stream.on('data', (chunk: Buffer) => {
      st.received += chunk.length;
    });
    stream.on('end', () => {
      st.remoteFin = true;
    });
    stream.on('finish', () => {
      st.localFinished = true;
    });
    stream.on('error', (err) => {
      st.error = err;
    });
    stream.pipe(stream);
  });
  return seen;
}

function assertEchoed(seen: EchoedStream[], streams: number, bytes: number): void {
  assert.equal(seen.length, streams, 'streams the Go side opened');
  for (const st of seen) {
    assert.equal(st.error, undefined, `stream ${st.id}: ${st.error?.message}`);
    assert.equal(st.received, bytes, `stream ${st.id}: bytes received`);
    assert.ok(st.remoteFin, `stream ${st.id}: the Go side's FIN arrived ('end')`);
    assert.ok(st.localFinished, `stream ${st.id}: our FIN went out ('finish')`);
  }
}

function assertQuietGo(stderr: string): void {
  assert.doesNotMatch(
    stderr,
    /echo error|NO FIN|protocol error|invalid|unexpected/i,
    `Go peer complained:\n${stderr}`,
  );
}

/** (a) Our client against the Go echo-server: send, half-close, and get the whole echo and then 'end'. */
async function ourClientAgainstGoEcho(t: Transport, streams: number, bytes: number, goArgs: string[] = []) {
  const peer: PeerServer = await startPeerServer('echo-server', [...t.goFlags, ...goArgs]);
  let session: Session | undefined;
  try {
    session = new Session(await dial(t, peer.port), { client: true });
    const sessionErrors: Error[] = [];
    session.on('error', (err) => sessionErrors.push(err));
    const s = session;
    const results = await withTimeout(
      Promise.all(
        Array.from({ length: streams }, async (_, i) => {
          const stream = s.open();
          let echoed = 0;
          const echo = receiveAll(stream, (n) => {
            echoed = n;
          });
          const sent = await sendPattern(stream, bytes, 1000 + i); // ends with FIN
          const echoedWhenWeSentFin = echoed;
          const got = await echo;
          return { id: stream.id, sent, got, echoedWhenWeSentFin };
        }),
      ),
      TEST_TIMEOUT - 10_000,
      `${streams} echo streams of ${bytes} bytes through the Go echo-server`,
    );
    for (const r of results) {
      assert.equal(r.got.bytes, bytes, `stream ${r.id}: echoed bytes`);
      assert.equal(r.got.sha256, r.sent, `stream ${r.id}: sha256 of the echo`);
    }
    if (streams === 1 && bytes >= 16 * MiB) {
      // The echo kept flowing to us after our FIN: the half-closed direction really carried data.
      assert.ok(results[0]!.echoedWhenWeSentFin < bytes, 'some echo arrived after our FIN');
    }
    // Both FINs seen: every stream leaves the session.
    await waitFor(() => s.streamCount === 0, 10_000, 'streams released after FIN both ways');
    assert.deepEqual(sessionErrors, []);
    assert.equal(s.closed, false);
    assert.equal(typeof (await withTimeout(s.ping(), 5000, 'ping to Go')), 'number');
  } finally {
    session?.close();
    await peer.stop();
  }
  assertQuietGo(peer.stderr());
}

/**
 * Our client resets streams while the Go echo-server is still echoing into them, beside streams that run
 * whole: the echo already in flight arrives for streams we no longer hold and is discarded (each frame within
 * the window we granted), quietly, and the session and its other streams carry on.
 */
async function ourResetsAgainstGoEcho(t: Transport) {
  const RESET = 20;
  const WHOLE = 10;
  const peer: PeerServer = await startPeerServer('echo-server', t.goFlags);
  let session: Session | undefined;
  const resetIds: number[] = [];
  try {
    session = new Session(await dial(t, peer.port), { client: true });
    const sessionErrors: Error[] = [];
    session.on('error', (err) => sessionErrors.push(err));
    const s = session;
    const reset = Array.from({ length: RESET }, async (_, i) => {
      const stream = s.open();
      resetIds.push(stream.id);
      stream.on('error', () => {});
      const echoing = new Promise<void>((resolve) => stream.once('data', () => resolve()));
      stream.write(Buffer.alloc(MiB, i));
      await echoing;
      stream.destroy(); // RST while the rest of the echo is on its way
    });
    const whole = Array.from({ length: WHOLE }, async (_, i) => {
      const stream = s.open();
      const echo = receiveAll(stream);
      const sent = await sendPattern(stream, MiB, 2000 + i);
      return { id: stream.id, sent, got: await echo };
    });
    const [, results] = await withTimeout(
      Promise.all([Promise.all(reset), Promise.all(whole)]),
      TEST_TIMEOUT - 10_000,
      `${RESET} streams reset and ${WHOLE} echoed whole through the Go echo-server`,
    );
    for (const r of results) assert.equal(r.got.sha256, r.sent, `stream ${r.id}: sha256 of the echo`);
    await waitFor(() => s.streamCount === 0, 10_000, 'every stream released');
    assert.deepEqual(sessionErrors, []);
    assert.equal(s.closed, false);
    assert.equal(typeof (await withTimeout(s.ping(), 5000, 'ping to Go')), 'number');
    // And the session still carries a stream whole.
    const after = s.open();
    const echo = receiveAll(after);
    const sent = await sendPattern(after, MiB, 3000);
    assert.equal((await withTimeout(echo, 10_000, 'an echo after the resets')).sha256, sent);
  } finally {
    session?.close();
    await peer.stop();
  }
  // The Go side reports the streams we reset, and nothing else.
  const stderr = peer.stderr();
  assert.doesNotMatch(stderr, /NO FIN|protocol error|invalid|unexpected/i, `Go peer complained:\n${stderr}`);
  for (const m of stderr.matchAll(/stream (\d+): echo error/g))
    assert.ok(
      resetIds.includes(Number(m[1])),
      `Go peer complained about a stream we did not reset:\n${stderr}`,
    );
}

/** (b) The Go `client` against our echo server. */
async function goClientAgainstOurEcho(t: Transport, streams: number, bytes: number, goArgs: string[] = []) {
  const sessions: Session[] = [];
  const sessionErrors: Error[] = [];
  let seen: EchoedStream[] = [];
  const listener = await listen(t, (conn) => {
    const session = new Session(conn, { client: false });
    session.on('error', (err) => sessionErrors.push(err));
    sessions.push(session);
    seen = echoStreams(session);
  });
  try {
    const args = ['-connect', `127.0.0.1:${listener.port}`, ...t.goFlags];
    args.push('-streams', String(streams), '-bytes', String(bytes), '-timeout', GO_TIMEOUT, ...goArgs);
    const run = await runPeer('client', args, TEST_TIMEOUT - 10_000);
    assert.equal(run.code, 0, describeRun(run));
    assert.match(run.stdout, new RegExp(`^ok streams=${streams} bytes=${bytes} `, 'm'), describeRun(run));
    assertQuietGo(run.stderr);
    assert.equal(sessions.length, 1);
    assertEchoed(seen, streams, bytes);
    assert.ok(
      sessionErrors.every((e) => (e as { code?: string }).code === 'ERR_SESSION_CLOSED'),
      `only the Go side hanging up may end our session: ${sessionErrors.map((e) => e.message)}`,
    );
  } finally {
    for (const s of sessions) s.close();
    listener.close();
  }
}

/**
 * (b') `-fin early`: the Go client writes everything, sends FIN, then reads. Our side reads to the FIN
 * ('end') and only then sends the echo and its own FIN: data flowing toward a peer that already
 * half-closed. Debian's hashicorp/yamux df201c7 returns a premature EOF from Read after its own Close
 * whenever its buffer is momentarily empty (fixed upstream in v0.1.2, see yamuxpeer's README), so this Go
 * side may report a short echo; with a newer yamux it verifies the whole echo.
 */
async function goClientEarlyFin(t: Transport, streams: number, bytes: number): Promise<string> {
  const sessions: Session[] = [];
  const seen: { received: number; ended: boolean; error?: Error }[] = [];
  const listener = await listen(t, (conn) => {
    const session = new Session(conn, { client: false });
    session.on('error', () => {}); // the Go side may hang up mid-echo (see above)
    sessions.push(session);
    session.on('stream', (stream: Stream) => {
      const st: (typeof seen)[number] = { received: 0, ended: false };
      seen.push(st);
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => {
        chunks.push(chunk);
        st.received += chunk.length;
      });
      stream.on('error', (err) => {
        st.error = err;
      });
      stream.on('end', () => {
        st.ended = true;
        for (const chunk of chunks) stream.write(chunk);
        stream.end();
      });
    });
  });
  try {
    const args = ['-connect', `127.0.0.1:${listener.port}`, ...t.goFlags, '-streams', String(streams)];
    args.push('-bytes', String(bytes), '-timeout', GO_TIMEOUT, '-fin', 'early');
    const run = await runPeer('client', args, TEST_TIMEOUT - 10_000);
    const goOk = run.code === 0 && new RegExp(`^ok streams=${streams} `, 'm').test(run.stdout);
    const debianEarlyEof = /echo length \d+ != \d+ \(premature EOF/.test(run.stdout);
    assert.ok(goOk || debianEarlyEof, describeRun(run));
    // Whatever the Go side made of the echo, every stream it finished writing reached us whole, then FIN.
    await waitFor(() => seen.length > 0 && seen.every((st) => st.ended || st.error), 5000, 'FIN or end');
    const finished = seen.filter((st) => st.ended);
    assert.ok(finished.length >= 1, 'at least one stream got its FIN before the Go side hung up');
    for (const st of finished) assert.equal(st.received, bytes, 'every byte arrived before the FIN');
    if (goOk) assert.equal(finished.length, streams);
    return goOk ? 'Go verified the echo' : `Go (df201c7) read a premature EOF: ${run.stdout.trim()}`;
  } finally {
    for (const s of sessions) s.close();
    listener.close();
  }
}

/** (c) The Go `open-server` opens streams toward our client, which echoes them. */
async function goOpenServerAgainstOurEcho(
  t: Transport,
  streams: number,
  bytes: number,
  goArgs: string[] = [],
) {
  const args = [...t.goFlags, '-streams', String(streams), '-bytes', String(bytes), '-timeout', GO_TIMEOUT];
  const peer = await startPeerServer('open-server', [...args, ...goArgs]);
  let session: Session | undefined;
  try {
    session = new Session(await dial(t, peer.port), { client: true });
    session.on('error', () => {}); // the Go side exits when done; that ends our session
    const seen = echoStreams(session);
    const code = await withTimeout(peer.exited, TEST_TIMEOUT - 10_000, 'the Go open-server to finish');
    const run = { code, stdout: peer.stdout(), stderr: peer.stderr() };
    assert.equal(code, 0, describeRun(run));
    assert.match(run.stdout, new RegExp(`^ok streams=${streams} bytes=${bytes} `, 'm'), describeRun(run));
    assertQuietGo(run.stderr);
    assertEchoed(seen, streams, bytes);
  } finally {
    session?.close();
    await peer.stop();
  }
}

before(() => {
  yamuxPeerBinary(); // build once, outside any test's timeout
});

for (const t of transports) {
  describe(`Go hashicorp/yamux over ${t.name}`, () => {
    const opts = { timeout: TEST_TIMEOUT };

    test('our client -> Go echo-server: 1 stream, 64 MiB, half-close', opts, () =>
      ourClientAgainstGoEcho(t, 1, 64 * MiB),
    );
    test('our client -> Go echo-server: 50 streams x 1 MiB', opts, () => ourClientAgainstGoEcho(t, 50, MiB));

    test('Go client -> our echo server: 1 stream, 64 MiB (FIN after the echo)', opts, () =>
      goClientAgainstOurEcho(t, 1, 64 * MiB, ['-fin', 'late']),
    );
    test('Go client -> our echo server: 50 streams x 1 MiB (FIN after the echo)', opts, () =>
      goClientAgainstOurEcho(t, 50, MiB, ['-fin', 'late']),
    );
    test(
      'Go client -> our echo server: FIN early (Go half-closes before reading the echo)',
      opts,
      async (ctx) => {
        ctx.diagnostic(await goClientEarlyFin(t, 1, MiB));
      },
    );

    test('Go open-server -> our echo client: 1 stream, 16 MiB', opts, () =>
      goOpenServerAgainstOurEcho(t, 1, 16 * MiB),
    );
    test('Go open-server -> our echo client: 50 streams x 1 MiB', opts, () =>
      goOpenServerAgainstOurEcho(t, 50, MiB),
    );

    test(
      'our client -> Go echo-server: streams reset while their echo is on its way, beside streams echoed whole',
      opts,
      () => ourResetsAgainstGoEcho(t),
    );

    test('Go side with a 16 MiB window: our client -> echo-server, 64 MiB', opts, () =>
      ourClientAgainstGoEcho(t, 1, 64 * MiB, ['-window', '16MiB']),
    );
    test('Go side with a 16 MiB window: Go client -> our echo, 64 MiB', opts, () =>
      goClientAgainstOurEcho(t, 1, 64 * MiB, ['-window', '16MiB', '-fin', 'late']),
    );
    test('Go side with a 16 MiB window: Go open-server -> our echo, 8 streams x 4 MiB', opts, () =>
      goOpenServerAgainstOurEcho(t, 8, 4 * MiB, ['-window', '16MiB']),
    );
  });
}
