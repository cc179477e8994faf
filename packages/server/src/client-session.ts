import { randomUUID } from 'node:crypto';
import type { Session, Stream } from '@porthole/mux';
import {
  BANDWIDTH_LIMIT_NOTICE,
  type ControlMessage,
  type ControlMessageOf,
  FirstSightings,
  LOGIN_REFUSED_NOTICE,
  LOGIN_UNAVAILABLE_NOTICE,
  type Logger,
  MessageReader,
  PICKED_PORT,
  PortRanges,
  PROTOCOL_VERSION,
  ProtocolError,
  type ProxyResult,
  type ProxySpec,
  parseControlMessage,
  parseRegisterEntry,
  portGrantRefusal,
  RepeatedReasons,
  type TokenClaims,
  UDP_COMPRESSION_REASON,
  type UnknownControlMessage,
  writeMessage,
} from '@porthole/protocol';
import { ClientBandwidth } from './client-bandwidth.js';
import { ConnectionLimit, ConnectionLimits } from './connection-limit.js';
import type { HostClaim } from './host-routes.js';
import { closeProxyContent, loginContent, newProxyContent, type PluginUser } from './plugin-content.js';
import { type PickedPort, pickablePorts, pickPort } from './port-picker.js';
import {
  bindPrivateService,
  type PrivateTarget,
  privateRefusal,
  serveVisit,
  serviceName,
} from './private-service.js';
import { bindAddressOf, customBindOf, remoteBindRefusal } from './proxy-bind.js';
import { bindTcpGroupMember, type GroupMember, portHolderRefusal } from './proxy-groups.js';
import {
  type BoundProxy,
  bindRoutedProxy,
  claimsOf,
  connectionLimitFor,
  type ProxyOwner,
  routedRefusal,
  routingOf,
} from './proxy-routing.js';
import type { ServerContext } from './server-context.js';
import { TcpProxyListener } from './tcp-proxy-listener.js';
import { compressionOf, responseHeadersMarkOf } from './tunnel-stream.js';
import type { UdpProxyStats } from './udp-proxy-listener.js';

/** A register of response_headers on a tcp, udp, tls or tcpmux proxy: no response heads pass there. */
const RESPONSE_HEADERS_TYPE_REASON = 'response_headers applies to http proxies only';

/** A client that opens a session must say hello within this time. */
const HELLO_TIMEOUT_MS = 10_000;
/** The longest delay setTimeout keeps (2^31 - 1 ms); longer ones fire at once. */
const MAX_TIMER_MS = 2 ** 31 - 1;
/**
 * Answers and notices the client has not read, at most; past it the session ends. Reading of its requests
 * stops as soon as answers wait (see readControl), so only notices can go past one answer's worth.
 */
const MAX_UNREAD_CONTROL_BYTES = 4 * 1024 * 1024;
/**
 * Host routes one client's http and tls proxies may claim together: registering and releasing routes walks
 * the names' entries, so without a cap one token could make each registration cost seconds.
 */
export const MAX_ROUTES_PER_CLIENT = 4096;

/**
 * One connected client: reads its control stream (the first stream it opens), answers hello, binds
 * and frees its proxies' public listeners, and frees everything when the session ends. A client name
 * that connects again takes over: the older session is closed and its ports freed before the new
 * registrations are bound.
 */
export class ClientSession {
  readonly sessionId = randomUUID().slice(0, 8);
  readonly name: string;
  private readonly logger: Logger;
  private readonly grant: PortRanges | undefined;
  private readonly proxies = new Map<string, RegisteredProxy>();
  /**
   * Proxies closed to be registered anew (a changed spec): the plugins hear CloseProxy for one only if its
   * new registration fails, since they already allowed it with NewProxy.
   */
  private readonly beingReplaced = new Set<string>();
  /** Host routes (name x location) the proxies above claim together, against MAX_ROUTES_PER_CLIENT. */
  private routes = 0;
  /** Hostnames the token lets this client claim (undefined: any). */
  private readonly hostGrant: readonly string[] | undefined;
  /** Private services the token lets this client visit (undefined: none). */
  private readonly visitGrant: readonly string[] | undefined;
  private readonly connectionLimits: ConnectionLimits;
  /** The operator's cap on all of this client's public proxies together (token, else server default). */
  readonly bandwidth: ClientBandwidth;
  /** The cap this client was last told of (hello_ok, or a reload's notice), as written; undefined: none. */
  private toldBandwidthLimit: string | undefined;
  /** Each proxy's refusal last logged at warn: the same answer to a client asking again goes to debug. */
  private readonly refusals = new RepeatedReasons();
  /** Message types from a newer client that this server ignored: each is said once. */
  private readonly unknownTypes = new FirstSightings();
  private control: Stream | undefined;
  /** Set when the session ended while client messages were still unread on the control stream. */
  private sessionEndReason: string | undefined;
  private helloDone = false;
  private instanceId = '';
  private clientVersion = '';
  /** The client as the server's plugins are told of it (frp's user, metas and run_id); metas come with hello. */
  private pluginUser: PluginUser;
  /** The token's id (jti): a reload that revokes it ends this session. */
  readonly tokenId: string;
  readonly connectedAt = Date.now();
  private closed = false;
  /** SIGTERM drain: no new registrations. */
  private draining = false;
  private readonly helloTimer: NodeJS.Timeout;
  private expiryTimer: NodeJS.Timeout | undefined;
  /** When its token expires (ms since the epoch) and the session ends; undefined for a token that never does. */
  tokenExpiresAt: number | undefined;

