// Which proxy serves a hostname (and, for http, a path): the table behind the http vhost port and the TLS
// port. Lookup order: exact names, then wildcards (the most specific first), then subdomains of
// subdomain_host; within a name, the longest matching location prefix wins, whatever the case of its letters.
import { hostMatchesPattern } from '@porthole/protocol';
import { groupRefusal } from './group-refusal.js';
import { pickInTurn } from './round-robin.js';

export type RouteTier = 'exact' | 'wildcard' | 'subdomain';

/** One name (and location) a proxy claims. */
export interface HostClaim {
  /** Normalized pattern: "app.example.com", "*.example.com", or the full name of a subdomain. */
  host: string;
  tier: RouteTier;
  /** Path prefix, "/" for everything (tls routes always use "/"). */
  location: string;
}

export interface RouteEntry<T> extends HostClaim {
  client: string;
  proxy: string;
  /** The token (jti) its client signed in with, so a reload that revokes it can forget the route. */
  token: string | undefined;
  /**
   * Its load-balancing group: the proxies of one group may claim the same name and location, from one
   * client or several, and lookups take them in turn.
   */
  group: string | undefined;
  /** Where requests go; undefined once the proxy's client went away (visitors then get 502, not 404). */
  target: T | undefined;
  offlineSince: number;
}

/** How a lookup treats a group's members: whether it takes a turn, and which members may take it. */
interface Turn<T> {
  advance: boolean;
  /** A member this turns down (its connection limit is full) is passed over while another takes it. */
  accepts?: (target: T) => boolean;
}

/** How long a route whose client left keeps answering 502 before its name is forgotten (404). */
export const OFFLINE_ROUTE_TTL_MS = 24 * 3600_000;
/** At most this many offline routes are remembered (the oldest are forgotten first). */
export const MAX_OFFLINE_ROUTES = 10_000;
/**
 * Past the cap a sweep forgets down to this many, so the next sweep is a thousand releases away: trimmed to
 * the cap exactly, every release (256 per client disconnect) would scan and sort the whole table again.
 */
const OFFLINE_ROUTES_AFTER_SWEEP = MAX_OFFLINE_ROUTES * 0.9;

/** True when two locations name the same paths (see locationMatches). */
function sameLocation(a: string, b: string): boolean {
  return a === b || a.toLowerCase() === b.toLowerCase();
}

/**
 * True when `path` (a URL pathname) is under `location`: "/api" covers "/api" and "/api/x", not "/apix".
 * Letters match whatever their case: Express, ASP.NET and IIS serve "/ADMIN/x" as "/admin/x", and a
 * location behind basic auth must cover every path its service takes for its own.
 */
export function locationMatches(path: string, location: string): boolean {
  if (location === '/') return true;
  if (path.length < location.length || !sameLocation(path.slice(0, location.length), location)) return false;
  return (
    path.length === location.length || location.endsWith('/') || path.charCodeAt(location.length) === 0x2f
  );
}

export class HostRoutes<T> {
  /** Pattern -> the entries claiming it (one per location). */
  private readonly byHost = new Map<string, RouteEntry<T>[]>();
  /** Target -> the patterns it claims, so that releasing a proxy touches its own names only. */
  private readonly hostsOf = new Map<T, Set<string>>();
  private offlineCount = 0;
  /** Per name, where the next lookup starts among a group's entries of one location. */
  private readonly turns = new Map<string, number>();
  /** When the oldest offline entry expires; sweeping before then (and under the cap) finds nothing. */
  private nextExpiry = Number.POSITIVE_INFINITY;

  constructor(private readonly now: () => number = Date.now) {}

