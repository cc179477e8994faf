import { randomUUID } from 'node:crypto';
import { CloseCode, Session, type Stream } from '@porthole/mux';
import {
  BANDWIDTH_LIMIT_NOTICE,
  CoalescedLines,
  ConnectionTracker,
  type ControlMessage,
  FirstSightings,
  keepAliveOptions,
  LOGIN_REFUSED_NOTICE,
  type Logger,
  MessageReader,
  nextClose,
  PROTOCOL_VERSION,
  PROXY_NAME,
  ProtocolError,
  type ProxyResult,
  type ProxySpec,
  parseControlMessage,
  RepeatedReasons,
  readUnverifiedClaims,
  writeMessage,
} from '@porthole/protocol';
import { ProxyBandwidth } from './bandwidth-limit.js';
import { type ClientConfig, dialRoute, type ProxyConfig } from './config.js';
import { DialError, dial, urlWithoutUserinfo } from './dialer.js';
import { DirectoryServer } from './directory-server.js';
import { ProxyHealthChecks } from './health-check.js';
import { PendingLocalConnects, serveStream } from './local-connector.js';
import { LocalFailureLog } from './local-failure-log.js';
import { describeProxyLocal, picksPort, proxySpecFields } from './proxy-config.js';
import { Backoff } from './reconnect.js';
import {
  changedDialProxyKeys,
  dialProxyChanged,
  diffProxies,
  needsReconnect,
  type ReloadSummary,
} from './reload.js';
import { boundElsewhere } from './remote-bind-check.js';
import { responseHeadersUnapplied } from './response-headers-check.js';
import { type ClientStatus, type ProxyState, SessionStatus } from './session-status.js';
import { certainTokenRefusal } from './token-warnings.js';
import { OpenUdpFlows } from './udp-forwarder.js';
import { UdpVisitor } from './udp-visitor.js';
import type { VisitorConfig } from './visitor-config.js';
import { TcpVisitor, type Visitor } from './visitor-listener.js';

/** Time for TCP + TLS + upgrade, and for the server's hello_ok. */
const DIAL_TIMEOUT_MS = 10_000;
const HELLO_TIMEOUT_MS = 10_000;
/** A session that lasted this long resets the backoff, so the next loss reconnects quickly. */
const STABLE_SESSION_MS = 10_000;
/** How long final frames may take to leave before the process exits. */
const CLOSE_FLUSH_MS = 1000;
/** Why a proxy that asks for compression runs plain: its warn line and `status` say it. */
const COMPRESSION_NOT_OFFERED = 'the server does not offer compression (older than this client)';

export type RunOutcome = 'stopped' | 'auth failed';

/**
 * A server older than remote_port = 0 refuses the 0 as a port out of range ("remote_port: Too small: ..."):
 * said so, since that reason alone reads as a mistake in the config.
 */
function refusalReason(proxy: ProxyConfig, reason: string | undefined): string | undefined {
  // An older server drops `private` and asks for the port a public proxy needs: it opened nothing.
  if (proxy.private && reason === `a ${proxy.type} proxy needs remote_port`)
    return 'this server is older than private proxies: it has none (nothing was opened for this proxy)';
  if (!picksPort(proxy) || reason === undefined || !reason.startsWith('remote_port: ')) return reason;
  return `${reason} (this server is older than remote_port = 0: it cannot pick a port, so give the proxy one)`;
}

/** What the server is told about a proxy; a change here means re-registering it. */
export function proxySpecOf(proxy: ProxyConfig): ProxySpec {
  return proxySpecFields(proxy);
}

/**
 * porthole-client: dials the server, says hello on the control stream, registers every proxy and serves
 * the streams the server opens; on session loss it reconnects with backoff and registers again.
 */
