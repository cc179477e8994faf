// Load-balancing groups (frp's loadBalancer.group): proxies of one type and one `group` that ask for the
// same public port or names share it, from one client or several. Each member is still checked against its
// own token's grant and the server's rules; it joins the listener (tcp) or the route (http, tls) already
// there and takes new connections in turn. A member that leaves takes nothing from the others; the last one
// frees the port (or leaves the names offline) as a lone proxy does.
//
// No group key (frp's groupKey): in frp every client shares one token, so a key is what keeps a stranger's
// proxy out of a group. Here a client joins only with a port or name its own token grants, which is the
// operator's say on who may serve it.
import type { ProxySpec } from '@porthole/protocol';
import { groupRefusal } from './group-refusal.js';
import { bindAddressOf } from './proxy-bind.js';
import { type BoundProxy, connectionLimitFor, type ProxyOwner } from './proxy-routing.js';
import type { ServerContext } from './server-context.js';
import { respecTarget, TcpProxyListener, type TcpTarget } from './tcp-proxy-listener.js';
import { UdpProxyListener, type UdpTarget } from './udp-proxy-listener.js';

/** A proxy of a group, for status: which client, which proxy. */
export interface GroupMember {
  client: string;
  proxy: string;
}

/**
 * Who holds a tcp or udp port (ServerContext.ports, RoutingState.udpPorts): a session and its proxy, or for a
 * group's port its listener (the members are on it), the first member's name and the group.
 */
export interface PortHolder {
  owner: object;
  proxy: string;
  group?: string;
  /** A group's: settles once the first member's bind is done; a member that joins meanwhile shares its outcome. */
  ready?: Promise<void>;
  /** A group's: the address its listener is bound on, which every member must ask for (remote_bind). */
  bindHost?: string;
}

/** A tcp or udp listener that group members take turns on. */
interface GroupListener<T> {
  readonly address: string;
  readonly members: readonly T[];
  join(target: T): void;
  /** True when none is left. */
  leave(target: T): boolean;
  listen(): Promise<void>;
  close(): void;
}

function isGroupListener(owner: object): owner is TcpProxyListener | UdpProxyListener {
  return owner instanceof TcpProxyListener || owner instanceof UdpProxyListener;
}

/**
 * True when every proxy on a group's listener is `proxy` of this session: registered again (without its
 * group, or in another), it replaces itself rather than meeting a group.
 */
export function onlyMemberIs(owner: object, session: object, proxy: string): boolean {
  if (!isGroupListener(owner)) return false;
  const members: readonly { session: object; proxy: { name: string } }[] = owner.members;
  return members.every((m) => m.session === session && m.proxy.name === proxy);
}

/**
 * Why `spec` may not have `port` (`what`: "port 8080", "udp port 5353") held as `holder` says, or undefined
 * (free, its own, or its group's).
 */
export function portHolderRefusal(
  what: string,
  holder: PortHolder | undefined,
  owner: { self: object; session: object },
  spec: ProxySpec,
): string | undefined {
  if (!holder) return undefined;
  // This very proxy registered again (into a group, out of one): it replaces itself.
  if (holder.owner === owner.self && holder.proxy === spec.name) return undefined;
  if (onlyMemberIs(holder.owner, owner.session, spec.name)) return undefined;
  const group = groupRefusal(what, { group: holder.group, type: spec.type }, spec);
  if (group) return group;
  if (holder.group !== undefined) return undefined;
  if (holder.owner !== owner.self) return `${what} is in use by another client`;
  return `${what} is already used by proxy "${holder.proxy}"`;
}

/**
 * Joins `target` to the group's listener on `port`, or binds `create()` there as its first member. Rejects
 * with the reason for the client.
 */
async function joinOrBind<T, L extends GroupListener<T>>(
  held: Map<number, PortHolder>,
  port: number,
  spec: ProxySpec & { group: string },
  bindHost: string,
  target: T,
  isKind: (owner: object) => owner is L,
  create: () => L,
): Promise<L> {
  const holder = held.get(port);
  if (holder && isKind(holder.owner) && holder.group === spec.group) {
    if (holder.bindHost !== bindHost)
      throw new Error(
        `group "${spec.group}" has port ${port} bound on ${holder.bindHost}, and every member asks for that address; this proxy asks for ${bindHost} (remote_bind)`,
      );
    const listener = holder.owner;
    await holder.ready;
    // Its last member may have left while the bind was under way.
    if (held.get(port)?.owner !== listener) throw new Error(`port ${port} was let go meanwhile; try again`);
    listener.join(target);
    return listener;
  }
  const listener = create();
  // Held before the asynchronous bind, so that two registrations cannot race for the port; a second member
  // that comes meanwhile joins this listener once it is bound.
  const ready = listener.listen();
  held.set(port, { owner: listener, proxy: spec.name, group: spec.group, ready, bindHost });
  try {
    await ready;
  } catch (err) {
    if (held.get(port)?.owner === listener) held.delete(port);
    throw err;
  }
  return listener;
}

