// Peek at a TLS ClientHello without terminating TLS: the TLS listener reads SNI (and ALPN) to decide where
// the connection goes, then hands every byte it read on untouched. Input comes from strangers, so the parser
// is bounded in bytes and time, never throws, and never allocates more than the bound.
import type { Readable } from 'node:stream';

/** Largest ClientHello we accept, counted in bytes on the wire (TLS record headers included). */
export const DEFAULT_MAX_CLIENT_HELLO_BYTES = 16 * 1024;
/** How long a connection may take to deliver its ClientHello. */
export const DEFAULT_CLIENT_HELLO_TIMEOUT_MS = 10_000;

export type ClientHelloPeek =
  /** `atLeast`: the buffer must hold at least this many bytes before another look can say more. */
  { state: 'need-more'; atLeast: number } | ClientHelloResult;

export type ClientHelloResult =
  | {
      state: 'ok';
      /** SNI host_name, lowercased (RFC 6066: ASCII, compared case-insensitively); undefined without SNI. */
      serverName: string | undefined;
      /** ALPN protocol names in the client's order (bytes as latin1); empty without ALPN. */
      alpn: string[];
      /** Bytes the ClientHello occupies on the wire, from the first record header to its last byte. */
      bytes: number;
    }
  | { state: 'invalid'; reason: string };

export interface PeekOptions {
  /** Refuse a ClientHello that needs more than this many bytes on the wire. Default 16 KiB. */
  maxBytes?: number;
}

const RECORD_HEADER = 5;
const CONTENT_TYPE_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const HANDSHAKE_HEADER = 4;
// A TLSPlaintext fragment is at most 2^14 bytes (RFC 8446 5.1).
const MAX_RECORD_PAYLOAD = 1 << 14;
const EXT_SERVER_NAME = 0x0000;
const EXT_ALPN = 0x0010;
const NAME_TYPE_HOST_NAME = 0;
const MAX_HOST_NAME = 255;

function invalid(reason: string): { state: 'invalid'; reason: string } {
  return { state: 'invalid', reason };
}

/**
 * Look at the bytes a TLS client sent so far. Returns 'need-more' while the ClientHello is incomplete,
 * 'ok' with SNI and ALPN once it is whole, or 'invalid' as soon as the bytes cannot be (the start of) a
 * ClientHello within `maxBytes`. Handles a ClientHello spread over several handshake records.
 * Bytes after the ClientHello are ignored. Never throws.
 */
export function peekClientHello(buf: Buffer, options: PeekOptions = {}): ClientHelloPeek {
  return new ClientHelloAssembler(options).peek(buf);
}

/**
 * peekClientHello for a growing buffer: each peek() continues from the last whole record it saw, so
 * re-peeking after every small chunk costs O(new bytes), not O(everything so far) (a stranger sending
 * 1-byte records in 1-byte chunks must not buy quadratic CPU). Each peek() must be given the previous
 * buffer's bytes plus possibly more (the same prefix); the answers are those of peekClientHello.
 */
export class ClientHelloAssembler {
  private readonly maxBytes: number;
  // Progress over whole records already walked (handshake records that did not finish the ClientHello).
  private offset = 0; // start of the first record not yet walked
  private readonly fragments: Buffer[] = []; // ClientHello bytes from walked records
  private gathered = 0;
  private messageLength = -1; // ClientHello length incl. its 4-byte handshake header, once known

  constructor(options: PeekOptions = {}) {
    this.maxBytes = options.maxBytes ?? DEFAULT_MAX_CLIENT_HELLO_BYTES;
  }

  peek(buf: Buffer): ClientHelloPeek {
    try {
      return this.walk(buf);
    } catch (err) {
      // Unreachable by construction (every read is bounds-checked); kept so a bug cannot crash a listener.
      return invalid(`ClientHello parser failed: ${(err as Error).message}`);
    }
  }

