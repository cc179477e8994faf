// Private services (a `private = true` tcp proxy): no public port or hostname; a visiting client opens a
// stream asking for "owner/proxy", and the server bridges it to a stream it opens to the owner.
import type { Stream } from '@porthole/mux';
import {
  type Logger,
  type ProxySpec,
  parseHostPort,
  readVisitRequest,
  visitGrantAllows,
  withTimeout,
  writeStreamHeader,
  writeVisitAnswer,
} from '@porthole/protocol';
import type { ConnectionLimit } from './connection-limit.js';
import { type BoundProxy, connectionLimitFor, type ProxyOwner } from './proxy-routing.js';
import type { ServerContext } from './server-context.js';

/** A visiting client that has not said which service it wants by then is cut off. */
const VISIT_REQUEST_TIMEOUT_MS = 10_000;
/** A refused visitor has this long to read the reason before its stream is reset. */
const REFUSED_VISIT_LINGER_MS = 5_000;

/** One private proxy as visits find it. */
export interface PrivateTarget {
  readonly owner: ProxyOwner;
  spec: ProxySpec;
  /** Its max_connections (capped by proxy_max_connections): visits over it are refused. */
  limit: ConnectionLimit;
}

/** "owner/proxy": how visitors name a private proxy. */
export function serviceName(owner: string, proxy: string): string {
  return `${owner}/${proxy}`;
}

/** Why a spec cannot be a private proxy, or undefined (a spec without `private` is not one). */
export function privateRefusal(spec: ProxySpec): string | undefined {
  if (!spec.private) return undefined;
  if (spec.type !== 'tcp') return `a ${spec.type} proxy cannot be private (private proxies are tcp only)`;
  if (spec.remote_port !== undefined) return 'a private proxy has no remote_port: visitors reach it by name';
  if (spec.remote_bind !== undefined) return 'a private proxy has no public port to bind (remote_bind)';
  if (spec.group !== undefined)
    return 'a private proxy cannot be in a group (groups share a public port or name)';
  return undefined;
}

/** Registers a private proxy: nothing is bound; the session's lookup (ClientSession.privateTarget) finds it. */
export function bindPrivateService(ctx: ServerContext, owner: ProxyOwner, spec: ProxySpec): BoundProxy {
  const target: PrivateTarget = { owner, spec, limit: connectionLimitFor(ctx, owner, spec) };
  return {
    address: `private ${serviceName(owner.name, spec.name)}`,
    service: target,
    takeSpec: (next) => {
      if (!next.private || next.type !== 'tcp') return false;
      target.spec = next;
      target.limit = connectionLimitFor(ctx, owner, next);
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
  try {
    service = (await withTimeout(readVisitRequest(stream), VISIT_REQUEST_TIMEOUT_MS, 'the visit request'))
      .visit;
  } catch (err) {
    logger.warn({ visitor: visitor.name, reason: (err as Error).message }, 'bad visit stream');
    stream.destroy();
    return;
  }
  const slash = service.indexOf('/');
  const owner = service.slice(0, slash);
  const proxy = service.slice(slash + 1);
  const refuse = (reason: string) => refuseVisit(logger, stream, { visitor, service, reason });
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
  if (stream.destroyed) return;
  if (!target.limit.take(stream))
    return refuse(`${service} has its max_connections (${target.limit.max()}) open`);
  const conn = ctx.tracker.nextId();
  let remote: { host: string; port: number };
  try {
    remote = parseHostPort(visitor.remoteAddr);
  } catch {
    remote = { host: visitor.remoteAddr, port: 0 };
  }
  const toOwner = target.owner.session.open();
  writeStreamHeader(toOwner, {
    proxy,
    conn,
    remote_addr: remote.host,
    remote_port: remote.port,
    public_addr: service,
    visitor: visitor.name,
  });
  writeVisitAnswer(stream, { ok: true, conn });
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
  logger: Logger,
  stream: Stream,
  { visitor, service, reason }: { visitor: Visitor; service: string; reason: string },
): void {
  logger.warn({ visitor: visitor.name, service, reason }, 'visit refused');
  if (stream.destroyed) return;
  writeVisitAnswer(stream, { ok: false, reason });
  // What the visitor sent meanwhile is dropped: unread, it would hold the stream's end back.
  stream.resume();
  stream.end();
  setTimeout(() => stream.destroy(), REFUSED_VISIT_LINGER_MS).unref();
}
