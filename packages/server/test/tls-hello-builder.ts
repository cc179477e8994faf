// Builds ClientHellos field by field, for cases real clients never send (bad lengths, duplicates, odd
// record splits) and for the generator in the fuzz tests. Written from RFC 8446 4.1.2 / RFC 6066 / RFC 7301,
// independently of the parser under test.

export interface HelloSpec {
  legacyVersion?: number;
  random?: Buffer;
  sessionId?: Buffer;
  /** Raw cipher_suites bytes (2 per suite). */
  cipherSuites?: Buffer;
  compressionMethods?: Buffer;
  /** undefined: no extensions block at all (pre-TLS-1.2 style). */
  extensions?: Array<[type: number, data: Buffer]>;
  /** Override the extensions block length field. */
  extensionsLengthOverride?: number;
  handshakeType?: number;
  /** Override the handshake length field. */
  handshakeLengthOverride?: number;
}

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

function u24(n: number): Buffer {
  const b = Buffer.alloc(3);
  b.writeUIntBE(n, 0, 3);
  return b;
}

export function serverNameExtension(
  names: Array<[nameType: number, name: Buffer | string]>,
): [number, Buffer] {
  const entries = Buffer.concat(
    names.map(([type, name]) => {
      const bytes = typeof name === 'string' ? Buffer.from(name, 'latin1') : name;
      return Buffer.concat([Buffer.from([type]), u16(bytes.length), bytes]);
    }),
  );
  return [0x0000, Buffer.concat([u16(entries.length), entries])];
}

export function alpnExtension(protocols: Array<Buffer | string>): [number, Buffer] {
  const list = Buffer.concat(
    protocols.map((p) => {
      const bytes = typeof p === 'string' ? Buffer.from(p, 'latin1') : p;
      return Buffer.concat([Buffer.from([bytes.length]), bytes]);
    }),
  );
  return [0x0010, Buffer.concat([u16(list.length), list])];
}

/** The ClientHello handshake message (4-byte handshake header + body), not yet in records. */
export function clientHelloMessage(spec: HelloSpec = {}): Buffer {
  const sessionId = spec.sessionId ?? Buffer.alloc(32, 7);
  const cipherSuites = spec.cipherSuites ?? Buffer.from([0x13, 0x01, 0x13, 0x02]);
  const compression = spec.compressionMethods ?? Buffer.from([0]);
  const parts = [
    u16(spec.legacyVersion ?? 0x0303),
    spec.random ?? Buffer.alloc(32, 1),
    Buffer.from([sessionId.length]),
    sessionId,
    u16(cipherSuites.length),
    cipherSuites,
    Buffer.from([compression.length]),
    compression,
  ];
  if (spec.extensions !== undefined) {
    const block = Buffer.concat(
      spec.extensions.map(([type, data]) => Buffer.concat([u16(type), u16(data.length), data])),
    );
    parts.push(u16(spec.extensionsLengthOverride ?? block.length), block);
  }
  const body = Buffer.concat(parts);
  return Buffer.concat([
    Buffer.from([spec.handshakeType ?? 1]),
    u24(spec.handshakeLengthOverride ?? body.length),
    body,
  ]);
}

/** Wraps handshake bytes in handshake records (content type 22, version 3.1) of the given payload sizes. */
export function inRecords(message: Buffer, recordSizes?: number[]): Buffer {
  const sizes = recordSizes ?? [message.length];
  const records: Buffer[] = [];
  let offset = 0;
  for (const size of sizes) {
    const piece = message.subarray(offset, offset + size);
    records.push(Buffer.from([0x16, 0x03, 0x01]), u16(piece.length), piece);
    offset += piece.length;
  }
  if (offset < message.length) throw new Error('record sizes do not cover the message');
  return Buffer.concat(records);
}

export function clientHello(spec: HelloSpec = {}, recordSizes?: number[]): Buffer {
  return inRecords(clientHelloMessage(spec), recordSizes);
}
