import type { EventEmitter } from 'node:events';

/** What CloseHooks watches: a socket or stream (Duplex), a mux Session. */
export type Closable = EventEmitter & { readonly closed: boolean; readonly readableEnded?: boolean };

/**
 * Runs cleanups when an emitter closes (or, made with 'end', when a socket's peer has sent its FIN), with one
 * listener per emitter however many cleanups wait on it: a listener each would trip Node's leak warning at
 * the eleventh (a socket's pipelined requests on the server, the local connects pending on one tunnel session
 * in the client).
 */
export class CloseHooks {
  private readonly hooks = new WeakMap<Closable, Set<() => void>>();

  constructor(private readonly event: 'close' | 'end' = 'close') {}

  /** Calls `hook` once `emitter` closes (or ends), unless the returned function is called first. */
  add(emitter: Closable, hook: () => void): () => void {
    if (this.event === 'close' ? emitter.closed : emitter.readableEnded === true) {
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
      emitter.once(this.event, () => {
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