/** A member's BoundProxy: leaving, the last one closes the listener and frees the port. */
function memberOf<T extends { client: string; proxy: { name: string } }>(
  held: Map<number, PortHolder>,
  port: number,
  group: string,
  listener: GroupListener<T>,
  target: T,
  takeSpec: (next: ProxySpec) => boolean,
): BoundProxy {
  return {
    address: listener.address,
    group,
    groupMembers: () => listener.members.map((m) => ({ client: m.client, proxy: m.proxy.name })),
    takeSpec,
    close: () => {
      if (!listener.leave(target)) return;
      listener.close();
      if (held.get(port)?.owner === listener) held.delete(port);
    },
  };
}

/** A tcp proxy of a group on its port (ServerContext.ports). */
export async function bindTcpGroupMember(
  ctx: ServerContext,
  owner: ProxyOwner,
  spec: ProxySpec & { group: string; remote_port: number },
): Promise<BoundProxy> {
  const port = spec.remote_port;
  const target: TcpTarget = {
    client: owner.name,
    proxy: spec,
    session: owner.session,
    limit: connectionLimitFor(ctx, owner, spec),
    bandwidth: owner.bandwidth,
    visitorCheck: owner.visitorCheck(spec),
  };
  const isTcp = (o: object): o is TcpProxyListener => o instanceof TcpProxyListener;
  const bindHost = bindAddressOf(ctx.config, spec);
  const listener = await joinOrBind(ctx.ports, port, spec, bindHost, target, isTcp, () => {
    const { logger, tracker } = ctx;
    return new TcpProxyListener({ ...target, target, proxy: spec, bindHost, logger, tracker });
  });
  return memberOf(ctx.ports, port, spec.group, listener, target, (next) => {
    if (!sameMembership(ctx, next, 'tcp', port, spec.group, bindHost)) return false;
    respecTarget(target, next, connectionLimitFor(ctx, owner, next));
    return true;
  });
}

/** A udp proxy of a group on its port (RoutingState.udpPorts); `limitsOf` reads its max_flows and idle timeout. */
export async function bindUdpGroupMember(
  ctx: ServerContext,
  owner: ProxyOwner,
  spec: ProxySpec & { group: string; remote_port: number },
  limitsOf: (spec: ProxySpec) => Pick<UdpTarget, 'idleTimeoutMs' | 'maxFlows'>,
  bindHost: string,
  create: (target: UdpTarget) => UdpProxyListener,
): Promise<BoundProxy> {
  const port = spec.remote_port;
  const target: UdpTarget = {
    client: owner.name,
    proxy: spec,
    session: owner.session,
    ...limitsOf(spec),
    flows: 0,
    bandwidth: owner.bandwidth,
  };
  const isUdp = (o: object): o is UdpProxyListener => o instanceof UdpProxyListener;
  const held = ctx.routing.udpPorts;
  const listener = await joinOrBind(held, port, spec, bindHost, target, isUdp, () => create(target));
  return {
    ...memberOf(held, port, spec.group, listener, target, (next) => {
      if (!sameMembership(ctx, next, 'udp', port, spec.group, bindHost)) return false;
      listener.respec({ ...next, remote_port: port }, limitsOf(next), target);
      return true;
    }),
    // The port's counts, all members' together.
    udpStats: listener.stats,
  };
}

/** Whether `next` (a reload's spec) is still a member of the same group's listener: otherwise it registers anew. */
function sameMembership(
  ctx: ServerContext,
  next: ProxySpec,
  type: 'tcp' | 'udp',
  port: number,
  group: string,
  bindHost: string,
): boolean {
  return (
    next.type === type &&
    next.remote_port === port &&
    next.group === group &&
    bindAddressOf(ctx.config, next) === bindHost
  );
}
