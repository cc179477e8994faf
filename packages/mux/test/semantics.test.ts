import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { pipeline, Readable, Writable } from 'node:stream';
import { pipeline as pipelineAsync } from 'node:stream/promises';
import { afterEach, describe, test } from 'node:test';
import { Session, type Stream } from '../src/index.js';
import { receiveAll, sendPattern, sha256 } from './payload.js';
import { Prng } from './prng.js';
import { sleep, waitFor, withTimeout } from './timeouts.js';
import { type SessionPair, sessionPair } from './transports.js';
import { encodeFrame, F, FrameParser, INITIAL_WINDOW, T } from './wire.js';

/** Stream and session semantics between two of our sessions (and against silent raw-socket peers). */

type CodedError = Error & { code?: string };

let cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup) fn();
  cleanup = [];
});

async function pair(
  clientOpts: Parameters<typeof sessionPair>[1] = {},
  serverOpts: Parameters<typeof sessionPair>[2] = {},
): Promise<SessionPair> {
  const p = await sessionPair('tcp', clientOpts, serverOpts);
  cleanup.push(() => p.close());
  return p;
}

function nextStream(session: Session): Promise<Stream> {
  return withTimeout(
    new Promise<Stream>((resolve) => session.once('stream', resolve)),
    5000,
    'a stream from the peer',
  );
}

function errorOf(stream: Stream, ms = 5000): Promise<CodedError> {
  return withTimeout(
    once(stream, 'error').then(([err]) => err as CodedError),
    ms,
    `an error on stream ${stream.id}`,
  );
}

/** Reads to 'end'. (Not `for await`: finishing the iteration destroys the stream, which sends RST.) */
function text(stream: Stream): Promise<string> {
  return withTimeout(
    new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      stream.on('data', (chunk: Buffer) => chunks.push(chunk));
      stream.once('end', () => resolve(Buffer.concat(chunks).toString()));
      stream.once('error', reject);
    }),
    5000,
    `stream ${stream.id} to end`,
  );
}

/** Streams still open when a test's sessions are closed get destroyed with an error; expected here. */
function quiet<T extends Stream>(stream: T): T {
  stream.on('error', () => {});
  return stream;
}

/** A raw TCP peer for our client session: it reads everything and, unless told to, never writes. */
async function rawPeer(answerPings = false) {
  let answering = answerPings;
  const server = net.createServer();
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const accepted = once(server, 'connection') as Promise<[net.Socket]>;
  const conn = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  const [[peer]] = await Promise.all([accepted, once(conn, 'connect')]);
  server.close();
  const frames = new FrameParser();
  let ended = false;
  const answered = new Set<number>();
  peer.on('data', (chunk: Buffer) => {
    for (const f of frames.push(chunk)) {
      if (answering && f.type === T.Ping && f.flags & F.SYN) {
        answered.add(f.length);
        peer.write(encodeFrame(T.Ping, F.ACK, 0, f.length));
      }
    }
  });
  peer.on('error', () => {});
  peer.on('close', () => {
    ended = true;
  });
  cleanup.push(() => {
    peer.destroy();
    conn.destroy();
  });
  return {
    conn,
    peer,
    frames,
    ended: () => ended,
    stopAnswering: () => {
      answering = false;
    },
    /** Answers every ping seen and not answered yet, and answers again from then on. */
    answerWaitingPings: () => {
      for (const f of frames.frames) {
        if (f.type === T.Ping && f.flags & F.SYN && !answered.has(f.length)) {
          answered.add(f.length);
          peer.write(encodeFrame(T.Ping, F.ACK, 0, f.length));
        }
      }
      answering = true;
    },
  };
}

