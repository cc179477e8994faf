import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { Writable } from 'node:stream';
import { describe, it, type TestContext } from 'node:test';
import { Session } from '@porthole/mux';
import { Prng, runSeed } from '@porthole/mux/test/prng';
import {
  DatagramDecoder,
  DatagramWriter,
  DEFAULT_MAX_BUFFERED_DATAGRAM_BYTES,
  frameDatagram,
  MAX_DATAGRAM_BYTES,
  QUEUED_DATAGRAM_OVERHEAD,
} from '../src/udp-datagram-codec.js';

/** A Writable that records what reaches _write/_writev, calling back at once (or never, when stalled). */
class RecordingWritable extends Writable {
  readonly calls: Buffer[][] = [];
  constructor(private readonly stalled = false) {
    super({ highWaterMark: 16 * 1024 });
  }
  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    this.calls.push([chunk]);
    if (!this.stalled) callback();
  }
  override _writev(
    chunks: Array<{ chunk: Buffer; encoding: BufferEncoding }>,
    callback: (error?: Error | null) => void,
  ): void {
    this.calls.push(chunks.map((c) => c.chunk));
    if (!this.stalled) callback();
  }
  get bytes(): Buffer {
    return Buffer.concat(this.calls.flat());
  }
}

/** Sizes that matter (empty, one byte, u16 edges) and random ones, with random contents. */
function randomDatagrams(rng: Prng, count: number): Buffer[] {
  const edges = [0, 1, 2, 255, 256, 257, 1500, 65534, MAX_DATAGRAM_BYTES];
  return Array.from({ length: count }, () => {
    const size = rng.chance(0.3)
      ? rng.pick(edges)
      : rng.chance(0.8)
        ? rng.int(0, 2000)
        : rng.int(0, MAX_DATAGRAM_BYTES);
    return rng.bytes(size);
  });
}

function encodeAll(datagrams: Buffer[]): Buffer {
  return Buffer.concat(datagrams.flatMap((d) => frameDatagram(d)!));
}

function seeded(t: TestContext): Prng {
  const seed = runSeed();
  t.diagnostic(`seed ${seed} (replay with FUZZ_SEED=${seed})`);
  return new Prng(seed);
}

