import { randomUUID } from 'node:crypto';
import { Session, type Stream, webSocketDuplex } from '@porthole/mux';
import {
  ConnectionTracker,
  type ControlMessage,
  formatHostPort,
  type Logger,
  MessageReader,
  nextClose,
  PROTOCOL_VERSION,
  ProtocolError,
  parseControlMessage,
  writeMessage,
} from '@porthole/protocol';
import type { ClientConfig, ProxyConfig } from './config.js';
import { DialError, dial } from './dialer.js';
import { serveStream } from './local-connector.js';
import { Backoff } from './reconnect.js';

/** Time for TCP + TLS + upgrade, and for the server's hello_ok. */
const DIAL_TIMEOUT_MS = 10_000;
const HELLO_TIMEOUT_MS = 10_000;
/** A session that lasted this long resets the backoff, so the next loss reconnects quickly. */
const STABLE_SESSION_MS = 10_000;
/** How long final frames may take to leave before the process exits. */
const CLOSE_FLUSH_MS = 1000;

export type RunOutcome = 'stopped' | 'auth failed';

/**
 * porthole-client: dials the server, says hello on the control stream, registers every proxy and serves
 * the streams the server opens; on session loss it reconnects with backoff and registers again.
 */
export class PortholeClient {
  readonly instanceId = randomUUID();
  private readonly backoff: Backoff;
  private readonly tracker = new ConnectionTracker();
  private readonly proxies: Map<string, ProxyConfig>;
  private session: Session | undefined;
  private control: Stream | undefined;
  private stopping = false;
  private wakeSleeper: (() => void) | undefined;

  constructor(
    private readonly config: ClientConfig,
    private readonly logger: Logger,
    private readonly clientVersion: string,
  ) {
    this.backoff = new Backoff(config.reconnectInitial, config.reconnectMax);
    this.proxies = new Map(config.proxies.map((proxy) => [proxy.name, proxy]));
  }

  /** Runs until shutdown() (resolves "stopped") or an auth failure with exit_on_auth_failure. */
  async run(): Promise<RunOutcome> {
    if (this.proxies.size === 0) this.logger.warn({}, 'no proxies configured');
    while (!this.stopping) {
      let ws: Awaited<ReturnType<typeof dial>>;
      try {
        ws = await dial({
          server: this.config.server,
          token: this.config.token,
          timeoutMs: DIAL_TIMEOUT_MS,
          ...(this.config.ca ? { ca: this.config.ca } : {}),
        });
      } catch (err) {
        if (this.stopping) break;
        const reason = err instanceof Error ? err.message : String(err);
        if (err instanceof DialError && err.isAuthFailure && this.config.exitOnAuthFailure) {
          this.logger.error(
            { server: this.config.server, reason },
            'connect failed: giving up (exit_on_auth_failure)',
          );
          return 'auth failed';
        }
        const retryMs = this.backoff.next();
        this.logger.warn({ server: this.config.server, reason, retry_ms: retryMs }, 'connect failed');
        await this.sleep(retryMs);
        continue;
      }
      if (this.stopping) {
        ws.close(1001);
        break;
      }
      let outcome: { reason: string; establishedAt: number | undefined };
      try {
        outcome = await this.runSession(ws);
      } catch (err) {
        // A bug in session handling must cost a reconnect, not the process.
        this.logger.error({ reason: err instanceof Error ? err.message : String(err) }, 'session failed');
        ws.terminate();
        outcome = { reason: 'session failed', establishedAt: undefined };
      }
      const { reason, establishedAt } = outcome;
      if (this.stopping) break;
      if (establishedAt !== undefined && Date.now() - establishedAt >= STABLE_SESSION_MS)
        this.backoff.reset();
      const retryMs = this.backoff.next();
      this.logger.warn({ server: this.config.server, reason, retry_ms: retryMs }, 'session lost');
      await this.sleep(retryMs);
    }
    return 'stopped';
  }