export class PortholeClient {
  readonly instanceId = randomUUID();
  private readonly backoff: Backoff;
  private readonly tracker = new ConnectionTracker();
  private readonly localFailures: LocalFailureLog;
  /** Answers the streams of proxies with local = "dir:PATH". */
  private readonly directories: DirectoryServer;
  private readonly pendingConnects = new PendingLocalConnects();
  private readonly udpFlows = new OpenUdpFlows();
  private readonly bandwidth = new ProxyBandwidth();
  /** Mutated in place by reload(): the stream handler reads it for every new connection. */
  private readonly proxies: Map<string, ProxyConfig>;
  private session: Session | undefined;
  private control: Stream | undefined;
  private established = false;
  private stopping = false;
  /** A reload changed server, token or CA: redial at once, without backoff. */
  private redialNow = false;
  /** Another instance with this token took the session over: wait reconnect_max, not the usual backoff. */
  private takenOver = false;
  /** The server's plugins refused this sign-in (the notice's reason): the session ends without starting. */
  private loginRefused: string | undefined;
  private wakeSleeper: (() => void) | undefined;
  private readonly sessionStatus: SessionStatus;
  /** The server said it is draining: its refusals are final for this session, not worth asking again. */
  private serverDraining = false;
  /** Each proxy's refusal last logged at warn: the periodic retry's same refusal goes to debug. */
  private readonly refusals = new RepeatedReasons();
  /**
   * The port the server gave each proxy whose port it picks (remote_port = 0), asked for again at each
   * registration (a new session, a reload, a retry) so that visitors keep finding it there. Kept across
   * sessions, not across restarts of the client.
   */
  private readonly pickedPorts = new Map<string, { type: string; port: number }>();
  /** Proxies with a health_check: one found unhealthy is withdrawn from the server until a check passes. */
  private readonly health: ProxyHealthChecks;
  /** Local listeners whose connections visit other clients' private services, by name. */
  private readonly visitors = new Map<string, Visitor>();
  /** 'visit refused' lines, one per visitor and reason per 10 s (a sender retrying in a loop). */
  private readonly visitRefusals: CoalescedLines;

  constructor(
    private config: ClientConfig,
    private readonly logger: Logger,
    private readonly clientVersion: string,
  ) {
    this.backoff = new Backoff(config.reconnectInitial, config.reconnectMax);
    this.proxies = new Map(config.proxies.map((proxy) => [proxy.name, proxy]));
    this.sessionStatus = new SessionStatus(config.server);
    this.sessionStatus.via = dialRoute(this.config);
    this.localFailures = new LocalFailureLog(logger);
    this.visitRefusals = new CoalescedLines((fields) => logger.warn(fields, 'visit refused'));
    this.directories = new DirectoryServer(this.proxies, logger);
    this.health = new ProxyHealthChecks(logger, (name, healthy) => this.healthChanged(name, healthy));
    for (const visitor of config.visitors) this.visitors.set(visitor.name, this.newVisitor(visitor));
  }

  /** Withdraws a proxy whose service failed its checks, or registers it again once one passes. */
  private healthChanged(name: string, healthy: boolean): void {
    if (!this.established || this.stopping || !this.proxies.has(name)) return;
    if (healthy) this.registerAgain([name]);
    else this.sendControl({ type: 'unregister', proxies: [name] });
  }

  private newVisitor(config: VisitorConfig): Visitor {
    return new (config.type === 'udp' ? UdpVisitor : TcpVisitor)(config, {
      tracker: this.tracker,
      logger: this.logger,
      refusals: this.visitRefusals,
      session: () =>
        this.session && this.established && !this.session.closed
          ? this.session
          : `not connected to the server (${this.sessionStatus.current})`,
    });
  }

