// Fuzz and property tests for the ClientHello peeker. Every run uses a fresh seed (FUZZ_SEED=<n> replays
// one); a failure names the seed. Loops are bounded both in count and in time.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { PassThrough } from 'node:stream';
import { describe, it, type TestContext } from 'node:test';
import tls from 'node:tls';
import { Prng, runSeed } from '@porthole/mux/test/prng';
import {
  ClientHelloAssembler,
  type ClientHelloPeek,
  DEFAULT_MAX_CLIENT_HELLO_BYTES,
  peekClientHello,
  readClientHello,
} from '../src/tls-client-hello.js';
import { alpnExtension, clientHelloMessage, inRecords, serverNameExtension } from './tls-hello-builder.js';
import { captureFromNode, captureFromOpenssl, makeCertificate } from './tls-hello-capture.js';

const TIME_BUDGET_MS = 4000;

/** Runs `body` with a seeded PRNG; any failure is rethrown with the seed that reproduces it. */
async function seeded(t: TestContext, body: (rng: Prng) => Promise<void> | void): Promise<void> {
  const seed = runSeed();
  t.diagnostic(`seed ${seed} (replay with FUZZ_SEED=${seed})`);
  try {
    await body(new Prng(seed));
  } catch (err) {
    const message = `[FUZZ_SEED=${seed}] ${(err as Error).message}`;
    throw Object.assign(new Error(message, { cause: err }), { stack: `${message}\n${(err as Error).stack}` });
  }
}

/** Checks the invariants every answer must keep, whatever the input. */
function checkAnswer(input: Buffer, answer: ClientHelloPeek, maxBytes: number): void {
  assert.ok(['need-more', 'ok', 'invalid'].includes(answer.state), `unknown state ${JSON.stringify(answer)}`);
  if (answer.state === 'need-more') {
    assert.ok(answer.atLeast > input.length, `need-more with atLeast ${answer.atLeast} <= ${input.length}`);
    assert.ok(answer.atLeast <= maxBytes, `need-more with atLeast ${answer.atLeast} > maxBytes ${maxBytes}`);
  } else if (answer.state === 'ok') {
    assert.ok(
      answer.bytes > 0 && answer.bytes <= input.length && answer.bytes <= maxBytes,
      `bytes ${answer.bytes}`,
    );
    assert.ok(Array.isArray(answer.alpn));
    if (answer.serverName !== undefined) assert.match(answer.serverName, /^[a-z0-9._:-]{1,255}$/);
    // The verdict depends only on the hello's own bytes.
    assert.deepEqual(peekClientHello(input.subarray(0, answer.bytes), { maxBytes }), answer);
  } else {
    assert.equal(typeof answer.reason, 'string');
    assert.ok(answer.reason.length > 0);
  }
}

function peekChecked(input: Buffer, maxBytes = DEFAULT_MAX_CLIENT_HELLO_BYTES): ClientHelloPeek {
  const answer = peekClientHello(input, { maxBytes });
  checkAnswer(input, answer, maxBytes);
  return answer;
}

interface GeneratedHello {
  wire: Buffer;
  serverName: string | undefined;
  alpn: string[];
}

const HOST_CHARS = 'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._';