describe('streams', () => {
  test('half-close: the opener ends first, the other side still sends, then ends', async () => {
    const { client, server } = await pair();
    const arriving = nextStream(server);
    const a = quiet(client.open());
    a.end('hello');
    const b = quiet(await arriving);
    const bothClosed = Promise.all([once(a, 'close'), once(b, 'close')]);
    assert.equal(await text(b), 'hello', "the acceptor reads to 'end' (our FIN)");
    const aText = text(a);
    b.end('world'); // after the peer's FIN, this direction still flows
    assert.equal(await aText, 'world');
    await withTimeout(bothClosed, 5000, "both streams 'close'");
    await waitFor(() => client.streamCount === 0 && server.streamCount === 0, 5000, 'streams released');
  });

  test('half-close: the acceptor ends first, the opener still sends, then ends', async () => {
    const { client, server } = await pair();
    const arriving = nextStream(server);
    const a = quiet(client.open());
    a.write('ping');
    const b = quiet(await arriving);
    const [first] = (await withTimeout(once(b, 'data'), 5000, 'data')) as [Buffer];
    assert.equal(first.toString(), 'ping');
    const aText = text(a);
    b.end('pong');
    assert.equal(await aText, 'pong');
    const rest = text(b);
    a.end('more after your FIN');
    assert.equal(await rest, 'more after your FIN');
    await waitFor(() => client.streamCount === 0 && server.streamCount === 0, 5000, 'streams released');
  });

  test("destroy() sends RST: the peer's stream fails with ERR_STREAM_RESET, both ways", async () => {
    const { client, server } = await pair();
    for (const destroyer of ['opener', 'acceptor'] as const) {
      const arriving = nextStream(server);
      const a = client.open();
      a.write('x');
      const b = await arriving;
      const [local, remote] = destroyer === 'opener' ? [a, b] : [b, a];
      const failed = errorOf(remote);
      local.destroy();
      const err = await failed;
      assert.equal(err.code, 'ERR_STREAM_RESET', err.message);
      assert.ok(remote.destroyed);
    }
    await waitFor(() => client.streamCount === 0 && server.streamCount === 0, 5000, 'streams released');
  });

  test('no "stream" listener: the peer gets RST', async () => {
    const { client } = await pair();
    const s = client.open();
    s.write('anyone?');
    assert.equal((await errorOf(s)).code, 'ERR_STREAM_RESET');
  });

  test('pipeline() relays between two sessions (8 MiB each way, FIN propagates)', {
    timeout: 30_000,
  }, async () => {
    const front = await pair();
    const back = await pair();
    back.server.on('stream', (s: Stream) => pipeline(s, s, () => {})); // echo (pipeline handles errors)
    const relayDone: Promise<(Error | null | undefined)[]> = new Promise((resolve) => {
      front.server.on('stream', (inbound: Stream) => {
        const outbound = back.client.open();
        const results: (Error | null | undefined)[] = [];
        const done = (err?: Error | null) => {
          results.push(err);
          if (results.length === 2) resolve(results);
        };
        pipeline(inbound, outbound, done);
        pipeline(outbound, inbound, done);
      });
    });
    const s = front.client.open();
    const echoed = receiveAll(s);
    const sent = await sendPattern(s, 8 * 1024 * 1024, 42);
    const got = await withTimeout(echoed, 20_000, 'the echo through the relay');
    assert.equal(got.sha256, sent);
    assert.deepEqual(await withTimeout(relayDone, 5000, 'both relay pipelines to complete'), [
      undefined,
      undefined,
    ]);
  });

  test('stream/promises pipeline from an async source into a stream, and out to a Writable', async () => {
    const { client, server } = await pair();
    const parts = Array.from({ length: 100 }, (_, i) => new Prng(i).bytes(1000 + i));
    const collected: Buffer[] = [];
    const sinkDone = new Promise<void>((resolve, reject) => {
      server.once('stream', (s: Stream) => {
        // A Writable sink, not an async function: async iteration destroys its source when done (RST).
        const sink = new Writable({
          write(chunk: Buffer, _enc, callback) {
            collected.push(chunk);
            callback();
          },
        });
        pipelineAsync(s, sink)
          .then(() => {
            s.end(); // our side of the stream: FIN too, so the stream closes cleanly
          })
          .then(resolve, reject);
      });
    });
    const out = client.open();
    const outClosed = once(out, 'close');
    out.resume(); // read to the peer's FIN
    await withTimeout(pipelineAsync(Readable.from(parts), out), 5000, 'writing pipeline');
    await withTimeout(sinkDone, 5000, 'reading pipeline');
    await withTimeout(outClosed, 5000, 'the stream closed after FIN both ways');
    assert.equal(sha256(Buffer.concat(collected)), sha256(Buffer.concat(parts)));
  });
});

