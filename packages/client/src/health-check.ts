// A proxy's health check (frp's healthCheck): its local service is tried every `interval`, by a TCP connect
// or an HTTP GET (2xx is healthy). After `max_failed` failures in a row the client withdraws the proxy from
// the server, so a group's other members take the visitors (or, alone, visitors find nothing rather than a
// dead service); it keeps checking and registers the proxy again after one success.
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import {
  formatDuration,
  formatLocalAddress,
  isUnixSocketAddress,
  type LocalAddress,
  type Logger,
} from '@porthole/protocol';
import { type LocalTls, startLocalTls } from './local-tls.js';
import { isDirectoryLocal, isForwardProxyLocal, type ProxyConfig } from './proxy-config.js';

export interface HealthCheckConfig {
  type: 'tcp' | 'http';
  intervalMs: number;
  timeoutMs: number;
  /** Failures in a row that make the service unhealthy. */
  maxFailed: number;
  /** http: the path asked for ("/healthz"). */
  path?: string;
}

export interface HealthChange {
  healthy: boolean;
  /** Why the last check failed; for a recovery, what passed. */
  reason: string;
  /** Failures in a row when it became unhealthy (max_failed). */
  failures: number;
}

/**
 * Checks one proxy's local service until stop(). One check at a time: the next starts `interval` after the
 * last one ended, so a service that hangs costs one connection per interval, never a pile of them.
 */
export class HealthCheck {
  private failures = 0;
  private healthy = true;
  private timer: NodeJS.Timeout | undefined;
  private stopped = false;
  /** Ends the check under way (stop() during one). */
  private abortCheck: (() => void) | undefined;

  constructor(
    private readonly local: LocalAddress,
    private readonly config: HealthCheckConfig,
    private readonly onChange: (change: HealthChange) => void,
    /** Each failed check's reason, for a debug line. */
    private readonly onFailure: (reason: string, failures: number) => void = () => {},
    /** The proxy's local_tls: each check makes the handshake its visitors' connections make. */
    private readonly tls?: LocalTls,
  ) {}

  /** The first check runs at once: a service down when the client starts is withdrawn after max_failed. */
  start(): void {
    this.schedule(0);
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.timer);
    this.abortCheck?.();
  }

  get isHealthy(): boolean {
    return this.healthy;
  }

  private schedule(ms: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => void this.run(), ms);
    this.timer.unref();
  }

  private async run(): Promise<void> {
    let failure: string | undefined;
    try {
      await this.probe();
    } catch (err) {
      failure = (err as Error).message;
    }
    if (this.stopped) return;
    if (failure === undefined) {
      this.failures = 0;
      if (!this.healthy) {
        this.healthy = true;
        this.onChange({ healthy: true, reason: `${this.describe()} passed`, failures: 0 });
      }
    } else {
      this.failures++;
      this.onFailure(failure, this.failures);
      if (this.healthy && this.failures >= this.config.maxFailed) {
        this.healthy = false;
        this.onChange({ healthy: false, reason: failure, failures: this.failures });
      }
    }
    this.schedule(this.config.intervalMs);
  }

  /** "tcp check of 127.0.0.1:8080", "http check of 127.0.0.1:8080/healthz", "... of 127.0.0.1:8006 (tls)". */
  private describe(): string {
    const where = `${formatLocalAddress(this.local)}${this.tls ? ' (tls)' : ''}`;
    return this.config.type === 'tcp' ? `tcp check of ${where}` : `http check of ${where}${this.config.path}`;
  }

  private probe(): Promise<void> {
    return new Promise((resolve, reject) => {
      const local = this.local;
      const timeout = formatDuration(this.config.timeoutMs);
      let cleanup = () => {};
      const timer = setTimeout(
        () => done(new Error(`${this.describe()} timed out after ${timeout}`)),
        this.config.timeoutMs,
      );
      let settled = false;
      const done = (err?: Error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.abortCheck = undefined;
        cleanup();
        if (err) reject(err);
        else resolve();
      };
      const failed = (err: Error) => done(new Error(`${this.describe()} failed: ${err.message}`));
      this.abortCheck = () => done(new Error('stopped'));
      const socket = connect(
        isUnixSocketAddress(local) ? { path: local.path } : { host: local.host, port: local.port },
      );
      cleanup = () => socket.destroy();
      socket.on('error', failed);
      socket.once('connect', () => {
        const tls = this.tls;
        if (!tls || isUnixSocketAddress(local)) {
          if (this.config.type === 'tcp') done();
          else this.request(socket, done, failed, (c) => (cleanup = c));
          return;
        }
        // The handshake with local_tls's settings, as a visitor's connection makes it: a certificate the
        // proxy's visitors would be refused for fails the check too.
        const { tlsSocket, secured } = startLocalTls(socket, local, tls);
        cleanup = () => tlsSocket.destroy();
        secured.then((ready) => {
          if (this.config.type === 'tcp') done();
          else this.request(ready, done, failed, (c) => (cleanup = c));
        }, failed);
      });
    });
  }

  /** The http check's GET of `path` on a connected (and with local_tls, secured) socket. */
  private request(
    socket: Socket,
    done: (err?: Error) => void,
    failed: (err: Error) => void,
    setCleanup: (cleanup: () => void) => void,
  ): void {
    const local = this.local;
    const host = isUnixSocketAddress(local) ? { host: 'localhost' } : { host: local.host, port: local.port };
    const req = request(
      // No agent: an agent, even agent: false's own, opens a connection of its own and ignores this one.
      { ...host, path: this.config.path, method: 'GET', createConnection: () => socket },
      (res) => {
        const status = res.statusCode ?? 0;
        res.resume();
        if (status >= 200 && status < 300) done();
        else done(new Error(`${this.describe()} answered ${status}`));
      },
    );
    setCleanup(() => {
      req.destroy();
      socket.destroy();
    });
    req.on('error', failed);
    req.end();
  }
}