describe('frameDatagram and DatagramWriter', () => {
  it('frames 0, 1 and 65535 bytes, without copying the payload', () => {
    for (const size of [0, 1, MAX_DATAGRAM_BYTES]) {
      const payload = Buffer.alloc(size, 0xab);
      const frame = frameDatagram(payload);
      assert.ok(frame !== undefined);
      assert.equal(frame[0].readUInt16BE(0), size);
      assert.equal(frame[0].length, 2);
      assert.equal(frame[1], payload, 'the payload itself, not a copy');
    }
    assert.equal(frameDatagram(Buffer.alloc(MAX_DATAGRAM_BYTES + 1)), undefined);
  });

  it('writes header and payload together through _writev, payload uncopied', () => {
    const sink = new RecordingWritable();
    const writer = new DatagramWriter(sink);
    const payload = Buffer.from('a datagram');
    assert.equal(writer.write(payload), 'sent');
    assert.equal(sink.calls.length, 1, 'one writev call');
    assert.equal(sink.calls[0]!.length, 2);
    assert.deepEqual(sink.calls[0]![0], Buffer.from([0, payload.length]));
    assert.equal(sink.calls[0]![1], payload);
  });

  it('drops and counts a 65536-byte datagram, and carries on', () => {
    const sink = new RecordingWritable();
    const writer = new DatagramWriter(sink);
    assert.equal(writer.write(Buffer.alloc(MAX_DATAGRAM_BYTES + 1)), 'dropped-oversize');
    assert.equal(writer.write(Buffer.alloc(0)), 'sent');
    assert.equal(writer.write(Buffer.alloc(MAX_DATAGRAM_BYTES, 7)), 'sent');
    assert.equal(writer.write(Buffer.alloc(100_000)), 'dropped-oversize');
    assert.deepEqual(writer.stats, {
      sent: 2,
      sentBytes: MAX_DATAGRAM_BYTES,
      droppedOversize: 2,
      droppedBackpressure: 0,
      droppedClosed: 0,
      droppedLinkStopped: 0,
    });
    const decoder = new DatagramDecoder();
    const out = decoder.push(sink.bytes);
    assert.deepEqual(out, [Buffer.alloc(0), Buffer.alloc(MAX_DATAGRAM_BYTES, 7)]);
  });

  it('drops rather than buffers without bound when the reader stalls', () => {
    const sink = new RecordingWritable(true);
    const writer = new DatagramWriter(sink, { maxBufferedBytes: 10_000 });
    const results = Array.from({ length: 50 }, () => writer.write(Buffer.alloc(1000)));
    assert.ok(results.includes('dropped-backpressure'));
    assert.equal(writer.stats.sent + writer.stats.droppedBackpressure, 50);
    assert.ok(sink.writableLength < 10_000 + 1002, `queued ${sink.writableLength}`);
  });

  it('charges each queued datagram its overhead, so empty ones cannot pile up; a shared budget caps several writers', () => {
    const stalled = new RecordingWritable(true);
    const writer = new DatagramWriter(stalled);
    let sent = 0;
    for (let i = 0; i < 300_000 && writer.write(Buffer.alloc(0)) === 'sent'; i++) sent++;
    // 512 KiB at 2 bytes and 256 of overhead each: about 2,000, not the 262,144 the bytes alone would allow.
    assert.equal(sent, Math.floor(DEFAULT_MAX_BUFFERED_DATAGRAM_BYTES / (2 + QUEUED_DATAGRAM_OVERHEAD)));
    const budget = { used: 0, limit: 100 * (2 + 1000 + QUEUED_DATAGRAM_OVERHEAD) };
    const writers = [0, 1, 2].map(() => new DatagramWriter(new RecordingWritable(true), { budget }));
    let shared = 0;
    for (let i = 0; i < 200; i++) if (writers[i % 3]!.write(Buffer.alloc(1000)) === 'sent') shared++;
    assert.equal(shared, 100, 'the three writers together queue what the budget holds');
    assert.equal(budget.used, budget.limit);
  });

  it('releases what was queued as writes complete, and all of it when the stream closes', async () => {
    const budget = { used: 0, limit: 10_000_000 };
    const sink = new RecordingWritable();
    const writer = new DatagramWriter(sink, { budget });
    for (let i = 0; i < 10; i++) writer.write(Buffer.alloc(100));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(budget.used, 0, 'every write completed');
    const stalled = new RecordingWritable(true);
    const held = new DatagramWriter(stalled, { budget });
    for (let i = 0; i < 10; i++) held.write(Buffer.alloc(100));
    assert.equal(budget.used, 10 * (2 + 100 + QUEUED_DATAGRAM_OVERHEAD));
    stalled.destroy();
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(budget.used, 0, 'a closed stream gives back what it held');
  });

  it('drops and counts datagrams while linkStopped says so, and sends again when it no longer does', () => {
    const sink = new RecordingWritable();
    let stopped = false;
    let asked = 0;
    const writer = new DatagramWriter(sink, {
      linkStopped: () => {
        asked++;
        return stopped;
      },
    });
    assert.equal(writer.write(Buffer.from('before')), 'sent');
    stopped = true;
    assert.equal(writer.write(Buffer.from('stale')), 'dropped-link-stopped');
    assert.equal(writer.write(Buffer.from('stale too')), 'dropped-link-stopped');
    stopped = false;
    assert.equal(writer.write(Buffer.from('after')), 'sent');
    assert.equal(asked, 4, 'asked before every datagram (each ask may send the probe that finds out)');
    assert.equal(writer.stats.droppedLinkStopped, 2);
    assert.deepEqual(new DatagramDecoder().push(sink.bytes).map(String), ['before', 'after']);
  });

  it('drops, counts and does not throw on an ended or destroyed stream', async () => {
    const ended = new RecordingWritable();
    ended.end();
    const destroyed = new RecordingWritable();
    destroyed.destroy();
    for (const sink of [ended, destroyed]) {
      let errored = false;
      sink.on('error', () => {
        errored = true;
      });
      const writer = new DatagramWriter(sink);
      assert.equal(writer.write(Buffer.from('late')), 'dropped-closed');
      assert.equal(writer.stats.droppedClosed, 1);
      await new Promise((resolve) => setImmediate(resolve));
      assert.equal(errored, false);
    }
  });
});

