import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { describe, it, type TestContext } from 'node:test';
import tls from 'node:tls';
import { type ClientHelloPeek, peekClientHello, readClientHello } from '../src/tls-client-hello.js';
import {
  alpnExtension,
  clientHello,
  clientHelloMessage,
  inRecords,
  serverNameExtension,
  u16,
} from './tls-hello-builder.js';
import { captureFromNode, captureFromOpenssl, makeCertificate, recordLengths } from './tls-hello-capture.js';

function assertOk(
  peeked: ClientHelloPeek,
  serverName: string | undefined,
  alpn: string[],
): asserts peeked is Extract<ClientHelloPeek, { state: 'ok' }> {
  assert.equal(peeked.state, 'ok', JSON.stringify(peeked));
  assert.ok(peeked.state === 'ok');
  assert.equal(peeked.serverName, serverName);
  assert.deepEqual(peeked.alpn, alpn);
}

function assertInvalid(peeked: ClientHelloPeek, reason: RegExp): void {
  assert.equal(peeked.state, 'invalid', JSON.stringify(peeked));
  assert.ok(peeked.state === 'invalid');
  assert.match(peeked.reason, reason);
}

/** Every strict prefix of a whole ClientHello is 'need-more', with a true lower bound on what is missing. */
function assertPrefixesNeedMore(hello: Buffer, length: number, maxBytes?: number): void {
  for (let n = 0; n < length; n++) {
    const peeked = peekClientHello(hello.subarray(0, n), { maxBytes });
    assert.equal(peeked.state, 'need-more', `prefix of ${n} bytes: ${JSON.stringify(peeked)}`);
    assert.ok(peeked.state === 'need-more');
    assert.ok(
      peeked.atLeast > n && peeked.atLeast <= length,
      `prefix ${n}: atLeast ${peeked.atLeast} of ${length}`,
    );
  }
}

const manyProtocols = Array.from({ length: 150 }, (_, i) => `proto${String(i).padStart(3, '0')}`);

describe('peekClientHello on real ClientHellos', () => {
  it('reads SNI from openssl s_client -servername', async () => {
    const hello = await captureFromOpenssl(['-servername', 'x.example.com']);
    const peeked = peekClientHello(hello);
    assertOk(peeked, 'x.example.com', []);
    assert.equal(peeked.bytes, hello.length);
    assertPrefixesNeedMore(hello, hello.length);
  });

  it('reports no SNI from openssl s_client -noservername', async () => {
    const hello = await captureFromOpenssl(['-noservername']);
    assertOk(peekClientHello(hello), undefined, []);
  });

  it('lowercases SNI and reads ALPN from openssl s_client -alpn', async () => {
    const hello = await captureFromOpenssl(['-servername', 'Mixed.Example.COM', '-alpn', 'h2,http/1.1']);
    assertOk(peekClientHello(hello), 'mixed.example.com', ['h2', 'http/1.1']);
  });

  it('joins a ClientHello that openssl splits over several records (-max_send_frag 512)', async () => {
    const hello = await captureFromOpenssl([
      '-servername',
      'split.example.com',
      '-max_send_frag',
      '512',
      '-alpn',
      manyProtocols.join(','),
    ]);
    const records = recordLengths(hello);
    assert.ok(records.length >= 3, `expected several records, got ${records}`);
    assert.ok(records.every((n) => n <= 512));
    const peeked = peekClientHello(hello);
    assertOk(peeked, 'split.example.com', manyProtocols);
    assert.equal(peeked.bytes, hello.length);
    assertPrefixesNeedMore(hello, hello.length);
  });

  it("reads SNI and ALPN from Node's tls.connect", async () => {
    const hello = await captureFromNode({
      servername: 'node.example.com',
      ALPNProtocols: ['h2', 'http/1.1'],
    });
    assertOk(peekClientHello(hello), 'node.example.com', ['h2', 'http/1.1']);
  });

  it("reports no SNI when Node's tls.connect dials an IP without servername", async () => {
    const hello = await captureFromNode({});
    assertOk(peekClientHello(hello), undefined, []);
  });

  it('refuses a real ClientHello over 16 KiB early, and reads it when the limit allows', async () => {
    const protocols = Array.from({ length: 1200 }, (_, i) => `a-long-protocol-name-${i}`);
    const hello = await captureFromNode({ servername: 'big.example.com', ALPNProtocols: protocols });
    assert.ok(hello.length > 16 * 1024, `hello is ${hello.length} bytes`);
    assert.ok(recordLengths(hello).length >= 2, 'OpenSSL splits it into records of at most 2^14');
    assertInvalid(peekClientHello(hello), /larger than the 16384-byte limit/);
    // The handshake header alone (record header + 4 bytes) is enough to refuse it.
    assertInvalid(peekClientHello(hello.subarray(0, 9)), /larger than the 16384-byte limit/);
    const peeked = peekClientHello(hello, { maxBytes: 64 * 1024 });
    assertOk(peeked, 'big.example.com', protocols);
    assert.equal(peeked.bytes, hello.length);
  });
});