/** A random well-formed ClientHello, with the SNI and ALPN a correct parser must report. */
function generateHello(rng: Prng, maxMessage = 6000): GeneratedHello {
  const extensions: Array<[number, Buffer]> = [];
  let serverName: string | undefined;
  let alpn: string[] = [];
  const withExtensions = rng.chance(0.95);
  if (withExtensions) {
    const used = new Set<number>([0, 16]);
    const others = rng.int(0, 8);
    for (let i = 0; i < others; i++) {
      let type = rng.int(1, 0xffff);
      while (used.has(type)) type = rng.int(1, 0xffff);
      used.add(type);
      extensions.push([type, rng.bytes(rng.int(0, rng.chance(0.1) ? 1500 : 60))]);
    }
    if (rng.chance(0.8)) {
      const length = rng.chance(0.05) ? 255 : rng.int(1, 60);
      let name = '';
      for (let i = 0; i < length; i++) name += HOST_CHARS[rng.int(0, HOST_CHARS.length - 1)];
      const entries: Array<[number, string | Buffer]> = [];
      if (rng.chance(0.1)) entries.push([rng.int(1, 255), rng.bytes(rng.int(0, 20))]);
      entries.push([0, name]);
      extensions.splice(rng.int(0, extensions.length), 0, serverNameExtension(entries));
      serverName = name.toLowerCase();
    }
    if (rng.chance(0.6)) {
      const count = rng.int(1, rng.chance(0.1) ? 100 : 5);
      const names = Array.from({ length: count }, () => rng.bytes(rng.int(1, rng.chance(0.1) ? 255 : 12)));
      extensions.splice(rng.int(0, extensions.length), 0, alpnExtension(names));
      alpn = names.map((n) => n.toString('latin1'));
    }
  }
  const message = clientHelloMessage({
    legacyVersion: rng.pick([0x0300, 0x0301, 0x0302, 0x0303]),
    random: rng.bytes(32),
    sessionId: rng.bytes(rng.int(0, 32)),
    cipherSuites: rng.bytes(2 * rng.int(1, 40)),
    compressionMethods: rng.bytes(rng.int(1, 3)),
    extensions: withExtensions ? extensions : undefined,
  });
  if (message.length > maxMessage) return generateHello(rng, maxMessage);
  // Split into records: usually one, sometimes many, sometimes 1-byte records.
  const sizes: number[] = [];
  const style = rng.int(0, 9);
  for (let left = message.length; left > 0; ) {
    const size = style < 6 ? left : style < 9 ? rng.int(1, Math.min(left, 700)) : 1;
    sizes.push(Math.min(size, left, 16384));
    left -= sizes.at(-1)!;
  }
  // Keep the wire form within the default limit (1-byte records cost 6 bytes per message byte).
  if (message.length + 5 * sizes.length > DEFAULT_MAX_CLIENT_HELLO_BYTES)
    sizes.splice(0, sizes.length, message.length);
  const wire = inRecords(message, sizes);
  // Vary the record version bytes, as real clients do (3.1 on the first record, 3.3 after).
  for (let offset = 0; offset < wire.length; offset += 5 + wire.readUInt16BE(offset + 3)) {
    wire[offset + 2] = rng.int(0, 4);
  }
  return { wire, serverName, alpn };
}

/** The hellos of real clients, captured once for the mutation tests. */
async function realHellos(): Promise<Buffer[]> {
  return [
    await captureFromOpenssl(['-servername', 'fuzz.example.com', '-alpn', 'h2,http/1.1']),
    await captureFromOpenssl(['-noservername']),
    await captureFromOpenssl([
      '-servername',
      'split.example.com',
      '-max_send_frag',
      '512',
      '-alpn',
      'a'.repeat(200) + ',b,c,' + 'd'.repeat(250) + ',' + 'e'.repeat(250),
    ]),
    await captureFromNode({ servername: 'node.example.com', ALPNProtocols: ['h2', 'http/1.1'] }),
  ];
}

/** Flips 1..4 random bits, overwrites a random byte, or cuts/duplicates a slice. */
function mutate(rng: Prng, input: Buffer): Buffer {
  const out = Buffer.from(input);
  switch (rng.int(0, 3)) {
    case 0:
    case 1: {
      const flips = rng.int(1, 4);
      for (let i = 0; i < flips; i++) {
        const at = rng.int(0, out.length - 1);
        out[at] = out[at]! ^ (1 << rng.int(0, 7));
      }
      return out;
    }
    case 2:
      out[rng.int(0, out.length - 1)] = rng.pick([0, 0xff, 0x7f, 0x80, rng.int(0, 255)]);
      return out;
    default: {
      const from = rng.int(0, out.length - 1);
      const to = rng.int(from, Math.min(out.length, from + 40));
      return rng.chance(0.5)
        ? Buffer.concat([out.subarray(0, from), out.subarray(to)])
        : Buffer.concat([out.subarray(0, to), out.subarray(from, to), out.subarray(to)]);
    }
  }
}

/** Splits `buf` into random non-empty chunks. */
function rechunk(rng: Prng, buf: Buffer): Buffer[] {
  const chunks: Buffer[] = [];
  for (let offset = 0; offset < buf.length; ) {
    const size = rng.chance(0.3) ? 1 : rng.int(1, Math.max(1, Math.min(buf.length - offset, 400)));
    chunks.push(buf.subarray(offset, offset + size));
    offset += size;
  }
  return chunks;
}