  constructor(
    private readonly ctx: ServerContext,
    private readonly session: Session,
    claims: TokenClaims,
    readonly remoteAddr: string,
  ) {
    this.name = claims.sub;
    this.tokenId = claims.jti;
    this.grant = claims.ports === undefined ? undefined : PortRanges.parse(claims.ports);
    this.hostGrant = claims.hosts;
    this.visitGrant = claims.visit;
    this.bandwidth = new ClientBandwidth(claims.bandwidth_limit, () => ctx.config.clientBandwidthLimit);
    this.connectionLimits = new ConnectionLimits(
      (proxy, max, key) =>
        new ConnectionLimit({
          client: this.name,
          proxy,
          max,
          key,
          logger: ctx.logger,
          onRefused: () => ctx.traffic.countRefused(this.name, proxy),
        }),
    );
    this.logger = ctx.logger.child({ client: this.name, session_id: this.sessionId });
    this.pluginUser = { user: this.name, metas: {}, run_id: this.sessionId };
    ctx.sessions.add(this);
    session.on('stream', (stream: Stream) => this.onStream(stream));
    session.on('close', (err?: Error) => this.onSessionClose(err ? err.message : 'session closed'));
    session.on('stall', (ms: number) =>
      this.logger.warn(
        { remote_addr: this.remoteAddr, ms },
        'session stalled: nothing from the client, then back',
      ),
    );
    this.helloTimer = setTimeout(
      () => this.close(`no hello within ${HELLO_TIMEOUT_MS} ms`),
      HELLO_TIMEOUT_MS,
    );
    this.helloTimer.unref();
    if (claims.exp !== undefined) {
      this.tokenExpiresAt = claims.exp * 1000;
      this.endAtExpiry(this.tokenExpiresAt);
    }
  }

  /** A token is checked when the session opens; one that expires while it is up ends it then. */
  private endAtExpiry(expiresAt: number): void {
    const left = expiresAt - Date.now();
    if (left <= 0) {
      this.disconnect('token expired', 'expired');
      return;
    }
    // setTimeout takes at most ~24.8 days; a longer wait is taken in steps.
    this.expiryTimer = setTimeout(() => this.endAtExpiry(expiresAt), Math.min(left, MAX_TIMER_MS));
    this.expiryTimer.unref();
  }

  /** Stops taking new connections for this client (SIGTERM drain); open ones continue. */
  drain(reason: string): void {
    this.draining = true;
    this.closeProxies([...this.proxies.keys()], reason);
    this.notice('warn', reason, 'shutdown');
    this.session.goAway();
  }