  /**
   * SIGTERM: unregister our proxies (the server stops accepting for us), GoAway, wait up to
   * shutdown_timeout for open connections, then close the session.
   */
  async shutdown(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.wakeSleeper?.();
    const session = this.session;
    if (session && !session.closed) {
      this.logger.info({ open_connections: this.tracker.size }, 'shutting down');
      this.sendControl({ type: 'unregister', proxies: [...this.proxies.keys()] });
      session.goAway();
      const drained = await this.tracker.waitIdle(this.config.shutdownTimeout);
      if (!drained)
        this.logger.warn(
          { open_connections: this.tracker.size },
          'shutdown timeout: closing open connections',
        );
      const closed = nextClose(session);
      // FIN on the control stream first: the server reads it as an orderly goodbye.
      this.control?.end();
      session.close();
      await Promise.race([closed, new Promise((r) => setTimeout(r, CLOSE_FLUSH_MS).unref())]);
      // Connections cut by the close still get their "connection closed" line.
      await this.tracker.waitIdle(CLOSE_FLUSH_MS);
    }
    this.logger.info({}, 'client stopped');
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wakeSleeper = done;
    });
  }

  private sendControl(message: ControlMessage): void {
    const control = this.control;
    if (control && !control.destroyed && !control.writableEnded) writeMessage(control, message);
  }

  /** One session from open to close; resolves with why it ended and when hello_ok arrived. */
  private async runSession(
    ws: Awaited<ReturnType<typeof dial>>,
  ): Promise<{ reason: string; establishedAt: number | undefined }> {
    const { heartbeatInterval, heartbeatTimeout } = this.config;
    const session = new Session(webSocketDuplex(ws), {
      client: true,
      keepAliveInterval: heartbeatInterval,
      keepAliveTimeout: heartbeatTimeout - heartbeatInterval,
    });
    this.session = session;
    const closed = nextClose<Error>(session).then((err) => err?.message ?? 'session closed');
    session.on('stream', (stream: Stream) => {
      serveStream(stream, this.proxies, this.tracker, this.logger).catch((err: Error) => {
        this.logger.error({ reason: err.message }, 'stream failed');
        stream.destroy();
      });
    });
    const control = session.open();
    control.on('error', () => {});
    this.control = control;
    let establishedAt: number | undefined;
    this.converse(control, () => {
      establishedAt = Date.now();
    }).catch((err: Error) => session.close(err));
    const reason = await closed;
    this.session = undefined;
    this.control = undefined;
    return { reason, establishedAt };
  }

  /** The control conversation: hello, hello_ok, register, then results and notices until the end. */
  private async converse(control: Stream, onEstablished: () => void): Promise<void> {
    writeMessage(control, {
      type: 'hello',
      version: PROTOCOL_VERSION,
      instance_id: this.instanceId,
      client_version: this.clientVersion,
    });
    const reader = new MessageReader(control);
    let established = false;
    const helloTimer = setTimeout(
      () => control.session.close(new Error(`no hello_ok from the server within ${HELLO_TIMEOUT_MS} ms`)),
      HELLO_TIMEOUT_MS,
    );
    try {
      for (;;) {
        const raw = await reader.read();
        if (raw === null) {
          control.session.close(new Error('server closed the control stream'));
          return;
        }
        const message = parseControlMessage(raw);
        if (message.type === 'notice') {
          const fields =
            message.code === undefined
              ? { reason: message.message }
              : { reason: message.message, code: message.code };
          this.logger[message.level](fields, 'server notice');
        } else if (message.type === 'hello_ok' && !established) {
          established = true;
          clearTimeout(helloTimer);
          onEstablished();
          this.logger.info(
            {
              server: this.config.server,
              client: message.client,
              session_id: message.session_id,
              server_version: message.server_version,
            },
            'session established',
          );
          this.register();
        } else if (message.type === 'register_result' && established) {
          this.logResults(message.results);
        } else {
          throw new ProtocolError(`unexpected ${message.type} from the server`);
        }
      }
    } finally {
      clearTimeout(helloTimer);
    }
  }

  private register(): void {
    if (this.proxies.size === 0) return;
    this.sendControl({
      type: 'register',
      proxies: [...this.proxies.values()].map((proxy) => ({
        name: proxy.name,
        type: proxy.type,
        remote_port: proxy.remotePort,
      })),
    });
  }

  private logResults(
    results: ReadonlyArray<{ proxy: string; ok: boolean; remote_addr?: string; reason?: string }>,
  ) {
    for (const result of results) {
      const proxy = this.proxies.get(result.proxy);
      const local = proxy ? formatHostPort(proxy.local.host, proxy.local.port) : undefined;
      if (result.ok) {
        this.logger.info({ proxy: result.proxy, remote_addr: result.remote_addr, local }, 'proxy registered');
      } else {
        this.logger.warn({ proxy: result.proxy, reason: result.reason ?? 'refused' }, 'proxy refused');
      }
    }
  }
}