function withinBudget(start: number, i: number, max: number): boolean {
  return i < max && Date.now() - start < TIME_BUDGET_MS;
}

describe('peekClientHello fuzz', () => {
  it('reads SNI and ALPN exactly from random well-formed hellos, and every prefix needs more', (t) =>
    seeded(t, (rng) => {
      const start = Date.now();
      let i = 0;
      for (; withinBudget(start, i, 1500); i++) {
        const { wire, serverName, alpn } = generateHello(rng);
        const trailing = rng.chance(0.3) ? rng.bytes(rng.int(1, 50)) : Buffer.alloc(0);
        const answer = peekChecked(Buffer.concat([wire, trailing]));
        assert.equal(answer.state, 'ok', `case ${i}: ${JSON.stringify(answer)}`);
        assert.ok(answer.state === 'ok');
        assert.equal(answer.serverName, serverName, `case ${i}`);
        assert.deepEqual(answer.alpn, alpn, `case ${i}`);
        assert.equal(answer.bytes, wire.length, `case ${i}`);
        const prefixes = rng.chance(0.05) ? wire.length : 20;
        for (let p = 0; p < prefixes; p++) {
          const n = prefixes === wire.length ? p : rng.int(0, wire.length - 1);
          const partial = peekChecked(wire.subarray(0, n));
          assert.equal(partial.state, 'need-more', `case ${i}, prefix ${n}: ${JSON.stringify(partial)}`);
          assert.ok(
            partial.state === 'need-more' && partial.atLeast <= wire.length,
            `case ${i}, prefix ${n}`,
          );
        }
      }
      t.diagnostic(`${i} generated hellos`);
    }));

  it('never throws on random bytes, TLS-looking or not', (t) =>
    seeded(t, (rng) => {
      const start = Date.now();
      let i = 0;
      for (; withinBudget(start, i, 20000); i++) {
        const input = rng.bytes(rng.int(0, rng.chance(0.1) ? 20000 : 300));
        if (input.length >= 3 && rng.chance(0.7)) {
          input[0] = 0x16;
          input[1] = 3;
          input[2] = rng.int(0, 4);
          if (input.length >= 6 && rng.chance(0.7)) input[5] = 1;
        }
        peekChecked(input, rng.chance(0.2) ? rng.int(1, 40000) : DEFAULT_MAX_CLIENT_HELLO_BYTES);
      }
      t.diagnostic(`${i} random inputs`);
    }));

  it('never throws on truncated or bit-flipped real and generated hellos', async (t) => {
    const real = await realHellos();
    await seeded(t, (rng) => {
      const start = Date.now();
      const counts = { 'need-more': 0, ok: 0, invalid: 0 };
      let i = 0;
      for (; withinBudget(start, i, 30000); i++) {
        const base = rng.chance(0.5) ? rng.pick(real) : generateHello(rng).wire;
        let input = mutate(rng, base);
        if (rng.chance(0.3)) input = mutate(rng, input);
        if (rng.chance(0.3)) input = input.subarray(0, rng.int(0, input.length));
        counts[peekChecked(input).state]++;
      }
      t.diagnostic(`${i} mutated inputs: ${JSON.stringify(counts)}`);
      // Mutations should exercise every verdict; if not, the fuzzer is not reaching the parser.
      assert.ok(counts.ok > 0 && counts.invalid > 0 && counts['need-more'] > 0, JSON.stringify(counts));
    });
  });
});

/** Feeds `chunks` into a stream one event-loop turn apart, stopping when `stop()` says so; then ends it. */
async function feed(stream: PassThrough, chunks: Buffer[], stop: () => boolean, end: boolean): Promise<void> {
  for (const chunk of chunks) {
    if (stop()) return;
    stream.write(chunk);
    await new Promise((resolve) => setImmediate(resolve));
  }
  if (end && !stop()) stream.end();
}