  /** Ends the session and frees every port it holds. Idempotent. */
  close(reason: string): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.helloTimer);
    clearTimeout(this.expiryTimer);
    this.closeProxies([...this.proxies.keys()], reason);
    // Registrations that closed their old proxy and had not bound the new one when the session ended.
    for (const proxy of this.beingReplaced) this.tellClosed(proxy);
    this.beingReplaced.clear();
    this.ctx.sessions.delete(this);
    if (this.ctx.clients.get(this.name) === this) this.ctx.clients.delete(this.name);
    this.session.close();
    if (this.helloDone) this.logger.info({ remote_addr: this.remoteAddr, reason }, 'client disconnected');
    else this.logger.debug({ remote_addr: this.remoteAddr, reason }, 'session ended before hello');
  }

  private onStream(stream: Stream): void {
    if (this.control) {
      // After the control stream, a client opens streams only to visit private services (after hello).
      if (!this.established) {
        stream.destroy();
        return;
      }
      void serveVisit(this.ctx, this.asVisitor, stream);
      return;
    }
    this.control = stream;
    // Errors surface through the reader; this keeps a write to a dying stream from being unhandled.
    stream.on('error', () => {});
    void this.readControl(stream);
  }

  /**
   * A client that stops sends unregister and FIN, then closes the connection in the same turn, so the
   * connection's end can overtake those messages still buffered on the control stream (the mux keeps them
   * readable). Read them first: proxies then close for the client's own reason, not "connection closed".
   */
  private onSessionClose(reason: string): void {
    const control = this.control;
    if (this.closed || !control || control.destroyed || control.readableLength === 0) {
      this.close(reason);
      return;
    }
    this.sessionEndReason = reason;
    this.logger.debug(
      { reason, bytes: control.readableLength },
      'session ended: reading what the client sent first',
    );
  }

  private async readControl(stream: Stream): Promise<void> {
    const reader = new MessageReader(stream);
    try {
      while (!this.closed) {
        const raw = await reader.read();
        if (raw === null) {
          this.close('control stream closed by client');
          return;
        }
        const message = parseControlMessage(raw);
        // With the session gone only a goodbye still means something; a register would bind for nobody.
        if (this.sessionEndReason !== undefined && message.type !== 'unregister') continue;
        await this.handle(message);
        // A client that sends requests and does not read the answers must not make the server hold them:
        // its next request is read once it has taken the answers (the mux window then holds it back).
        if (stream.writableNeedDrain) await drainedOrClosed(stream);
      }
    } catch (err) {
      const reason = this.sessionEndReason ?? `control stream: ${(err as Error).message}`;
      // The client's log then says what it sent wrong, not only that the connection closed.
      if (err instanceof ProtocolError && this.sessionEndReason === undefined)
        this.notice('error', reason, 'protocol');
      this.close(reason);
    }
  }

  private send(message: ControlMessage): void {
    const control = this.control;
    if (!control || control.destroyed || control.writableEnded) return;
    if (control.writableLength > MAX_UNREAD_CONTROL_BYTES) {
      this.close(`the client left ${control.writableLength} bytes of the control stream unread`);
      return;
    }
    writeMessage(control, message);
  }

  private notice(
    level: 'info' | 'warn' | 'error',
    message: string,
    code?: string,
    about: Pick<ControlMessageOf<'notice'>, 'proxies' | 'bandwidth_limit'> = {},
  ): void {
    this.send({ type: 'notice', level, message, ...(code === undefined ? {} : { code }), ...about });
  }

  /** The client said hello and was accepted. */
  get established(): boolean {
    return this.helloDone && !this.closed;
  }

  /** Mux streams open on this session (the control stream included). */
  get streamCount(): number {
    return this.session.streamCount;
  }

  /** What the client said about itself in hello, for the admin API. */
  get peer(): { instanceId: string; clientVersion: string } {
    return { instanceId: this.instanceId, clientVersion: this.clientVersion };
  }

  /** The proxies this session holds right now, for the admin API. */
  listProxies(): {
    name: string;
    type: string;
    remotePort: number | undefined;
    /** The address it asked to be bound on, when that is not proxy_bind. */
    remoteBind: string | undefined;
    publicAddr: string;
    /** The names it is routed by (http, tls, tcpmux), each once. */
    hosts: string[];
    /** A private proxy's name for visitors, "owner/proxy". */
    service: string | undefined;
    udpStats: Readonly<UdpProxyStats> | undefined;
    group: string | undefined;
    groupMembers: GroupMember[];
    /** Its streams are deflated (the client asked, and this server took it). */
    compression: boolean;
  }[] {
    return [...this.proxies.values()].map(({ spec, listener }) => ({
      name: spec.name,
      type: spec.type,
      remotePort: spec.remote_port,
      remoteBind: customBindOf(this.ctx.config, spec),
      publicAddr: listener.address,
      hosts: [...new Set((listener.claims ?? []).map((c) => c.host))],
      service: listener.service ? serviceName(this.name, spec.name) : undefined,
      udpStats: listener.udpStats,
      group: spec.group,
      groupMembers: listener.groupMembers?.() ?? [],
      compression: spec.compression === true,
    }));
  }

  /** A private proxy this session serves, for a visit. */
  privateTarget(proxy: string): PrivateTarget | undefined {
    return this.established ? this.proxies.get(proxy)?.listener.service : undefined;
  }

  /** This session as the visits it opens see it. */
  private get asVisitor() {
    return {
      name: this.name,
      grant: this.visitGrant,
      remoteAddr: this.remoteAddr,
      draining: this.draining,
      findTarget: (owner: string, proxy: string) => {
        const session = this.ctx.clients.get(owner);
        if (!session?.established) return 'offline' as const;
        const target = session.privateTarget(proxy);
        if (target) return target;
        return session.proxies.has(proxy) ? ('public' as const) : ('none' as const);
      },
    };
  }

  /**
   * After a reload: closes each proxy the current rules (allow_ports...) would now refuse, and moves the
   * routes of each http or tls proxy whose names changed (subdomain_host) to what registering it now would
   * give; one that cannot take its new names is closed too. The client is told which and why, and given
   * the moved proxies' new urls. Returns what was closed and what moved.
   */
  enforceRules(): { closed: { proxy: string; reason: string }[]; moved: string[] } {
    const closed: { proxy: string; reason: string }[] = [];
    const moved: { proxy: string; claims: readonly HostClaim[] }[] = [];
    for (const [name, entry] of this.proxies) {
      const claims = this.changedClaims(entry);
      const reason = this.refusal(entry.spec) ?? (claims && this.overLimit(entry, claims.length));
      if (reason) closed.push({ proxy: name, reason });
      else if (claims) moved.push({ proxy: name, claims });
    }
    this.closeForRules(closed);
    this.tellMoved(moved.map(({ proxy, claims }) => this.moveRoutes(proxy, claims)));
    return { closed, moved: moved.map((m) => m.proxy) };
  }

  /**
   * The claims an http or tls proxy would get if it registered now, when they differ from the routes it
   * holds: the names come from the running config (subdomain_host), which a reload may have changed.
   */
  private changedClaims(entry: { listener: BoundProxy; spec: ProxySpec }): HostClaim[] | undefined {
    if (entry.listener.claims === undefined) return undefined;
    const claims = claimsOf(entry.spec, routingOf(this.ctx), this.hostGrant);
    // A string is a refusal, which refusal() reports.
    if (typeof claims === 'string') return undefined;
    return JSON.stringify(claims) === JSON.stringify(entry.listener.claims) ? undefined : claims;
  }

  private closeForRules(closed: readonly { proxy: string; reason: string }[]): void {
    if (closed.length === 0) return;
    // The server no longer admits these (a new subdomain_host, or the new name is another client's): their
    // names answer as if never claimed, not as offline routes kept for a client that is away.
    for (const { proxy, reason } of closed)
      this.closeProxies([proxy], `server configuration changed: ${reason}`, { forgetRoutes: true });
    this.notice(
      'warn',
      `the server's configuration changed; closed ${closed.map((c) => `"${c.proxy}" (${c.reason})`).join(', ')}`,
      'proxies_closed',
      { proxies: closed.map((c) => c.proxy) },
    );
  }

  /** Routes a proxy by `claims` instead of the names it registered with (refusal() allowed them). */
  private moveRoutes(proxy: string, claims: readonly HostClaim[]): RoutesMove {
    const entry = this.proxies.get(proxy)!;
    const move = { proxy, oldHosts: hostsOf(entry.listener.claims ?? []), newHosts: hostsOf(claims) };
    entry.listener.reroute?.(claims);
    this.routes += claims.length - entry.routes;
    entry.routes = claims.length;
    this.logger.info(
      { proxy, old_hosts: move.oldHosts, new_hosts: move.newHosts, urls: entry.listener.urls },
      'proxy routes moved',
    );
    return move;
  }

  /**
   * A notice says what moved and why; a register_result gives the new urls, as registering would have, so
   * the client's status shows where visitors reach the proxies now.
   */
  private tellMoved(moves: readonly RoutesMove[]): void {
    if (moves.length === 0) return;
    const described = moves.map((m) => `"${m.proxy}" (${m.oldHosts.join(', ')} -> ${m.newHosts.join(', ')})`);
    this.notice(
      'info',
      `the server's configuration changed; moved ${described.join(', ')}`,
      'proxies_moved',
      { proxies: moves.map((m) => m.proxy) },
    );
    this.send({
      type: 'register_result',
      results: moves.map((m) => this.registered(this.proxies.get(m.proxy)!)),
    });
  }

  /**
   * After a reload: the open connections keep to the cap now in force, and a client whose cap changed (a
   * token's own limit does not) hears the new one, so its status stops showing the one it signed in with.
   */
  applyBandwidthLimit(): void {
    this.bandwidth.apply();
    // Before hello_ok, which will say the cap in force then.
    if (!this.helloDone) return;
    const limit = this.bandwidth.limit;
    const was = this.toldBandwidthLimit;
    if (limit?.text === was) return;
    this.toldBandwidthLimit = limit?.text;
    const before = was === undefined ? 'none' : `${was}/s`;
    this.notice(
      'info',
      limit === undefined
        ? `the server no longer caps this client's bandwidth (was ${before})`
        : `the server caps this client's proxies together at ${limit.text}/s each way now (was ${before})`,
      BANDWIDTH_LIMIT_NOTICE,
      limit === undefined ? {} : { bandwidth_limit: limit.text },
    );
    this.logger.info(
      { bandwidth_limit: limit?.text ?? null, previous_bandwidth_limit: was ?? null },
      'client bandwidth limit changed',
    );
  }

  /** Tells the client why (a notice with `code`), then ends the session. */
  disconnect(reason: string, code: string): void {
    this.notice('error', reason, code);
    this.close(reason);
  }

  private async handle(message: ControlMessage | UnknownControlMessage): Promise<void> {
    if (!this.helloDone && message.type !== 'hello') {
      throw new ProtocolError(
        `expected hello, got ${message.type === 'unknown' ? message.unknownType : message.type}`,
      );
    }
    switch (message.type) {
      case 'unknown':
        return this.ignoreUnknown(message.unknownType);
      case 'hello':
        return this.onHello(message);
      case 'register':
        return this.onRegister(message);
      case 'unregister':
        // Removed on purpose (a reload, or SIGTERM): its names are not kept for its return.
        this.closeProxies(message.proxies, 'unregistered by client', { forgetRoutes: true });
        return;
      default:
        throw new ProtocolError(`unexpected ${message.type} from a client`);
    }
  }

  /**
   * A newer client's message type (parseControlMessage): ignored, and said once per type to both this log
   * and the client's, whose operator is the one who can see what it asked for.
   */
  private ignoreUnknown(type: string): void {
    if (!this.unknownTypes.first(type)) {
      this.logger.debug({ type }, 'unknown control message ignored');
      return;
    }
    this.logger.warn({ type, client_version: this.clientVersion }, 'unknown control message ignored');
    this.notice(
      'warn',
      `server ${this.ctx.serverVersion} does not know control message type "${type}"; ignored`,
      'unknown_message',
    );
  }

  private async onHello(hello: ControlMessageOf<'hello'>): Promise<void> {
    if (this.helloDone) throw new ProtocolError('second hello');
    clearTimeout(this.helloTimer);
    this.instanceId = hello.instance_id;
    this.clientVersion = hello.client_version;
    if (hello.version !== PROTOCOL_VERSION) {
      const reason = `protocol version ${hello.version} is not supported (server ${this.ctx.serverVersion} speaks ${PROTOCOL_VERSION})`;
      this.notice('error', reason, 'version');
      this.close(reason);
      return;
    }
    this.pluginUser = { ...this.pluginUser, metas: hello.metadata ?? {} };
    // Before it takes over: a session the plugins refuse leaves the one it would replace alone.
    const refusal = await this.ctx.plugins.ask(
      'Login',
      () => loginContent(this.pluginUser, { version: hello.client_version, address: this.remoteAddr }),
      { client: this.name, remote_addr: this.remoteAddr },
    );
    if (this.closed) return;
    if (refusal) {
      const reason = `sign-in refused by the server's plugin "${refusal.plugin}": ${refusal.reason}`;
      this.logger.warn({ remote_addr: this.remoteAddr, plugin: refusal.plugin, reason }, 'client refused');
      this.notice('error', reason, refusal.failed ? LOGIN_UNAVAILABLE_NOTICE : LOGIN_REFUSED_NOTICE);
      this.close(reason);
      return;
    }
    const previous = this.ctx.clients.get(this.name);
    if (previous && previous !== this) {
      this.logger.info(
        { old_session_id: previous.sessionId, instance_id: hello.instance_id },
        'client replaced',
      );
      previous.replacedBy(this);
    }
    this.ctx.clients.set(this.name, this);
    this.helloDone = true;
    const bandwidthLimit = this.bandwidth.limit;
    this.toldBandwidthLimit = bandwidthLimit?.text;
    this.send({
      type: 'hello_ok',
      client: this.name,
      session_id: this.sessionId,
      server_version: this.ctx.serverVersion,
      ...(bandwidthLimit === undefined ? {} : { bandwidth_limit: bandwidthLimit.text }),
    });
    this.logger.info(
      {
        remote_addr: this.remoteAddr,
        instance_id: hello.instance_id,
        client_version: hello.client_version,
        token_expires_at:
          this.tokenExpiresAt === undefined ? undefined : new Date(this.tokenExpiresAt).toISOString(),
        bandwidth_limit: bandwidthLimit?.text,
        bandwidth_limit_source: bandwidthLimit?.source,
      },
      'client connected',
    );
  }

  /** Another session of the same client said hello: this one gives way at once. */
  private replacedBy(next: ClientSession): void {
    const sameInstance = next.instanceId === this.instanceId;
    this.notice(
      'warn',
      sameInstance
        ? 'replaced by a newer session of this client'
        : `replaced by another instance of client "${this.name}" (instance ${next.instanceId}); are two clients using one token?`,
      // The client tells the two apart: another instance taking over is not a blip to redial through.
      sameInstance ? 'replaced' : 'taken_over',
    );
    this.close(`replaced by session ${next.sessionId}`);
  }

  private async onRegister(register: ControlMessageOf<'register'>): Promise<void> {
    const results: ProxyResult[] = [];
    const seen = new Set<string>();
    for (const [index, raw] of register.proxies.entries()) {
      // An entry this server cannot take (a newer client's proxy type or range) costs only itself.
      const entry = parseRegisterEntry(raw, index);
      if (!entry.ok) {
        seen.add(entry.proxy);
        results.push(this.refused(entry.proxy, entry.reason));
        continue;
      }
      const spec = entry.spec;
      if (seen.has(spec.name)) {
        results.push({
          proxy: spec.name,
          ok: false,
          reason: `proxy "${spec.name}" appears twice in one request`,
        });
        continue;
      }
      seen.add(spec.name);
      if (this.draining) {
        results.push({ proxy: spec.name, ok: false, reason: 'the server is shutting down' });
        continue;
      }
      results.push(await this.registerOne(spec));
      if (this.closed) return;
    }
    this.send({ type: 'register_result', results });
  }

  /** The host routes an http, tls or tcpmux proxy would add (refusal() has checked that its claims are valid). */
  private routesOf(spec: ProxySpec): number {
    if (spec.type !== 'http' && spec.type !== 'tls' && spec.type !== 'tcpmux') return 0;
    const claims = claimsOf(spec, routingOf(this.ctx), this.hostGrant);
    return typeof claims === 'string' ? 0 : claims.length;
  }

  /** Why one more proxy (or this one replacing `existing`) would take the client past its limits. */
  private overLimit(existing: { routes: number } | undefined, routes: number): string | undefined {
    const max = this.ctx.config.maxProxiesPerClient;
    if (!existing && this.proxies.size >= max)
      return `this client already has ${this.proxies.size} proxies, the server's max_proxies_per_client`;
    const total = this.routes - (existing?.routes ?? 0) + routes;
    if (total > MAX_ROUTES_PER_CLIENT)
      return `this proxy would bring the client to ${total} host routes (names x locations); the limit is ${MAX_ROUTES_PER_CLIENT}`;
    return undefined;
  }

  private refusal(spec: ProxySpec): string | undefined {
    if (spec.compression && spec.type === 'udp') return UDP_COMPRESSION_REASON;
    if (spec.response_headers && spec.type !== 'http') return RESPONSE_HEADERS_TYPE_REASON;
    if (spec.private) return privateRefusal(spec);
    const notHere = remoteBindRefusal(this.ctx.config, spec);
    if (notHere) return notHere;
    if (spec.type !== 'tcp') return routedRefusal(this.ctx, this.owner, spec);
    const port = spec.remote_port;
    if (port === undefined) return 'a tcp proxy needs remote_port';
    const refused = portGrantRefusal(this.grant, port);
    if (refused) return refused;
    if (!this.ctx.config.allowPorts.contains(port)) {
      return `port ${port} is outside the server's allow_ports (${this.ctx.config.allowPorts})`;
    }
    return portHolderRefusal(`port ${port}`, this.ctx.ports.get(port), this.owner, spec);
  }

  /** This session as the routed proxies (udp, http, tls) see it. */
  private get owner(): ProxyOwner {
    return {
      self: this,
      name: this.name,
      tokenId: this.tokenId,
      session: this.session,
      portGrant: this.grant,
      hostGrant: this.hostGrant,
      limits: this.connectionLimits,
      bandwidth: this.bandwidth,
      visitorCheck: (spec) => this.ctx.plugins.visitorCheck(this.pluginUser, spec),
    };
  }

  private async registerOne(asked: ProxySpec): Promise<ProxyResult> {
    // Where a picked port was before is a wish for this registration, not part of what the proxy is.
    const { previous_port: previousPort, ...requested } = asked;
    const existing = this.proxies.get(requested.name);
    // Nothing to change: a reload keeps each proxy's routes what its spec would get now (enforceRules).
    if (existing && JSON.stringify(existing.requested) === JSON.stringify(requested)) {
      return this.registered(existing);
    }
    const pluginRefusal = await this.ctx.plugins.ask(
      'NewProxy',
      () => newProxyContent(this.pluginUser, requested),
      { client: this.name, proxy: requested.name },
    );
    if (this.closed) return { proxy: requested.name, ok: false, reason: 'session closed' };
    if (pluginRefusal)
      return this.refused(
        requested.name,
        `refused by the server's plugin "${pluginRefusal.plugin}": ${pluginRefusal.reason}`,
      );
    // Members of a group meet on the port they name; one the server picks would be a port of their own.
    if (requested.group !== undefined && picksPort(requested))
      return this.refused(requested.name, 'a proxy in a group needs a remote_port, not 0');
    if (!picksPort(requested)) return this.registerAs(requested, requested, existing);
    // Changed in other ways (max_connections...), a proxy keeps the port it was given, as one that names
    // its port does, while it may still hold it.
    const kept =
      existing && picksPort(existing.requested) && existing.spec.type === requested.type
        ? existing.spec.remote_port
        : undefined;
    if (kept !== undefined) {
      const spec = { ...requested, remote_port: kept };
      if (!this.refusal(spec)) return this.registerAs(requested, spec, existing);
    }
    return this.registerPicked(requested, existing, previousPort ?? kept);
  }

  /** Registers `spec`: `requested` with the port it will have (the same, unless the server picks it). */
  private async registerAs(
    requested: ProxySpec,
    spec: ProxySpec,
    existing: RegisteredProxy | undefined,
  ): Promise<ProxyResult> {
    const routes = this.routesOf(spec);
    const reason = this.refusal(spec) ?? this.overLimit(existing, routes);
    if (reason) return this.refused(spec.name, reason);
    // A tcp or udp proxy changed on the port it has (max_connections, max_flows, proxy_protocol...) keeps its
    // listener: closing and binding the port again refused the visitors that came in between, reset those
    // already waiting in the closed listener's backlog, and lost a udp proxy's datagrams and flows.
    if (existing && this.respecInPlace(existing, spec)) {
      existing.spec = spec;
      existing.requested = requested;
      this.logger.info(
        { proxy: spec.name, type: spec.type, remote_addr: existing.listener.address },
        'proxy changed',
      );
      return this.registered(existing);
    }
    // The new spec's routes replace the old ones; names it no longer claims are let go, not kept offline.
    if (existing)
      this.closeProxies([spec.name], 'replaced by a new registration', {
        forgetRoutes: true,
        replaced: true,
      });
    let bound: { listener: BoundProxy; port: number | undefined };
    try {
      bound = await this.bind(spec);
    } catch (err) {
      return this.refused(spec.name, (err as Error).message);
    }
    return this.adopt({ ...bound, requested, spec, routes });
  }

  /** A tcp or udp proxy with remote_port 0: binds a port it may hold (`preferred` first, if it may). */
  private async registerPicked(
    requested: ProxySpec,
    existing: RegisteredProxy | undefined,
    preferred: number | undefined,
  ): Promise<ProxyResult> {
    const reason = this.overLimit(existing, 0);
    if (reason) return this.refused(requested.name, reason);
    if (existing)
      this.closeProxies([requested.name], 'replaced by a new registration', {
        forgetRoutes: true,
        replaced: true,
      });
    const held = requested.type === 'tcp' ? this.ctx.ports : this.ctx.routing.udpPorts;
    let picked: PickedPort<{ listener: BoundProxy; port: number | undefined }>;
    try {
      picked = await pickPort({
        from: pickablePorts(this.grant, this.ctx.config.allowPorts),
        preferred,
        held: (port) => held.has(port),
        bind: (port) => this.bind({ ...requested, remote_port: port }),
      });
    } catch (err) {
      return this.refused(requested.name, (err as Error).message);
    }
    if (picked.preferredRefusal !== undefined)
      this.logger.info(
        {
          proxy: requested.name,
          previous_port: preferred,
          remote_port: picked.port,
          reason: picked.preferredRefusal,
        },
        'proxy given another port than before',
      );
    const spec = { ...requested, remote_port: picked.port };
    return this.adopt({ ...picked.bound, requested, spec, routes: 0 });
  }

  /** Binds a proxy's public side: a tcp proxy's port (held in ctx.ports), or a routed proxy. */
  private async bind(spec: ProxySpec): Promise<{ listener: BoundProxy; port: number | undefined }> {
    if (spec.private) return { listener: bindPrivateService(this.ctx, this.owner, spec), port: undefined };
    if (spec.type !== 'tcp')
      return { listener: await bindRoutedProxy(this.ctx, this.owner, spec), port: undefined };
    const port = spec.remote_port!;
    // A group's port is held by its listener, not by this session (port: undefined): it goes with the last member.
    if (spec.group !== undefined) {
      const grouped = { ...spec, group: spec.group, remote_port: port };
      return { listener: await bindTcpGroupMember(this.ctx, this.owner, grouped), port: undefined };
    }
    return { listener: await this.bindTcp(spec, port), port };
  }

  /** Takes a proxy just bound into this session, unless the session, a drain or a reload got in the way. */
  private adopt(entry: RegisteredProxy): ProxyResult {
    const { spec, listener, port } = entry;
    if (this.closed) {
      listener.close();
      if (port !== undefined && this.ctx.ports.get(port)?.owner === this) this.ctx.ports.delete(port);
      return { proxy: spec.name, ok: false, reason: 'session closed' };
    }
    this.proxies.set(spec.name, entry);
    this.ctx.traffic.registered(this.name, spec.name);
    this.routes += entry.routes;
    // A drain or a reload may have come while the bind was under way; both only saw the proxies already here.
    const lateRefusal = this.draining ? 'the server is shutting down' : this.refusal(spec);
    if (lateRefusal) {
      // Refused, never reported registered: nobody was told these names route here.
      this.closeProxies([spec.name], lateRefusal, { forgetRoutes: true });
      return this.refused(spec.name, lateRefusal);
    }
    if (listener.service) {
      this.logger.info(
        { proxy: spec.name, type: spec.type, service: serviceName(this.name, spec.name) },
        'private service registered',
      );
      return this.registered(entry);
    }
    this.logger.info(
      {
        proxy: spec.name,
        type: spec.type,
        remote_addr: listener.address,
        urls: listener.urls,
        ...(spec.group === undefined ? {} : { group: spec.group }),
        ...(picksPort(entry.requested) ? { remote_port: spec.remote_port, picked: true } : {}),
      },
      'proxy listening',
    );
    return this.registered(entry);
  }

  /** Gives a proxy that keeps its public port its new spec on the listener it has; false if it cannot. */
  private respecInPlace(
    existing: { listener: BoundProxy; port: number | undefined },
    spec: ProxySpec,
  ): boolean {
    if (!(existing.listener instanceof TcpProxyListener)) return existing.listener.takeSpec?.(spec) ?? false;
    if (spec.type !== 'tcp' || spec.remote_port !== existing.port || spec.group !== undefined) return false;
    // Another address (a reload changed remote_bind) is another listener: the port moves there.
    if (bindAddressOf(this.ctx.config, spec) !== existing.listener.bindHost) return false;
    existing.listener.respec(spec, connectionLimitFor(this.ctx, this.owner, spec));
    return true;
  }

  private refused(proxy: string, reason: string): ProxyResult {
    // A proxy this session serves, registered again with a spec refused now (one a newer client wrote that
    // this server cannot read): the client is told it failed, so it no longer serves under the old spec
    // either. Before a changed proxy kept its port in place, the client's unregister had closed it.
    this.closeProxies([proxy], `its new registration was refused: ${reason}`, { forgetRoutes: true });
    if (this.beingReplaced.delete(proxy)) this.tellClosed(proxy);
    this.logger[this.refusals.repeats(proxy, reason) ? 'debug' : 'warn']({ proxy, reason }, 'proxy refused');
    return { proxy, ok: false, reason };
  }

  private registered({ spec, listener }: { spec: ProxySpec; listener: BoundProxy }): ProxyResult {
    this.refusals.forget(spec.name);
    this.beingReplaced.delete(spec.name);
    // Nothing listens for a private proxy: visitors ask for it by name.
    const compression = compressionOf(spec);
    // The result's word that this server sets the proxy's response_headers (a client gives the proxy back
    // without it), said only to a register that asked, as each of its streams' headers say it.
    const headersSet = responseHeadersMarkOf(spec);
    if (listener.service)
      return { proxy: spec.name, ok: true, service: serviceName(this.name, spec.name), ...compression };
    return {
      proxy: spec.name,
      ok: true,
      ...compression,
      ...headersSet,
      remote_addr: listener.address,
      // The port bound; an http or tls proxy's remote_port (which the server ignores) is not one.
      ...((spec.type === 'tcp' || spec.type === 'udp') && spec.remote_port !== undefined
        ? { remote_port: spec.remote_port }
        : {}),
      ...(listener.urls === undefined ? {} : { urls: listener.urls }),
    };
  }

  /** Binds a tcp proxy's public port; rejects with the reason for the client. */
  private async bindTcp(spec: ProxySpec, port: number): Promise<TcpProxyListener> {
    const listener = new TcpProxyListener({
      client: this.name,
      proxy: { ...spec, remote_port: port },
      bindHost: bindAddressOf(this.ctx.config, spec),
      session: this.session,
      logger: this.ctx.logger,
      tracker: this.ctx.tracker,
      limit: connectionLimitFor(this.ctx, this.owner, spec),
      bandwidth: this.bandwidth,
      visitorCheck: this.owner.visitorCheck(spec),
    });
    // Hold the port before the asynchronous bind, so two registrations cannot race for it.
    this.ctx.ports.set(port, { owner: this, proxy: spec.name });
    try {
      await listener.listen();
    } catch (err) {
      this.ctx.ports.delete(port);
      throw err;
    }
    return listener;
  }

  /**
   * `forgetRoutes`: the client removed these proxies itself, or the server's rules no longer admit them, so
   * their names are free at once (see BoundProxy.close); otherwise they answer as offline until the client
   * comes back. `replaced`: a new registration of the same name follows (see beingReplaced).
   */
  private closeProxies(
    names: readonly string[],
    reason: string,
    opts: { forgetRoutes?: boolean; replaced?: boolean } = {},
  ): void {
    for (const name of names) {
      const entry = this.proxies.get(name);
      if (!entry) continue;
      this.proxies.delete(name);
      this.routes -= entry.routes;
      entry.listener.close(opts);
      if (entry.port !== undefined && this.ctx.ports.get(entry.port)?.owner === this)
        this.ctx.ports.delete(entry.port);
      // Its /metrics series go with a proxy removed for good; a client that went away may come back to them.
      if (opts.forgetRoutes) this.ctx.traffic.remove(this.name, name);
      else this.ctx.traffic.left(this.name, name);
      this.logger.info({ proxy: name, reason }, 'proxy closed');
      if (opts.replaced) this.beingReplaced.add(name);
      else {
        this.beingReplaced.delete(name);
        this.tellClosed(name);
      }
    }
  }

  /** CloseProxy to the plugins that take it. */
  private tellClosed(proxy: string): void {
    this.ctx.plugins.tell('CloseProxy', () => closeProxyContent(this.pluginUser, proxy), {
      client: this.name,
      proxy,
    });
  }
}

