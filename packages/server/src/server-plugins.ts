// The [[plugins]] in force: which to ask about each op, in config order, and what their answers come to.
import type { Duplex } from 'node:stream';
import { CoalescedLines, type Logger, type ProxySpec } from '@porthole/protocol';
import { PluginClient } from './plugin-client.js';
import type { PluginConfig, PluginOp } from './plugin-config.js';
import { newUserConnContent, type PluginUser } from './plugin-content.js';

/** Why a plugin said no: its name and reason (the client is shown the reason). */
export interface PluginRefusal {
  plugin: string;
  reason: string;
  /** The plugin could not be asked (down, slow, garbled): a refusal by rule, not the plugin's decision. */
  failed: boolean;
}

/**
 * A visitor's admission, asked per connection: undefined at once when no plugin takes NewUserConn (so an
 * unconfigured server pays nothing more), else the plugins' refusal or undefined once they allowed it.
 */
export type VisitorCheck = (remoteAddr: string) => Promise<PluginRefusal | undefined> | undefined;

/**
 * Waits for a visitor's check; true when it may not go on: refused (its connection is closed, unless
 * `onRefused` answers it) or gone meanwhile. What it sends in the meantime waits in its socket.
 */
export async function visitorTurnedAway(
  socket: Duplex,
  check: Promise<PluginRefusal | undefined>,
  onRefused: (refusal: PluginRefusal) => void = () => socket.destroy(),
): Promise<boolean> {
  // A reset while the plugins decide must not be an unhandled 'error'.
  socket.on('error', () => {});
  const refusal = await check;
  if (socket.destroyed) return true;
  if (refusal === undefined) return false;
  onRefused(refusal);
  return true;
}

const NO_CLIENTS: readonly PluginClient[] = [];

export class ServerPlugins {
  private configs: readonly PluginConfig[] | undefined;
  private byOp = new Map<PluginOp, readonly PluginClient[]>();
  private clients: PluginClient[] = [];
  /** Plugins that could not be asked, one line per plugin and op per 10 s (NewUserConn comes per visitor). */
  private readonly failures: CoalescedLines;
  /** Visitors a plugin refused, one line per proxy per 10 s. */
  private readonly visitorRefusals: CoalescedLines;
  /** Plugins that could not be told (CloseProxy), one line per plugin and reason per 10 s. */
  private readonly notTold: CoalescedLines;
  /** Tells under way, so that a server that stops lets them finish (see settle). */
  private readonly telling = new Set<Promise<void>>();

  /** `current` is read at each ask: a reload's new [[plugins]] apply from the next one. */
  constructor(
    private readonly current: () => readonly PluginConfig[],
    private readonly logger: Logger,
  ) {
    this.failures = new CoalescedLines((fields) => logger.warn(fields, 'plugin failed: refused'));
    this.visitorRefusals = new CoalescedLines((fields) => logger.info(fields, 'visitor refused by plugin'));
    this.notTold = new CoalescedLines((fields) => logger.warn(fields, 'plugin failed: not told'));
  }

  /** Whether any plugin takes `op`; cheap enough for every visitor connection. */
  handles(op: PluginOp): boolean {
    return this.sync().get(op) !== undefined;
  }

  /**
   * Asks each plugin that takes `op`, in config order; the first refusal wins (frp's rule). Resolves with it,
   * or undefined when all allowed (or none takes `op`).
   */
  async ask(
    op: PluginOp,
    content: () => object,
    fields: Record<string, unknown>,
  ): Promise<PluginRefusal | undefined> {
    const clients = this.sync().get(op) ?? NO_CLIENTS;
    const asked = clients.length === 0 ? undefined : content();
    for (const client of clients) {
      const verdict = await client.ask(op, asked!);
      if (verdict.allowed) continue;
      const plugin = client.config.name;
      if (verdict.failed)
        // Keyed by reason too: one plugin's slowness does not hide that it then answered garbage.
        this.failures.say(`${plugin} ${op} ${verdict.reason}`, {
          plugin,
          op,
          ...fields,
          reason: verdict.reason,
        });
      return {
        plugin,
        reason: verdict.failed ? `the server's plugin "${plugin}" could not be asked` : verdict.reason,
        failed: verdict.failed,
      };
    }
    return undefined;
  }

  /**
   * Tells each plugin that takes `op` (CloseProxy) what happened, without waiting: frps ignores the answer,
   * and so does this. The plugin's caps on requests bound what a burst of closes can queue.
   */
  tell(op: PluginOp, content: () => object, fields: Record<string, unknown>): void {
    const clients = this.sync().get(op) ?? NO_CLIENTS;
    if (clients.length === 0) return;
    const told = content();
    for (const client of clients) {
      const telling = client.ask(op, told).then((verdict) => {
        this.telling.delete(telling);
        if (verdict.allowed || !verdict.failed) return;
        const plugin = client.config.name;
        this.notTold.say(`${plugin} ${op} ${verdict.reason}`, {
          plugin,
          op,
          ...fields,
          reason: verdict.reason,
        });
      });
      this.telling.add(telling);
    }
  }

  /** Waits up to `ms` for the tells under way: the CloseProxy of a server's last sessions, as it stops. */
  async settle(ms: number): Promise<void> {
    if (this.telling.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.all(this.telling),
      new Promise((resolve) => {
        timer = setTimeout(resolve, ms);
      }),
    ]);
    clearTimeout(timer);
  }

  /** NewUserConn for the visitors of one proxy of `user`'s (see VisitorCheck). */
  visitorCheck(user: PluginUser, spec: Pick<ProxySpec, 'name' | 'type' | 'private'>): VisitorCheck {
    return (remoteAddr) => {
      if (!this.handles('NewUserConn')) return undefined;
      const fields = { client: user.user, proxy: spec.name, remote_addr: remoteAddr };
      return this.ask('NewUserConn', () => newUserConnContent(user, spec, remoteAddr), fields).then(
        (refusal) => {
          if (refusal)
            this.visitorRefusals.say(`${user.user}/${spec.name}`, {
              ...fields,
              plugin: refusal.plugin,
              reason: refusal.reason,
            });
          return refusal;
        },
      );
    };
  }

  /** Closes every plugin's connections (the server stops). */
  close(): void {
    this.failures.forgetAll();
    this.visitorRefusals.forgetAll();
    this.notTold.forgetAll();
    for (const client of this.clients) client.close();
    this.clients = [];
    this.configs = undefined;
    this.byOp.clear();
  }

  /** The clients for the [[plugins]] now in force; one whose table a reload left as it was is kept. */
  private sync(): ReadonlyMap<PluginOp, readonly PluginClient[]> {
    const configs = this.current();
    if (configs === this.configs) return this.byOp;
    const kept = new Map(this.clients.map((c) => [describe(c.config), c]));
    const next = configs.map((config) => {
      const key = describe(config);
      const same = kept.get(key);
      kept.delete(key);
      return same ?? new PluginClient(config, this.logger);
    });
    for (const gone of kept.values()) gone.close();
    this.clients = next;
    this.configs = configs;
    this.byOp = new Map();
    for (const client of next)
      for (const op of client.config.ops) this.byOp.set(op, [...(this.byOp.get(op) ?? []), client]);
    return this.byOp;
  }
}

function describe(config: PluginConfig): string {
  return JSON.stringify({ ...config, url: config.url.href });
}