describe('ClientHelloAssembler', () => {
  it('answers exactly as peekClientHello on every prefix of a growing buffer', async (t) => {
    const real = await realHellos();
    await seeded(t, (rng) => {
      const start = Date.now();
      let i = 0;
      for (; withinBudget(start, i, 3000); i++) {
        const base = rng.chance(0.3) ? rng.pick(real) : generateHello(rng).wire;
        const input = rng.chance(0.5) ? mutate(rng, base) : base;
        const maxBytes = rng.chance(0.2) ? rng.int(16, 4096) : DEFAULT_MAX_CLIENT_HELLO_BYTES;
        const assembler = new ClientHelloAssembler({ maxBytes });
        for (let n = 0; n <= input.length; n += rng.chance(0.5) ? 1 : rng.int(1, 300)) {
          const prefix = input.subarray(0, n);
          const incremental = assembler.peek(prefix);
          assert.deepEqual(incremental, peekClientHello(prefix, { maxBytes }), `case ${i}, prefix ${n}`);
          if (incremental.state !== 'need-more') break;
        }
      }
      t.diagnostic(`${i} growing buffers`);
    });
  });

  it('keeps 1-byte records in 1-byte chunks cheap (no quadratic re-walk)', async () => {
    const message = clientHelloMessage({ extensions: [[0x15, Buffer.alloc(2600)]] });
    const wire = inRecords(
      message,
      Array.from({ length: message.length }, () => 1),
    );
    assert.ok(wire.length <= DEFAULT_MAX_CLIENT_HELLO_BYTES);
    const stream = new PassThrough();
    const started = process.hrtime.bigint();
    const reading = readClientHello(stream, { timeoutMs: 10_000 });
    for (let i = 0; i < wire.length; i++) stream.write(wire.subarray(i, i + 1));
    const { hello } = await reading;
    const ms = Number(process.hrtime.bigint() - started) / 1e6;
    assert.equal(hello.state, 'ok');
    // Re-walking every record on every byte took ~1.6 s here; incremental assembly takes ~30 ms.
    assert.ok(ms < 750, `${wire.length} one-byte chunks took ${ms.toFixed(0)} ms`);
  });
});

describe('readClientHello under random chunking', () => {
  it('gives the same verdict as peekClientHello on the whole input, losing no byte', async (t) => {
    const real = await realHellos();
    await seeded(t, async (rng) => {
      const start = Date.now();
      let i = 0;
      for (; withinBudget(start, i, 400); i++) {
        let input: Buffer;
        const kind = rng.int(0, 3);
        if (kind === 0) input = rng.pick(real);
        else if (kind === 1) input = generateHello(rng).wire;
        else if (kind === 2) input = mutate(rng, rng.chance(0.5) ? rng.pick(real) : generateHello(rng).wire);
        else input = rng.bytes(rng.int(0, 200));
        const after = rng.bytes(rng.int(0, 100));
        const all = Buffer.concat([input, after]);
        const maxBytes = rng.chance(0.2) ? rng.int(64, 4096) : DEFAULT_MAX_CLIENT_HELLO_BYTES;
        const expected = peekClientHello(all, { maxBytes });

        const stream = new PassThrough();
        let done = false;
        const reading = readClientHello(stream, { maxBytes, timeoutMs: 2000 }).finally(() => {
          done = true;
        });
        const feeding = feed(stream, rechunk(rng, all), () => done, true);
        const { hello, buffered } = await reading;
        await feeding;
        const got = Buffer.concat(buffered);
        assert.deepEqual(
          got,
          all.subarray(0, got.length),
          `case ${i}: buffered bytes are not a prefix of the input`,
        );
        if (expected.state === 'need-more') {
          assert.equal(hello.state, 'invalid', `case ${i}`);
          assert.ok(hello.state === 'invalid');
          assert.match(hello.reason, /ended after/, `case ${i}`);
        } else {
          assert.deepEqual(hello, expected, `case ${i}`);
          if (expected.state === 'ok') assert.ok(got.length >= expected.bytes, `case ${i}`);
        }
        // Nothing lost: what readClientHello did not consume is still in the stream.
        if (!stream.writableEnded) stream.end();
        const rest: Buffer[] = [];
        stream.on('data', (chunk: Buffer) => rest.push(chunk));
        stream.resume(); // readClientHello left it paused, as a caller would find it
        if (!stream.readableEnded) await once(stream, 'end');
        const leftover = Buffer.concat(rest);
        assert.deepEqual(
          Buffer.concat([got, leftover]),
          all.subarray(0, got.length + leftover.length),
          `case ${i}`,
        );
      }
      t.diagnostic(`${i} chunked reads`);
    });
  });

  it('over real loopback sockets, with a trickling client', async (t) => {
    const server = net.createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => server.close());
    const port = (server.address() as net.AddressInfo).port;
    await seeded(t, async (rng) => {
      for (let i = 0; i < 25; i++) {
        const { wire, serverName, alpn } = generateHello(rng);
        const connection = once(server, 'connection') as Promise<[net.Socket]>;
        const client = net.connect(port, '127.0.0.1');
        client.setNoDelay(true);
        client.on('error', () => {});
        const [socket] = await connection;
        socket.on('error', () => {});
        try {
          const reading = readClientHello(socket, { timeoutMs: 3000 });
          for (const chunk of rechunk(rng, wire)) {
            await new Promise<void>((resolve) => client.write(chunk, () => resolve()));
            if (rng.chance(0.2)) await new Promise((resolve) => setTimeout(resolve, 1));
          }
          const { hello, buffered } = await reading;
          assert.deepEqual(hello, { state: 'ok', serverName, alpn, bytes: wire.length }, `case ${i}`);
          assert.deepEqual(Buffer.concat(buffered), wire, `case ${i}`);
        } finally {
          client.destroy();
          socket.destroy();
        }
      }
    });
  });
});