describe('peekClientHello on crafted input', () => {
  const sni = serverNameExtension([[0, 'a.example.com']]);

  it('says need-more for nothing, and ignores bytes after the ClientHello', () => {
    const empty = peekClientHello(Buffer.alloc(0));
    assert.equal(empty.state, 'need-more');
    const hello = clientHello({ extensions: [sni] });
    const withEarlyData = Buffer.concat([hello, Buffer.from([0x17, 0x03, 0x03, 0x00, 0x01, 0xff])]);
    const peeked = peekClientHello(withEarlyData);
    assertOk(peeked, 'a.example.com', []);
    assert.equal(peeked.bytes, hello.length);
  });

  it('accepts a ClientHello without an extensions block (no SNI)', () => {
    const hello = clientHello({});
    assertOk(peekClientHello(hello), undefined, []);
    assertPrefixesNeedMore(hello, hello.length);
  });

  it('joins 1-byte records, and handshake bytes that share a record with the next message', () => {
    const message = clientHelloMessage({ extensions: [sni, alpnExtension(['h2'])] });
    const tiny = inRecords(
      message,
      Array.from({ length: message.length }, () => 1),
    );
    const peeked = peekClientHello(tiny);
    assertOk(peeked, 'a.example.com', ['h2']);
    assert.equal(peeked.bytes, tiny.length);
    assertPrefixesNeedMore(tiny, tiny.length);

    const trailing = Buffer.concat([message, Buffer.from([0x0b, 0, 0, 0])]);
    const shared = inRecords(trailing, [10, trailing.length - 10]);
    const sharedPeek = peekClientHello(shared);
    assertOk(sharedPeek, 'a.example.com', ['h2']);
    assert.equal(sharedPeek.bytes, shared.length - 4);
  });

  it('refuses what is not a TLS ClientHello, from the first bytes', () => {
    assertInvalid(
      peekClientHello(Buffer.from('GET / HTTP/1.1\r\n')),
      /not a TLS handshake record \(first byte 0x47\)/,
    );
    assertInvalid(peekClientHello(Buffer.from([0x80, 0x2e, 0x01, 0x00, 0x02])), /SSLv2/);
    assertInvalid(peekClientHello(Buffer.from([0x16, 0x02])), /record version/);
    assertInvalid(peekClientHello(Buffer.from([0x16, 0x03, 0x01, 0, 0])), /empty TLS handshake record/);
    assertInvalid(peekClientHello(Buffer.from([0x16, 0x03, 0x01, 0x40, 0x01])), /exceeds 2\^14/);
    assertInvalid(peekClientHello(clientHello({ handshakeType: 2 })), /type 2, not ClientHello/);
  });

  it('refuses a non-handshake record in the middle of a split ClientHello', () => {
    const hello = clientHello({ extensions: [sni] }, [20, 200]);
    const alert = Buffer.from(hello);
    alert[25] = 0x15; // second record's content type
    assertInvalid(peekClientHello(alert), /content type 21 before the ClientHello was complete/);
  });

  it('refuses malformed bodies with a reason', () => {
    assertInvalid(peekClientHello(clientHello({ sessionId: Buffer.alloc(33) })), /session id of 33/);
    assertInvalid(peekClientHello(clientHello({ cipherSuites: Buffer.alloc(3) })), /cipher_suites of 3/);
    assertInvalid(peekClientHello(clientHello({ cipherSuites: Buffer.alloc(0) })), /cipher_suites of 0/);
    assertInvalid(
      peekClientHello(clientHello({ compressionMethods: Buffer.alloc(0) })),
      /without compression/,
    );
    assertInvalid(
      peekClientHello(clientHello({ extensions: [sni], extensionsLengthOverride: 5 })),
      /extensions length 5 != /,
    );
    assertInvalid(
      peekClientHello(
        clientHello({
          extensions: [
            [0x1234, Buffer.alloc(3)],
            [0x1234, Buffer.alloc(0)],
          ],
        }),
      ),
      /repeats extension 4660/,
    );
    const message = clientHelloMessage({ extensions: [sni] });
    const shorter = Buffer.concat([message.subarray(0, 1), Buffer.from([0, 0, 20]), message.subarray(4, 24)]);
    assertInvalid(peekClientHello(inRecords(shorter)), /truncated/);
  });

  it('refuses malformed server_name and ALPN extensions', () => {
    const withExt = (ext: [number, Buffer]) => peekClientHello(clientHello({ extensions: [ext] }));
    assertInvalid(withExt([0, Buffer.alloc(0)]), /server_name extension/);
    assertInvalid(withExt([0, Buffer.concat([u16(9), Buffer.alloc(3)])]), /server_name extension/);
    assertInvalid(
      withExt(
        serverNameExtension([
          [0, 'a.example.com'],
          [0, 'b.example.com'],
        ]),
      ),
      /more than one host_name/,
    );
    assertInvalid(withExt(serverNameExtension([[0, '']])), /server_name of 0 bytes/);
    assertInvalid(withExt(serverNameExtension([[0, 'a'.repeat(256)]])), /server_name of 256 bytes/);
    assertInvalid(
      withExt(serverNameExtension([[0, 'evil\0.example.com']])),
      /byte 0x00, not a hostname character/,
    );
    assertInvalid(withExt(serverNameExtension([[0, 'sp ace.example.com']])), /byte 0x20/);
    // An unknown name type is skipped; the host_name after it counts.
    assertOk(
      withExt(
        serverNameExtension([
          [7, 'opaque'],
          [0, 'Host_1.Example.com'],
        ]),
      ),
      'host_1.example.com',
      [],
    );
    assertInvalid(withExt([16, Buffer.alloc(0)]), /ALPN extension/);
    assertInvalid(withExt([16, u16(0)]), /ALPN extension/);
    assertInvalid(withExt([16, Buffer.concat([u16(2), Buffer.from([0, 0])])]), /empty protocol name/);
    assertInvalid(withExt([16, Buffer.concat([u16(3), Buffer.from([5, 0x68, 0x32])])]), /overruns/);
    assertOk(withExt(alpnExtension([Buffer.from([0xff, 0x00, 0x41])])), undefined, ['\u00ff\u0000A']);
  });

  it('enforces maxBytes counting record headers', () => {
    const message = clientHelloMessage({ extensions: [sni, [0x15, Buffer.alloc(3000)]] });
    const hello = inRecords(message, [500, message.length - 500]);
    assertOk(peekClientHello(hello, { maxBytes: hello.length }), 'a.example.com', []);
    assertInvalid(peekClientHello(hello, { maxBytes: hello.length - 1 }), /larger than the/);
    assertPrefixesNeedMore(hello, hello.length, hello.length);
    // Lots of tiny records: refused as soon as the record headers push the total past the limit.
    const tiny = inRecords(
      message,
      Array.from({ length: message.length }, () => 1),
    );
    const peeked = peekClientHello(tiny);
    assertInvalid(peeked, /larger than the 16384-byte limit/);
    let refusedAt = -1;
    for (let n = 0; n <= tiny.length && refusedAt < 0; n += 1) {
      if (peekClientHello(tiny.subarray(0, n)).state === 'invalid') refusedAt = n;
    }
    assert.ok(refusedAt > 0 && refusedAt <= 16 * 1024, `refused after ${refusedAt} bytes`);
  });
});

