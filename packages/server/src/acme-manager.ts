// Keeps a certificate for each [https.acme] name: loads the stored one at start, orders one when there is
// none or it is due for renewal, retries failures with a growing wait, and hands the TLS port a store
// with the ACME certificates beside the explicit ones ([[https.certs]] win for the names they cover).
import { X509Certificate } from 'node:crypto';
import type { Logger } from '@porthole/protocol';
import { AcmeChallenges } from './acme-challenges.js';
import { AcmeClient, AcmeProblem } from './acme-client.js';
import type { AcmeSettings } from './acme-config.js';
import { certificateRequest, newCertificateKey } from './acme-csr.js';
import { checkDelay, renewalDue, retryDelay } from './acme-schedule.js';
import { AcmeStorage, type StoredCertificate } from './acme-storage.js';
import { sameBuffer } from './buffers-equal.js';
import { type CertPair, TlsCertStore } from './tls-cert-store.js';

interface DomainState {
  readonly domain: string;
  readonly abort: AbortController;
  timer: NodeJS.Timeout | undefined;
  /** Failed orders in a row. */
  failures: number;
  served: (StoredCertificate & { pair: CertPair }) | undefined;
}

export interface AcmeCertificateView {
  domain: string;
  /** null: none served yet (or the name is a [[https.certs]] one). */
  expires_at: string | null;
  /** Failed orders in a row (0 after a success). */
  failures: number;
}

export interface AcmeManagerOptions {
  logger: Logger;
  /** The explicit certificates ([[https.certs]], [tls]) of the running config. */
  explicit: () => TlsCertStore;
  /** The certificates served changed (the TLS port's default certificate may follow). */
  onChange: () => void;
}

const iso = (ms: number) => new Date(ms).toISOString();
/**
 * The least wait after a certificate is issued before it is looked at again: a CA that backdates
 * notBefore by most of a short lifetime would otherwise have it ordered again at once, over and over.
 */
const MIN_WAIT_AFTER_ISSUE_MS = 5_000;

export class AcmeManager {
  /** The [http] port answers these before routing. */
  readonly challenges = new AcmeChallenges();
  private readonly domains = new Map<string, DomainState>();
  private settings: AcmeSettings;
  private storage: AcmeStorage;
  private client: Promise<AcmeClient> | undefined;
  private version = 0;
  private merged: { explicit: TlsCertStore; version: number; store: TlsCertStore } | undefined;
  private stopped = false;

  constructor(
    settings: AcmeSettings,
    private readonly opts: AcmeManagerOptions,
  ) {
    this.settings = settings;
    this.storage = new AcmeStorage(settings.storage);
  }

  /** Begins with every name (after the [http] port listens: orders need it). */
  start(): void {
    for (const domain of this.settings.domains) this.begin(domain);
  }

  /**
   * A reload: names added are begun, names removed are no longer served (their files stay). A changed
   * directory, email, ca_file or storage applies to the orders begun from now on (a new account where the
   * key or the CA is new).
   */
  reconfigure(settings: AcmeSettings | undefined): void {
    if (this.stopped) return;
    const next = settings ?? { ...this.settings, domains: [] };
    const previous = this.settings;
    this.settings = next;
    if (
      previous.directory !== next.directory ||
      previous.email !== next.email ||
      previous.storage !== next.storage ||
      !sameBuffer(previous.ca, next.ca)
    ) {
      this.client = undefined;
      this.storage = new AcmeStorage(next.storage);
    }
    for (const [domain, state] of this.domains) {
      if (next.domains.includes(domain)) continue;
      this.forget(state);
      this.opts.logger.info({ domain }, 'acme name removed: its certificate is no longer served');
    }
    for (const domain of next.domains) if (!this.domains.has(domain)) this.begin(domain);
  }

  /** Shutdown: orders in progress are abandoned and no timer is left. */
  stop(): void {
    this.stopped = true;
    for (const state of this.domains.values()) {
      clearTimeout(state.timer);
      state.abort.abort(new Error('server stopping'));
    }
  }

  /** The explicit certificates with the ACME ones beside them; the same object until either changes. */
  storeWith(explicit: TlsCertStore): TlsCertStore {
    const merged = this.merged;
    if (merged && merged.explicit === explicit && merged.version === this.version) return merged.store;
    const extra: CertPair[] = [];
    for (const state of this.domains.values()) {
      if (state.served && !explicit.covers(state.domain)) extra.push(state.served.pair);
    }
    const store = extra.length === 0 ? explicit : new TlsCertStore([...explicit.pairs, ...extra]);
    this.merged = { explicit, version: this.version, store };
    return store;
  }

