// The http proxy's own HTTP/1.1 client: response heads and their framing, chunked bodies fed in any
// pieces, and the stream pool against a real Node HTTP server (real sockets stand in for tunnel streams:
// the pool sees a Duplex either way).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { type AddressInfo, connect, createServer as createRawServer } from 'node:net';
import { Duplex } from 'node:stream';
import { type TestContext, test } from 'node:test';
import { ChunkedBodyError, ChunkedDecoder, headEnd } from '@porthole/protocol';
import { forwardableTrailers } from '../src/http-fields.js';
import { parseResponseHead, UpstreamProtocolError } from '../src/http-response-head.js';
import {
  MAX_RESPONSE_HEAD,
  type ResponseSink,
  type UpstreamConnection,
} from '../src/http-upstream-connection.js';
import {
  MIN_WAITING_REQUESTS,
  UpstreamPool,
  type Visitor,
  WaitingRequestsFull,
} from '../src/http-upstream-pool.js';

const head = (text: string) => Buffer.from(text.replaceAll('\n', '\r\n'), 'latin1');

test('a head says how its body is framed and whether the stream may be reused', () => {
  const cases: Array<[string, string, unknown, boolean]> = [
    ['HTTP/1.1 200 OK\nContent-Length: 5\n\n', 'GET', { kind: 'length', length: 5 }, true],
    ['HTTP/1.1 200 OK\nContent-Length: 5, 5\n\n', 'GET', { kind: 'length', length: 5 }, true],
    ['HTTP/1.1 200 OK\nContent-Length: 5\n\n', 'HEAD', { kind: 'none' }, true],
    ['HTTP/1.1 204 No Content\n\n', 'GET', { kind: 'none' }, true],
    ['HTTP/1.1 304 Not Modified\nContent-Length: 40\n\n', 'GET', { kind: 'none' }, true],
    ['HTTP/1.1 103 Early Hints\nLink: </a.css>\n\n', 'GET', { kind: 'none' }, true],
    ['HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n\n', 'GET', { kind: 'chunked' }, true],
    // A coding on a response that has no body does not matter.
    ['HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\n\n', 'HEAD', { kind: 'none' }, true],
    // Both framings: chunks win, and the stream is not trusted again.
    ['HTTP/1.1 200 OK\nContent-Length: 3\nTransfer-Encoding: chunked\n\n', 'GET', { kind: 'chunked' }, false],
    ['HTTP/1.1 200 OK\n\n', 'GET', { kind: 'close' }, false],
    [
      'HTTP/1.1 200 OK\nConnection: close\nContent-Length: 0\n\n',
      'GET',
      { kind: 'length', length: 0 },
      false,
    ],
    ['HTTP/1.0 200 OK\nContent-Length: 2\n\n', 'GET', { kind: 'length', length: 2 }, false],
    [
      'HTTP/1.0 200 OK\nConnection: keep-alive\nContent-Length: 2\n\n',
      'GET',
      { kind: 'length', length: 2 },
      true,
    ],
  ];
  for (const [text, method, body, keepAlive] of cases) {
    const parsed = parseResponseHead(head(text), method);
    assert.deepEqual(parsed.body, body, `${method} ${JSON.stringify(text)}`);
    assert.equal(parsed.keepAlive, keepAlive, `keep-alive for ${JSON.stringify(text)}`);
  }
  const parsed = parseResponseHead(head('HTTP/1.1 404 Not Here\nX-A:  spaced  \nx-b:\n\n'), 'GET');
  assert.equal(parsed.statusCode, 404);
  assert.equal(parsed.statusMessage, 'Not Here');
  assert.deepEqual(parsed.rawHeaders, ['X-A', 'spaced', 'x-b', '']);
  // Connection options are read once, for the framing and for the fields they name as hop-by-hop.
  const named = parseResponseHead(
    head('HTTP/1.1 200 OK\nConnection: Keep-Alive, X-Hop\nConnection: ,close\n\n'),
    'GET',
  );
  assert.deepEqual(named.connection, ['keep-alive', 'x-hop', 'close']);
  assert.equal(named.keepAlive, false);
  // Bare LF line ends are read too.
  assert.equal(parseResponseHead(Buffer.from('HTTP/1.1 200\nContent-Length: 1\n\n'), 'GET').statusCode, 200);
});

