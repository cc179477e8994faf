import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { afterEach, describe, test } from 'node:test';
import { Session, type Stream } from '../src/index.js';
import { SendOrder, type SendTurn } from '../src/send-order.js';
import { Prng, runSeed } from './prng.js';
import { retained } from './retained-memory.js';
import { nextTurn, waitFor, withTimeout } from './timeouts.js';
import { sessionPair, tcpPair } from './transports.js';
import { dataFrame, encodeFrame, F, type Frame, FrameParser, HEADER, INITIAL_WINDOW, T } from './wire.js';

/**
 * Data waits for room in the connection and takes turns (SendOrder); frames without a body, and streams
 * that send little, go ahead of the bulk streams' queued data. On a slow uplink this is what keeps a new
 * stream's ACK, a ping's answer or a game's datagram from waiting behind every busy stream's window.
 */

let cleanup: (() => void)[] = [];
afterEach(() => {
  for (const fn of cleanup) fn();
  cleanup = [];
});

class Sender implements SendTurn {
  sendStart = 0;
  sendFinish = 0;
  sendDue = 0;
  sendIndex = -1;
  sendSeq = 0;
  /** The lengths of the frames it has to send, in order. */
  constructor(
    readonly name: string,
    readonly frames: number[],
  ) {}
}

/** Queues `sender` for its next frame. */
function queue(order: SendOrder<Sender>, sender: Sender): void {
  order.add(sender, sender.frames[0] ?? 0);
}

/** Serves `order` until it is empty, each sender charged with its next frame; the names in serving order. */
function serveAll(order: SendOrder<Sender>): string[] {
  const served: string[] = [];
  for (let sender = order.next(); sender; sender = order.next()) {
    served.push(sender.name);
    order.charge(sender, sender.frames.shift() ?? 0);
    if (sender.frames.length > 0) queue(order, sender);
  }
  return served;
}

describe('SendOrder', () => {
  test('backlogged senders with equal frames take turns', () => {
    const order = new SendOrder<Sender>();
    for (const name of ['a', 'b', 'c']) queue(order, new Sender(name, [100, 100, 100]));
    assert.deepEqual(serveAll(order), ['a', 'b', 'c', 'a', 'b', 'c', 'a', 'b', 'c']);
  });

  test("a sender that sends little goes ahead of the bulk senders' next frames", () => {
    const order = new SendOrder<Sender>();
    const x = new Sender('x', [128 * 1024, 128 * 1024, 128 * 1024]);
    const y = new Sender('y', [128 * 1024, 128 * 1024, 128 * 1024]);
    queue(order, x);
    queue(order, y);
    assert.equal(order.next(), x);
    order.charge(x, x.frames.shift()!);
    queue(order, x);
    queue(order, new Sender('dns', [60]));
    // The datagram is due long before y's first frame (which started as early as x's first).
    assert.deepEqual(serveAll(order), ['dns', 'y', 'x', 'y', 'x', 'y']);
  });

  test('a sender that sends little does not wait for the rest of a round of equal bulk frames', () => {
    const order = new SendOrder<Sender>();
    const bulk = Array.from({ length: 100 }, (_, i) => new Sender(`bulk${i}`, [16 * 1024, 16 * 1024]));
    for (const sender of bulk) queue(order, sender);
    for (let i = 0; i < 10; i++) {
      const sender = order.next()!;
      order.charge(sender, sender.frames.shift()!);
      queue(order, sender);
    }
    // Ten of the hundred served; the other ninety frames of this round all start where the echo does.
    queue(order, new Sender('echo', [40]));
    assert.equal(order.next()?.name, 'echo');
  });

  test('sending in small pieces gains nothing: bytes, not frames, are shared', () => {
    const order = new SendOrder<Sender>();
    const big = new Sender('big', Array(4).fill(64 * 1024));
    const pieces = new Sender('pieces', Array(1000).fill(1024));
    queue(order, big);
    queue(order, pieces);
    const served = serveAll(order);
    // 1 KiB pieces against 64 KiB frames: about 64 pieces per big frame, not one each.
    const piecesBeforeLastBig = served
      .slice(0, served.lastIndexOf('big'))
      .filter((n) => n === 'pieces').length;
    assert.ok(
      Math.abs(piecesBeforeLastBig * 1024 - 3 * 64 * 1024) <= 64 * 1024,
      `${piecesBeforeLastBig} pieces of 1 KiB went before the fourth 64 KiB frame`,
    );
  });

  test('a sender already waiting keeps its place when added again; clear() empties the order', () => {
    const order = new SendOrder<Sender>();
    const [a, b] = [new Sender('a', [10]), new Sender('b', [10])];
    queue(order, a);
    queue(order, b);
    queue(order, a);
    assert.equal(order.size, 2);
    assert.equal(order.next(), a);
    order.clear();
    assert.equal(order.size, 0);
    assert.equal(b.sendIndex, -1);
    assert.equal(order.next(), undefined);
  });

  test('remove() takes a sender out from anywhere in the order; the others keep theirs', () => {
    const order = new SendOrder<Sender>();
    const senders = [5, 1, 9, 3, 7, 2, 8, 4, 6].map((n) => new Sender(`s${n}`, [n * 100]));
    for (const sender of senders) queue(order, sender);
    const [s5, s1, , , s7] = senders;
    order.remove(s7!);
    order.remove(s1!);
    order.remove(s1!);
    order.remove(s5!);
    assert.equal(s7!.sendIndex, -1);
    assert.equal(order.size, 6);
    assert.deepEqual(serveAll(order), ['s2', 's3', 's4', 's6', 's8', 's9']);
  });
});

