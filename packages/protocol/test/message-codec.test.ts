import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { test } from 'node:test';
import {
  PROXY_NAME_RULE,
  ProtocolError,
  parseControlMessage,
  parseRegisterEntry,
} from '../src/control-messages.js';
import { encodeMessage, MessageFramingError, MessageReader } from '../src/message-codec.js';
import { readStreamHeader, writeStreamHeader } from '../src/stream-header.js';

/** Feeds `bytes` into a PassThrough in pieces of the given sizes, one event-loop turn apart. */
async function feed(stream: PassThrough, bytes: Buffer, sizes: number[]): Promise<void> {
  let offset = 0;
  let i = 0;
  while (offset < bytes.length) {
    const size = Math.max(1, sizes[i++ % sizes.length]!);
    stream.write(bytes.subarray(offset, offset + size));
    offset += size;
    await new Promise((resolve) => setImmediate(resolve));
  }
}

test('messages survive any chunking, one byte at a time or many per chunk', async () => {
  const messages = [{ type: 'hello', n: 1 }, { big: 'x'.repeat(100_000) }, [1, 2, 3], 'ünïcödé'];
  const bytes = Buffer.concat(messages.map((m) => encodeMessage(m)));
  for (const sizes of [[1], [3, 7], [bytes.length], [4096, 1, 2]]) {
    const stream = new PassThrough();
    const reader = new MessageReader(stream);
    const fed = feed(stream, bytes, sizes).then(() => stream.end());
    const got: unknown[] = [];
    for (let m = await reader.read(); m !== null; m = await reader.read()) got.push(m);
    await fed;
    assert.deepEqual(got, messages, `sizes ${sizes.join(',')}`);
  }
});

test('the reader leaves the bytes after a message in the stream', async () => {
  const stream = new PassThrough();
  stream.end(Buffer.concat([encodeMessage({ a: 1 }), Buffer.from('raw tail')]));
  assert.deepEqual(await new MessageReader(stream).read(), { a: 1 });
  const rest: Buffer[] = [];
  for await (const chunk of stream) rest.push(chunk as Buffer);
  assert.equal(Buffer.concat(rest).toString(), 'raw tail');
});

test('oversize, empty, truncated and non-JSON messages are framing errors', async () => {
  const oversize = new PassThrough();
  const prefix = Buffer.alloc(4);
  prefix.writeUInt32BE(1024 * 1024 + 1);
  oversize.write(prefix);
  await assert.rejects(new MessageReader(oversize).read(), /exceeds the limit of 1048576/);

  const empty = new PassThrough();
  empty.end(Buffer.alloc(4));
  await assert.rejects(new MessageReader(empty).read(), MessageFramingError);

  const truncated = new PassThrough();
  truncated.end(encodeMessage({ a: 'long enough' }).subarray(0, 10));
  await assert.rejects(new MessageReader(truncated).read(), /stream ended/);

  const halfPrefix = new PassThrough();
  halfPrefix.end(Buffer.from([0, 0]));
  await assert.rejects(new MessageReader(halfPrefix).read(), /stream ended after 2 of 4/);

  const notJson = new PassThrough();
  const body = Buffer.from('{nope');
  const frame = Buffer.alloc(4 + body.length);
  frame.writeUInt32BE(body.length);
  body.copy(frame, 4);
  notJson.end(frame);
  await assert.rejects(new MessageReader(notJson).read(), /not valid JSON/);

  const clean = new PassThrough();
  clean.end();
  assert.equal(await new MessageReader(clean).read(), null);

  const destroyed = new PassThrough();
  const pending = new MessageReader(destroyed).read();
  destroyed.destroy(new Error('boom'));
  await assert.rejects(pending, /boom/);

  assert.throws(() => encodeMessage('x'.repeat(2_000_000)), /exceeds 1048576/);
});

test("control messages are validated with a reason naming the field; a type not known here is a newer peer's", () => {
  assert.deepEqual(parseControlMessage({ type: 'unregister', proxies: ['ssh'], x: 1 }), {
    type: 'unregister',
    proxies: ['ssh'],
  });
  assert.throws(() => parseControlMessage({ type: 'unregister', proxies: 'ssh' }), /at proxies: /);
  // A result carries the port bound (the picked one for remote_port 0); an older server's leaves it out.
  const result = { proxy: 'ssh', ok: true, remote_addr: '0.0.0.0:40007' };
  for (const extra of [{ remote_port: 40007 }, {}]) {
    const message = { type: 'register_result', results: [{ ...result, ...extra }] };
    assert.deepEqual(parseControlMessage(message), message);
  }
  assert.throws(() => parseControlMessage({ type: 'register', proxies: {} }), /at proxies: /);
  assert.throws(
    () => parseControlMessage({ type: 'register', proxies: Array(1025).fill({}) }),
    /at proxies: /,
  );
  assert.throws(() => parseControlMessage(null), ProtocolError);
  assert.throws(() => parseControlMessage({ type: 7 }), ProtocolError);
  assert.deepEqual(parseControlMessage({ type: 'nope', x: 1 }), { type: 'unknown', unknownType: 'nope' });
  assert.deepEqual(parseControlMessage({ type: 'n'.repeat(1000) }), {
    type: 'unknown',
    unknownType: 'n'.repeat(64),
  });
});