test('heads a proxy must not pass on are refused', () => {
  for (const text of [
    'HTTP/1.1 abc\n\n',
    'HTTP/2 200 OK\n\n',
    'HTTP/1.1 099 Low\n\n',
    'garbage\n\n',
    'HTTP/1.1 200 OK\nContent-Length: 5\nContent-Length: 6\n\n',
    'HTTP/1.1 200 OK\nContent-Length: -1\n\n',
    'HTTP/1.1 200 OK\nX-Folded: a\n b\n\n',
    'HTTP/1.1 200 OK\nBad Name: x\n\n',
    'HTTP/1.1 200 OK\n: empty name\n\n',
    'HTTP/1.1 200 OK\nX-Ctl: a\u0001b\n\n',
    // HTTP/1.0 has no transfer codings: the chunk sizes would reach the visitor as body.
    'HTTP/1.0 200 OK\nTransfer-Encoding: chunked\n\n',
    // A coding other than chunked would reach the visitor unnamed (its bytes read as plain), and chunks
    // within chunks as body.
    'HTTP/1.1 200 OK\nTransfer-Encoding: gzip\n\n',
    'HTTP/1.1 200 OK\nTransfer-Encoding: gzip, chunked\n\n',
    'HTTP/1.1 200 OK\nTransfer-Encoding: gzip\nTransfer-Encoding: chunked\n\n',
    'HTTP/1.1 200 OK\nTransfer-Encoding: chunked, chunked\n\n',
    'HTTP/1.1 200 OK\nTransfer-Encoding: identity\n\n',
  ]) {
    assert.throws(() => parseResponseHead(head(text), 'GET'), UpstreamProtocolError, JSON.stringify(text));
  }
});

test('the end of a head is found wherever the pieces split it', () => {
  const text = head('HTTP/1.1 200 OK\nA: b\n\nbody');
  assert.equal(headEnd(text), text.indexOf('body'));
  assert.equal(headEnd(text.subarray(0, text.indexOf('body') - 1)), -1);
  assert.equal(headEnd(Buffer.from('HTTP/1.1 200 OK\n\nrest')), 17);
  // A search may start just before where the last piece ended.
  assert.equal(headEnd(text, text.indexOf('body') - 4), text.indexOf('body'));
});

const CHUNKED_BODY = Buffer.from(
  '5;ext=1\r\nhello\r\n1 ; name="quoted;semi"\r\n,\r\n7\r\n world!\r\n0\r\nTrailer-A: 1\r\nTrailer-B: 2\r\n\r\n',
);

function decodeInPieces(input: Buffer, size: number): { data: string; used: number; done: boolean } {
  const decoder = new ChunkedDecoder();
  let data = '';
  let used = 0;
  for (let at = 0; at < input.length && !decoder.done; at += size) {
    used += decoder.push(input.subarray(at, at + size), (piece) => {
      data += piece.toString('latin1');
    });
  }
  return { data, used, done: decoder.done };
}

test('a chunked body decodes the same in any pieces, and its end is found exactly', () => {
  for (const size of [1, 2, 3, 7, 64, CHUNKED_BODY.length]) {
    const out = decodeInPieces(CHUNKED_BODY, size);
    assert.equal(out.data, 'hello, world!', `pieces of ${size}`);
    assert.ok(out.done, `done with pieces of ${size}`);
    assert.equal(out.used, CHUNKED_BODY.length);
  }
  // What follows the body is not the body's.
  const extra = Buffer.concat([CHUNKED_BODY, Buffer.from('HTTP/1.1 200 OK\r\n')]);
  const decoder = new ChunkedDecoder();
  assert.equal(
    decoder.push(extra, () => {}),
    CHUNKED_BODY.length,
  );
  // Unfinished: not done.
  assert.equal(decodeInPieces(CHUNKED_BODY.subarray(0, -2), 5).done, false);
});

