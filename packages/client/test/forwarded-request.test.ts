// The one request an http-proxy local forwards: its body re-framed whatever pieces the visitor's bytes come
// in, nothing after its end passed on, and the response written back to the visitor.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { test } from 'node:test';
import { PairEnd } from '../src/duplex-pair.js';
import { ForwardedRequest, type RequestBodyFraming } from '../src/forwarded-request.js';

const HEAD = Buffer.from('POST /x HTTP/1.1\r\nHost: nas.lan\r\nConnection: close\r\n\r\n');

/** What the destination reads, the visitor's `bytes` sent `piece` bytes at a time and then ended. */
async function forwarded(framing: RequestBodyFraming, bytes: string, piece: number): Promise<string> {
  const [visitorSide, proxySide] = PairEnd.pair();
  const request = new ForwardedRequest(proxySide, HEAD, Buffer.alloc(0), framing);
  const read: Buffer[] = [];
  request.on('data', (chunk: Buffer) => read.push(chunk));
  const ended = once(request, 'end');
  const data = Buffer.from(bytes, 'latin1');
  for (let at = 0; at < data.length; at += piece) visitorSide.write(data.subarray(at, at + piece));
  visitorSide.end();
  await ended;
  return Buffer.concat(read).toString('latin1').slice(HEAD.length);
}

test('a chunked body is decoded and framed again, in any pieces; what follows its end is dropped', async () => {
  const body = '5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n';
  const after = 'GET /smuggled HTTP/1.1\r\nHost: nas.lan\r\n\r\n';
  for (const piece of [1, 2, 7, 1000]) {
    const out = await forwarded({ kind: 'chunked' }, body + after, piece);
    assert.ok(out.endsWith('0\r\n\r\n'), JSON.stringify(out));
    assert.ok(!out.includes('smuggled') && !out.includes('ext=1') && !out.includes('X-Trailer'), out);
    const data = out.replace(/(^|\r\n)[0-9a-f]+\r\n/g, '$1').replaceAll('\r\n', '');
    assert.equal(data, 'hello world', `pieces of ${piece}`);
  }
});

test('a Content-Length body is cut at its length; none, nothing is passed on', async () => {
  assert.equal(await forwarded({ kind: 'length', length: 5 }, 'helloGET / HTTP/1.1\r\n\r\n', 3), 'hello');
  assert.equal(await forwarded({ kind: 'none' }, 'GET / HTTP/1.1\r\n\r\n', 4), '');
});

test('a broken chunked body or an end inside the body fails the request; the response reaches the visitor', async () => {
  const [visitorSide, proxySide] = PairEnd.pair();
  const broken = new ForwardedRequest(proxySide, HEAD, Buffer.from('zz\r\n'), { kind: 'chunked' });
  broken.resume();
  const [err] = (await once(broken, 'error')) as [Error];
  assert.match(err.message, /bad chunk size/);
  assert.ok(visitorSide.destroyed || proxySide.destroyed);

  const [visitor2, proxy2] = PairEnd.pair();
  const short = new ForwardedRequest(proxy2, HEAD, Buffer.from('hel'), { kind: 'length', length: 5 });
  short.resume();
  const answer: Buffer[] = [];
  visitor2.on('data', (chunk: Buffer) => answer.push(chunk));
  short.write('HTTP/1.1 200 OK\r\n\r\n');
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(Buffer.concat(answer).toString(), 'HTTP/1.1 200 OK\r\n\r\n');
  visitor2.end();
  const [cut] = (await once(short, 'error')) as [Error];
  assert.match(cut.message, /in the middle of its request body/);
});