  private walk(input: Buffer): ClientHelloPeek {
    const maxBytes = this.maxBytes;
    // Only the first maxBytes bytes can belong to an acceptable ClientHello; looking at no more than those
    // makes every answer independent of how many extra bytes the caller happened to have.
    const buf = input.length > maxBytes ? input.subarray(0, maxBytes) : input;
    if (buf.length === 0) return needMore(0, undefined, -1, 0, maxBytes);
    const first = buf[0]!;
    if (first !== CONTENT_TYPE_HANDSHAKE) {
      if (first & 0x80) return invalid('SSLv2-style ClientHello is not supported');
      return invalid(`not a TLS handshake record (first byte 0x${hex2(first)})`);
    }

    // Walk the records, gathering handshake payload until the ClientHello message is complete. The
    // record in progress works on local state; it is committed only once the record is whole.
    const fragments = this.fragments;
    let { offset, gathered, messageLength } = this;
    for (;;) {
      const headerBytes = Math.min(RECORD_HEADER, buf.length - offset);
      const headerProblem = checkRecordHeader(buf, offset, headerBytes);
      if (headerProblem) return headerProblem;
      if (headerBytes < RECORD_HEADER)
        return needMore(buf.length, undefined, messageLength, gathered, maxBytes);
      const recordLength = buf.readUInt16BE(offset + 3);
      if (recordLength === 0) return invalid('empty TLS handshake record');
      if (recordLength > MAX_RECORD_PAYLOAD)
        return invalid(`TLS record of ${recordLength} bytes exceeds 2^14`);
      const payloadStart = offset + RECORD_HEADER;
      const recordEnd = payloadStart + recordLength;
      const payload = buf.subarray(payloadStart, Math.min(recordEnd, buf.length));

      // Only the part of this record's payload that belongs to the ClientHello counts.
      const take = messageLength < 0 ? payload.length : Math.min(payload.length, messageLength - gathered);
      // Refuse as soon as the rest of the message cannot end within maxBytes (even if all in this record).
      if (messageLength >= 0 && payloadStart + (messageLength - gathered) > maxBytes)
        return tooLarge(maxBytes);
      const before = gathered; // ClientHello bytes from earlier records
      let share = payload.subarray(0, take);
      gathered += take;

      if (messageLength < 0 && gathered >= HANDSHAKE_HEADER) {
        // Earlier records hold fewer than 4 bytes here; the handshake header is all that is needed.
        const head = Buffer.concat([...fragments, share.subarray(0, HANDSHAKE_HEADER)]);
        if (head[0] !== HANDSHAKE_CLIENT_HELLO) {
          return invalid(`first handshake message is type ${head[0]}, not ClientHello`);
        }
        messageLength = HANDSHAKE_HEADER + head.readUIntBE(1, 3);
        // Refuse at once what cannot fit: the rest of the message needs at least its own bytes on the wire.
        if (payloadStart + (messageLength - before) > maxBytes) return tooLarge(maxBytes);
        if (gathered > messageLength) {
          // This record carries more than the ClientHello: keep only the ClientHello's bytes.
          share = share.subarray(0, messageLength - before);
          gathered = messageLength;
        }
      }

      if (messageLength >= 0 && gathered === messageLength) {
        const message = fragments.length === 0 ? share : Buffer.concat([...fragments, share], gathered);
        const result = parseClientHelloBody(message.subarray(HANDSHAKE_HEADER));
        if (result.state === 'ok') result.bytes = payloadStart + share.length;
        return result;
      }
      if (recordEnd > buf.length) return needMore(buf.length, recordEnd, messageLength, gathered, maxBytes);
      // A whole record that did not finish the ClientHello: commit it.
      fragments.push(share);
      offset = recordEnd;
      this.offset = offset;
      this.gathered = gathered;
      this.messageLength = messageLength;
    }
  }
}

function hex2(byte: number): string {
  return byte.toString(16).padStart(2, '0');
}

function tooLarge(maxBytes: number): { state: 'invalid'; reason: string } {
  return invalid(`ClientHello larger than the ${maxBytes}-byte limit`);
}

/** Validates the first `have` (0..5) bytes of the record header at `offset`. */
function checkRecordHeader(buf: Buffer, offset: number, have: number): ClientHelloResult | undefined {
  if (have >= 1 && buf[offset] !== CONTENT_TYPE_HANDSHAKE) {
    return invalid(`record of content type ${buf[offset]} before the ClientHello was complete`);
  }
  // Only the major version is checked: OpenSSL accepts any minor here, and so must a passthrough.
  if (have >= 2 && buf[offset + 1] !== 3)
    return invalid(`unsupported TLS record version ${buf[offset + 1]}.x`);
  return undefined;
}

/**
 * A 'need-more' whose `atLeast` is a true lower bound on the buffer length at which the answer can change
 * (overshooting would make a reader wait for bytes the client never sends). The answer can change with
 * each record-header byte, when the handshake header is whole, when the message is whole, and with the
 * first byte of the next record; never in between.
 */
function needMore(
  have: number,
  recordEnd: number | undefined,
  messageLength: number,
  gathered: number,
  maxBytes: number,
): ClientHelloPeek {
  let atLeast: number;
  if (recordEnd === undefined) {
    atLeast = have + 1; // inside a record header
  } else {
    // ClientHello bytes still missing; while its length is unknown, the rest of the handshake header.
    const missing = messageLength >= 0 ? messageLength - gathered : HANDSHAKE_HEADER - gathered;
    atLeast = missing <= recordEnd - have ? have + missing : recordEnd + 1;
  }
  // Bytes past maxBytes are never looked at, so needing them is the verdict.
  if (atLeast > maxBytes) return tooLarge(maxBytes);
  return { state: 'need-more', atLeast };
}