test('malformed chunked bodies are refused', () => {
  for (const text of [
    'zz\r\nhello\r\n0\r\n\r\n',
    '2\r\nhello\r\n0\r\n\r\n',
    `${'1'.repeat(20)}\r\n`,
    `1;${'x'.repeat(5000)}`,
  ]) {
    assert.throws(
      () => new ChunkedDecoder().push(Buffer.from(text), () => {}),
      ChunkedBodyError,
      JSON.stringify(text.slice(0, 30)),
    );
  }
});

test('trailer fields are kept as received, then sorted into what may be passed on', () => {
  const body = Buffer.from(
    '3\r\nabc\r\n0\r\nX-Sum:  7 \r\nContent-Length: 3\r\nno colon\r\n continued\r\nBad Name: 1\r\nX-Two:a:b\r\n\r\n',
    'latin1',
  );
  for (const size of [1, 5, body.length]) {
    const decoder = new ChunkedDecoder();
    for (let at = 0; at < body.length; at += size) decoder.push(body.subarray(at, at + size), () => {});
    assert.ok(decoder.done, `pieces of ${size}`);
    assert.deepEqual(decoder.trailers, [
      'X-Sum',
      '7',
      'Content-Length',
      '3',
      '',
      'no colon',
      '',
      ' continued',
      'Bad Name',
      '1',
      'X-Two',
      'a:b',
    ]);
    assert.deepEqual(forwardableTrailers(decoder.trailers), {
      fields: [
        ['X-Sum', '7'],
        ['X-Two', 'a:b'],
      ],
      dropped: 4,
    });
  }
  // Framing and routing fields never travel, in any case; values must be ones Node would write.
  assert.deepEqual(
    forwardableTrailers([
      'HOST',
      'x',
      'Transfer-Encoding',
      'chunked',
      'Trailer',
      'X',
      'X-Bad',
      'a\u0000b',
      'X-Ok',
      '\u00e9',
    ]),
    { fields: [['X-Ok', '\u00e9']], dropped: 4 },
  );
  assert.deepEqual(forwardableTrailers([]), { fields: [], dropped: 0 });
});

interface Collected {
  status: number;
  body: string;
  error?: Error;
  retryable?: boolean;
}

async function startBackend(
  handler: Parameters<typeof createServer>[1],
): Promise<{ server: Server; port: number; connections: () => number }> {
  const server = createServer(handler);
  let connections = 0;
  server.on('connection', () => connections++);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as AddressInfo).port, connections: () => connections };
}

const VISITOR: Visitor = { address: '127.0.0.1', port: 1, destAddress: undefined, destPort: undefined };

/** Sends one GET through the pool and collects the response. */
function get(pool: UpstreamPool, path: string, method = 'GET'): Promise<Collected> {
  return new Promise((resolve) => {
    const out: Collected = { status: 0, body: '' };
    let conn: UpstreamConnection | undefined;
    const sink: ResponseSink = {
      onHead: (h) => {
        out.status = h.statusCode;
      },
      onBody: (data) => {
        out.body += data.toString();
        return true;
      },
      onEnd: () => resolve(out),
      onError: (err, retryable) => {
        out.error = err;
        out.retryable = retryable;
        resolve(out);
      },
    };
    pool.acquire(VISITOR, (err, acquired) => {
      if (err || !acquired) {
        out.error = err;
        resolve(out);
        return;
      }
      conn = acquired;
      conn.send(method, `${method} ${path} HTTP/1.1\r\nHost: app.test\r\n\r\n`, undefined, false, sink);
    });
  });
}

