// A proxy's `local_tls`: the client speaks TLS to a local service that listens only with TLS (Proxmox on
// 8006, UniFi on 8443, a NAS's admin UI), as frp's http2https and https2https plugins do. Visitors of an
// http proxy then see the server's certificate, not the service's self-signed one.
import { isIP, type Socket } from 'node:net';
import {
  checkServerIdentity,
  createSecureContext,
  type PeerCertificate,
  rootCertificates,
  type SecureContext,
  type TLSSocket,
  connect as tlsConnect,
} from 'node:tls';
import { expected, type HostPort } from '@porthole/protocol';
import { z } from 'zod';
import { UNTRUSTED_CERTIFICATE } from './connect-error.js';

export interface LocalTls {
  /** SNI and the name the certificate must hold; absent: the local host (for an IP, its IP SAN, no SNI). */
  serverName?: string;
  /** local_tls.ca_file as resolved; its certificates, trusted besides Node's CA store, in `ca`. */
  caFile?: string;
  ca?: Buffer;
  /** The leaf certificate's SHA-256 as Node's fingerprint256 writes it ("AB:CD:..."): replaces the chain check. */
  fingerprint?: string;
  /** Nothing is checked (frp's default): warned about at start and on every reload. */
  insecureSkipVerify: boolean;
}

/** "sha256:AB:CD:...", openssl's "sha256 Fingerprint=AB:CD:..." or plain hex; any case, colons or none. */
const FINGERPRINT = /^(?:sha-?256(?::|\s+fingerprint=))?\s*((?:[0-9a-f]{2}:?){31}[0-9a-f]{2})\s*$/i;

/** A fingerprint as config takes it, in Node's fingerprint256 spelling; undefined when it is not one. */
export function parseFingerprint(text: string): string | undefined {
  const hex = FINGERPRINT.exec(text)?.[1]?.replaceAll(':', '');
  if (hex?.length !== 64) return undefined;
  return hex.toUpperCase().match(/../g)!.join(':');
}

const localTlsTable = z
  .strictObject({
    server_name: z
      .string({ error: expected('a hostname like "pve.lan"') })
      .regex(/^[A-Za-z0-9.-]+$|^[0-9a-fA-F:.]+$/, 'must be a hostname like "pve.lan" or an IP address')
      .optional(),
    ca_file: z.string({ error: expected('a file path') }).optional(),
    fingerprint: z
      .string({ error: expected('a SHA-256 fingerprint like "sha256:AB:CD:..."') })
      // A refinement, not a failed transform: inside local_tls's union only its issue names the key.
      .refine(
        (text) => parseFingerprint(text) !== undefined,
        'must be a SHA-256 fingerprint: 32 bytes in hex, with or without colons, as `openssl x509 -noout -fingerprint -sha256` prints it',
      )
      .transform((text) => parseFingerprint(text)!)
      .optional(),
    insecure_skip_verify: z.boolean({ error: expected('true or false') }).optional(),
  })
  .superRefine((table, ctx) => {
    const issue = (key: string, message: string) => ctx.addIssue({ code: 'custom', path: [key], message });
    // Each replaces the chain check the other keys feed: set together, one would be ignored without a word.
    if (table.insecure_skip_verify === true && table.fingerprint !== undefined)
      issue('insecure_skip_verify', 'set fingerprint or insecure_skip_verify = true, not both');
    if (table.ca_file !== undefined && table.fingerprint !== undefined)
      issue('ca_file', 'a fingerprint replaces the check against CAs: set ca_file or fingerprint, not both');
    if (table.ca_file !== undefined && table.insecure_skip_verify === true)
      issue(
        'ca_file',
        'insecure_skip_verify = true checks nothing: set ca_file or insecure_skip_verify, not both',
      );
  });

/** `local_tls = true` (Node's CA store, the local host's name), `false`, or a table of settings. */
export const localTlsField = z.union([z.boolean(), localTlsTable], {
  error: (issue) =>
    issue.code === 'invalid_union'
      ? 'expected true or a table like { server_name = "pve.lan", ca_file = "pve.pem" }'
      : undefined,
});

export type RawLocalTls = z.output<typeof localTlsField>;

/** The settings of a raw `local_tls`, or undefined for none; ca_file is read by the config loader. */
export function toLocalTls(raw: RawLocalTls | undefined): LocalTls | undefined {
  if (raw === undefined || raw === false) return undefined;
  if (raw === true) return { insecureSkipVerify: false };
  const tls: LocalTls = { insecureSkipVerify: raw.insecure_skip_verify ?? false };
  if (raw.server_name !== undefined) tls.serverName = raw.server_name;
  if (raw.ca_file !== undefined) tls.caFile = raw.ca_file;
  if (raw.fingerprint !== undefined) tls.fingerprint = raw.fingerprint;
  return tls;
}

/**
 * Node's CA store with ca_file's certificates added (a `ca` alone would replace the store), built once per
 * settings: each connection of the proxy reuses it.
 */
const contexts = new WeakMap<LocalTls, SecureContext>();