  /**
   * Why `client`'s proxy cannot claim these names, or undefined. A name held (online) by another client
   * is refused; one (name, location) pair belongs to one proxy. Offline routes never block a claim.
   */
  conflict(
    client: string,
    proxy: string,
    claims: readonly HostClaim[],
    group?: string,
    /** The table's proxy type, for the reason: "http", "tls". */
    type = 'http',
  ): string | undefined {
    for (const claim of claims) {
      for (const entry of this.byHost.get(claim.host) ?? []) {
        if (entry.target === undefined) continue;
        // This proxy's own routes, which its new ones replace.
        if (entry.client === client && entry.proxy === proxy) continue;
        if (entry.group !== undefined || group !== undefined) {
          const refused = groupRefusal(
            `hostname ${claim.host}`,
            { group: entry.group, type },
            { group, type },
          );
          if (refused) return refused;
          continue;
        }
        if (entry.client !== client) return `hostname ${claim.host} is in use by another client`;
        if (entry.proxy !== proxy && sameLocation(entry.location, claim.location)) {
          return `hostname ${claim.host}${claim.location === '/' ? '' : ` location ${claim.location}`} is already used by proxy "${entry.proxy}"`;
        }
      }
    }
    return undefined;
  }

  /**
   * Why `client` may not claim `claim` because of another client's subdomain route, or undefined. Lookup
   * ranks wildcards above subdomains, so a wildcard over another client's subdomain would take its
   * visitors, and a subdomain under another client's wildcard would never get any: both are refused.
   */
  subdomainShadow(client: string, claim: HostClaim): string | undefined {
    if (claim.tier === 'wildcard') {
      for (const [host, list] of this.byHost) {
        if (!hostMatchesPattern(host, claim.host)) continue;
        if (list.some((e) => e.target !== undefined && e.client !== client && e.tier === 'subdomain'))
          return `${claim.host} would take ${host}, a subdomain another client holds`;
      }
    } else if (claim.tier === 'subdomain') {
      const labels = claim.host.split('.');
      for (let i = 1; i < labels.length; i++) {
        const wildcard = `*.${labels.slice(i).join('.')}`;
        if ((this.byHost.get(wildcard) ?? []).some((e) => e.target !== undefined && e.client !== client))
          return `${claim.host} is covered by ${wildcard}, which another client holds`;
      }
    }
    return undefined;
  }

  /** True when another client holds `host` (online) in this table. */
  heldByOther(client: string, host: string): boolean {
    return this.holderOther(client, host) !== undefined;
  }

  /** An online entry of `host` that another client holds, if any (for its group, in a refusal). */
  holderOther(client: string, host: string): RouteEntry<T> | undefined {
    return (this.byHost.get(host) ?? []).find((e) => e.target !== undefined && e.client !== client);
  }

  /**
   * Adds a proxy's claims (check conflict() first). Offline entries for the same name and location go, and
   * so do the offline entries of other clients that would still answer before these claims and that their
   * clients could not take back while the claims stand (see forgetShadowingOffline).
   */
  add(
    client: string,
    proxy: string,
    claims: readonly HostClaim[],
    target: T,
    token?: string,
    group?: string,
  ): void {
    for (const claim of claims) {
      this.forgetShadowingOffline(client, claim);
      const list = (this.byHost.get(claim.host) ?? []).filter((e) => {
        const replaced =
          sameLocation(e.location, claim.location) &&
          (e.target === undefined || (e.proxy === proxy && e.client === client));
        if (replaced && e.target === undefined) this.offlineCount--;
        return !replaced;
      });
      list.push({ ...claim, client, proxy, token, group, target, offlineSince: 0 });
      this.byHost.set(claim.host, list);
      const hosts = this.hostsOf.get(target);
      if (hosts) hosts.add(claim.host);
      else this.hostsOf.set(target, new Set([claim.host]));
    }
  }