describe('flow control at the edges', () => {
  test('read(n) for more than the window waits for n bytes and gets them (a 1 MiB message)', async () => {
    const { client, server } = await pair();
    const accepted = nextStream(server);
    const out = quiet(client.open());
    const message = new Prng(7).bytes(1024 * 1024);
    out.write(message);
    const inbound = quiet(await accepted);
    const got = await withTimeout(
      new Promise<Buffer>((resolve) => {
        const attempt = () => {
          const chunk = inbound.read(message.length) as Buffer | null;
          if (chunk) resolve(chunk);
        };
        inbound.on('readable', attempt);
        attempt();
      }),
      5000,
      'read(1 MiB) on a stream whose window starts at 256 KiB',
    );
    assert.ok(got.equals(message), 'the message arrived whole');
  });

  test('window is given back for bytes read, not for bytes of a frame still on the way', async () => {
    const raw = await rawPeer();
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 0 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    let received = 0;
    session.on('stream', (stream: Stream) => {
      quiet(stream).on('data', (chunk: Buffer) => {
        received += chunk.length;
      });
    });
    const updates = () =>
      raw.frames.frames
        .filter((f) => f.type === T.WindowUpdate && f.streamId === 2 && !(f.flags & (F.SYN | F.ACK)))
        .reduce((sum, f) => sum + f.length, 0);
    // The peer opens stream 2 and announces a 200 KiB frame, of which only the first half arrives.
    const body = Buffer.alloc(200 * 1024, 7);
    raw.peer.write(encodeFrame(T.WindowUpdate, F.SYN, 2, 0));
    raw.peer.write(encodeFrame(T.Data, 0, 2, body.length));
    raw.peer.write(body.subarray(0, 100 * 1024));
    await waitFor(() => received === 100 * 1024, 3000, 'the first half to be read');
    await sleep(200);
    assert.ok(updates() <= received, `granted ${updates()} bytes of window for ${received} bytes read`);
    raw.peer.write(body.subarray(100 * 1024));
    await waitFor(() => received === body.length, 3000, 'the second half to be read');
    // Now it is owed (granted in half-window batches, so at least 128 KiB of the 200).
    await waitFor(() => updates() >= 128 * 1024, 3000, 'window for the whole frame');
  });

  test('a write waiting for window fails when its stream is destroyed, and so do the writes behind it', async () => {
    const { client, server } = await pair();
    const accepted = nextStream(server);
    const out = quiet(client.open());
    out.write('x');
    quiet(await accepted).pause(); // reads nothing: the 256 KiB window runs out
    const results: string[] = [];
    out.write(Buffer.alloc(1024 * 1024), (err) => results.push(`write: ${err ? 'failed' : 'ok'}`));
    out.write(Buffer.alloc(1024), (err) => results.push(`queued: ${err ? 'failed' : 'ok'}`));
    out.end(() => results.push('end'));
    await sleep(200);
    assert.deepEqual(results, [], 'the writes wait for window');
    out.destroy();
    await waitFor(() => results.length >= 2, 3000, 'the write callbacks');
    assert.deepEqual(results.slice(0, 2), ['write: failed', 'queued: failed']);
  });
});