/** A bounds-checked reader over the ClientHello body; each read reports failure instead of throwing. */
class Reader {
  pos = 0;
  constructor(private readonly buf: Buffer) {}
  get remaining(): number {
    return this.buf.length - this.pos;
  }
  u8(): number | undefined {
    if (this.remaining < 1) return undefined;
    return this.buf[this.pos++]!;
  }
  u16(): number | undefined {
    if (this.remaining < 2) return undefined;
    const v = this.buf.readUInt16BE(this.pos);
    this.pos += 2;
    return v;
  }
  bytes(n: number): Buffer | undefined {
    if (this.remaining < n) return undefined;
    const out = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
}

function parseClientHelloBody(body: Buffer): ClientHelloResult & { bytes?: number } {
  const r = new Reader(body);
  // legacy_version is not checked: TLS 1.3 servers ignore it when supported_versions is present (OpenSSL does).
  if (r.u16() === undefined) return invalid('ClientHello truncated in legacy_version');
  if (r.bytes(32) === undefined) return invalid('ClientHello truncated in random');
  const sessionIdLength = r.u8();
  if (sessionIdLength === undefined) return invalid('ClientHello truncated in legacy_session_id');
  if (sessionIdLength > 32) return invalid(`ClientHello session id of ${sessionIdLength} bytes (max 32)`);
  if (r.bytes(sessionIdLength) === undefined) return invalid('ClientHello truncated in legacy_session_id');
  const cipherSuitesLength = r.u16();
  if (cipherSuitesLength === undefined || r.bytes(cipherSuitesLength) === undefined) {
    return invalid('ClientHello truncated in cipher_suites');
  }
  if (cipherSuitesLength < 2 || cipherSuitesLength % 2 !== 0) {
    return invalid(`ClientHello cipher_suites of ${cipherSuitesLength} bytes`);
  }
  const compressionLength = r.u8();
  if (compressionLength === undefined || r.bytes(compressionLength) === undefined) {
    return invalid('ClientHello truncated in legacy_compression_methods');
  }
  if (compressionLength < 1) return invalid('ClientHello without compression methods');

  const hello = {
    state: 'ok' as const,
    serverName: undefined as string | undefined,
    alpn: [] as string[],
    bytes: 0,
  };
  // Pre-TLS-1.2 clients may omit the extensions block entirely.
  if (r.remaining === 0) return hello;
  const extensionsLength = r.u16();
  if (extensionsLength === undefined) return invalid('ClientHello truncated in extensions length');
  if (extensionsLength !== r.remaining) {
    return invalid(`ClientHello extensions length ${extensionsLength} != ${r.remaining} bytes left`);
  }
  const seen = new Set<number>();
  while (r.remaining > 0) {
    const type = r.u16();
    const length = r.u16();
    if (type === undefined || length === undefined)
      return invalid('ClientHello truncated in an extension header');
    const data = r.bytes(length);
    if (data === undefined) return invalid(`ClientHello extension ${type} overruns the message`);
    if (seen.has(type)) return invalid(`ClientHello repeats extension ${type}`);
    seen.add(type);
    if (type === EXT_SERVER_NAME) {
      const name = parseServerName(data);
      if (typeof name !== 'string' && name !== undefined) return name;
      hello.serverName = name;
    } else if (type === EXT_ALPN) {
      const alpn = parseAlpn(data);
      if (!Array.isArray(alpn)) return alpn;
      hello.alpn = alpn;
    }
  }
  return hello;
}

function parseServerName(data: Buffer): string | undefined | { state: 'invalid'; reason: string } {
  const r = new Reader(data);
  const listLength = r.u16();
  if (listLength === undefined || listLength !== r.remaining || listLength === 0) {
    return invalid('malformed server_name extension (list length)');
  }
  let hostName: string | undefined;
  while (r.remaining > 0) {
    const nameType = r.u8();
    const nameLength = r.u16();
    if (nameType === undefined || nameLength === undefined) return invalid('malformed server_name entry');
    const name = r.bytes(nameLength);
    if (name === undefined) return invalid('server_name entry overruns its list');
    if (nameType !== NAME_TYPE_HOST_NAME) continue; // other name types: none are defined; skip them
    if (hostName !== undefined) return invalid('server_name lists more than one host_name');
    if (nameLength === 0 || nameLength > MAX_HOST_NAME) return invalid(`server_name of ${nameLength} bytes`);
    for (const byte of name) {
      if (!isHostNameByte(byte))
        return invalid(`server_name holds byte 0x${hex2(byte)}, not a hostname character`);
    }
    hostName = name.toString('latin1').toLowerCase();
  }
  return hostName;
}

function isHostNameByte(b: number): boolean {
  return (
    (b >= 0x61 && b <= 0x7a) || // a-z
    (b >= 0x41 && b <= 0x5a) || // A-Z
    (b >= 0x30 && b <= 0x39) || // 0-9
    b === 0x2d || // -
    b === 0x2e || // .
    b === 0x5f || // _ (not a valid hostname character, but seen in the wild in internal names)
    b === 0x3a // : (an IPv6 address, which some clients send though RFC 6066 forbids it; read as no SNI)
  );
}

function parseAlpn(data: Buffer): string[] | { state: 'invalid'; reason: string } {
  const r = new Reader(data);
  const listLength = r.u16();
  if (listLength === undefined || listLength !== r.remaining || listLength < 2) {
    return invalid('malformed ALPN extension (list length)');
  }
  const names: string[] = [];
  while (r.remaining > 0) {
    const length = r.u8();
    if (length === undefined || length === 0) return invalid('ALPN list holds an empty protocol name');
    const name = r.bytes(length);
    if (name === undefined) return invalid('ALPN protocol name overruns its list');
    names.push(name.toString('latin1'));
  }
  return names;
}

export interface ReadClientHelloOptions extends PeekOptions {
  /** Give up (state 'invalid', reason says timeout) when the ClientHello is not whole by then. Default 10 s. */
  timeoutMs?: number;
}

export interface ReadClientHelloResult {
  /** 'ok' or 'invalid'; timeouts, early EOF and socket errors are 'invalid' with a reason. */
  hello: ClientHelloResult;
  /** Every byte read from the socket, in order, as received. Hand them on before the rest of the socket. */
  buffered: Buffer[];
}

/**
 * Read from `socket` (a net.Socket; any Readable works) until its ClientHello is whole (or proven invalid, or the time or size limit is hit).
 * Returns the verdict and every chunk read, and leaves the socket PAUSED with nothing else consumed, so the
 * caller can replay `buffered` (socket.unshift(Buffer.concat(buffered)), or write them to the upstream
 * first) and then pipe the socket. The socket is never destroyed here: on 'invalid' the caller decides.
 * Never rejects.
 */
export function readClientHello(
  socket: Readable,
  options: ReadClientHelloOptions = {},
): Promise<ReadClientHelloResult> {
  const maxBytes = options.maxBytes ?? DEFAULT_MAX_CLIENT_HELLO_BYTES;
  const timeoutMs = options.timeoutMs ?? DEFAULT_CLIENT_HELLO_TIMEOUT_MS;
  return new Promise((resolve) => {
    const buffered: Buffer[] = [];
    let received = 0;
    // The first maxBytes bytes in one contiguous copy (nothing beyond can belong to an acceptable
    // ClientHello), grown by doubling, so re-parsing after each small chunk does not re-concatenate.
    let joined = Buffer.alloc(0);
    let joinedLength = 0;
    let atLeast = 1;
    let done = false;
    const assembler = new ClientHelloAssembler({ maxBytes });

    const finish = (hello: ClientHelloResult): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('end', onEnd);
      socket.off('close', onClose);
      socket.off('error', onError);
      socket.pause();
      resolve({ hello, buffered });
    };
    const onData = (chunk: Buffer): void => {
      if (done) return;
      buffered.push(chunk);
      received += chunk.length;
      const copy = Math.min(chunk.length, maxBytes - joinedLength);
      if (joinedLength + copy > joined.length) {
        const grown = Buffer.allocUnsafe(
          Math.min(maxBytes, Math.max(joinedLength + copy, joined.length * 2)),
        );
        joined.copy(grown, 0, 0, joinedLength);
        joined = grown;
      }
      chunk.copy(joined, joinedLength, 0, copy);
      joinedLength += copy;
      if (joinedLength < atLeast) return;
      const peeked = assembler.peek(joined.subarray(0, joinedLength));
      if (peeked.state !== 'need-more') {
        finish(peeked);
        return;
      }
      atLeast = peeked.atLeast;
      // Unreachable while peek() keeps atLeast <= maxBytes; a guard, because this bound is the point.
      if (joinedLength >= maxBytes) finish(tooLarge(maxBytes));
    };
    const onEnd = (): void =>
      finish(invalid(`connection ended after ${received} bytes, before the ClientHello was complete`));
    const onClose = (): void =>
      finish(invalid(`connection closed after ${received} bytes, before the ClientHello was complete`));
    const onError = (err: Error): void =>
      finish(
        invalid(
          `socket error before the ClientHello was complete: ${(err as NodeJS.ErrnoException).code ?? err.message}`,
        ),
      );
    const timer = setTimeout(
      () => finish(invalid(`no complete ClientHello within ${timeoutMs} ms (${received} bytes read)`)),
      timeoutMs,
    );

    socket.on('data', onData);
    socket.on('end', onEnd);
    socket.on('close', onClose);
    socket.on('error', onError);
    if (socket.destroyed) onClose();
  });
}
