// The certificates the server terminates TLS with on its TLS port ([[https.certs]], and the control
// endpoint's [tls] cert), chosen by SNI from the DNS names each certificate covers.

import { createSecureContext, type SecureContext } from 'node:tls';
import { certificateNames, isIpAddressSni, normalizeRequestHost } from '@porthole/protocol';

export interface CertPair {
  cert: Buffer;
  key: Buffer;
  /** For messages: where it came from ("https.certs[0]"). */
  source: string;
}

interface LoadedCert {
  pair: CertPair;
  context: SecureContext;
  names: string[];
}

export class TlsCertStore {
  private readonly exact = new Map<string, LoadedCert>();
  /** "example.com" for a "*.example.com" certificate (TLS wildcards cover exactly one label). */
  private readonly wildcard = new Map<string, LoadedCert>();
  private readonly all: LoadedCert[] = [];

  /** Throws (with the pair's source) when a certificate or key cannot be used. */
  constructor(pairs: readonly CertPair[]) {
    for (const pair of pairs) {
      let loaded: LoadedCert;
      try {
        loaded = {
          pair,
          context: createSecureContext({ cert: pair.cert, key: pair.key }),
          names: certificateNames(pair.cert),
        };
      } catch (err) {
        throw new Error(`${pair.source}: ${(err as Error).message}`);
      }
      this.all.push(loaded);
      for (const name of loaded.names) {
        if (name.startsWith('*.')) {
          if (!this.wildcard.has(name.slice(2))) this.wildcard.set(name.slice(2), loaded);
        } else if (!this.exact.has(name)) this.exact.set(name, loaded);
      }
    }
  }

  get size(): number {
    return this.all.length;
  }

  /** The pairs loaded, in the order given. */
  get pairs(): readonly CertPair[] {
    return this.all.map((loaded) => loaded.pair);
  }

  /** The names each pair's certificate covers, in the order given (read once, when the pairs were loaded). */
  get namesByPair(): readonly (readonly string[])[] {
    return this.all.map((loaded) => loaded.names);
  }

  /** Every name covered, for logs. */
  get names(): string[] {
    return [...this.exact.keys(), ...[...this.wildcard.keys()].map((n) => `*.${n}`)];
  }

  /** A certificate names `host` itself (not through a wildcard). */
  hasExact(host: string): boolean {
    return this.exact.has(host);
  }

  private find(host: string): LoadedCert | undefined {
    const exact = this.exact.get(host);
    if (exact) return exact;
    const dot = host.indexOf('.');
    return dot > 0 ? this.wildcard.get(host.slice(dot + 1)) : undefined;
  }

  /** Some certificate covers `host` (exactly or by a wildcard). */
  covers(host: string): boolean {
    return this.find(host) !== undefined;
  }

  /** The certificate a handshake without SNI (or with an unknown name) is answered with. */
  defaultPair(host: string | undefined): CertPair | undefined {
    return (host === undefined ? undefined : this.find(host))?.pair ?? this.all[0]?.pair;
  }

  /**
   * For tls.Server's SNICallback. The name is read as the TLS port decided by it (normalizeRequestHost):
   * a client that sends the fully qualified "app.example.com." (openssl s_client -servername does) was
   * sent here to be terminated, and must get the certificate for "app.example.com", not a failed handshake.
   */
  readonly sniCallback = (servername: string, callback: (err: Error | null, ctx?: SecureContext) => void) => {
    // An IP address was read as no SNI (default_host's decision): the server's default certificate answers.
    if (isIpAddressSni(servername)) return callback(null);
    const name = normalizeRequestHost(servername);
    const found = name === undefined ? undefined : this.find(name);
    if (found) callback(null, found.context);
    else callback(new Error(`no certificate for "${servername}"`));
  };
}
