import assert from 'node:assert/strict';
import type net from 'node:net';
import { Transform, type TransformCallback } from 'node:stream';
import { afterEach, describe, test } from 'node:test';
import { Client as YamuxJsClient, Server as YamuxJsServer } from 'yamux-js';
import { Session, type Stream } from '../src/index.js';
import { receiveAll, receiveCount, sendPattern, sha256 } from './payload.js';
import { Prng } from './prng.js';
import { waitFor, withTimeout } from './timeouts.js';
import { tcpPair } from './transports.js';
import { encodeFrame, F, type Frame, FrameParser, T } from './wire.js';

/**
 * Wire compatibility with yamux-js 0.2.0, limited to what it does right (see DESIGN.md): open, data both
 * ways over 1 MiB, window updates, ping, and the FIN it sends. It never delivers a remote FIN to its own
 * streams, so nothing here waits for one. It also drops partial frames on a byte stream, so the bytes we
 * send it pass through FrameAligner, which hands it exactly one whole frame per chunk (and records them).
 */

type YamuxJsSession = YamuxJsClient | YamuxJsServer;
type YamuxJsStream = ReturnType<YamuxJsClient['open']>;

const MiB = 1024 * 1024;
const WINDOW = 256 * 1024; // yamux-js ignores a larger window announced on SYN; keep ours at the initial one

class FrameAligner extends Transform {
  private readonly parser = new FrameParser();
  get frames(): Frame[] {
    return this.parser.frames;
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, callback: TransformCallback): void {
    for (const f of this.parser.push(chunk))
      this.push(encodeFrame(f.type, f.flags, f.streamId, f.length, f.body));
    callback();
  }
}

interface Wiring {
  ours: Session;
  theirs: YamuxJsSession;
  /** Frames we sent to yamux-js. */
  fromUs: Frame[];
  /** Frames yamux-js sent to us. */
  fromThem: Frame[];
  theirErrors: Error[];
  ourErrors: Error[];
}

let cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup) fn();
  cleanup = [];
});

/** yamux-js on one end of a loopback TCP connection, our Session on the other. */
async function wire(
  ourRole: 'client' | 'server',
  maxStreamWindow = WINDOW,
  onTheirStream?: (s: YamuxJsStream) => void,
) {
  const [dialer, acceptor] = await tcpPair();
  const [ourSocket, theirSocket]: [net.Socket, net.Socket] =
    ourRole === 'client' ? [dialer, acceptor] : [acceptor, dialer];
  const config = { enableKeepAlive: false, logger: () => {} };
  const theirs: YamuxJsSession =
    ourRole === 'client'
      ? new YamuxJsServer((s) => onTheirStream?.(s as YamuxJsStream), config)
      : new YamuxJsClient(config);
  const aligner = new FrameAligner();
  theirSocket.pipe(aligner).pipe(theirs).pipe(theirSocket);
  const fromThem = new FrameParser();
  theirs.on('data', (chunk: Buffer) => fromThem.push(chunk));
  const ours = new Session(ourSocket, {
    client: ourRole === 'client',
    maxStreamWindow,
    keepAliveInterval: 0,
  });
  const w: Wiring = {
    ours,
    theirs,
    fromUs: aligner.frames,
    fromThem: fromThem.frames,
    theirErrors: [],
    ourErrors: [],
  };
  theirs.on('error', (err: Error) => w.theirErrors.push(err));
  ours.on('error', (err: Error) => w.ourErrors.push(err));
  cleanup.push(() => {
    ours.close();
    theirs.close();
    dialer.destroy();
    acceptor.destroy();
  });
  return w;
}

/** Echoes a stream; the session's close() at the end of a test destroys it (yamux-js never sends FIN). */
function echo(s: Stream): void {
  s.on('error', () => {});
  s.pipe(s);
}

function windowUpdates(frames: Frame[], streamId: number): Frame[] {
  return frames.filter((f) => f.type === T.WindowUpdate && f.streamId === streamId && f.length > 0);
}

/** Writes `bytes` from a yamux-js stream and reads `bytes` back (no FIN: yamux-js would not deliver ours). */
async function pump(
  stream: YamuxJsStream,
  bytes: number,
  seed: number,
): Promise<{ sent: string; got: string }> {
  const received = receiveCount(stream, bytes);
  const sent = await sendPattern(stream, bytes, seed, { end: false });
  const got = (await received).sha256;
  return { sent, got };
}