/** A pool whose streams are plain connections to `port`, closed after the test; counts what it opened. */
function poolTo(
  t: TestContext,
  port: number,
  streams: number,
  held = 0,
): { pool: UpstreamPool; opened: () => number } {
  let opened = 0;
  const pool = new UpstreamPool({
    openStream: () => {
      opened++;
      return connect(port, '127.0.0.1');
    },
    maxStreams: () => streams,
    maxHeld: () => held,
  });
  t.after(() => pool.destroy());
  return { pool, opened: () => opened };
}

test('the pool carries request after request on one stream, opens more only when all are busy', async (t) => {
  let active = 0;
  let peak = 0;
  const backend = await startBackend((req, res) => {
    active++;
    peak = Math.max(peak, active);
    const reply = () => {
      active--;
      if (req.url === '/close') res.setHeader('Connection', 'close');
      res.end(`ok ${req.url}`);
    };
    if (req.url?.startsWith('/slow')) setTimeout(reply, 50);
    else reply();
  });
  t.after(() => backend.server.close());
  const { pool, opened } = poolTo(t, backend.port, 2);

  for (let i = 0; i < 30; i++) {
    const r = await get(pool, `/${i}`);
    assert.equal(r.error, undefined);
    assert.deepEqual([r.status, r.body], [200, `ok /${i}`]);
  }
  assert.equal(opened(), 1, 'one stream for 30 sequential requests');
  assert.equal(backend.connections(), 1);

  // Five at once with two streams allowed: all answered, never more than two at the service.
  const results = await Promise.all([1, 2, 3, 4, 5].map((i) => get(pool, `/slow${i}`)));
  assert.deepEqual(
    results.map((r) => r.body),
    [1, 2, 3, 4, 5].map((i) => `ok /slow${i}`),
  );
  assert.equal(peak, 2, 'at most maxStreams requests at the service at once');
  assert.equal(opened(), 2);

  // A response that says Connection: close retires its stream; the next request opens another.
  assert.equal((await get(pool, '/close')).body, 'ok /close');
  assert.equal((await get(pool, '/after')).body, 'ok /after');
  assert.equal((await get(pool, '/after')).body, 'ok /after');
  assert.equal(opened(), 2, 'the other pooled stream served after the close');
  assert.ok(pool.size <= 2, `${pool.size} streams open`);

  // HEAD: no body is waited for, and the stream stays usable.
  const headed = await get(pool, '/head', 'HEAD');
  assert.deepEqual([headed.status, headed.body], [200, '']);
  assert.equal((await get(pool, '/x')).body, 'ok /x');
});

test('requests wait in arrival order up to a bound; past it they are refused at once, and a leaver gives up its place', async (t) => {
  const held: (() => void)[] = [];
  const backend = await startBackend((req, res) => held.push(() => res.end(`ok ${req.url}`)));
  t.after(() => backend.server.close());
  const { pool } = poolTo(t, backend.port, 1);
  const busy = get(pool, '/busy');
  await waitUntil(() => held.length === 1);
  const served: number[] = [];
  const cancels: (() => void)[] = [];
  for (let i = 0; i < MIN_WAITING_REQUESTS; i++)
    cancels.push(
      pool.acquire(VISITOR, (_err, conn) => {
        served.push(i);
        conn?.destroy();
      }),
    );
  const refused = await get(pool, '/one-too-many');
  assert.ok(refused.error instanceof WaitingRequestsFull, String(refused.error));
  // Visitors leaving make room: the next request waits instead of being refused.
  for (let i = 1; i < MIN_WAITING_REQUESTS; i += 2) cancels[i]!();
  const late = get(pool, '/late');
  held.shift()!();
  assert.deepEqual((await busy).body, 'ok /busy');
  await waitUntil(() => served.length > 0);
  assert.equal(served[0], 0, 'the first to wait is served first');
  pool.destroy();
  assert.match((await late).error?.message ?? '', /the proxy is closed/, 'it had waited, not been refused');
  for (const release of held) release();
});