  /**
   * An away client's offline routes answer 502 until someone claims the name; once `client` does, those
   * that lookup would still put first would keep its visitors at 502 for a day: another client's other
   * locations of the name (`/api` before the new `/`), and, for a subdomain, another client's wildcard
   * over it (wildcards rank first). Neither could come back while the claim stands (the name is in use; a
   * wildcard over another client's subdomain is refused), so they are forgotten. The client's own offline
   * routes stay: it can take them back.
   */
  private forgetShadowingOffline(client: string, claim: HostClaim): void {
    const ofOthers = (e: RouteEntry<T>) => e.target === undefined && e.client !== client;
    this.forgetWhere(claim.host, ofOthers);
    if (claim.tier !== 'subdomain') return;
    const labels = claim.host.split('.');
    for (let i = 1; i < labels.length; i++) {
      this.forgetWhere(`*.${labels.slice(i).join('.')}`, (e) => ofOthers(e) && e.tier === 'wildcard');
    }
  }

  /** Removes the offline entries of `host` that `match` (every entry `match` takes must be offline). */
  private forgetWhere(host: string, match: (entry: RouteEntry<T>) => boolean): void {
    const list = this.byHost.get(host);
    if (!list) return;
    const kept = list.filter((e) => !match(e));
    if (kept.length === list.length) return;
    this.offlineCount -= list.length - kept.length;
    if (kept.length === 0) this.deleteHost(host);
    else this.byHost.set(host, kept);
  }

  private deleteHost(host: string): void {
    this.byHost.delete(host);
    this.turns.delete(host);
  }

  /** True when another online entry of `entry`'s group serves its location. */
  private othersServe(list: readonly RouteEntry<T>[], entry: RouteEntry<T>): boolean {
    if (entry.group === undefined) return false;
    return list.some(
      (e) =>
        e !== entry &&
        e.target !== undefined &&
        e.target !== entry.target &&
        e.group === entry.group &&
        sameLocation(e.location, entry.location),
    );
  }

  /**
   * The proxy stopped serving: its entries stay as offline routes (502 for visitors) until another
   * proxy claims the name or OFFLINE_ROUTE_TTL_MS passes. With `forget`, they are removed (404).
   */
  release(target: T, opts: { forget?: boolean } = {}): void {
    const now = this.now();
    const hosts = this.hostsOf.get(target);
    this.hostsOf.delete(target);
    for (const host of hosts ?? []) {
      const list = this.byHost.get(host);
      if (!list) continue;
      const kept: RouteEntry<T>[] = [];
      for (const entry of list) {
        if (entry.target !== target) kept.push(entry);
        // A group member that leaves while another serves its location: visitors go to the others.
        else if (!opts.forget && !this.othersServe(list, entry)) {
          kept.push({ ...entry, target: undefined, offlineSince: now });
          this.offlineCount++;
          this.nextExpiry = Math.min(this.nextExpiry, now + OFFLINE_ROUTE_TTL_MS);
        }
      }
      if (kept.length === 0) this.deleteHost(host);
      else this.byHost.set(host, kept);
    }
    if (this.offlineCount > MAX_OFFLINE_ROUTES || now >= this.nextExpiry) this.sweep(now);
  }

  /**
   * Forgets the offline routes that `match`, routes no client can take back, which would answer 502 for a
   * day: a reload forgets those of revoked tokens, and, when it changes subdomain_host, the subdomain routes
   * of clients that are away (their names are under the old domain, which no proxy claims now; one that is
   * connected moves to the new name). Returns how many went.
   */
  forgetOffline(match: (entry: RouteEntry<T>) => boolean): number {
    const gone = new Set(this.entries().filter((e) => e.target === undefined && match(e)));
    this.drop(gone);
    return gone.size;
  }

  /** The route for a request to `host` (normalized) and `path`, online or offline; undefined: no such name. */
  lookup(host: string, path = '/'): RouteEntry<T> | undefined {
    return this.find(host, path, { advance: true });
  }

  /**
   * The route the most specific name for `host` leads to, whatever its locations (the TLS port sees no
   * path). Among a group's members, the next in turn that `accepts` takes it, if one does.
   */
  lookupName(host: string, accepts?: (target: T) => boolean): RouteEntry<T> | undefined {
    return this.find(host, undefined, { advance: true, ...(accepts ? { accepts } : {}) });
  }

  /** lookupName without taking a group's turn: for a decision about the name, not a connection. */
  peekName(host: string): RouteEntry<T> | undefined {
    return this.find(host, undefined, { advance: false });
  }

