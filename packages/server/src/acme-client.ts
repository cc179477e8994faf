// The client side of ACME (RFC 8555) for http-01: directory, nonces, the account, and one order from
// newOrder to the downloaded chain. Requests are JWS (ES256): `jwk` for newAccount, `kid` after.
import type { KeyObject } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, FlattenedSign, type JWK } from 'jose';
import { type AcmeResponse, acmeExchange } from './acme-http.js';

/** A `badNonce` is answered with a fresh nonce and tried again this many times (pebble refuses 5% on purpose). */
const BAD_NONCE_RETRIES = 3;
/** Each exchange with the CA. */
const REQUEST_TIMEOUT_MS = 30_000;
/** Polls of one authorization or order: at most this many, for at most this long together. */
const MAX_POLLS = 30;
const MAX_POLL_MS = 3 * 60_000;
/** Between polls when the CA names no Retry-After, and the most a Retry-After is honoured for. */
const DEFAULT_POLL_MS = 1_000;
const MAX_RETRY_AFTER_MS = 30_000;

/** A problem document (RFC 7807) the CA answered with, or a failed validation's error. */
export class AcmeProblem extends Error {
  constructor(
    readonly type: string,
    readonly detail: string,
    readonly status: number,
  ) {
    super(`${detail} (${type})`);
  }
}

/** Where the http-01 answers are held while the CA validates (the [http] port serves them). */
export interface ChallengeHolder {
  add(token: string, domain: string, keyAuthorization: string): void;
  remove(token: string): void;
}

export interface AcmeClientOptions {
  directoryUrl: string;
  /** The account's key (ES256: P-256). */
  accountKey: KeyObject;
  email: string | undefined;
  ca: Buffer | undefined;
}

interface Directory {
  newNonce: string;
  newAccount: string;
  newOrder: string;
}

interface Order {
  status: string;
  authorizations: string[];
  finalize: string;
  certificate?: string;
  error?: ProblemJson;
}

interface ProblemJson {
  type?: string;
  detail?: string;
}

interface Challenge {
  type: string;
  url: string;
  token: string;
  status: string;
  error?: ProblemJson;
}

interface Authorization {
  status: string;
  identifier: { value: string };
  challenges: Challenge[];
}

const base64url = (data: Buffer) => data.toString('base64url');

function problemOf(res: AcmeResponse): AcmeProblem {
  let json: ProblemJson = {};
  try {
    json = JSON.parse(res.body.toString('utf8')) as ProblemJson;
  } catch {}
  return new AcmeProblem(
    json.type ?? 'about:blank',
    json.detail ?? (res.body.toString('utf8').slice(0, 200) || `HTTP ${res.status}`),
    res.status,
  );
}

function problemFrom(json: ProblemJson | undefined, fallback: string): AcmeProblem {
  return new AcmeProblem(json?.type ?? 'about:blank', json?.detail ?? fallback, 0);
}

/** Retry-After (seconds or an HTTP date) in ms, within [0, MAX_RETRY_AFTER_MS]; absent: the default. */
export function retryAfterMs(header: string | undefined, now = Date.now()): number {
  if (header === undefined) return DEFAULT_POLL_MS;
  const seconds = Number(header);
  const ms = Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - now;
  if (!Number.isFinite(ms)) return DEFAULT_POLL_MS;
  return Math.min(MAX_RETRY_AFTER_MS, Math.max(0, ms));
}

function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const timer = setTimeout(done, ms);
    function done() {
      signal.removeEventListener('abort', aborted);
      resolve();
    }
    function aborted() {
      clearTimeout(timer);
      reject(signal.reason);
    }
    signal.addEventListener('abort', aborted, { once: true });
  });
}

export class AcmeClient {
  private directory: Directory | undefined;
  private nonce: string | undefined;
  private accountUrl: string | undefined;
  private jwk: JWK | undefined;
  private thumbprint: string | undefined;

  constructor(private readonly opts: AcmeClientOptions) {}

  /** newOrder .. certificate for one name; resolves with the PEM chain. Aborted by `signal`. */
  async issue(domain: string, csr: Buffer, holder: ChallengeHolder, signal: AbortSignal): Promise<string> {
    await this.ensureAccount(signal);
    const directory = this.directory!;
    const created = await this.post(
      directory.newOrder,
      { identifiers: [{ type: 'dns', value: domain }] },
      signal,
    );
    const orderUrl = headerOf(created, 'location');
    let order = json<Order>(created);
    for (const authorizationUrl of order.authorizations) {
      await this.authorize(authorizationUrl, holder, signal);
    }
    order = await this.poll<Order>(orderUrl, signal, (o) => o.status !== 'pending', 'order');
    if (order.status === 'ready') {
      const finalized = await this.post(order.finalize, { csr: base64url(csr) }, signal);
      order = json<Order>(finalized);
      if (order.status !== 'valid')
        order = await this.poll<Order>(orderUrl, signal, (o) => o.status !== 'processing', 'order');
    }
    if (order.status !== 'valid' || order.certificate === undefined)
      throw problemFrom(order.error, `the order is ${order.status}, not valid`);
    const chain = await this.post(order.certificate, '', signal);
    return chain.body.toString('utf8');
  }