  /** SIGHUP: visitors added, removed, or moved to another bind listen anew; the others keep listening. */
  private reloadVisitors(next: readonly VisitorConfig[]): {
    added: string[];
    removed: string[];
    changed: string[];
  } {
    const diff = { added: [] as string[], removed: [] as string[], changed: [] as string[] };
    const names = new Set(next.map((v) => v.name));
    for (const [name, listener] of this.visitors) {
      if (names.has(name)) continue;
      diff.removed.push(name);
      this.visitors.delete(name);
      void listener.close();
    }
    for (const visitor of next) {
      const running = this.visitors.get(visitor.name);
      if (running && JSON.stringify(running.current) === JSON.stringify(visitor)) continue;
      if (
        running &&
        running.current.type === visitor.type &&
        JSON.stringify(running.current.bind) === JSON.stringify(visitor.bind)
      ) {
        running.retarget(visitor);
        diff.changed.push(visitor.name);
        continue;
      }
      (running ? diff.changed : diff.added).push(visitor.name);
      const listener = this.newVisitor(visitor);
      this.visitors.set(visitor.name, listener);
      // The old port is let go before the new one is taken, so a visitor may move to a port and back.
      void (running ? running.close() : Promise.resolve()).then(() =>
        this.stopping || this.visitors.get(visitor.name) !== listener ? undefined : listener.listen(),
      );
    }
    return diff;
  }

  /** The `server` of log lines. */
  private get serverForLogs(): string {
    return urlWithoutUserinfo(this.config.server);
  }

  /** Session state and proxies, for the admin endpoint and `porthole-client status`. */
  status(): ClientStatus {
    const status = this.sessionStatus.view(
      this.proxies,
      this.tracker,
      this.udpFlows,
      this.session?.streamCount ?? 0,
      this.health,
      this.visitors,
    );
    const expires = readUnverifiedClaims(this.config.token)?.exp;
    if (expires !== undefined) status.token_expires_at = new Date(expires * 1000).toISOString();
    return status;
  }

