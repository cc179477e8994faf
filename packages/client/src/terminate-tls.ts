// A proxy's `terminate_tls`: the client ends the visitor's TLS itself, with a certificate and key kept on this
// machine (frp's https2http and https2https plugins, stunnel in front of a plain service). The server only
// routes the encrypted bytes (by SNI for a tls proxy), so it never sees the plaintext nor holds the key.
import type { Duplex } from 'node:stream';
import { createSecureContext, type SecureContext, TLSSocket } from 'node:tls';
import { durationAboveZero, expected, formatDuration, type PemPair } from '@porthole/protocol';
import { z } from 'zod';

/** A visitor that has not finished its handshake by then is dropped (unless handshake_timeout says otherwise). */
export const DEFAULT_VISITOR_HANDSHAKE_TIMEOUT_MS = 10_000;

export const terminateTlsField = z.strictObject(
  {
    cert_file: z.string({ error: expected('a file path') }),
    key_file: z.string({ error: expected('a file path') }),
    handshake_timeout: durationAboveZero('drop every visitor').optional(),
  },
  { error: expected('a table like { cert_file = "fullchain.pem", key_file = "privkey.pem" }') },
);

export type RawTerminateTls = z.output<typeof terminateTlsField>;

export interface TerminateTls {
  /** As resolved next to the config file. */
  certFile: string;
  keyFile: string;
  /** The files' contents when the config was loaded (or reloaded): checked to make a pair TLS can use. */
  pair: PemPair;
  handshakeTimeoutMs: number;
}

/** Built once per loaded pair: every visitor of the proxy reuses it, and a reload's new pair gets its own. */
const contexts = new WeakMap<PemPair, SecureContext>();

function secureContextOf(pair: PemPair): SecureContext {
  let context = contexts.get(pair);
  if (!context) {
    context = createSecureContext({ cert: pair.cert, key: pair.key });
    contexts.set(pair, context);
  }
  return context;
}

/** The visitor's handshake failed or did not end in time; the message says which and why. */
export class VisitorTlsError extends Error {}

/**
 * Runs the server side of TLS over `stream`, whose next bytes are the visitor's ClientHello. Resolves with the
 * socket that carries the plaintext once the handshake is done; rejects with a VisitorTlsError (the TLS
 * socket destroyed, `stream` with it) on a failed handshake, on the visitor leaving, or after the timeout.
 */
export function endVisitorTls(stream: Duplex, tls: TerminateTls): Promise<TLSSocket> {
  const socket = new TLSSocket(stream, { isServer: true, secureContext: secureContextOf(tls.pair) });
  // The TLS socket's end is the stream's: a visitor gone (or reset) mid-connection must not leave it open.
  socket.once('close', () => stream.destroy());
  return new Promise((resolve, reject) => {
    const fail = (reason: string) => {
      clearTimeout(timer);
      socket.off('secure', secured);
      socket.off('error', failed);
      socket.off('close', closed);
      // Errors of the destroy itself have no one left to hear them.
      socket.on('error', () => {});
      socket.destroy();
      reject(new VisitorTlsError(reason));
    };
    // OpenSSL's own message carries its error queue and source paths; its reason alone says what happened.
    const failed = (err: Error & { reason?: string }) => fail(`visitor TLS: ${err.reason ?? err.message}`);
    const closed = () => fail('visitor TLS: the visitor closed the connection in the handshake');
    const secured = () => {
      clearTimeout(timer);
      socket.off('error', failed);
      socket.off('close', closed);
      resolve(socket);
    };
    const timer = setTimeout(
      () => fail(`visitor TLS: no handshake within ${formatDuration(tls.handshakeTimeoutMs)}`),
      tls.handshakeTimeoutMs,
    );
    socket.once('secure', secured);
    socket.once('error', failed);
    socket.once('close', closed);
  });
}
