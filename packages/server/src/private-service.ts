// Private services (a `private = true` tcp or udp proxy): no public port or hostname; a visiting client opens
// a stream asking for "owner/proxy", and the server bridges it to a stream it opens to the owner. A udp visit
// is one flow of the visitor's (one sender on its bind): its stream carries u16-framed datagrams both ways,
// which the server passes on unread, as it does a tcp visit's bytes.
import type { Stream } from '@porthole/mux';
import {
  type ProxySpec,
  parseHostPort,
  readVisitRequest,
  type VisitType,
  visitGrantAllows,
  withTimeout,
  writeVisitAnswer,
} from '@porthole/protocol';
import type { ConnectionLimit } from './connection-limit.js';
import { type BoundProxy, connectionLimitFor, type ProxyOwner, udpFlowLimitsOf } from './proxy-routing.js';
import type { ServerContext } from './server-context.js';
import { type VisitorCheck, visitorTurnedAway } from './server-plugins.js';
import { compressionOf, openTunnelStream } from './tunnel-stream.js';

/** A visiting client that has not said which service it wants by then is cut off. */
const VISIT_REQUEST_TIMEOUT_MS = 10_000;
/** A refused visitor has this long to read the reason before its stream is reset. */
const REFUSED_VISIT_LINGER_MS = 5_000;

/** One private proxy as visits find it. */
export interface PrivateTarget {
  readonly owner: ProxyOwner;
  spec: ProxySpec;
  /**
   * Its max_connections (capped by proxy_max_connections), a udp one's max_flows (capped by
   * udp_max_flows): visits over it are refused.
   */
  limit: ConnectionLimit;
  /** The server's plugins' say on each visit (NewUserConn, as frp asks it of stcp and sudp visitors). */
  visitorCheck: VisitorCheck;
}

/** A udp service's flows as visits count them: its max_flows, as its public flows would be. */
function visitLimitFor(ctx: ServerContext, owner: ProxyOwner, spec: ProxySpec): ConnectionLimit {
  if (spec.type !== 'udp') return connectionLimitFor(ctx, owner, spec);
  const { maxFlows } = udpFlowLimitsOf(ctx, spec);
  return owner.limits.for(spec.name, maxFlows, 'max_flows');
}

/** "owner/proxy": how visitors name a private proxy. */
export function serviceName(owner: string, proxy: string): string {
  return `${owner}/${proxy}`;
}

/** Why a spec cannot be a private proxy, or undefined (a spec without `private` is not one). */
export function privateRefusal(spec: ProxySpec): string | undefined {
  if (!spec.private) return undefined;
  if (spec.type !== 'tcp' && spec.type !== 'udp')
    return `a ${spec.type} proxy cannot be private (private proxies are tcp or udp)`;
  if (spec.remote_port !== undefined) return 'a private proxy has no remote_port: visitors reach it by name';
  if (spec.remote_bind !== undefined) return 'a private proxy has no public port to bind (remote_bind)';
  if (spec.group !== undefined)
    return 'a private proxy cannot be in a group (groups share a public port or name)';
  return undefined;
}

/** Registers a private proxy: nothing is bound; the session's lookup (ClientSession.privateTarget) finds it. */
export function bindPrivateService(ctx: ServerContext, owner: ProxyOwner, spec: ProxySpec): BoundProxy {
  const target: PrivateTarget = {
    owner,
    spec,
    limit: visitLimitFor(ctx, owner, spec),
    visitorCheck: owner.visitorCheck(spec),
  };
  return {
    address: `private ${serviceName(owner.name, spec.name)}`,
    service: target,
    takeSpec: (next) => {
      // Visits under way carry one type's bytes: another type is another proxy.
      if (!next.private || next.type !== target.spec.type) return false;
      target.spec = next;
      target.limit = visitLimitFor(ctx, owner, next);
      target.visitorCheck = owner.visitorCheck(next);
      return true;
    },
    close: () => target.limit.close(),
  };
}

/** The visiting client, as a visit needs it. */
export interface Visitor {
  readonly name: string;
  /** Its token's `visit` claim. */
  readonly grant: readonly string[] | undefined;
  /** Where its session comes from ("203.0.113.5:41234"). */
  readonly remoteAddr: string;
  /** The server is draining (SIGTERM): no new visits. */
  readonly draining: boolean;
  /** The owner's live session serving `proxy` privately, if any. */
  findTarget(owner: string, proxy: string): PrivateTarget | 'offline' | 'public' | 'none';
}