/**
 * A raw yamux peer on a real TCP connection that reads nothing until told to; it never grants window,
 * so each stream of ours can send its first 256 KiB and no more.
 */
async function stalledPeer() {
  const [conn, peer] = await tcpPair();
  peer.pause();
  const parser = new FrameParser();
  const arrived: Frame[] = [];
  peer.on('data', (chunk: Buffer) => {
    for (const f of parser.push(chunk)) {
      arrived.push(f);
      if (f.type === T.Ping && f.flags & F.SYN) peer.write(encodeFrame(T.Ping, F.ACK, 0, f.length));
    }
  });
  peer.on('error', () => {});
  cleanup.push(() => {
    peer.destroy();
    conn.destroy();
  });
  return { conn, peer, arrived, resume: () => peer.resume() };
}

/**
 * A client session over a stalledPeer() whose connection is full: 4 streams wrote their first window (1 MiB),
 * most of which waits on our side.
 */
async function congestedSession() {
  const raw = await stalledPeer();
  const session = new Session(raw.conn, { client: true, keepAliveInterval: 0 });
  session.on('error', () => {});
  cleanup.push(() => session.close());
  for (let i = 0; i < 4; i++) {
    const s = session.open();
    s.on('error', () => {});
    s.write(Buffer.alloc(INITIAL_WINDOW, i + 1));
  }
  await waitFor(() => raw.conn.writableNeedDrain, 5000, 'the connection to fill');
  return { raw, session };
}

/** Bulk data bytes (of streams other than `except`) that arrived before frame `index`. */
function bulkBefore(frames: Frame[], index: number, except: number): number {
  let bytes = 0;
  for (const f of frames.slice(0, index))
    if (f.type === T.Data && f.streamId !== except) bytes += f.body?.length ?? 0;
  return bytes;
}

