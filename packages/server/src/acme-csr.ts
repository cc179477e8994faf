// The certificate request (PKCS#10, RFC 2986) an ACME order is finalized with: one name, as the subject's
// CN and as the subjectAltName dNSName (what CAs read), and a fresh ECDSA P-256 key.
import { createPublicKey, generateKeyPairSync, type KeyObject, sign } from 'node:crypto';
import {
  derBitString,
  derContextConstructed,
  derContextPrimitive,
  derObjectIdentifier,
  derOctetString,
  derSequence,
  derSet,
  derSmallInteger,
  derUtf8String,
} from './der-encoder.js';

const OID_COMMON_NAME = '2.5.4.3';
const OID_EXTENSION_REQUEST = '1.2.840.113549.1.9.14';
const OID_SUBJECT_ALT_NAME = '2.5.29.17';
const OID_ECDSA_WITH_SHA256 = '1.2.840.10045.4.3.2';
/** GeneralName's dNSName choice. */
const DNS_NAME_TAG = 2;

/** The DER request for `domain`, signed with `privateKey` (an EC key; its public half goes in). */
export function certificateRequest(domain: string, privateKey: KeyObject): Buffer {
  const publicKeyInfo = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  const subject = derSequence(
    derSet(derSequence(derObjectIdentifier(OID_COMMON_NAME), derUtf8String(domain))),
  );
  const subjectAltName = derSequence(
    derObjectIdentifier(OID_SUBJECT_ALT_NAME),
    derOctetString(derSequence(derContextPrimitive(DNS_NAME_TAG, Buffer.from(domain, 'ascii')))),
  );
  const extensionRequest = derSequence(
    derObjectIdentifier(OID_EXTENSION_REQUEST),
    derSet(derSequence(subjectAltName)),
  );
  const info = derSequence(
    derSmallInteger(0),
    subject,
    publicKeyInfo,
    derContextConstructed(0, extensionRequest),
  );
  // crypto.sign with an EC key gives the DER (r, s) SEQUENCE that X.509 signatures hold.
  const signature = sign('sha256', info, privateKey);
  return derSequence(info, derSequence(derObjectIdentifier(OID_ECDSA_WITH_SHA256)), derBitString(signature));
}

/** A new ECDSA P-256 key for one certificate (each certificate gets its own; renewals too). */
export function newCertificateKey(): KeyObject {
  return generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey;
}