/**
 * Serves one stream a client opened after its control stream: reads which service it asks for, checks
 * the client's grant, and bridges it to a new stream to the owner, or answers why not and ends it.
 */
export async function serveVisit(ctx: ServerContext, visitor: Visitor, stream: Stream): Promise<void> {
  stream.on('error', () => {});
  const logger = ctx.logger;
  let service: string;
  let type: VisitType;
  try {
    const request = await withTimeout(
      readVisitRequest(stream),
      VISIT_REQUEST_TIMEOUT_MS,
      'the visit request',
    );
    service = request.visit;
    type = request.type ?? 'tcp';
  } catch (err) {
    logger.warn({ visitor: visitor.name, reason: (err as Error).message }, 'bad visit stream');
    stream.destroy();
    return;
  }
  const slash = service.indexOf('/');
  const owner = service.slice(0, slash);
  const proxy = service.slice(slash + 1);
  const refuse = (reason: string) => refuseVisit(ctx, stream, { visitor, service, type, reason });
  if (visitor.draining) return refuse('the server is shutting down');
  if (!visitGrantAllows(visitor.grant, service)) {
    const granted = visitor.grant?.length ? visitor.grant.join(',') : 'no services';
    return refuse(
      `the token of client "${visitor.name}" does not grant visiting ${service} (visit: ${granted})`,
    );
  }
  const target = visitor.findTarget(owner, proxy);
  if (target === 'offline') return refuse(`client "${owner}" is not connected`);
  if (target === 'none') return refuse(`client "${owner}" has no private service "${proxy}"`);
  // A visitor set up for a proxy that is public (or was, before a reload) has the right name: say what it is.
  if (target === 'public')
    return refuse(
      `client "${owner}" has proxy "${proxy}" public, not private: visitors reach only its private = true proxies`,
    );
  if (target.spec.type !== type)
    return refuse(
      `${service} is a ${target.spec.type} service and this visitor is ${type}: set the visitor's type = "${target.spec.type}"`,
    );
  if (stream.destroyed) return;
  if (!target.limit.take(stream))
    return refuse(`${service} has its ${target.limit.limitKey} (${target.limit.max()}) open`);
  const check = target.visitorCheck(visitor.remoteAddr);
  if (
    check !== undefined &&
    (await visitorTurnedAway(stream, check, (refusal) =>
      refuse(`refused by the server's plugin "${refusal.plugin}": ${refusal.reason}`),
    ))
  )
    return;
  const conn = ctx.tracker.nextId();
  let remote: { host: string; port: number };
  try {
    remote = parseHostPort(visitor.remoteAddr);
  } catch {
    remote = { host: visitor.remoteAddr, port: 0 };
  }
  // Both ends of a udp visit end its flow after the same silence: the service's, as its public flows would.
  const idle =
    type === 'udp' ? { udp_idle_timeout_ms: udpFlowLimitsOf(ctx, target.spec).idleTimeoutMs() } : {};
  // Compressed on the owner's hop only: the visitor's client asked for nothing.
  const toOwner = openTunnelStream(target.owner.session, {
    proxy,
    conn,
    remote_addr: remote.host,
    remote_port: remote.port,
    public_addr: service,
    visitor: visitor.name,
    ...idle,
    ...compressionOf(target.spec),
  });
  writeVisitAnswer(stream, { ok: true, conn, ...idle });
  // Counted against the owner's cap: its service is the one whose bytes move.
  const limits = target.owner.bandwidth.limits();
  ctx.tracker.carry(stream, toOwner, {
    labels: ['visitor', 'owner'],
    logger,
    ...(limits === undefined ? {} : { limits }),
    fields: { client: owner, proxy, conn, visitor: visitor.name, remote_addr: visitor.remoteAddr },
  });
}

function refuseVisit(
  ctx: ServerContext,
  stream: Stream,
  { visitor, service, type, reason }: { visitor: Visitor; service: string; type: VisitType; reason: string },
): void {
  // The same visitor refused the same way again (a retry loop) is one line per 10 s, with a count.
  ctx.visitRefusals.say(`${visitor.name}\u0000${service}\u0000${reason}`, {
    visitor: visitor.name,
    service,
    type,
    reason,
  });
  if (stream.destroyed) return;
  writeVisitAnswer(stream, { ok: false, reason });
  // What the visitor sent meanwhile is dropped: unread, it would hold the stream's end back.
  stream.resume();
  stream.end();
  setTimeout(() => stream.destroy(), REFUSED_VISIT_LINGER_MS).unref();
}