describe('peekClientHello agrees with OpenSSL', () => {
  // A real TLS server (Node's, i.e. OpenSSL) is fed the same mutated bytes. Whenever OpenSSL accepted the
  // hello far enough to report SNI or ALPN to Node, our parser must have read the same.
  it('on mutated real hellos, SNI and ALPN as OpenSSL sees them', async (t) => {
    const { cert, key } = await makeCertificate('fuzz.example.com');
    const context = tls.createSecureContext({ cert, key });
    let seen: { serverName?: string; alpn?: string[] } = {};
    const server = tls.createServer({
      cert,
      key,
      SNICallback: (name, cb) => {
        seen.serverName = name;
        cb(null, context);
      },
      ALPNCallback: ({ protocols }) => {
        seen.alpn = protocols;
        return protocols[0];
      },
    });
    server.on('tlsClientError', () => {});
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    t.after(() => server.close());
    const port = (server.address() as net.AddressInfo).port;
    const real = await realHellos();

    await seeded(t, async (rng) => {
      const start = Date.now();
      let compared = 0;
      let i = 0;
      for (; withinBudget(start, i, 300); i++) {
        const input = rng.chance(0.2) ? rng.pick(real) : mutate(rng, rng.pick(real));
        const ours = peekChecked(input);
        seen = {};
        const client = net.connect(port, '127.0.0.1');
        client.on('error', () => {});
        try {
          await once(client, 'connect');
          client.write(input);
          // OpenSSL answers (ServerHello or alert) or closes; a hello it still waits on gets 300 ms.
          await Promise.race([
            once(client, 'data'),
            once(client, 'close'),
            new Promise((r) => setTimeout(r, 300)),
          ]);
        } finally {
          client.destroy();
        }
        if (seen.serverName !== undefined && !/^[A-Za-z0-9._:-]+$/.test(seen.serverName)) {
          // OpenSSL passes any bytes but NUL; we refuse names no hostname rule could match (on purpose).
          assert.equal(
            ours.state,
            'invalid',
            `case ${i}: OpenSSL read SNI ${JSON.stringify(seen.serverName)}`,
          );
          assert.ok(ours.state === 'invalid');
          assert.match(ours.reason, /not a hostname character/, `case ${i}`);
        } else if (seen.serverName !== undefined) {
          compared++;
          assert.equal(
            ours.state,
            'ok',
            `case ${i}: OpenSSL read SNI ${seen.serverName}, we said ${JSON.stringify(ours)}`,
          );
          assert.ok(ours.state === 'ok');
          assert.equal(ours.serverName, seen.serverName.toLowerCase(), `case ${i}`);
          // Node hands ALPNCallback the names decoded as 'ascii' (high bit dropped); ours are lossless latin1.
          const asNodeSees = ours.alpn.map((name) => Buffer.from(name, 'latin1').toString('ascii'));
          if (seen.alpn !== undefined) assert.deepEqual(asNodeSees, seen.alpn, `case ${i}`);
        }
      }
      t.diagnostic(`${i} hellos sent to OpenSSL, ${compared} with SNI compared`);
      assert.ok(compared > 0, 'OpenSSL never reported an SNI: the comparison did not run');
    });
  });
});
