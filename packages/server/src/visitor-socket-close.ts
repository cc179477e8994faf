import type { Duplex } from 'node:stream';

/**
 * Runs a request's cleanup when its visitor's connection closes, for the requests whose responses never
 * hear of it: Node 20 emits no 'close' on a pipelined request's response still queued behind another when
 * the socket goes (nodejs/node#62534), so without this such a request would keep its tunnel stream and its
 * place among the open connections for good. One 'close' listener per socket, however deep the pipeline.
 */
export class VisitorSocketClose {
  private readonly hooks = new WeakMap<Duplex, Set<() => void>>();

  /** Calls `hook` once `socket` closes, unless the returned function is called first. */
  add(socket: Duplex, hook: () => void): () => void {
    if (socket.closed) {
      let cancelled = false;
      process.nextTick(() => {
        if (!cancelled) hook();
      });
      return () => {
        cancelled = true;
      };
    }
    let hooks = this.hooks.get(socket);
    if (!hooks) {
      const set = new Set<() => void>();
      hooks = set;
      this.hooks.set(socket, set);
      socket.once('close', () => {
        this.hooks.delete(socket);
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