describe('DatagramDecoder', () => {
  it('keeps every datagram boundary under random re-chunking', (t) => {
    const rng = seeded(t);
    for (let round = 0; round < 40; round++) {
      const datagrams = randomDatagrams(rng, rng.int(1, 60));
      const wire = encodeAll(datagrams);
      const decoder = new DatagramDecoder();
      const out: Buffer[] = [];
      for (let offset = 0; offset < wire.length; ) {
        const size = rng.pick([1, 2, 3, rng.int(1, 100), rng.int(1, 70_000), rng.int(1, 300_000)]);
        out.push(...decoder.push(wire.subarray(offset, offset + size)));
        offset += size;
      }
      assert.equal(out.length, datagrams.length, `round ${round}`);
      for (const [i, d] of out.entries()) assert.ok(d.equals(datagrams[i]!), `round ${round}, datagram ${i}`);
      assert.equal(decoder.pendingBytes, 0);
      assert.equal(decoder.end(), true);
      assert.deepEqual(decoder.stats, {
        datagrams: datagrams.length,
        bytes: datagrams.reduce((n, d) => n + d.length, 0),
        droppedOversize: 0,
        droppedTruncated: 0,
      });
    }
  });

  it('decodes byte by byte, including a run of empty datagrams', () => {
    const datagrams = [
      Buffer.alloc(0),
      Buffer.alloc(0),
      Buffer.from([1]),
      Buffer.alloc(0),
      Buffer.alloc(300, 9),
    ];
    const wire = encodeAll(datagrams);
    const decoder = new DatagramDecoder();
    const out: Buffer[] = [];
    for (let i = 0; i < wire.length; i++) out.push(...decoder.push(wire.subarray(i, i + 1)));
    assert.deepEqual(out, datagrams);
  });

  it('returns views of the chunk for datagrams that lie within it', () => {
    const wire = encodeAll([Buffer.from('one'), Buffer.from('two')]);
    const out = new DatagramDecoder().push(wire);
    assert.equal(out.length, 2);
    for (const d of out) assert.equal(d.buffer, wire.buffer, 'shares the chunk memory');
  });

  it('skips and counts datagrams over maxDatagramBytes without losing the ones after', (t) => {
    const rng = seeded(t);
    const limit = 65507; // IPv4 UDP
    for (let round = 0; round < 20; round++) {
      const datagrams = randomDatagrams(rng, 30);
      datagrams.push(Buffer.alloc(limit + 1), Buffer.alloc(limit));
      const wire = encodeAll(datagrams);
      const decoder = new DatagramDecoder({ maxDatagramBytes: limit });
      const out: Buffer[] = [];
      for (let offset = 0; offset < wire.length; ) {
        const size = rng.int(1, 40_000);
        out.push(...decoder.push(wire.subarray(offset, offset + size)));
        offset += size;
      }
      const kept = datagrams.filter((d) => d.length <= limit);
      assert.equal(out.length, kept.length, `round ${round}`);
      for (const [i, d] of out.entries()) assert.ok(d.equals(kept[i]!), `round ${round}, datagram ${i}`);
      assert.equal(decoder.stats.droppedOversize, datagrams.length - kept.length);
    }
  });

  it('counts a datagram cut off by the end of the stream', () => {
    for (const cut of [1, 2, 5]) {
      const wire = encodeAll([Buffer.from('whole'), Buffer.from('cut off')]);
      const decoder = new DatagramDecoder();
      assert.deepEqual(decoder.push(wire.subarray(0, wire.length - cut)), [Buffer.from('whole')]);
      assert.ok(decoder.pendingBytes > 0);
      assert.equal(decoder.end(), false);
      assert.equal(decoder.stats.droppedTruncated, 1);
      assert.equal(decoder.pendingBytes, 0);
    }
  });
});

describe('datagrams over real streams', () => {
  async function connectedPair(t: TestContext): Promise<[net.Socket, net.Socket]> {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => server.close());
    const accepted = once(server, 'connection') as Promise<[net.Socket]>;
    const client = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
    const [socket] = await accepted;
    t.after(() => {
      client.destroy();
      socket.destroy();
    });
    return [client, socket];
  }

  /** Reads datagrams from `readable` until `count` arrived or it ends. */
  async function readDatagrams(readable: NodeJS.ReadableStream, count: number): Promise<Buffer[]> {
    const decoder = new DatagramDecoder();
    const out: Buffer[] = [];
    for await (const chunk of readable) {
      out.push(...decoder.push(chunk as Buffer));
      if (out.length >= count) break;
    }
    return out;
  }

  it('over a loopback TCP socket (writev)', async (t) => {
    const rng = seeded(t);
    const [client, server] = await connectedPair(t);
    const datagrams = randomDatagrams(rng, 300);
    const receiving = readDatagrams(server, datagrams.length);
    const writer = new DatagramWriter(client, { maxBufferedBytes: Number.MAX_SAFE_INTEGER });
    for (const d of datagrams) {
      assert.equal(writer.write(d), 'sent');
      if (client.writableNeedDrain) await once(client, 'drain');
    }
    const out = await receiving;
    assert.equal(out.length, datagrams.length);
    for (const [i, d] of out.entries()) assert.ok(d.equals(datagrams[i]!), `datagram ${i}`);
  });

  it('over a porthole mux stream (no writev)', async (t) => {
    const rng = seeded(t);
    const [clientSocket, serverSocket] = await connectedPair(t);
    const clientSession = new Session(clientSocket, { client: true });
    const serverSession = new Session(serverSocket, { client: false });
    t.after(() => {
      clientSession.close();
      serverSession.close();
    });
    const accepted = once(serverSession, 'stream') as Promise<[NodeJS.ReadableStream]>;
    const stream = clientSession.open();
    stream.on('error', () => {}); // closing the sessions at the end destroys what is still open
    const datagrams = randomDatagrams(rng, 200);
    const writer = new DatagramWriter(stream, { maxBufferedBytes: Number.MAX_SAFE_INTEGER });
    const sending = (async () => {
      for (const d of datagrams) {
        assert.equal(writer.write(d), 'sent');
        if (stream.writableNeedDrain) await once(stream, 'drain');
      }
    })();
    const [remote] = await accepted;
    remote.on('error', () => {});
    const out = await readDatagrams(remote, datagrams.length);
    await sending;
    assert.equal(out.length, datagrams.length);
    for (const [i, d] of out.entries()) assert.ok(d.equals(datagrams[i]!), `datagram ${i}`);
  });
});