describe('data for a stream we do not hold', () => {
  const MAX_FRAME = 0xffffffff;

  /** A raw peer and our client session over it; the peer opens stream 2 and waits for our ACK. */
  async function sessionWithPeerStream(accept: boolean) {
    const raw = await rawPeer(true);
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 0 });
    const errors: CodedError[] = [];
    session.on('error', (err: Error) => errors.push(err));
    cleanup.push(() => session.close());
    const closed = new Promise<CodedError | undefined>((resolve) => session.once('close', resolve));
    const arriving = accept ? nextStream(session) : undefined;
    raw.peer.write(encodeFrame(T.WindowUpdate, F.SYN, 2, 0));
    await waitFor(() => raw.frames.frames.some((f) => f.streamId === 2), 5000, 'our answer to the SYN');
    return { raw, session, errors, closed, stream: await arriving };
  }

  /** Sends a ping from the peer and waits for our answer: everything the peer sent before it was read. */
  async function answered(raw: Awaited<ReturnType<typeof rawPeer>>, opaque: number): Promise<void> {
    raw.peer.write(encodeFrame(T.Ping, F.SYN, 0, opaque));
    await waitFor(
      () => raw.frames.frames.some((f) => f.type === T.Ping && f.flags & F.ACK && f.length === opaque),
      5000,
      `our answer to ping ${opaque}`,
    );
  }

  test('late data for a stream we reset, within its window, is discarded quietly (RST answered); the session carries on', async () => {
    const { raw, session, errors, stream } = await sessionWithPeerStream(true);
    quiet(stream!).destroy();
    await waitFor(
      () => raw.frames.frames.some((f) => f.streamId === 2 && f.flags & F.RST),
      5000,
      'our RST for stream 2',
    );
    // The whole window we granted, in flight when the RST left.
    raw.peer.write(encodeFrame(T.Data, 0, 2, INITIAL_WINDOW, Buffer.alloc(INITIAL_WINDOW, 7)));
    await answered(raw, 1);
    assert.equal(session.closed, false);
    assert.deepEqual(errors, []);
    assert.ok(!raw.frames.frames.some((f) => f.type === T.GoAway), 'no GoAway');
  });

  test('a Data frame longer than any window we grant, for a stream we do not hold, is a protocol error (GoAway), not 4 GiB read and thrown away', async () => {
    for (const kind of ['never opened', 'reset by us', 'refused at its SYN'] as const) {
      const { raw, errors, closed, stream } = await sessionWithPeerStream(kind === 'reset by us');
      let header: Buffer;
      if (kind === 'never opened') header = encodeFrame(T.Data, 0, 4, MAX_FRAME);
      else if (kind === 'refused at its SYN') header = encodeFrame(T.Data, F.SYN, 4, MAX_FRAME);
      else {
        quiet(stream!).destroy();
        header = encodeFrame(T.Data, 0, 2, MAX_FRAME);
      }
      // The ping after it would be eaten as part of the body if the header were believed.
      raw.peer.write(Buffer.concat([header, Buffer.alloc(1024), encodeFrame(T.Ping, F.SYN, 0, 9)]));
      const reason = await withTimeout(closed, 3000, `the session's close (${kind})`);
      assert.equal(reason?.code, 'ERR_MUX_PROTOCOL', `${kind}: ${reason?.message}`);
      assert.match(reason.message, /window/);
      assert.equal(errors.length, 1, kind);
      await waitFor(raw.ended, 3000, `the connection to be closed (${kind})`);
      assert.deepEqual(
        raw.frames.frames.filter((f) => f.type === T.GoAway).map((f) => f.length),
        [1],
        `${kind}: GoAway(protocol error)`,
      );
    }
  });
});