  /**
   * SIGHUP or `porthole-client reload`: apply a freshly loaded config (what changed is returned; undefined
   * while the client shuts down). Proxies added, removed or changed are registered/unregistered
   * over the live session; connections on unchanged proxies keep flowing; a changed `local` applies to
   * the next connection (a udp proxy's open flows end, so a sender's next datagram starts one). A new
   * server, token or CA redials. Other settings apply to the next session.
   */
  reload(next: ClientConfig): ReloadSummary | undefined {
    if (this.stopping) return undefined;
    const previous = this.config;
    // A new token redials at once and ends the running session: one the server is sure to refuse (a bad
    // paste during a rotation) would turn a working tunnel into an outage.
    const refusal = next.token === previous.token ? undefined : certainTokenRefusal(next.token);
    if (refusal) throw new Error(`the new token ${refusal}`);
    const diff = diffProxies(this.proxies, next.proxies, proxySpecOf);
    const redial = needsReconnect(previous, next);
    this.config = next;
    // Not a new Backoff: an unchanged server that is down keeps its growing delays through any number of
    // reloads. A new server, token or CA starts over (below), and is dialled at once.
    this.backoff.setLimits(next.reconnectInitial, next.reconnectMax);
    this.logger.level = next.logLevel;
    for (const name of diff.removed) {
      this.proxies.delete(name);
      this.sessionStatus.forget(name);
      this.refusals.forget(name);
      this.pickedPorts.delete(name);
    }
    const limitChanged = next.proxies
      .filter((proxy) => this.proxies.has(proxy.name))
      .filter((proxy) => this.proxies.get(proxy.name)?.bandwidthLimit?.text !== proxy.bandwidthLimit?.text)
      .map((proxy) => proxy.name);
    for (const proxy of next.proxies) {
      this.proxies.set(proxy.name, proxy);
      if (this.pickedPorts.get(proxy.name)?.type !== proxy.type || !picksPort(proxy))
        this.pickedPorts.delete(proxy.name);
    }
    // Nothing for the server: the open connections' budgets take the new limit where they are.
    this.bandwidth.apply(this.proxies);
    // A changed check (or local) starts over, healthy until it says otherwise: registered below if changed.
    const withdrawnBefore = [...this.proxies.keys()].filter((name) => this.health.withdrawnReason(name));
    this.health.apply(this.proxies);
    // A flow's socket is connected to the local it started with, and a sender that keeps talking (a
    // WireGuard keepalive, a game) never lets it go idle: ended, its next datagram opens a flow to the new one.
    for (const name of diff.localChanged)
      if (this.proxies.get(name)?.type === 'udp') this.udpFlows.endAll(name, 'local changed by a reload');
    this.sessionStatus.server = next.server;
    this.sessionStatus.via = dialRoute(this.config);
    const dialProxyKeys = changedDialProxyKeys(previous, next);
    const visitors = this.reloadVisitors(next.visitors);
    const summary: ReloadSummary = {
      visitors_added: visitors.added,
      visitors_removed: visitors.removed,
      visitors_changed: visitors.changed,
      added: diff.added,
      removed: diff.removed,
      changed: diff.changed,
      local_changed: diff.localChanged,
      bandwidth_limit_changed: limitChanged,
      dial_proxy_changed: dialProxyKeys,
      reconnect: redial,
    };
    // The dial proxy is used from the next dial: the route it will take, as the start line says it.
    this.logger.info({ ...summary, ...(dialProxyKeys.length > 0 ? dialRoute(next) : {}) }, 'config reloaded');
    if (redial) {
      this.redialNow = true;
      this.backoff.reset();
      this.wakeSleeper?.();
      if (this.session && !this.session.closed) {
        this.control?.end();
        // A reconnect we chose: the server is told Normal, not the InternalError that close(err) sends.
        this.session.goAway();
        this.session.close(new Error('reconnecting: server, token or CA changed by a reload'));
      }
      return summary;
    }
    if (!this.established) {
      // A fixed proxy password (or address) is tried now, as a new token is, not after the old one's backoff.
      if (dialProxyChanged(previous, next)) {
        this.backoff.reset();
        this.wakeSleeper?.();
      }
      return summary;
    }
    // A tcp proxy changed on its own port is replaced by the register alone (see ProxyDiff.samePort).
    const unregister = [...diff.removed, ...diff.changed.filter((name) => !diff.samePort.includes(name))];
    if (unregister.length > 0) this.sendControl({ type: 'unregister', proxies: unregister });
    // Proxies the server refused or closed (a reload of its own narrowed allow_ports) are asked for again:
    // a reload is how a user says "try now", and the server's rules may have changed back.
    const asked = new Set([...diff.changed, ...diff.added]);
    const retry = this.sessionStatus.notServed().filter((name) => this.proxies.has(name) && !asked.has(name));
    if (retry.length > 0)
      this.logger.info({ proxies: retry }, 'asking again for proxies the server is not serving');
    // A proxy whose check started over is served again until the new check finds it unhealthy.
    const checkedAfresh = withdrawnBefore.filter(
      (name) => !this.health.withdrawnReason(name) && !asked.has(name) && !retry.includes(name),
    );
    const register = [...diff.changed, ...diff.added, ...retry, ...checkedAfresh];
    // Asked for by the user: the answer is worth a warn line again, even if it is the same refusal.
    for (const name of register) this.refusals.forget(name);
    this.registerAgain(register);
    return summary;
  }

  /**
   * Every proxy_retry_interval over a live session: proxies the server refused (a port another client
   * held, a name not yet free) or closed (its reload narrowed allow_ports) are asked for again, as frp
   * does, so that one comes back by itself once the server would take it.
   */
  private retryNotServed(): void {
    if (!this.established || this.stopping || this.serverDraining) return;
    const retry = this.sessionStatus.notServed().filter((name) => this.proxies.has(name));
    if (retry.length === 0) return;
    this.logger.debug({ proxies: retry }, 'asking again for proxies the server is not serving');
    this.registerAgain(retry);
  }

  private registerAgain(all: string[]): void {
    // A withdrawn proxy comes back when its health check passes, not before.
    const names = all.filter((name) => !this.health.withdrawnReason(name));
    if (names.length === 0) return;
    for (const name of names) this.sessionStatus.set(name, { state: 'pending' });
    this.sendControl({
      type: 'register',
      proxies: names.map((name) => this.registration(this.proxies.get(name)!)),
    });
  }

