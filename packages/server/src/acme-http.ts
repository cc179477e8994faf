// One HTTPS exchange with an ACME server (RFC 8555 wants HTTPS): node:https, so that a private CA
// (ca_file: step-ca, pebble) can be trusted, with a timeout and a cap on what is read back.
import type { IncomingHttpHeaders } from 'node:http';
import { request } from 'node:https';

/** More than any directory, order, authorization or certificate chain is. */
const MAX_RESPONSE_BYTES = 1024 * 1024;

export interface AcmeResponse {
  status: number;
  headers: IncomingHttpHeaders;
  body: Buffer;
}

export interface AcmeRequest {
  method: 'GET' | 'HEAD' | 'POST';
  /** A JWS (flattened JSON), sent as application/jose+json. */
  body?: string;
  /** The CA certificates to trust instead of the system's. */
  ca: Buffer | undefined;
  timeoutMs: number;
  signal: AbortSignal;
}

export function acmeExchange(url: string, req: AcmeRequest): Promise<AcmeResponse> {
  return new Promise((resolve, reject) => {
    const headers: Record<string, string> = { 'user-agent': 'porthole-server (acme)' };
    if (req.body !== undefined) headers['content-type'] = 'application/jose+json';
    const outgoing = request(url, {
      method: req.method,
      headers,
      signal: req.signal,
      ...(req.ca === undefined ? {} : { ca: req.ca }),
    });
    const timer = setTimeout(
      () => outgoing.destroy(new Error(`no answer from ${url} within ${req.timeoutMs} ms`)),
      req.timeoutMs,
    );
    timer.unref();
    outgoing.on('error', (err) => {
      clearTimeout(timer);
      reject(new Error(`${req.method} ${url}: ${err.message}`));
    });
    outgoing.on('response', (res) => {
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > MAX_RESPONSE_BYTES)
          outgoing.destroy(new Error(`answer larger than ${MAX_RESPONSE_BYTES} bytes`));
        else chunks.push(chunk);
      });
      res.on('end', () => {
        clearTimeout(timer);
        resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) });
      });
      res.on('error', (err) => {
        clearTimeout(timer);
        reject(new Error(`${req.method} ${url}: ${err.message}`));
      });
    });
    outgoing.end(req.body);
  });
}