describe('yamux-js 0.2.0 interop over loopback TCP', () => {
  test('yamux-js opens, we echo: 1 MiB both ways, window updates both ways', {
    timeout: 30_000,
  }, async () => {
    const w = await wire('server');
    const ourStreams: Stream[] = [];
    w.ours.on('stream', (s: Stream) => {
      ourStreams.push(s);
      echo(s);
    });
    const theirStream = (w.theirs as YamuxJsClient).open();
    const { sent, got } = await withTimeout(pump(theirStream, MiB, 1), 20_000, '1 MiB echo');
    assert.equal(got, sent, 'sha256 of the echo');
    assert.equal(ourStreams.length, 1);
    const id = ourStreams[0]!.id;
    assert.equal(id, theirStream.ID());
    const ack = w.fromUs.find((f) => f.streamId === id && f.flags & F.ACK);
    assert.ok(ack, 'we acknowledged the stream');
    // 1 MiB through 256 KiB windows needs window updates in both directions.
    assert.ok(windowUpdates(w.fromUs, id).length >= 3, 'our window updates as we consumed');
    assert.ok(windowUpdates(w.fromThem, id).length >= 3, 'their window updates as they consumed');
    assert.deepEqual(w.theirErrors, []);
    assert.deepEqual(w.ourErrors, []);
  });

  test('we open, yamux-js echoes: 1 MiB both ways', { timeout: 30_000 }, async () => {
    const w = await wire('client', WINDOW, (s) => s.pipe(s));
    const stream = w.ours.open();
    stream.on('error', () => {}); // destroyed by close() after the test
    const received = receiveCount(stream, MiB);
    const sent = await withTimeout(sendPattern(stream, MiB, 2, { end: false }), 20_000, 'writing 1 MiB');
    const got = await withTimeout(received, 20_000, '1 MiB echo from yamux-js');
    assert.equal(got.sha256, sent);
    const syn = w.fromUs.find((f) => f.streamId === stream.id && f.flags & F.SYN);
    assert.ok(syn, 'our SYN went out');
    const theirAck = w.fromThem.find((f) => f.streamId === stream.id && f.flags & F.ACK);
    assert.ok(theirAck, 'yamux-js acknowledged (on its first data frame)');
    assert.ok(windowUpdates(w.fromUs, stream.id).length >= 3);
    assert.ok(windowUpdates(w.fromThem, stream.id).length >= 3);
    assert.deepEqual(w.theirErrors, []);
    assert.deepEqual(w.ourErrors, []);
  });

  test('yamux-js opens; our window grows past 256 KiB as we keep up (max 16 MiB): 4 MiB echo', {
    timeout: 30_000,
  }, async () => {
    const w = await wire('server', 16 * MiB);
    w.ours.on('stream', echo);
    const theirStream = (w.theirs as YamuxJsClient).open();
    const { sent, got } = await withTimeout(pump(theirStream, 4 * MiB, 3), 20_000, '4 MiB echo');
    assert.equal(got, sent);
    const ack = w.fromUs.find((f) => f.streamId === theirStream.ID() && f.flags & F.ACK);
    assert.equal(ack?.type, T.WindowUpdate);
    assert.equal(ack?.length, 0, 'the ACK grants nothing beyond the initial 256 KiB');
    const largest = Math.max(...windowUpdates(w.fromUs, theirStream.ID()).map((f) => f.length));
    assert.ok(largest > WINDOW, `an update beyond what a 256 KiB window allows (largest ${largest})`);
  });

  test('4 concurrent yamux-js streams, 512 KiB echo each', { timeout: 30_000 }, async () => {
    const w = await wire('server');
    w.ours.on('stream', echo);
    const theirs = w.theirs as YamuxJsClient;
    const results = await withTimeout(
      Promise.all(Array.from({ length: 4 }, (_, i) => pump(theirs.open(), 512 * 1024, 10 + i))),
      20_000,
      '4 concurrent echoes',
    );
    for (const r of results) assert.equal(r.got, r.sent);
  });

  test('a FIN from yamux-js (close()) ends our readable side', { timeout: 10_000 }, async () => {
    const w = await wire('server');
    const arrived = new Promise<Stream>((resolve) => w.ours.on('stream', resolve));
    const theirStream = (w.theirs as YamuxJsClient).open();
    const payload = new Prng(4).bytes(100_000);
    theirStream.write(payload);
    const ours = await withTimeout(arrived, 5000, 'the stream');
    const all = receiveAll(ours);
    (theirStream as unknown as { close(): void }).close();
    const got = await withTimeout(all, 5000, "our 'end' after their FIN");
    assert.equal(got.sha256, sha256(payload));
  });

  test('ping both ways', { timeout: 10_000 }, async () => {
    const w = await wire('client', WINDOW, () => {});
    const rtt = await withTimeout(w.ours.ping(), 5000, 'our ping answered by yamux-js');
    assert.equal(typeof rtt, 'number');
    assert.ok(rtt >= 0 && Number.isFinite(rtt));
    // yamux-js's ping() is private in its typings; it times out (and emits 'error') if unanswered.
    const theirs = w.theirs as unknown as { ping(): void; pings: Map<number, unknown> };
    for (let i = 0; i < 3; i++) theirs.ping();
    await waitFor(() => theirs.pings.size === 0, 5000, 'our answers to 3 yamux-js pings');
    const answers = w.fromUs.filter((f) => f.type === T.Ping && f.flags === F.ACK).map((f) => f.length);
    assert.deepEqual(answers, [0, 1, 2], 'one ACK per ping, echoing its opaque value');
    assert.deepEqual(w.theirErrors, []);
  });
});