describe('session: data takes turns for room in the connection', () => {
  test("a ping, a new stream's SYN and a small stream's data go ahead of queued bulk data", async () => {
    const raw = await stalledPeer();
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 0 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    const bulk: Stream[] = [];
    for (let i = 0; i < 4; i++) {
      const s = session.open();
      s.on('error', () => {});
      s.write(Buffer.alloc(INITIAL_WINDOW, i + 1));
      bulk.push(s);
    }
    // 1 MiB of bulk data written; the peer reads nothing, so most of it waits on our side.
    await waitFor(() => raw.conn.writableNeedDrain, 5000, 'the connection to fill');
    const small = session.open();
    small.on('error', () => {});
    small.write('hello');
    const rtt = session.ping();
    raw.resume();
    await withTimeout(rtt, 5000, 'the ping answered');
    await waitFor(
      () =>
        raw.arrived.filter((f) => f.type === T.Data).reduce((n, f) => n + (f.body?.length ?? 0), 0) >=
        4 * INITIAL_WINDOW + 5,
      10_000,
      'all data at the peer',
    );

    const pingAt = raw.arrived.findIndex((f) => f.type === T.Ping && f.flags & F.SYN);
    const synAt = raw.arrived.findIndex((f) => f.streamId === small.id && f.flags & F.SYN);
    const dataAt = raw.arrived.findIndex((f) => f.streamId === small.id && f.type === T.Data);
    const total = 4 * INITIAL_WINDOW;
    // What the kernel's buffers and the socket had taken before the peer stalled is ahead of them; the
    // rest of the 1 MiB is not. (Before the session queued data, all of it was.)
    for (const [what, at] of [
      ['the ping', pingAt],
      ["the new stream's SYN", synAt],
      ["the new stream's data", dataAt],
    ] as const) {
      assert.ok(at >= 0, `${what} arrived`);
      const before = bulkBefore(raw.arrived, at, small.id);
      assert.ok(before < total - 256 * 1024, `${what} came after ${before} of ${total} bulk bytes`);
    }
  });

  test('bulk streams waiting for room share it: their data arrives interleaved, not one stream after another', async () => {
    const raw = await stalledPeer();
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 0 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    const bulk: Stream[] = [];
    const each = 1024 * 1024;
    for (let i = 0; i < 4; i++) {
      const s = session.open();
      s.on('error', () => {});
      bulk.push(s);
      raw.peer.write(encodeFrame(T.WindowUpdate, 0, s.id, each - INITIAL_WINDOW));
    }
    await waitFor(() => raw.conn.bytesRead >= 4 * 12, 5000, 'the window updates read');
    // Each stream's 1 MiB written at once, one stream after the other.
    for (const s of bulk) s.write(Buffer.alloc(each, 7));
    raw.resume();
    await waitFor(
      () =>
        raw.arrived.filter((f) => f.type === T.Data).reduce((n, f) => n + (f.body?.length ?? 0), 0) >=
        4 * each,
      10_000,
      'all data at the peer',
    );
    // When the first stream has all its data through, each of the others has at least half of its own.
    const received = new Map<number, number>();
    for (const f of raw.arrived) {
      if (f.type !== T.Data) continue;
      received.set(f.streamId, (received.get(f.streamId) ?? 0) + (f.body?.length ?? 0));
      if (received.get(f.streamId) === each) break;
    }
    for (const s of bulk) {
      const got = received.get(s.id) ?? 0;
      assert.ok(got >= each / 2, `stream ${s.id} had ${got} bytes through when the first had all`);
    }
  });

  for (const err of [undefined, new Error('shutting down')]) {
    test(`a message written just before close(${err ? 'err' : ''}) reaches the peer while bulk data waits`, async () => {
      const raw = await stalledPeer();
      const ended = once(raw.peer, 'end');
      const session = new Session(raw.conn, { client: true, keepAliveInterval: 0 });
      session.on('error', () => {});
      const control = session.open();
      control.on('error', () => {});
      const bulk = session.open();
      bulk.on('error', () => {});
      bulk.write(Buffer.alloc(INITIAL_WINDOW, 1));
      await waitFor(() => raw.conn.writableNeedDrain, 5000, 'the connection to fill');
      // The server's way to end a session: a notice saying why, then close() in the same turn.
      control.write('notice: token expired');
      session.close(err);
      raw.resume();
      await withTimeout(ended, 5000, 'the connection to end');
      const noticeAt = raw.arrived.findIndex((f) => f.type === T.Data && f.streamId === control.id);
      assert.equal(raw.arrived[noticeAt]?.body?.toString(), 'notice: token expired');
      // A GoAway with an error's code ends the peer's session at once: the data must come before it.
      const goAwayAt = raw.arrived.findIndex((f) => f.type === T.GoAway);
      assert.ok(goAwayAt > noticeAt, `GoAway at ${goAwayAt}, the notice at ${noticeAt}`);
    });
  }

  test('a stream writing 1-byte pieces takes no more of the connection than a bulk stream', async () => {
    const raw = await stalledPeer();
    const session = new Session(raw.conn, { client: true, keepAliveInterval: 0 });
    session.on('error', () => {});
    cleanup.push(() => session.close());
    const bulk = session.open();
    const tiny = session.open();
    for (const s of [bulk, tiny]) {
      s.on('error', () => {});
      raw.peer.write(encodeFrame(T.WindowUpdate, 0, s.id, 256 * 1024 * 1024));
    }
    await waitFor(() => raw.conn.bytesRead >= 2 * 12, 5000, 'the window updates read');
    let writing = true;
    const writeUntilStopped = async (s: Stream, chunk: Buffer) => {
      while (writing && !s.destroyed)
        if (!s.write(chunk)) await new Promise((resolve) => s.once('drain', resolve));
    };
    void writeUntilStopped(bulk, Buffer.alloc(64 * 1024, 1));
    void writeUntilStopped(tiny, Buffer.alloc(1, 2));
    // A reader that takes the data in bursts: the connection is full most of the time, and the streams
    // take turns for its room.
    const bursts = setInterval(() => (raw.peer.isPaused() ? raw.peer.resume() : raw.peer.pause()), 5);
    cleanup.push(() => clearInterval(bursts));
    await new Promise((resolve) => setTimeout(resolve, 1500));
    writing = false;
    clearInterval(bursts);
    // What each stream took of the link: its frames, headers included.
    const wire = new Map<number, number>();
    for (const f of raw.arrived)
      if (f.type === T.Data) wire.set(f.streamId, (wire.get(f.streamId) ?? 0) + HEADER + f.length);
    const [bulkWire, tinyWire] = [wire.get(bulk.id) ?? 0, wire.get(tiny.id) ?? 0];
    assert.ok(bulkWire > 0 && tinyWire > 0, `bulk ${bulkWire}, 1-byte ${tinyWire} bytes`);
    assert.ok(
      tinyWire < 2 * bulkWire,
      `the 1-byte stream took ${tinyWire} bytes of the link, the bulk one ${bulkWire}`,
    );
  });

  test('a stream waiting for its turn takes one 64 KiB read before write() says wait', async () => {
    const { session } = await congestedSession();
    // What a source piped into it hands over before it is paused: with thousands of streams congested on
    // a slow uplink, this per stream is the client's memory (256 KiB took 2,000 downloads to 712 MB).
    const waiting = session.open();
    waiting.on('error', () => {});
    let accepted = 0;
    while (accepted < INITIAL_WINDOW) {
      accepted += 64 * 1024;
      if (!waiting.write(Buffer.alloc(64 * 1024, 9))) break;
    }
    assert.equal(accepted, 64 * 1024, `write() took ${accepted} bytes before it said wait`);
  });

  test('a stream destroyed while its data waits for its turn is let go at once, with all it received', async () => {
    const { raw, session } = await congestedSession();
    // Visitors' streams whose replies wait behind the bulk data, each holding a response nobody read yet;
    // then the visitors go. Waiting in the order, each was kept, with what it held, until its turn came:
    // with a peer that does not read, for as long as the session lasted (2,000 of them: 378 MiB).
    const count = 100;
    const received = 128 * 1024;
    const reply = Buffer.alloc(64 * 1024, 9);
    const waiting: Stream[] = [];
    for (let i = 0; i < count; i++) {
      const s = session.open();
      s.on('error', () => {});
      s.write(reply);
      raw.peer.write(dataFrame(0, s.id, Buffer.alloc(received, 3)));
      waiting.push(s);
    }
    await waitFor(
      () => waiting.every((s) => s.readableLength === received),
      10_000,
      'the responses to arrive',
    );
    const closed = waiting.map((s) => once(s, 'close'));
    const refs = waiting.map((s) => new WeakRef(s));
    for (const s of waiting.splice(0)) s.destroy();
    await withTimeout(Promise.all(closed), 5000, 'the streams closed');
    await nextTurn();
    retained();
    await nextTurn();
    retained();
    const kept = refs.filter((ref) => ref.deref() !== undefined).length;
    // One may stay reachable a while from the test's own frames; the order kept all of them.
    assert.ok(kept <= 2, `${kept} of ${count} destroyed streams still held (${received} bytes each)`);
  });
});