  /** Runs until shutdown() (resolves "stopped") or an auth failure with exit_on_auth_failure. */
  async run(): Promise<RunOutcome> {
    this.logger.info(
      { server: this.serverForLogs, ...dialRoute(this.config), version: this.clientVersion },
      'client starting',
    );
    await Promise.all([...this.visitors.values()].map((visitor) => visitor.listen()));
    if (this.proxies.size === 0 && this.visitors.size === 0) this.logger.warn({}, 'no proxies configured');
    this.health.apply(this.proxies);
    while (!this.stopping) {
      let ws: Awaited<ReturnType<typeof dial>>;
      this.sessionStatus.connecting();
      // Set again by a reload that changes the server, token or CA while this dial is under way.
      this.redialNow = false;
      try {
        ws = await dial({
          server: this.config.server,
          token: this.config.token,
          timeoutMs: DIAL_TIMEOUT_MS,
          ...(this.config.ca ? { ca: this.config.ca } : {}),
          ...(this.config.dialProxy ? { proxy: this.config.dialProxy.proxy } : {}),
        });
      } catch (err) {
        if (this.stopping) break;
        const reason = err instanceof Error ? err.message : String(err);
        if (this.redialNow) {
          // The dial used what the reload replaced: its failure says nothing about the new settings.
          this.logger.info({ server: this.serverForLogs, reason }, 'reconnecting');
          continue;
        }
        if (err instanceof DialError && err.isAuthFailure && this.config.exitOnAuthFailure) {
          this.logger.error(
            { server: this.serverForLogs, reason },
            'connect failed: giving up (exit_on_auth_failure)',
          );
          return 'auth failed';
        }
        // The server's Retry-After (a 429: this address failed too often) is the earliest an attempt can
        // succeed; the backoff may ask for longer.
        const retryAfter = err instanceof DialError ? err.retryAfterMs : undefined;
        const retryMs = Math.max(this.backoff.next(), retryAfter ?? 0);
        this.sessionStatus.failed(reason, retryMs);
        this.logger.warn(
          {
            server: this.serverForLogs,
            reason,
            retry_ms: retryMs,
            ...(retryAfter === undefined ? {} : { retry_after_ms: retryAfter }),
          },
          'connect failed',
        );
        await this.sleep(retryMs);
        continue;
      }
      if (this.stopping) {
        ws.close(CloseCode.GoingAway);
        break;
      }
      if (this.redialNow) {
        ws.close(CloseCode.GoingAway);
        this.logger.info(
          { server: this.serverForLogs, reason: 'server, token or CA changed by a reload' },
          'reconnecting',
        );
        continue;
      }
      let outcome: { reason: string; establishedAt: number | undefined };
      try {
        outcome = await this.runSession(ws);
      } catch (err) {
        // A bug in session handling must cost a reconnect, not the process.
        this.logger.error({ reason: err instanceof Error ? err.message : String(err) }, 'session failed');
        ws.destroy();
        outcome = { reason: 'session failed', establishedAt: undefined };
      }
      const { reason, establishedAt } = outcome;
      if (this.stopping) break;
      const loginRefused = this.loginRefused;
      this.loginRefused = undefined;
      if (this.redialNow) {
        this.redialNow = false;
        this.backoff.reset();
        this.logger.info({ server: this.serverForLogs, reason }, 'reconnecting');
        continue;
      }
      if (loginRefused !== undefined && this.config.exitOnAuthFailure) {
        // The operator's policy said no, as a refused token does: restarting into it would only ask again.
        this.logger.error(
          { server: this.serverForLogs, reason: loginRefused },
          'sign-in refused: giving up (exit_on_auth_failure)',
        );
        return 'auth failed';
      }
      let retryMs: number;
      if (this.takenOver) {
        // Taking the session straight back would cut the other's connections, and it would do the same
        // in turn: two clients on one token would trade the tunnel twice a second for good.
        this.takenOver = false;
        retryMs = this.config.reconnectMax;
      } else {
        if (establishedAt !== undefined && Date.now() - establishedAt >= STABLE_SESSION_MS)
          this.backoff.reset();
        retryMs = this.backoff.next();
      }
      this.sessionStatus.failed(reason, retryMs);
      this.logger.warn({ server: this.serverForLogs, reason, retry_ms: retryMs }, 'session lost');
      await this.sleep(retryMs);
    }
    return 'stopped';
  }

