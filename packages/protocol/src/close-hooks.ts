import type { EventEmitter } from 'node:events';

/** What CloseHooks watches: a socket or stream (Duplex), a mux Session. */
export type Closable = EventEmitter & { readonly closed: boolean };

/**
 * Runs cleanups when an emitter closes, with one 'close' listener per emitter however many cleanups wait on
 * it: a listener each would trip Node's leak warning at the eleventh (a socket's pipelined requests on the
 * server, the local connects pending on one tunnel session in the client).
 */
export class CloseHooks {
  private readonly hooks = new WeakMap<Closable, Set<() => void>>();

  /** Calls `hook` once `emitter` closes, unless the returned function is called first. */
  add(emitter: Closable, hook: () => void): () => void {
    if (emitter.closed) {
      let cancelled = false;
      process.nextTick(() => {
        if (!cancelled) hook();
      });
      return () => {
        cancelled = true;
      };
    }
    let hooks = this.hooks.get(emitter);
    if (!hooks) {
      const set = new Set<() => void>();
      hooks = set;
      this.hooks.set(emitter, set);
      emitter.once('close', () => {
        this.hooks.delete(emitter);
        for (const pending of set) pending();
        set.clear();
      });
    }
    const own = hooks;
    own.add(hook);
    return () => {
      own.delete(hook);
    };
  }
}