/** A proxy this session serves. */
interface RegisteredProxy {
  listener: BoundProxy;
  /** A tcp proxy's port, held in ServerContext.ports. */
  port: number | undefined;
  /** As it is served: remote_port is the port bound, also when the server picked it. */
  spec: ProxySpec;
  /** As the client asked for it (remote_port 0 when the server picked), to tell a change from a repeat. */
  requested: ProxySpec;
  /** Host routes it claims. */
  routes: number;
}

/** A tcp or udp proxy that asks the server to pick its port. */
function picksPort(spec: ProxySpec): boolean {
  return (spec.type === 'tcp' || spec.type === 'udp') && spec.remote_port === PICKED_PORT;
}

/** A proxy whose routes a reload moved: the names it answered to, and those it answers to now. */
interface RoutesMove {
  proxy: string;
  oldHosts: string[];
  newHosts: string[];
}

/** The names of these claims, each once (a name with several locations has a claim per location). */
function hostsOf(claims: readonly HostClaim[]): string[] {
  return [...new Set(claims.map((c) => c.host))];
}

/** Resolves at the stream's next 'drain', or once it closes (a closed stream will not drain). */
function drainedOrClosed(stream: Stream): Promise<void> {
  return new Promise((resolve) => {
    const done = (): void => {
      stream.off('drain', done);
      stream.off('close', done);
      resolve();
    };
    stream.on('drain', done);
    stream.on('close', done);
  });
}