function secureContextOf(tls: LocalTls): SecureContext | undefined {
  if (!tls.ca) return undefined;
  let context = contexts.get(tls);
  if (!context) {
    context = createSecureContext({ ca: [...rootCertificates, tls.ca.toString('latin1')] });
    contexts.set(tls, context);
  }
  return context;
}

/** The name the certificate is checked against: server_name, else the local host. */
function checkedName(local: HostPort, tls: LocalTls): string {
  return tls.serverName ?? local.host;
}

/**
 * The options of tls.connect for `local` under `tls`. A fingerprint or insecure_skip_verify turns Node's
 * chain check off; a fingerprint is compared once the handshake is done (see startLocalTls).
 */
export function localTlsOptions(local: HostPort, tls: LocalTls) {
  const name = checkedName(local, tls);
  const context = secureContextOf(tls);
  return {
    host: local.host,
    port: local.port,
    // SNI carries names only (RFC 6066): an IP address is checked against the certificate's IP SANs.
    ...(isIP(name) === 0 ? { servername: name } : {}),
    ...(context ? { secureContext: context } : {}),
    rejectUnauthorized: tls.fingerprint === undefined && !tls.insecureSkipVerify,
    checkServerIdentity: (_host: string, cert: PeerCertificate) => checkServerIdentity(name, cert),
  };
}

/** A TLS handshake with the local service failed or its certificate was refused; the message says why. */
export class LocalTlsError extends Error {
  constructor(
    message: string,
    readonly code: string | undefined,
  ) {
    super(message);
  }
}

/**
 * Starts TLS on `socket`, connected to `local` (after the PROXY header, if any, which goes first in clear as
 * nginx and HAProxy read it). `secured` resolves once the certificate passed; on a failure it rejects with
 * a LocalTlsError, and the TLS socket is destroyed. Destroying `tlsSocket` abandons it.
 */
export function startLocalTls(
  socket: Socket,
  local: HostPort,
  tls: LocalTls,
): { tlsSocket: TLSSocket; secured: Promise<TLSSocket> } {
  const tlsSocket = tlsConnect({ socket, ...localTlsOptions(local, tls) });
  const secured = new Promise<TLSSocket>((resolve, reject) => {
    const settle = () => {
      tlsSocket.off('error', failed);
      tlsSocket.off('close', closed);
    };
    const fail = (err: LocalTlsError) => {
      settle();
      // Errors of the destroy itself have no one left to hear them.
      tlsSocket.on('error', () => {});
      tlsSocket.destroy();
      socket.destroy();
      reject(err);
    };
    const failed = (err: NodeJS.ErrnoException) =>
      fail(new LocalTlsError(describeLocalTlsError(err, tls), err.code));
    const closed = () =>
      fail(new LocalTlsError('local TLS: the service closed the connection in the handshake', 'ECONNRESET'));
    tlsSocket.once('secureConnect', () => {
      const pinned = tls.fingerprint;
      const seen = tlsSocket.getPeerCertificate().fingerprint256;
      if (pinned !== undefined && seen !== pinned) {
        fail(
          new LocalTlsError(
            `local TLS: the certificate's SHA-256 fingerprint is ${seen}, not local_tls.fingerprint's ${pinned} (a new certificate? see README)`,
            'ERR_TLS_FINGERPRINT_MISMATCH',
          ),
        );
        return;
      }
      settle();
      resolve(tlsSocket);
    });
    tlsSocket.once('error', failed);
    tlsSocket.once('close', closed);
  });
  // A caller that gave up (a timeout, its visitor gone) destroys tlsSocket and does not wait for this.
  secured.catch(() => {});
  return { tlsSocket, secured };
}

/**
 * A failed handshake in words that say what to set: Node's reasons are terse ("self-signed certificate"),
 * and where the fix is a key of local_tls, that key is named.
 */
export function describeLocalTlsError(err: NodeJS.ErrnoException, tls: LocalTls): string {
  const reason = (err.message || err.code || String(err)).trim();
  const code = err.code;
  let hint = '';
  if (code !== undefined && UNTRUSTED_CERTIFICATE.has(code))
    hint = tls.ca
      ? ' (the certificate is not signed by the CA in local_tls.ca_file, nor one this machine trusts: is ca_file the certificate the service sends, or its CA? see README)'
      : ' (set local_tls.ca_file or local_tls.fingerprint, see README)';
  else if (code === 'ERR_TLS_CERT_ALTNAME_INVALID')
    hint = tls.serverName
      ? " (local_tls.server_name must be one of the certificate's names)"
      : " (set local_tls.server_name to one of the certificate's names)";
  else if (code === 'CERT_HAS_EXPIRED' || code === 'CERT_NOT_YET_VALID')
    hint = " (renew the service's certificate, or pin it with local_tls.fingerprint)";
  else if (/wrong version number|packet length too long|unknown protocol/.test(reason))
    hint =
      ' (the service did not answer in TLS: does it speak plain HTTP or TCP on this port? then leave local_tls out)';
  return `local TLS: ${reason}${hint}`;
}