  /** For the admin API and /metrics: each name, its certificate's end (none yet: null) and failed orders in a row. */
  certificates(): AcmeCertificateView[] {
    return [...this.domains.values()].map((state) => ({
      domain: state.domain,
      expires_at: state.served ? iso(state.served.notAfter) : null,
      failures: state.failures,
    }));
  }

  private forget(state: DomainState): void {
    clearTimeout(state.timer);
    state.abort.abort(new Error('name removed from https.acme.domains'));
    this.domains.delete(state.domain);
    if (state.served) this.changed();
  }

  private changed(): void {
    this.version += 1;
    this.opts.onChange();
  }

  private begin(domain: string): void {
    const state: DomainState = {
      domain,
      abort: new AbortController(),
      timer: undefined,
      failures: 0,
      served: undefined,
    };
    this.domains.set(domain, state);
    if (this.opts.explicit().covers(domain)) {
      this.opts.logger.info(
        { domain },
        'acme name has a [[https.certs]] certificate: that one is served, none ordered',
      );
      return;
    }
    void this.loadStored(state).then(() => this.check(state));
  }

  private async loadStored(state: DomainState): Promise<void> {
    const { logger } = this.opts;
    try {
      const stored = await this.storage.certificate(state.domain);
      if (stored === undefined || state.abort.signal.aborted) return;
      if (stored.notAfter <= Date.now()) {
        logger.info(
          { domain: state.domain, expired_at: iso(stored.notAfter) },
          'acme stored certificate expired',
        );
        return;
      }
      this.serve(state, stored);
      logger.info({ domain: state.domain, expires_at: iso(stored.notAfter) }, 'acme certificate loaded');
    } catch (err) {
      logger.warn(
        { domain: state.domain, storage: this.storage.dir, reason: (err as Error).message },
        'acme stored certificate unusable: ordering a new one',
      );
    }
  }

  private serve(state: DomainState, stored: StoredCertificate): void {
    state.served = {
      ...stored,
      pair: { cert: stored.cert, key: stored.key, source: `https.acme (${state.domain})` },
    };
    this.changed();
  }

  /** Orders now when the certificate is missing or due, else looks again when it will be. */
  private check(state: DomainState, atLeastMs = 0): void {
    if (this.stopped || state.abort.signal.aborted) return;
    const due = state.served ? renewalDue(state.served.notBefore, state.served.notAfter) : 0;
    const now = Date.now();
    if (due <= now && atLeastMs === 0) void this.order(state);
    else this.wait(state, Math.max(atLeastMs, checkDelay(due, now)));
  }

  private wait(state: DomainState, ms: number): void {
    clearTimeout(state.timer);
    state.timer = setTimeout(() => this.check(state), ms);
    state.timer.unref();
  }

  private accountClient(): Promise<AcmeClient> {
    if (this.client === undefined) {
      const { directory, email, ca } = this.settings;
      const client = this.storage
        .accountKey()
        .then((accountKey) => new AcmeClient({ directoryUrl: directory, accountKey, email, ca }));
      // A failure (an unreadable key file) is tried again at the next order.
      client.catch(() => {
        if (this.client === client) this.client = undefined;
      });
      this.client = client;
    }
    return this.client;
  }

  private async order(state: DomainState): Promise<void> {
    const { logger } = this.opts;
    const started = performance.now();
    const { domain } = state;
    try {
      const client = await this.accountClient();
      const key = newCertificateKey();
      const chain = await client.issue(
        domain,
        certificateRequest(domain, key),
        this.challenges,
        state.abort.signal,
      );
      const x509 = new X509Certificate(chain);
      const stored: StoredCertificate = {
        cert: Buffer.from(chain),
        key: Buffer.from(key.export({ type: 'pkcs8', format: 'pem' })),
        notBefore: Date.parse(x509.validFrom),
        notAfter: Date.parse(x509.validTo),
      };
      if (state.abort.signal.aborted) return;
      this.serve(state, stored);
      state.failures = 0;
      logger.info(
        { domain, expires_at: iso(stored.notAfter), ms: Math.round(performance.now() - started) },
        'acme certificate issued',
      );
      await this.storage
        .saveCertificate(domain, chain, key)
        .catch((err: Error) =>
          logger.warn(
            { domain, storage: this.storage.dir, reason: err.message },
            'acme certificate not saved: it is served, and ordered again at the next start',
          ),
        );
      this.check(state, MIN_WAIT_AFTER_ISSUE_MS);
    } catch (err) {
      if (state.abort.signal.aborted || this.stopped) return;
      state.failures += 1;
      const delay = retryDelay(state.failures);
      logger.warn(
        {
          domain,
          reason: (err as Error).message,
          ...(err instanceof AcmeProblem ? { problem_type: err.type } : {}),
          failures: state.failures,
          retry_in_ms: delay,
          retry_at: iso(Date.now() + delay),
        },
        'acme order failed',
      );
      this.wait(state, delay);
    }
  }
}