  /** Every entry, for the admin API and tests. */
  entries(): RouteEntry<T>[] {
    return [...this.byHost.values()].flat();
  }

  /** `path` undefined: any location. */
  private find(host: string, path: string | undefined, turn: Turn<T>): RouteEntry<T> | undefined {
    const exact = this.byHost.get(host);
    const found = this.best(exact, 'exact', path, turn);
    if (found) return this.fresh(found);
    const labels = host.split('.');
    for (let i = 1; i < labels.length; i++) {
      const wildcardList = this.byHost.get(`*.${labels.slice(i).join('.')}`);
      const wildcard = this.best(wildcardList, 'wildcard', path, turn);
      if (wildcard) return this.fresh(wildcard);
    }
    const sub = this.best(exact, 'subdomain', path, turn);
    return sub ? this.fresh(sub) : undefined;
  }

  private best(
    list: RouteEntry<T>[] | undefined,
    tier: RouteTier,
    path: string | undefined,
    turn: Turn<T>,
  ): RouteEntry<T> | undefined {
    let best: RouteEntry<T>[] = [];
    for (const entry of list ?? []) {
      if (entry.tier !== tier || (path !== undefined && !locationMatches(path, entry.location))) continue;
      const first = best[0];
      if (!first || entry.location.length > first.location.length) best = [entry];
      else if (
        entry.target !== undefined &&
        first.target !== undefined &&
        sameLocation(entry.location, first.location)
      )
        best.push(entry);
    }
    if (best.length < 2) return best[0];
    // A group's members on one location (only online entries share one): each in turn, passing over one
    // that `accepts` turns down while another takes it.
    const host = best[0]!.host;
    const advance = (next: number) => {
      if (turn.advance) this.turns.set(host, next);
    };
    const at = this.turns.get(host) ?? 0;
    const { accepts } = turn;
    const online = (e: RouteEntry<T>) => e.target !== undefined;
    const taking = (e: RouteEntry<T>) => online(e) && (accepts === undefined || accepts(e.target!));
    return pickInTurn(best, at, taking, advance) ?? pickInTurn(best, at, online, advance) ?? best[0];
  }

  /** An offline entry past its TTL is forgotten on the way out. */
  private fresh(entry: RouteEntry<T>): RouteEntry<T> | undefined {
    if (entry.target !== undefined || this.now() - entry.offlineSince < OFFLINE_ROUTE_TTL_MS) return entry;
    this.sweep(this.now());
    return undefined;
  }

  private sweep(now: number): void {
    if (this.offlineCount === 0) {
      this.nextExpiry = Number.POSITIVE_INFINITY;
      return;
    }
    const offline: RouteEntry<T>[] = [];
    for (const list of this.byHost.values())
      for (const e of list) if (e.target === undefined) offline.push(e);
    let oldestKept = Number.POSITIVE_INFINITY;
    const expired = new Set(offline.filter((e) => now - e.offlineSince >= OFFLINE_ROUTE_TTL_MS));
    const remaining = offline.length - expired.size;
    const excess = remaining > MAX_OFFLINE_ROUTES ? remaining - OFFLINE_ROUTES_AFTER_SWEEP : 0;
    if (excess > 0) {
      const oldest = offline
        .filter((e) => !expired.has(e))
        .sort((a, b) => a.offlineSince - b.offlineSince)
        .slice(0, excess);
      for (const e of oldest) expired.add(e);
    }
    for (const e of offline) if (!expired.has(e)) oldestKept = Math.min(oldestKept, e.offlineSince);
    this.nextExpiry = oldestKept + OFFLINE_ROUTE_TTL_MS;
    this.drop(expired);
  }

  /** Removes these offline entries. */
  private drop(offline: ReadonlySet<RouteEntry<T>>): void {
    if (offline.size === 0) return;
    for (const host of this.byHost.keys()) this.forgetWhere(host, (e) => offline.has(e));
  }
}