describe('limits and timeouts', () => {
  test('maxStreams: an incoming SYN over the limit gets RST; a slot freed is usable again', async () => {
    const { client, server } = await pair({}, { maxStreams: 2 });
    const accepted: Stream[] = [];
    server.on('stream', (s: Stream) => {
      accepted.push(s);
      s.on('error', () => {});
      s.resume();
    });
    const streams = [quiet(client.open()), quiet(client.open()), quiet(client.open())];
    for (const s of streams) s.write('hi');
    const third = await errorOf(streams[2]!);
    assert.equal(third.code, 'ERR_STREAM_RESET');
    assert.equal(accepted.length, 2);
    assert.equal(streams[0]!.destroyed, false);
    streams[0]!.destroy();
    await waitFor(() => server.streamCount < 2, 5000, 'a slot to free up');
    const fourth = quiet(client.open());
    fourth.write('again');
    await waitFor(() => accepted.length === 3, 5000, 'the next stream accepted');
    assert.equal(fourth.destroyed, false);
  });

  test('maxStreams on the opening side: open() over the limit fails with ERR_TOO_MANY_STREAMS', async () => {
    const { client, server } = await pair({ maxStreams: 1 });
    server.on('stream', (s: Stream) => quiet(s).resume());
    quiet(client.open()).write('one');
    const second = client.open();
    assert.equal((await errorOf(second)).code, 'ERR_TOO_MANY_STREAMS');
  });

  test('openTimeout: a peer that never ACKs fails the stream with ERR_STREAM_OPEN_TIMEOUT', async () => {
    const raw = await rawPeer();
    const session = new Session(raw.conn, { client: true, openTimeout: 300, keepAliveInterval: 0 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    const started = Date.now();
    const s = session.open();
    s.write('hello?');
    const err = await errorOf(s, 3000);
    assert.equal(err.code, 'ERR_STREAM_OPEN_TIMEOUT', err.message);
    assert.ok(Date.now() - started >= 250, 'not before the timeout');
    assert.ok(
      raw.frames.frames.some((f) => f.streamId === s.id && f.flags & F.SYN),
      'the SYN reached the peer',
    );
  });

  test('keepalive: pings unanswered within keepAliveTimeout close the session', async () => {
    const raw = await rawPeer();
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 100, keepAliveTimeout: 300 });
    const errors: CodedError[] = [];
    session.on('error', (err: Error) => errors.push(err));
    const started = Date.now();
    const closed = new Promise<CodedError | undefined>((resolve) => session.once('close', resolve));
    const reason = await withTimeout(closed, 3000, "the session's 'close'");
    assert.ok(Date.now() - started >= 300);
    assert.equal(reason?.code, 'ERR_KEEPALIVE_TIMEOUT');
    assert.equal(errors[0]?.code, 'ERR_KEEPALIVE_TIMEOUT');
    assert.ok(
      raw.frames.frames.some((f) => f.type === T.Ping && f.flags & F.SYN),
      'a ping was sent',
    );
    await waitFor(raw.ended, 3000, 'the connection to be closed');
  });

  test('keepalive: the reason gives the silence since the last answered ping, not the last ping alone', async () => {
    const raw = await rawPeer(true);
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 200, keepAliveTimeout: 300 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    await sleep(250); // the pings at 0 and 200 ms are answered
    raw.stopAnswering();
    const closed = new Promise<CodedError | undefined>((resolve) => session.once('close', resolve));
    const reason = await withTimeout(closed, 3000, "the session's 'close'");
    assert.equal(reason?.code, 'ERR_KEEPALIVE_TIMEOUT');
    // Answered at ~200 ms, the ping at ~400 unanswered until ~700: about 500 ms of silence, more than the
    // 300 ms the last ping waited (what a heartbeat_timeout of interval + timeout means to the user).
    const silence = /no ping answered for (\d+) ms/.exec(reason?.message ?? '');
    assert.ok(silence, reason?.message);
    assert.ok(Number(silence[1]) >= 400, reason?.message);
  });

  test('keepalive: frames arriving while a ping waits for its answer keep the session alive (a busy slow uplink)', async () => {
    const raw = await rawPeer(false);
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 100, keepAliveTimeout: 300 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    // No ping is ever answered, but the peer keeps sending (its own pings here, 10 a second) for 1.2 s.
    let id = 0;
    const talking = setInterval(() => raw.peer.write(encodeFrame(T.Ping, F.SYN, 0, ++id)), 100);
    await sleep(1200);
    clearInterval(talking);
    assert.equal(session.closed, false, 'a peer that keeps sending is alive');
    // Then silence: the session ends within the timeout (and a check's slack).
    const closed = new Promise<CodedError | undefined>((resolve) => session.once('close', resolve));
    const reason = await withTimeout(closed, 3000, "the session's 'close'");
    assert.equal(reason?.code, 'ERR_KEEPALIVE_TIMEOUT');
    assert.match(reason?.message ?? '', /and nothing else received for 300 ms$/);
  });

  test("keepalive: a peer silent for stallNotice while a ping waits, then back, makes a 'stall' with the silence", async () => {
    const raw = await rawPeer(true);
    const session = new Session(raw.conn, {
      client: true,
      keepAliveInterval: 100,
      keepAliveTimeout: 5000,
      stallNotice: 400,
    });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    const stalls: number[] = [];
    session.on('stall', (ms: number) => stalls.push(ms));
    await sleep(600);
    assert.deepEqual(stalls, [], 'pings answered at once are no stall');

    // The peer keeps sending other frames while it does not answer: busy, not silent.
    raw.stopAnswering();
    let id = 0;
    const talking = setInterval(() => raw.peer.write(encodeFrame(T.Ping, F.SYN, 0, ++id)), 100);
    await sleep(700);
    clearInterval(talking);
    raw.answerWaitingPings();
    await sleep(300);
    assert.deepEqual(stalls, [], 'a peer that kept sending was not silent');

    // Then nothing at all for ~800 ms: the answer that ends it reports the silence once.
    raw.stopAnswering();
    await sleep(800);
    raw.answerWaitingPings();
    await waitFor(() => stalls.length > 0, 3000, "a 'stall'");
    assert.equal(stalls.length, 1, `stalls: ${stalls.join(', ')}`);
    assert.ok(stalls[0]! >= 600 && stalls[0]! < 3000, `silence ${stalls[0]} ms`);
    assert.equal(session.closed, false);
  });

  test('peerSilence: 0 while the peer answers; asking sends a ping (at most one per 500 ms) and then measures the silence', async () => {
    const raw = await rawPeer(true);
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 0, stallNotice: 300 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    const stalls: number[] = [];
    session.on('stall', (ms: number) => stalls.push(ms));
    const pingsSent = () => raw.frames.frames.filter((f) => f.type === T.Ping && f.flags & F.SYN).length;
    assert.equal(session.peerSilence(), 0, 'no ping waits: the ask sends one');
    for (let i = 0; i < 100; i++) assert.ok(session.peerSilence() < 100, 'a ping waits, for a moment');
    await waitFor(() => pingsSent() === 1, 3000, 'the probe');
    await sleep(100);
    assert.equal(session.peerSilence(), 0, 'answered: no ping waits, and the last went < 500 ms ago');
    assert.equal(pingsSent(), 1, 'one probe for 101 asks within 500 ms');

    raw.stopAnswering();
    await sleep(500);
    assert.equal(session.peerSilence(), 0, 'the ask that sends the probe');
    await waitFor(() => pingsSent() === 2, 3000, 'the second probe');
    await sleep(700);
    const silence = session.peerSilence();
    assert.ok(silence >= 600 && silence < 3000, `silence ${silence} ms`);
    assert.equal(pingsSent(), 2, 'no probe while one waits');
    raw.answerWaitingPings();
    await waitFor(() => session.peerSilence() === 0, 3000, 'the silence to end with the answer');
    assert.equal(stalls.length, 1, "the probe's late answer is a 'stall' too");
    assert.ok(stalls[0]! >= 600, `stall ${stalls[0]} ms`);
  });

  test('peerSilence: counted from when the answer is due, as late as recent answers came (a long round trip is no silence)', async () => {
    const raw = await rawPeer(false);
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 0 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    const pingsSent = () => raw.frames.frames.filter((f) => f.type === T.Ping && f.flags & F.SYN).length;
    // A peer on a link with a 400 ms round trip: each answer comes 400 ms after the ping.
    const answerLate = async () => {
      await sleep(400);
      raw.answerWaitingPings();
      raw.stopAnswering();
    };
    assert.equal(session.peerSilence(), 0, 'the ask that sends the first probe');
    await answerLate();
    await waitFor(
      () => session.peerSilence() === 0 && pingsSent() === 2,
      3000,
      'the first answer, the next probe',
    );
    await sleep(300);
    assert.equal(session.peerSilence(), 0, 'the answer is not due yet: no silence');
    await sleep(500);
    const silence = session.peerSilence();
    assert.ok(silence > 200 && silence < 700, `silence ${silence} ms, since the answer was due`);
  });

  test('peerSilence: an answer that waited out a stopped link does not make the next stop look like a slow answer', async () => {
    const raw = await rawPeer(true);
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 0 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    const pingsSent = () => raw.frames.frames.filter((f) => f.type === T.Ping && f.flags & F.SYN).length;
    assert.equal(session.peerSilence(), 0, 'the first probe, answered at once');
    await waitFor(() => pingsSent() === 1, 3000, 'the first probe');
    await sleep(600);
    // The link stops for 3 s while the second probe waits, then comes back: its answer took 3 s.
    raw.stopAnswering();
    assert.equal(session.peerSilence(), 0, 'the second probe');
    await sleep(3000);
    raw.answerWaitingPings();
    raw.stopAnswering();
    await waitFor(
      () => session.peerSilence() === 0 && pingsSent() === 3,
      3000,
      'the answer, the third probe',
    );
    // And stops again: the third probe's answer was due within about 1 s, not 3 s.
    await sleep(2000);
    const silence = session.peerSilence();
    assert.ok(silence >= 500, `silence ${silence} ms 2 s into the second stop`);
  });

  test('keepalive: answered pings keep the session alive (raw peer and session pair)', async () => {
    const raw = await rawPeer(true);
    // A generous timeout: this machine is shared, and a late answer must not look like a dead peer here.
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 50, keepAliveTimeout: 1000 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    const { client, server } = await pair(
      { keepAliveInterval: 50, keepAliveTimeout: 1000 },
      { keepAliveInterval: 50, keepAliveTimeout: 1000 },
    );
    await sleep(1500);
    assert.equal(session.closed, false);
    assert.equal(client.closed, false);
    assert.equal(server.closed, false);
    const pings = raw.frames.frames.filter((f) => f.type === T.Ping && f.flags & F.SYN).length;
    assert.ok(pings >= 5, `only ${pings} keepalive pings in 1.5 s at a 50 ms interval`);
  });
});