async function waitUntil(check: () => boolean, timeoutMs = 5000): Promise<void> {
  for (let waited = 0; !check(); waited += 10) {
    if (waited >= timeoutMs) throw new Error(`not within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

test('a stream the service closed while idle is not handed out again', async (t) => {
  const backend = await startBackend((req, res) => res.end(`ok ${req.url}`));
  backend.server.keepAliveTimeout = 100;
  t.after(() => backend.server.close());
  const { pool, opened } = poolTo(t, backend.port, 4);
  assert.equal((await get(pool, '/1')).body, 'ok /1');
  // Node's server ends an idle keep-alive connection within about a second of the timeout.
  for (let waited = 0; pool.size > 0 && waited < 5000; waited += 50)
    await new Promise((resolve) => setTimeout(resolve, 50));
  assert.equal(pool.size, 0, 'the closed stream left the pool');
  assert.equal((await get(pool, '/2')).body, 'ok /2');
  assert.equal(opened(), 2);

  pool.destroy();
  const late = await get(pool, '/5');
  assert.match(late.error?.message ?? '', /closed/);
});

test('a reused stream that fails before any answer is marked retryable, a new one is not', async (t) => {
  // A raw service: answers each connection's first request, resets on the second.
  const raw = createRawServer((socket) => {
    let requests = 0;
    socket.on('data', (data: Buffer) => {
      requests++;
      if (requests === 1 && !data.includes('/reset-at-once'))
        socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok');
      else socket.resetAndDestroy();
    });
  });
  raw.listen(0, '127.0.0.1');
  await once(raw, 'listening');
  t.after(() => raw.close());
  const port = (raw.address() as AddressInfo).port;
  const { pool } = poolTo(t, port, 1);
  assert.equal((await get(pool, '/1')).body, 'ok');
  const failed = await get(pool, '/2');
  assert.ok(failed.error, 'the request on the reset stream failed');
  assert.equal(failed.retryable, true, failed.error?.message);
  // The failed stream left the pool: the next request has a new one, and works.
  assert.equal((await get(pool, '/3')).body, 'ok');
  // On a stream that carried nothing before, a failure proves nothing about resending.
  const { pool: fresh } = poolTo(t, port, 1);
  const first = await get(fresh, '/reset-at-once');
  assert.ok(first.error, 'the first request on a new stream failed');
  assert.equal(first.retryable, false);
  raw.close();
  pool.destroy();
  const late = await get(pool, '/5');
  assert.match(late.error?.message ?? '', /closed/);
});

test('a response head over 64 KiB is refused, whether it comes in one piece or many', async () => {
  const big = Buffer.from(
    `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(MAX_RESPONSE_HEAD)}\r\nContent-Length: 2\r\n\r\nok`,
  );
  const justFits = Buffer.from(
    `HTTP/1.1 200 OK\r\nX-Big: ${'a'.repeat(MAX_RESPONSE_HEAD - 64)}\r\nContent-Length: 2\r\n\r\nok`,
  );
  for (const [answer, pieces, expected] of [
    [big, 1, 'refused'],
    [big, 1000, 'refused'],
    [justFits, 1, 'ok'],
    [justFits, 1000, 'ok'],
  ] as const) {
    // An in-memory stream stands in for the tunnel stream: what is pushed is what the service sent.
    const stream = new Duplex({
      read() {},
      write(_chunk, _encoding, callback) {
        callback();
        const size = Math.ceil(answer.length / pieces);
        for (let at = 0; at < answer.length; at += size) this.push(answer.subarray(at, at + size));
      },
    });
    const pool = new UpstreamPool({ openStream: () => stream, maxStreams: () => 1, maxHeld: () => 0 });
    const r = await get(pool, '/');
    pool.destroy();
    const outcome = r.error ? 'refused' : r.body;
    assert.equal(outcome, expected, `${answer.length} bytes in ${pieces} pieces: ${r.error?.message}`);
    if (r.error) assert.match(r.error.message, /response head larger than 65536 bytes/);
  }
});