/**
 * The health checks of a client's proxies, kept in step with its config: a proxy's check starts with it,
 * starts over when its check or `local` changes (a reload), and stops when it goes.
 */
export class ProxyHealthChecks {
  private readonly checks = new Map<string, { check: HealthCheck; key: string }>();
  /** Proxies withdrawn from the server now, and why. */
  private readonly withdrawn = new Map<string, string>();

  constructor(
    private readonly logger: Logger,
    /** A proxy became unhealthy (withdraw it) or healthy again (register it). */
    private readonly onChange: (proxy: string, healthy: boolean) => void,
  ) {}

  apply(proxies: ReadonlyMap<string, ProxyConfig>): void {
    for (const [name, entry] of this.checks) {
      const proxy = proxies.get(name);
      if (proxy?.healthCheck && checkKey(proxy) === entry.key) continue;
      entry.check.stop();
      this.checks.delete(name);
      // Checked afresh (or no more): registered again as any proxy is, until a check says otherwise.
      this.withdrawn.delete(name);
    }
    for (const proxy of proxies.values()) {
      const config = proxy.healthCheck;
      const local = proxy.local;
      if (!config || this.checks.has(proxy.name) || isForwardProxyLocal(local) || isDirectoryLocal(local))
        continue;
      const name = proxy.name;
      const check = new HealthCheck(
        local,
        config,
        (change) => this.changed(name, config, change),
        (reason, failures) => this.logger.debug({ proxy: name, reason, failures }, 'health check failed'),
        proxy.localTls,
      );
      this.checks.set(name, { check, key: checkKey(proxy) });
      check.start();
    }
  }

  /** Why `proxy` is withdrawn, or undefined while it is healthy (or has no check). */
  withdrawnReason(proxy: string): string | undefined {
    return this.withdrawn.get(proxy);
  }

  /** "healthy", "unhealthy", or undefined for a proxy without a check. */
  health(proxy: string): 'healthy' | 'unhealthy' | undefined {
    if (!this.checks.has(proxy)) return undefined;
    return this.withdrawn.has(proxy) ? 'unhealthy' : 'healthy';
  }

  stopAll(): void {
    for (const { check } of this.checks.values()) check.stop();
    this.checks.clear();
  }

  private changed(proxy: string, config: HealthCheckConfig, change: HealthChange): void {
    if (change.healthy) {
      this.withdrawn.delete(proxy);
      this.logger.info({ proxy, reason: change.reason }, 'health check passed: registering the proxy again');
    } else {
      this.withdrawn.set(proxy, `health check failed ${change.failures} times: ${change.reason}`);
      this.logger.warn(
        { proxy, check: config.type, failures: change.failures, reason: change.reason },
        'health check failed: proxy withdrawn from the server',
      );
    }
    this.onChange(proxy, change.healthy);
  }
}

/** What a running check depends on: a change to any starts it over. */
function checkKey(proxy: ProxyConfig): string {
  return JSON.stringify([proxy.healthCheck, proxy.local, proxy.localTls]);
}
