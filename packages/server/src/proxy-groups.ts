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

export { groupRefusal } from './group-refusal.js';

import { type BoundProxy, connectionLimitFor, type ProxyOwner } from './proxy-routing.js';
import type { ServerContext } from './server-context.js';
import { respecTarget, TcpProxyListener, type TcpTarget } from './tcp-proxy-listener.js';

/** A proxy of a group, for status: which client, which proxy. */
export interface GroupMember {
  client: string;
  proxy: string;
}

/** What ServerContext.ports holds for a tcp port a group shares: the listener its members take turns on. */
export interface TcpGroupHolder {
  owner: TcpProxyListener;
  proxy: string;
  group: string;
  /** Settles once the first member's bind is done: a member that joins meanwhile shares its outcome. */
  ready: Promise<void>;
}

/**
 * True when every proxy on a group's tcp listener is `proxy` of this session: registered again (without
 * its group, or in another), it replaces itself rather than meeting a group.
 */
export function onlyMemberIs(listener: object, session: object, proxy: string): boolean {
  return (
    listener instanceof TcpProxyListener &&
    listener.members.every((m) => m.session === session && m.proxy.name === proxy)
  );
}

/**
 * A tcp proxy of a group on its port: joins the group's listener, or binds it as the first member.
 * Rejects with the reason for the client.
 */
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
  };
  const held = ctx.ports.get(port);
  let listener: TcpProxyListener;
  if (held?.owner instanceof TcpProxyListener && held.group === spec.group) {
    listener = held.owner;
    await held.ready;
    // Its last member may have left while the bind was under way.
    if (ctx.ports.get(port)?.owner !== listener)
      throw new Error(`port ${port} was let go meanwhile; try again`);
    listener.join(target);
  } else {
    listener = new TcpProxyListener({
      ...target,
      target,
      proxy: spec,
      bindHost: ctx.config.proxyBind,
      logger: ctx.logger,
      tracker: ctx.tracker,
    });
    // Held before the asynchronous bind, so that two registrations cannot race for the port; a second
    // member that comes meanwhile joins this listener.
    const ready = listener.listen();
    ctx.ports.set(port, { owner: listener, proxy: spec.name, group: spec.group, ready });
    try {
      await ready;
    } catch (err) {
      if (ctx.ports.get(port)?.owner === listener) ctx.ports.delete(port);
      throw err;
    }
  }
  return {
    address: listener.address,
    group: spec.group,
    groupMembers: () => listener.members.map((m) => ({ client: m.client, proxy: m.proxy.name })),
    takeSpec: (next: ProxySpec) => {
      if (next.type !== 'tcp' || next.remote_port !== port || next.group !== spec.group) return false;
      respecTarget(target, next, connectionLimitFor(ctx, owner, next));
      return true;
    },
    close: () => {
      if (!listener.leave(target)) return;
      listener.close();
      if (ctx.ports.get(port)?.owner === listener) ctx.ports.delete(port);
    },
  };
}