function listen(server: net.Server): Promise<number> {
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () => resolve((server.address() as net.AddressInfo).port)),
  );
}

/** A loopback server whose connections and listener are torn down when the test ends, pass or fail. */
async function loopbackServer(t: TestContext, server: net.Server = net.createServer()): Promise<number> {
  const sockets = new Set<net.Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  t.after(() => {
    for (const socket of sockets) socket.destroy();
    server.close();
  });
  return listen(server);
}

/** Connects to 127.0.0.1:port (destroyed when the test ends) and writes `chunks` in order, each flushed. */
async function dialAndWrite(t: TestContext, port: number, chunks: Buffer[]): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  socket.on('error', () => {});
  t.after(() => socket.destroy());
  await once(socket, 'connect');
  for (const chunk of chunks) {
    await new Promise<void>((resolve, reject) =>
      socket.write(chunk, (err) => (err ? reject(err) : resolve())),
    );
  }
  return socket;
}

/** Runs readClientHello on the next connection to `server`. */
async function readFromNextConnection(
  server: net.Server,
  options: Parameters<typeof readClientHello>[1],
): Promise<{ socket: net.Socket; result: Awaited<ReturnType<typeof readClientHello>>; ms: number }> {
  const [socket] = (await once(server, 'connection')) as [net.Socket];
  socket.on('error', () => {});
  const start = Date.now();
  const result = await readClientHello(socket, options);
  return { socket, result, ms: Date.now() - start };
}