describe('session lifecycle', () => {
  test('goAway: the peer gets "goaway", its open() fails with ERR_SESSION_GOAWAY, open streams carry on', async () => {
    const { client, server } = await pair();
    const arriving = nextStream(server);
    const before = quiet(client.open());
    before.write('opened before');
    const b = quiet(await arriving);
    const goaway = withTimeout(once(client, 'goaway'), 5000, "'goaway' at the client");
    server.goAway();
    assert.deepEqual(await goaway, [0]);
    let err: CodedError | undefined;
    try {
      const refused = client.open();
      err = await errorOf(refused);
    } catch (thrown) {
      err = thrown as CodedError;
    }
    assert.equal(err?.code, 'ERR_SESSION_GOAWAY', err?.message);
    // The stream opened before the GoAway still works both ways.
    const bText = text(b);
    before.end(' and after');
    assert.equal(await bText, 'opened before and after');
    const aText = text(before);
    b.end('reply');
    assert.equal(await aText, 'reply');
  });

  test('ping() resolves with the RTT in ms, also many at once', async () => {
    const { client, server } = await pair();
    const rtt = await withTimeout(client.ping(), 5000, 'ping');
    assert.equal(typeof rtt, 'number');
    assert.ok(Number.isFinite(rtt) && rtt >= 0, String(rtt));
    const many = await withTimeout(
      Promise.all(Array.from({ length: 20 }, () => server.ping())),
      5000,
      '20 pings',
    );
    assert.ok(many.every((r) => typeof r === 'number' && r >= 0));
  });

  test("'ack': once per stream we opened, with the ms from SYN to ACK; never for streams the peer opened", async () => {
    const { client, server } = await pair();
    const acks: { id: number; ms: number }[] = [];
    client.on('ack', (stream: Stream, ms: number) => acks.push({ id: stream.id, ms }));
    let serverAcks = 0;
    server.on('ack', () => serverAcks++);
    const arriving = nextStream(server);
    const a = client.open();
    a.write('x');
    await arriving;
    await waitFor(() => acks.length === 1, 5000, "the client's 'ack'");
    a.write('y'); // later frames carry no ACK and must not count again
    await sleep(50);
    assert.equal(acks.length, 1);
    assert.equal(acks[0]?.id, a.id);
    assert.ok(Number.isFinite(acks[0]?.ms) && (acks[0]?.ms ?? -1) >= 0, String(acks[0]?.ms));
    assert.equal(serverAcks, 0, 'accepting a stream is not an ack of ours');
  });

  test("close(): 'close' once on both sides, streams destroyed, open() afterwards fails", async () => {
    const { client, server } = await pair();
    const arriving = nextStream(server);
    const a = client.open();
    a.write('x');
    const b = await arriving;
    // No error listener on `a`: a close we asked for must not crash a program with an uncaught 'error'.
    let aError: Error | undefined;
    const aClosed = new Promise<void>((resolve) => a.once('close', () => resolve()));
    a.once('error', (e) => {
      aError = e;
    });
    const bFailed = errorOf(b);
    const closes = { client: 0, server: 0 };
    client.on('close', () => closes.client++);
    server.on('close', () => closes.server++);
    server.on('error', () => {});
    client.close();
    await withTimeout(Promise.all([aClosed, bFailed]), 5000, 'both streams destroyed');
    assert.equal(aError, undefined, 'the closing side closes its streams without an error');
    assert.equal(a.destroyed, true);
    assert.equal(
      (await bFailed).code,
      'ERR_SESSION_CLOSED',
      "the peer's streams fail: the session went away",
    );
    await waitFor(() => closes.server === 1, 5000, "the peer's 'close'");
    assert.equal(closes.client, 1);
    assert.equal(client.closed, true);
    assert.equal(server.closed, true);
    let err: CodedError | undefined;
    try {
      err = await errorOf(client.open());
    } catch (thrown) {
      err = thrown as CodedError;
    }
    assert.equal(err?.code, 'ERR_SESSION_CLOSED');
    client.close();
    await sleep(50);
    assert.equal(closes.client, 1, "'close' exactly once");
  });

  test('what arrived before the peer closed the session is still readable, then the stream fails', async () => {
    for (const transport of ['tcp', 'ws'] as const) {
      const p = await sessionPair(transport);
      cleanup.push(() => p.close());
      const accepted = nextStream(p.server);
      const opener = p.client.open();
      opener.write('hello');
      const stream = await accepted;
      stream.on('error', () => {});
      stream.pause(); // a reader that is busy elsewhere when the last words and the close arrive
      await waitFor(() => stream.readableLength === 5, 5000, 'the first bytes');
      opener.write('last words');
      p.client.close();
      const ended = new Promise((resolve) => p.server.once('close', resolve));
      await withTimeout(ended, 5000, `${transport}: the session ending`);
      await sleep(20);
      assert.ok(!stream.destroyed, `${transport}: not destroyed while it holds unread data`);
      assert.equal(String(stream.read()), 'hellolast words', `${transport}: the data is still there`);
      await withTimeout(new Promise((resolve) => stream.once('close', resolve)), 5000, 'the stream closing');
      assert.equal(
        (stream.errored as CodedError | null)?.code,
        'ERR_SESSION_CLOSED',
        `${transport}: then it fails`,
      );
    }
  });

  test('a stream the peer had finished before the session died reads to its end however long the reader waits; writes meanwhile fail only at the close', async () => {
    for (const transport of ['tcp', 'ws'] as const) {
      const p = await sessionPair(transport);
      cleanup.push(() => p.close());
      const accepted = nextStream(p.server);
      const opener = p.client.open();
      opener.on('error', () => {}); // the tunnel dies under it too
      const response = Buffer.alloc(100_000, 'r');
      opener.end(response); // the service answered in full and finished...
      const stream = await accepted;
      const errors: CodedError[] = [];
      stream.on('error', (err: CodedError) => errors.push(err));
      stream.pause(); // ...while the visitor is slow to read it
      await waitFor(() => stream.readableLength === response.length, 5000, 'the whole response');
      p.serverSocket.destroy(); // then the tunnel dies
      await withTimeout(
        new Promise((resolve) => p.server.once('close', resolve)),
        5000,
        `${transport}: the session ending`,
      );
      let lateWrite: Error | null | undefined;
      const lateWriteDone = new Promise<void>((resolve) =>
        stream.write('the visitor says more', (err) => {
          lateWrite = err;
          resolve();
        }),
      );
      await sleep(2500); // longer than an unfinished stream's data is kept
      assert.ok(!stream.destroyed, `${transport}: still readable`);
      // (Not events.once: it rejects on the 'error' that follows.)
      const ended = withTimeout(
        new Promise((resolve) => stream.once('end', resolve)),
        5000,
        `${transport}: 'end'`,
      );
      const closed = withTimeout(
        new Promise((resolve) => stream.once('close', resolve)),
        5000,
        `${transport}: 'close'`,
      );
      const reading = receiveAll(stream);
      stream.resume();
      const received = await reading;
      await ended;
      assert.equal(received.bytes, response.length, `${transport}: every byte`);
      await closed;
      await lateWriteDone;
      assert.equal(
        (lateWrite as CodedError | undefined)?.code,
        'ERR_SESSION_CLOSED',
        `${transport}: the write failed`,
      );
      assert.equal(errors[0]?.code, 'ERR_SESSION_CLOSED', `${transport}: then the stream fails`);
    }
  });

  test('close() with no streams open is an orderly end for the peer (no error)', async () => {
    const { client, server } = await pair();
    const serverClosed = withTimeout(
      new Promise<Error | undefined>((resolve) => server.once('close', resolve)),
      5000,
      "the peer's 'close'",
    );
    const errors: Error[] = [];
    server.on('error', (err: Error) => errors.push(err));
    client.close();
    const reason = await serverClosed;
    assert.equal(reason, undefined, `orderly close, got ${reason}`);
    assert.deepEqual(errors, []);
  });
});