test('register entries are validated one by one: unknown fields dropped, a refusal names the field and the proxy', () => {
  assert.deepEqual(parseRegisterEntry({ name: 'ssh', type: 'tcp', remote_port: 2222, x: 1 }, 0), {
    ok: true,
    spec: { name: 'ssh', type: 'tcp', remote_port: 2222 },
  });
  const refused = (raw: unknown, index = 0) => {
    const entry = parseRegisterEntry(raw, index);
    assert.equal(entry.ok, false, JSON.stringify(raw));
    return entry.ok ? undefined : { proxy: entry.proxy, reason: entry.reason };
  };
  assert.deepEqual(refused({ name: 'ssh', type: 'tcp', remote_port: -1 }), {
    proxy: 'ssh',
    reason: 'remote_port: Too small: expected number to be >=0',
  });
  // Port 0 asks the server to pick, naming the one it had before; a previous port must be a real one.
  assert.deepEqual(
    parseRegisterEntry({ name: 'ssh', type: 'tcp', remote_port: 0, previous_port: 40001 }, 0),
    {
      ok: true,
      spec: { name: 'ssh', type: 'tcp', remote_port: 0, previous_port: 40001 },
    },
  );
  assert.deepEqual(refused({ name: 'ssh', type: 'tcp', remote_port: 0, previous_port: 0 }), {
    proxy: 'ssh',
    reason: 'previous_port: Too small: expected number to be >=1',
  });
  assert.deepEqual(refused({ name: 'q', type: 'quic', remote_port: 443 }), {
    proxy: 'q',
    reason: 'type: not a proxy type this server knows (tcp, udp, http, tls, tcpmux)',
  });
  assert.deepEqual(refused({ name: 'dns', type: 'udp', remote_port: 53, udp_idle_timeout_ms: 172_800_000 }), {
    proxy: 'dns',
    reason: 'udp_idle_timeout_ms: Too big: expected number to be <=86400000',
  });
  // Without a valid name, a placeholder that no proxy name can be stands in for it.
  assert.deepEqual(refused({ name: '../x', type: 'tcp', remote_port: 1 }, 2), {
    proxy: 'register entry 3 (without a valid name)',
    reason: `name: must be ${PROXY_NAME_RULE} characters`,
  });
  assert.deepEqual(refused({ name: 42, type: 'tcp', remote_port: 1 }), {
    proxy: 'register entry 1 (without a valid name)',
    reason: 'name: Invalid input: expected string, received number',
  });
  assert.deepEqual(refused('ssh', 1), {
    proxy: 'register entry 2 (without a name)',
    reason: 'Invalid input: expected object, received string',
  });
  // The server writes these into request heads: nothing in them may end a line.
  const http = { name: 'web', type: 'http', hosts: ['app.test'] };
  for (const [field, value] of [
    ['request_headers', { 'X-A': 'one\r\nX-Injected: two' }],
    ['request_headers', { 'X A': 'spaced name' }],
    ['host_header_rewrite', 'evil.test\r\nX-Injected: 1'],
    ['host_header_rewrite', 'two words'],
    ['response_headers', { 'X-A': 'one\r\nX-Injected: two' }],
    ['response_headers', { 'X A': 'spaced name' }],
    ['response_headers', { 'X-Nul': 'a\0b' }],
    ['request_headers', Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`X-${i}`, 'v']))],
  ] as const) {
    assert.match(
      refused({ ...http, [field]: value })?.reason ?? '',
      new RegExp(`^${field}`),
      JSON.stringify(value),
    );
  }
  assert.deepEqual(
    parseRegisterEntry(
      { ...http, request_headers: { 'X-Tab': 'a\tb' }, host_header_rewrite: 'local:8080' },
      0,
    ),
    { ok: true, spec: { ...http, request_headers: { 'X-Tab': 'a\tb' }, host_header_rewrite: 'local:8080' } },
  );
});

test('response_headers: the fields the server owns are refused by name, whatever their case', () => {
  const http = { name: 'web', type: 'http', hosts: ['app.test'] };
  for (const name of [
    'Connection',
    'keep-alive',
    'TE',
    'Trailer',
    'Upgrade',
    'Transfer-Encoding',
    'Content-Length',
    'Content-Encoding',
    'Content-Range',
    'Proxy-Authenticate',
    'proxy-connection',
  ]) {
    const entry = parseRegisterEntry({ ...http, response_headers: { [name]: 'x' } }, 0);
    assert.ok(!entry.ok, name);
    assert.match(entry.reason, new RegExp(`^response_headers\\.${name}: cannot be set here: `), name);
  }
  const security = {
    'Strict-Transport-Security': 'max-age=63072000',
    'x-frame-options': 'DENY',
    'Set-Cookie': 'a=b',
  };
  assert.deepEqual(parseRegisterEntry({ ...http, response_headers: security }, 0), {
    ok: true,
    spec: { ...http, response_headers: security },
  });
});

test('stream headers round-trip and are bounded', async () => {
  const stream = new PassThrough();
  const header = {
    proxy: 'ssh',
    conn: 7,
    remote_addr: '::1',
    remote_port: 5555,
    public_addr: '0.0.0.0:2222',
  };
  writeStreamHeader(stream, header);
  stream.end('payload');
  assert.deepEqual(await readStreamHeader(stream), header);

  const big = new PassThrough();
  big.end(encodeMessage({ proxy: 'x'.repeat(10_000) }));
  await assert.rejects(readStreamHeader(big), /exceeds the limit of 8192/);

  const wrong = new PassThrough();
  wrong.end(encodeMessage({ proxy: 'ssh' }));
  await assert.rejects(readStreamHeader(wrong), /invalid stream header/);
});