  /** Proves control of one authorization's name over http-01 (nothing to do when it is valid already). */
  private async authorize(url: string, holder: ChallengeHolder, signal: AbortSignal): Promise<void> {
    const authorization = json<Authorization>(await this.post(url, '', signal));
    if (authorization.status === 'valid') return;
    const challenge = authorization.challenges.find((c) => c.type === 'http-01');
    if (!challenge) throw new AcmeProblem('about:blank', 'the CA offers no http-01 challenge', 0);
    const domain = authorization.identifier.value;
    holder.add(challenge.token, domain, `${challenge.token}.${this.thumbprint}`);
    try {
      await this.post(challenge.url, {}, signal);
      const done = await this.poll<Authorization>(
        url,
        signal,
        (a) => a.status !== 'pending',
        'authorization',
      );
      if (done.status !== 'valid') {
        const failed = done.challenges.find((c) => c.type === 'http-01');
        throw problemFrom(failed?.error, `the authorization for ${domain} is ${done.status}`);
      }
    } finally {
      holder.remove(challenge.token);
    }
  }

  /** POST-as-GET `url` until `settled` says so; bounded in count and time, honouring Retry-After. */
  private async poll<T>(
    url: string,
    signal: AbortSignal,
    settled: (value: T) => boolean,
    what: string,
  ): Promise<T> {
    const deadline = performance.now() + MAX_POLL_MS;
    for (let i = 0; i < MAX_POLLS; i++) {
      const res = await this.post(url, '', signal);
      const value = json<T>(res);
      if (settled(value)) return value;
      const wait = retryAfterMs(headerOf(res, 'retry-after', false));
      if (performance.now() + wait > deadline) break;
      await abortableSleep(wait, signal);
    }
    throw new AcmeProblem(
      'about:blank',
      `the ${what} at ${url} did not settle in ${MAX_POLLS} polls or ${MAX_POLL_MS / 1000} s`,
      0,
    );
  }

  private async ensureAccount(signal: AbortSignal): Promise<void> {
    if (this.accountUrl !== undefined) return;
    if (this.directory === undefined) {
      const res = await this.exchange(this.opts.directoryUrl, 'GET', undefined, signal);
      if (res.status !== 200) throw problemOf(res);
      const directory = json<Directory>(res);
      for (const key of ['newNonce', 'newAccount', 'newOrder'] as const)
        if (typeof directory[key] !== 'string')
          throw new Error(`${this.opts.directoryUrl} is not an ACME directory (no ${key})`);
      this.directory = directory;
    }
    if (this.jwk === undefined) {
      const { d: _private, ...publicJwk } = await exportJWK(this.opts.accountKey);
      this.jwk = publicJwk;
      this.thumbprint = await calculateJwkThumbprint(publicJwk, 'sha256');
    }
    const payload = {
      termsOfServiceAgreed: true,
      ...(this.opts.email === undefined ? {} : { contact: [`mailto:${this.opts.email}`] }),
    };
    const res = await this.post(this.directory.newAccount, payload, signal, 'jwk');
    this.accountUrl = headerOf(res, 'location');
  }

  /** A signed POST (`''`: POST-as-GET); a badNonce is tried again with the nonce it came with. */
  private async post(
    url: string,
    payload: object | '',
    signal: AbortSignal,
    identify: 'jwk' | 'kid' = 'kid',
  ): Promise<AcmeResponse> {
    for (let attempt = 0; ; attempt++) {
      const nonce = this.nonce ?? (await this.freshNonce(signal));
      this.nonce = undefined;
      const header = {
        alg: 'ES256',
        nonce,
        url,
        ...(identify === 'jwk' ? { jwk: this.jwk! } : { kid: this.accountUrl! }),
      };
      const body = payload === '' ? new Uint8Array(0) : Buffer.from(JSON.stringify(payload));
      const jws = await new FlattenedSign(body).setProtectedHeader(header).sign(this.opts.accountKey);
      const res = await this.exchange(url, 'POST', JSON.stringify(jws), signal);
      if (res.status < 400) return res;
      const problem = problemOf(res);
      if (problem.type !== 'urn:ietf:params:acme:error:badNonce' || attempt >= BAD_NONCE_RETRIES)
        throw problem;
    }
  }

  private async freshNonce(signal: AbortSignal): Promise<string> {
    const res = await this.exchange(this.directory!.newNonce, 'HEAD', undefined, signal);
    const nonce = this.nonce;
    this.nonce = undefined;
    if (nonce === undefined)
      throw new Error(`${this.directory!.newNonce} answered ${res.status} without a Replay-Nonce`);
    return nonce;
  }

  /** Every answer's Replay-Nonce is kept for the next request. */
  private async exchange(
    url: string,
    method: 'GET' | 'HEAD' | 'POST',
    body: string | undefined,
    signal: AbortSignal,
  ): Promise<AcmeResponse> {
    const res = await acmeExchange(url, {
      method,
      ...(body === undefined ? {} : { body }),
      ca: this.opts.ca,
      timeoutMs: REQUEST_TIMEOUT_MS,
      signal,
    });
    const nonce = res.headers['replay-nonce'];
    if (typeof nonce === 'string' && nonce !== '') this.nonce = nonce;
    return res;
  }
}

function headerOf(res: AcmeResponse, name: string): string;
function headerOf(res: AcmeResponse, name: string, required: false): string | undefined;
function headerOf(res: AcmeResponse, name: string, required = true): string | undefined {
  const value = res.headers[name];
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined && required)
    throw new Error(`the CA answered ${res.status} without a ${name} header`);
  return text;
}

function json<T>(res: AcmeResponse): T {
  try {
    return JSON.parse(res.body.toString('utf8')) as T;
  } catch {
    throw new Error(`the CA answered ${res.status} with something other than JSON`);
  }
}