/** Resolves with what ended `stream`'s wait for 'drain' ('drain' or 'close'), or 'stuck' after `ms`. */
function drainOrClose(stream: Stream, ms: number): Promise<'drain' | 'close' | 'stuck'> {
  return new Promise((resolve) => {
    const done = (how: 'drain' | 'close' | 'stuck') => {
      clearTimeout(timer);
      stream.off('drain', onDrain);
      stream.off('close', onClose);
      resolve(how);
    };
    const onDrain = () => done('drain');
    const onClose = () => done('close');
    const timer = setTimeout(() => done('stuck'), ms);
    stream.on('drain', onDrain);
    stream.on('close', onClose);
  });
}

/** Resolves 'close' when `stream` closes, or 'stuck' after `ms`. */
function closeWithin(stream: Stream, ms: number): Promise<'close' | 'stuck'> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve('stuck'), ms);
    stream.once('close', () => {
      clearTimeout(timer);
      resolve('close');
    });
  });
}

for (const transport of ['tcp', 'ws'] as const) {
  test(`${transport}: 300 streams of mixed writes taking turns on a stalling link: every byte, every callback once, no writer left waiting`, async () => {
    const seed = runSeed();
    const rng = new Prng(seed);
    const pair = await sessionPair(transport);
    cleanup.push(() => pair.close());
    // The receiving side stops reading most of the time, so data waits for its turn over and over.
    const stall = setInterval(() => {
      pair.serverSocket.pause();
      setTimeout(() => pair.serverSocket.resume(), 4);
    }, 5);
    cleanup.push(() => clearInterval(stall));
    const received = new Map<number, string>();
    pair.server.on('stream', (s: Stream) => {
      const hash = createHash('sha256');
      let bytes = 0;
      s.on('error', () => {});
      s.on('data', (chunk: Buffer) => {
        hash.update(chunk);
        bytes += chunk.length;
        // Every tenth stream is reset by its reader part way; some readers pause now and then.
        if (s.id % 20 === 5 && bytes > 50_000) s.destroy();
        else if (s.id % 3 === 0 && bytes % 7 === 0) {
          s.pause();
          setTimeout(() => s.resume(), 2);
        }
      });
      s.on('end', () => {
        received.set(s.id, `${bytes} ${hash.digest('hex')}`);
        s.end();
      });
    });
    const sizes = [1, 100, 4095, 4097, 16 * 1024, 64 * 1024 - 1, 64 * 1024 + 1, 128 * 1024 + 3, 300_000];
    const sent = new Map<number, string>();
    let writes = 0;
    let callbacks = 0;
    const twice: number[] = [];
    const stuck: string[] = [];
    const sendOne = async (i: number) => {
      const s = pair.client.open();
      s.on('error', () => {});
      const hash = createHash('sha256');
      let bytes = 0;
      // Every tenth is destroyed with writes waiting; another tenth writes on regardless of
      // backpressure and ends at once (its FIN waits behind its queued data).
      const ignoresBackpressure = i % 10 === 1;
      const count = rng.int(3, 30);
      for (let w = 0; w < count; w++) {
        const chunk = rng.bytes(rng.pick(sizes));
        hash.update(chunk);
        bytes += chunk.length;
        writes += 1;
        let calls = 0;
        const more = s.write(chunk, () => {
          calls += 1;
          callbacks += 1;
          if (calls > 1) twice.push(s.id);
        });
        if (i % 10 === 0 && w === 2) {
          s.destroy();
          return;
        }
        if (more || ignoresBackpressure) continue;
        const how = await drainOrClose(s, 20_000);
        if (how === 'close') return;
        if (how === 'stuck') {
          stuck.push(`stream ${s.id} (write ${w}, ${s.writableLength} bytes waiting)`);
          s.destroy();
          return;
        }
      }
      if (s.id % 20 !== 5) sent.set(s.id, `${bytes} ${hash.digest('hex')}`);
      s.end();
      s.resume();
      if (!s.closed && (await closeWithin(s, 30_000)) === 'stuck') stuck.push(`stream ${s.id} never closed`);
    };
    const all: Promise<void>[] = [];
    for (let i = 0; i < 300; i++) all.push(sendOne(i));
    await withTimeout(Promise.all(all), 90_000, `the streams (seed ${seed})`);
    assert.deepEqual(stuck, [], `seed ${seed}`);
    assert.deepEqual(twice, [], `write callbacks called twice (seed ${seed})`);
    assert.equal(callbacks, writes, `write callbacks (seed ${seed})`);
    assert.ok(sent.size >= 200, `${sent.size} streams finished`);
    for (const [id, what] of sent) assert.equal(received.get(id), what, `stream ${id} (seed ${seed})`);
  });
}