  /** What a drain waits for, as log fields. */
  openWork(): { open_connections: number; open_udp_flows: number } {
    return { open_connections: this.tracker.size, open_udp_flows: this.udpFlows.size };
  }

  /**
   * SIGTERM: unregister our proxies (the server stops accepting for us), GoAway, wait up to
   * shutdown_timeout for open connections, then close the session.
   */
  async shutdown(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.health.stopAll();
    this.sessionStatus.stopping();
    this.wakeSleeper?.();
    // No new visits; those under way drain with the other connections.
    await Promise.all([...this.visitors.values()].map((visitor) => visitor.close()));
    this.visitRefusals.forgetAll();
    const session = this.session;
    if (session && !session.closed) {
      this.logger.info(this.openWork(), 'shutting down');
      this.sendControl({ type: 'unregister', proxies: [...this.proxies.keys()] });
      for (const name of this.proxies.keys())
        this.sessionStatus.set(name, {
          state: 'closed',
          reason: 'unregistered: the client is shutting down',
        });
      session.goAway();
      const drained = await this.tracker.waitIdle(this.config.shutdownTimeout);
      if (!drained) this.logger.warn(this.openWork(), 'shutdown timeout: closing open connections');
      const closed = nextClose(session);
      const flushed = () => Promise.race([closed, new Promise((r) => setTimeout(r, CLOSE_FLUSH_MS).unref())]);
      // FIN on the control stream: the server reads our unregister, then this, and closes the session
      // itself. Closing first would race our last messages to the server against the connection's end.
      this.control?.end();
      await flushed();
      session.close();
      await flushed();
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
    const session = new Session(ws, {
      client: true,
      ...keepAliveOptions(heartbeatInterval, heartbeatTimeout),
    });
    this.session = session;
    session.on('stall', (ms: number) =>
      this.logger.warn(
        { server: this.serverForLogs, ms },
        'session stalled: nothing from the server, then back',
      ),
    );
    const closed = nextClose<Error>(session).then((err) => err?.message ?? 'session closed');
    session.on('stream', (stream: Stream) => {
      serveStream(
        stream,
        this.proxies,
        this.tracker,
        this.logger,
        this.localFailures,
        this.pendingConnects,
        this.udpFlows,
        this.bandwidth,
        this.directories,
      ).catch((err: Error) => {
        this.logger.error({ stream: stream.id, reason: err.message }, 'stream failed');
        stream.destroy();
      });
    });
    const control = session.open();
    control.on('error', () => {});
    this.control = control;
    let establishedAt: number | undefined;
    this.serverDraining = false;
    // For this session only (retryNotServed waits for it to be established).
    const retryTimer = setInterval(() => this.retryNotServed(), this.config.proxyRetryInterval);
    retryTimer.unref();
    this.converse(control, () => {
      establishedAt = Date.now();
    }).catch((err: Error) => session.close(err));
    const reason = await closed;
    clearInterval(retryTimer);
    this.session = undefined;
    this.control = undefined;
    this.established = false;
    return { reason, establishedAt };
  }

  /** The control conversation: hello, hello_ok, register, then results and notices until the end. */
  private async converse(control: Stream, onEstablished: () => void): Promise<void> {
    writeMessage(control, {
      type: 'hello',
      version: PROTOCOL_VERSION,
      instance_id: this.instanceId,
      client_version: this.clientVersion,
      // Left out when empty: the hello of a client without metadata stays as it was.
      ...(Object.keys(this.config.metadata).length === 0 ? {} : { metadata: this.config.metadata }),
    });
    const reader = new MessageReader(control);
    // What this client cannot read from the server (a newer one's), said once per kind in this session.
    const unreadable = new FirstSightings();
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
        const message = this.readServerMessage(raw, unreadable);
        if (message === undefined) continue;
        if (message.type === 'notice' && message.code === BANDWIDTH_LIMIT_NOTICE) {
          const previous = this.sessionStatus.serverBandwidthLimitChanged(message.bandwidth_limit);
          // null: no cap (the JSON says so, where a left-out field would read as "not said").
          this.logger.info(
            {
              server_bandwidth_limit: message.bandwidth_limit ?? null,
              previous_server_bandwidth_limit: previous ?? null,
            },
            'server bandwidth limit changed',
          );
        } else if (message.type === 'notice') {
          const fields = {
            reason: message.message,
            ...(message.code === undefined ? {} : { code: message.code }),
            ...(message.proxies === undefined ? {} : { proxies: message.proxies }),
          };
          this.logger[message.level](fields, 'server notice');
          if (message.code === 'taken_over') this.takenOver = true;
          if (message.code === LOGIN_REFUSED_NOTICE) this.loginRefused = message.message;
          // The server is draining: it closed every proxy before saying so (open connections go on).
          if (message.code === 'shutdown') {
            this.serverDraining = true;
            for (const name of this.proxies.keys())
              this.sessionStatus.set(name, { state: 'closed', reason: message.message });
          }
          if (message.code === 'proxies_closed' && message.proxies) {
            for (const name of message.proxies)
              this.sessionStatus.set(name, { state: 'closed', reason: message.message });
          }
        } else if (message.type === 'hello_ok' && !established) {
          established = true;
          clearTimeout(helloTimer);
          onEstablished();
          this.established = true;
          this.sessionStatus.established(message.client, message.session_id, message.bandwidth_limit);
          this.logger.info(
            {
              server: this.serverForLogs,
              client: message.client,
              session_id: message.session_id,
              server_version: message.server_version,
              server_bandwidth_limit: message.bandwidth_limit,
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

  /**
   * A server message, or undefined for one to read past (parseControlMessage's rule): a newer server's
   * message type, or a message this client cannot validate. Ending the session over it would not help: the
   * server would send it again after the reconnect, and every proxy would go down each time.
   */
  private readServerMessage(raw: unknown, unreadable: FirstSightings): ControlMessage | undefined {
    try {
      const message = parseControlMessage(raw);
      if (message.type !== 'unknown') return message;
      const level = unreadable.first(`type ${message.unknownType}`) ? 'warn' : 'debug';
      this.logger[level]({ type: message.unknownType }, 'unknown control message from the server ignored');
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      const level = unreadable.first(err.message) ? 'warn' : 'debug';
      this.logger[level]({ reason: err.message }, 'control message from the server ignored');
    }
    return undefined;
  }

  private register(): void {
    // A new session: each proxy's result is worth its line again.
    this.refusals.clear();
    const proxies = [...this.proxies.values()].filter((proxy) => !this.health.withdrawnReason(proxy.name));
    if (proxies.length === 0) return;
    for (const { name } of proxies) this.sessionStatus.set(name, { state: 'pending' });
    this.sendControl({ type: 'register', proxies: proxies.map((proxy) => this.registration(proxy)) });
  }

  /** What a register says of `proxy`: its spec, and for a port the server picks, the one it had. */
  private registration(proxy: ProxyConfig): ProxySpec {
    const spec = proxySpecOf(proxy);
    const had = this.pickedPorts.get(proxy.name);
    if (picksPort(proxy) && had?.type === proxy.type) spec.previous_port = had.port;
    return spec;
  }

  private logResults(results: readonly ProxyResult[]) {
    for (const answer of results) {
      const proxy = this.proxies.get(answer.proxy);
      const notAsAsked =
        answer.ok && proxy
          ? (boundElsewhere(proxy, answer.remote_addr) ??
            responseHeadersUnapplied(proxy, answer.response_headers))
          : undefined;
      // Registered where it was not asked to be, or without its response_headers (a server older than
      // remote_bind or response_headers): given back at once, and shown as the refusal it is; its visitors
      // meanwhile are turned away (serveStream).
      if (notAsAsked) this.sendControl({ type: 'unregister', proxies: [answer.proxy] });
      const result: ProxyResult = notAsAsked
        ? { proxy: answer.proxy, ok: false, reason: notAsAsked }
        : answer;
      // An entry the server could not read has a name no proxy can have ("register entry 2 (...)").
      if (!proxy && !result.ok && !PROXY_NAME.test(result.proxy)) {
        this.logRefused(result.proxy, result.reason);
        continue;
      }
      if (!proxy) {
        // Removed by a reload while its registration was on the way (the reload unregistered it).
        this.logger.debug({ proxy: result.proxy, ok: result.ok }, 'result for a proxy no longer configured');
        continue;
      }
      const local = describeProxyLocal(proxy);
      // An older server does not say the port; it bound the one the proxy names.
      const remotePort = result.remote_port ?? (picksPort(proxy) ? undefined : proxy.remotePort);
      const reason = result.ok ? undefined : refusalReason(proxy, result.reason);
      // A server older than compression dropped the ask: it marks no stream, so none is compressed.
      const compressionUnavailable =
        result.ok && proxy.compression && !result.compression ? COMPRESSION_NOT_OFFERED : undefined;
      const state: ProxyState = result.ok
        ? {
            state: 'registered',
            ...(result.remote_addr ? { remoteAddr: result.remote_addr } : {}),
            ...(remotePort === undefined ? {} : { remotePort }),
            ...(result.urls?.length ? { urls: result.urls } : {}),
            ...(result.service ? { service: result.service } : {}),
            ...(result.compression ? { compression: true } : {}),
            ...(compressionUnavailable ? { compressionUnavailable } : {}),
          }
        : { state: 'refused', reason: reason ?? 'refused' };
      this.sessionStatus.set(result.proxy, state);
      if (result.ok) {
        const limit =
          proxy.bandwidthLimit === undefined ? {} : { bandwidth_limit: proxy.bandwidthLimit.text };
        this.logger.info(
          {
            proxy: result.proxy,
            remote_addr: result.remote_addr,
            remote_port: remotePort,
            urls: result.urls,
            ...(proxy.group === undefined ? {} : { group: proxy.group }),
            ...(result.service ? { service: result.service } : {}),
            local,
            ...limit,
            ...(result.compression ? { compression: true } : {}),
          },
          'proxy registered',
        );
        if (compressionUnavailable)
          this.logger.warn(
            { proxy: result.proxy, server: this.serverForLogs },
            `proxy runs uncompressed: ${compressionUnavailable}`,
          );
        this.refusals.forget(result.proxy);
        if (picksPort(proxy) && remotePort !== undefined) this.notePickedPort(proxy, remotePort);
      } else this.logRefused(result.proxy, reason);
    }
  }

  /** Remembers the port the server picked; one other than before is worth a warn: visitors must be told. */
  private notePickedPort(proxy: ProxyConfig, port: number): void {
    const had = this.pickedPorts.get(proxy.name);
    if (had?.type === proxy.type && had.port !== port)
      this.logger.warn(
        { proxy: proxy.name, previous_port: had.port, remote_port: port },
        'proxy given another port than before',
      );
    this.pickedPorts.set(proxy.name, { type: proxy.type, port });
  }

  /** A refusal at warn, or at debug when it is the one this proxy last had (the retries' answers). */
  private logRefused(proxy: string, reason = 'refused'): void {
    const level = this.refusals.repeats(proxy, reason) ? 'debug' : 'warn';
    this.logger[level]({ proxy, reason }, 'proxy refused');
  }
}
