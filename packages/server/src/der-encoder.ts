// The few DER (X.690) shapes a PKCS#10 certificate request is made of. Node has no CSR API, and these
// are all the ACME client needs; each returns the whole TLV, so they nest as the ASN.1 does.

function tlv(tag: number, content: Buffer): Buffer {
  const length = content.length;
  let head: Buffer;
  if (length < 0x80) head = Buffer.from([tag, length]);
  else {
    const bytes: number[] = [];
    for (let rest = length; rest > 0; rest = Math.floor(rest / 256)) bytes.unshift(rest & 0xff);
    head = Buffer.from([tag, 0x80 | bytes.length, ...bytes]);
  }
  return Buffer.concat([head, content]);
}

export const derSequence = (...items: Buffer[]): Buffer => tlv(0x30, Buffer.concat(items));
export const derSet = (...items: Buffer[]): Buffer => tlv(0x31, Buffer.concat(items));
export const derOctetString = (content: Buffer): Buffer => tlv(0x04, content);
export const derUtf8String = (text: string): Buffer => tlv(0x0c, Buffer.from(text, 'utf8'));
/** A BIT STRING of whole bytes (no unused bits), as signatures and keys are. */
export const derBitString = (content: Buffer): Buffer =>
  tlv(0x03, Buffer.concat([Buffer.from([0]), content]));
/** [n] IMPLICIT, constructed (a SET OF or SEQUENCE whose tag is replaced). */
export const derContextConstructed = (n: number, ...items: Buffer[]): Buffer =>
  tlv(0xa0 | n, Buffer.concat(items));
/** [n] IMPLICIT, primitive (a GeneralName's dNSName is [2] IA5String). */
export const derContextPrimitive = (n: number, content: Buffer): Buffer => tlv(0x80 | n, content);

/** A small non-negative INTEGER (a version number). */
export function derSmallInteger(value: number): Buffer {
  if (!Number.isInteger(value) || value < 0 || value > 127) throw new RangeError(`${value} is not 0..127`);
  return tlv(0x02, Buffer.from([value]));
}

/** An OBJECT IDENTIFIER from its dotted form ("2.5.4.3"). */
export function derObjectIdentifier(dotted: string): Buffer {
  const arcs = dotted.split('.').map(Number);
  if (arcs.length < 2 || arcs.some((arc) => !Number.isSafeInteger(arc) || arc < 0))
    throw new RangeError(`"${dotted}" is not an object identifier`);
  const bytes: number[] = [];
  for (const arc of [arcs[0]! * 40 + arcs[1]!, ...arcs.slice(2)]) {
    const base128 = [arc & 0x7f];
    for (let rest = Math.floor(arc / 128); rest > 0; rest = Math.floor(rest / 128))
      base128.unshift(0x80 | (rest & 0x7f));
    bytes.push(...base128);
  }
  return tlv(0x06, Buffer.from(bytes));
}