describe('readClientHello on real sockets', () => {
  it('returns the hello, every byte read, and leaves the rest unread in a paused socket', async (t) => {
    const server = net.createServer();
    const port = await loopbackServer(t, server);
    const hello = clientHello({ extensions: [serverNameExtension([[0, 'r.example.com']])] }, [30, 60, 200]);
    const after = Buffer.from('application bytes after the hello');
    const reading = readFromNextConnection(server, { timeoutMs: 5000 });
    const client = await dialAndWrite(t, port, [
      hello.subarray(0, 7),
      hello.subarray(7, 50),
      hello.subarray(50),
    ]);
    const { socket, result } = await reading;
    assertOk(result.hello, 'r.example.com', []);
    const got = Buffer.concat(result.buffered);
    assert.deepEqual(got, hello.subarray(0, got.length));
    assert.ok(socket.isPaused());
    client.end(after);
    socket.resume();
    const rest: Buffer[] = [];
    for await (const chunk of socket) rest.push(chunk as Buffer);
    assert.deepEqual(Buffer.concat([got, ...rest]), Buffer.concat([hello, after]));
  });

  it('refuses plain HTTP at once and keeps its bytes (a caller could answer it)', async (t) => {
    const server = net.createServer();
    const port = await loopbackServer(t, server);
    const reading = readFromNextConnection(server, { timeoutMs: 5000 });
    const request = Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await dialAndWrite(t, port, [request]);
    const { result } = await reading;
    assertInvalid(result.hello, /not a TLS handshake record/);
    assert.deepEqual(Buffer.concat(result.buffered), request);
  });

  it('gives up after timeoutMs on a client that stalls mid-hello', async (t) => {
    const server = net.createServer();
    const port = await loopbackServer(t, server);
    const reading = readFromNextConnection(server, { timeoutMs: 200 });
    await dialAndWrite(t, port, [clientHello().subarray(0, 3)]);
    const { socket, result, ms } = await reading;
    assertInvalid(result.hello, /no complete ClientHello within 200 ms \(3 bytes read\)/);
    assert.ok(ms >= 150 && ms < 2000, `took ${ms} ms`);
    assert.equal(socket.destroyed, false, 'the caller decides what to do with the socket');
  });

  it('reports a client that ends or resets mid-hello', async (t) => {
    const server = net.createServer();
    const port = await loopbackServer(t, server);
    let reading = readFromNextConnection(server, { timeoutMs: 5000 });
    const ending = await dialAndWrite(t, port, [clientHello().subarray(0, 10)]);
    ending.end();
    assertInvalid((await reading).result.hello, /connection ended after 10 bytes/);

    reading = readFromNextConnection(server, { timeoutMs: 5000 });
    const resetting = await dialAndWrite(t, port, [clientHello().subarray(0, 10)]);
    resetting.resetAndDestroy();
    assertInvalid(
      (await reading).result.hello,
      /socket error .*ECONNRESET|connection (closed|ended) after 10 bytes/,
    );
  });

  it('stops reading at maxBytes when a client trickles tiny records', async (t) => {
    const server = net.createServer();
    const port = await loopbackServer(t, server);
    const message = clientHelloMessage({ extensions: [[0x15, Buffer.alloc(3000)]] });
    const tiny = inRecords(
      message,
      Array.from({ length: message.length }, () => 1),
    );
    let done = false;
    const reading = readFromNextConnection(server, { timeoutMs: 5000, maxBytes: 4096 }).finally(() => {
      done = true;
    });
    const client = await dialAndWrite(t, port, []);
    let written = 0;
    for (let i = 0; i < tiny.length && !done; i += 120) {
      await new Promise<void>((resolve) => client.write(tiny.subarray(i, i + 120), () => resolve()));
      written = Math.min(tiny.length, i + 120);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    const { result } = await reading;
    assertInvalid(result.hello, /larger than the 4096-byte limit/);
    const read = result.buffered.reduce((n, b) => n + b.length, 0);
    assert.ok(
      read <= 4096 + 120 && written < tiny.length,
      `read ${read}, wrote ${written} of ${tiny.length}`,
    );
  });
});

describe('handing the buffered ClientHello on (with a real TLS server and client)', () => {
  it('passes the bytes through to a TLS backend that completes the handshake (SNI passthrough)', async (t) => {
    const { cert, key } = await makeCertificate('backend.example.com');
    const backend = tls.createServer({ cert, key, ALPNProtocols: ['echo/1'] }, (s) => s.pipe(s));
    const backendPort = await loopbackServer(t, backend);
    const seen: Array<string | undefined> = [];
    const front = net.createServer(async (socket) => {
      socket.on('error', () => {});
      const { hello, buffered } = await readClientHello(socket, { timeoutMs: 5000 });
      seen.push(hello.state === 'ok' ? hello.serverName : hello.reason);
      const upstream = net.connect(backendPort, '127.0.0.1');
      upstream.on('error', () => socket.destroy());
      t.after(() => upstream.destroy());
      for (const chunk of buffered) upstream.write(chunk);
      socket.pipe(upstream).pipe(socket);
    });
    const frontPort = await loopbackServer(t, front);

    const client = tls.connect({
      port: frontPort,
      host: '127.0.0.1',
      servername: 'backend.example.com',
      ca: cert,
      ALPNProtocols: ['echo/1'],
    });
    await once(client, 'secureConnect');
    assert.equal(client.getPeerCertificate().subject.CN, 'backend.example.com');
    assert.equal(client.alpnProtocol, 'echo/1');
    client.write('ping through the passthrough');
    const [echoed] = await once(client, 'data');
    assert.equal(String(echoed), 'ping through the passthrough');
    assert.deepEqual(seen, ['backend.example.com']);
    client.destroy();
  });

  it('terminates TLS locally after socket.unshift of the buffered bytes', async (t) => {
    const { cert, key } = await makeCertificate('edge.example.com');
    const secureContext = tls.createSecureContext({ cert, key });
    const front = net.createServer(async (socket) => {
      socket.on('error', () => {});
      const { hello, buffered } = await readClientHello(socket, { timeoutMs: 5000 });
      if (hello.state !== 'ok') return socket.destroy();
      socket.unshift(Buffer.concat(buffered));
      const secure = new tls.TLSSocket(socket, {
        isServer: true,
        secureContext,
        ALPNProtocols: ['http/1.1'],
      });
      secure.on('error', () => {});
      secure.pipe(secure);
    });
    const frontPort = await loopbackServer(t, front);
    const client = tls.connect({
      port: frontPort,
      host: '127.0.0.1',
      servername: 'edge.example.com',
      ca: cert,
      ALPNProtocols: ['http/1.1'],
    });
    await once(client, 'secureConnect');
    assert.equal(client.getPeerCertificate().subject.CN, 'edge.example.com');
    assert.equal(client.alpnProtocol, 'http/1.1');
    client.write('terminated here');
    const [echoed] = await once(client, 'data');
    assert.equal(String(echoed), 'terminated here');
    client.destroy();
  });
});
