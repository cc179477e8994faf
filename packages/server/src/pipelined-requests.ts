import type { Duplex } from 'node:stream';
import { LimitWarning, type Logger } from '@porthole/protocol';

/**
 * Requests one visitor connection may have unanswered at once (HTTP/1.1 pipelining; apt sends 10). Node
 * parses a whole read's worth of pipelined requests before anything can pause it and emits each one, so a
 * visitor sending requests faster than the service answers would otherwise make the server hold every one:
 * 300,000 tiny GETs on one connection (11 MB sent) took a server to 1.26 GB.
 */
export const MAX_PIPELINED_REQUESTS = 32;
/**
 * Requests parsed past MAX_PIPELINED_REQUESTS that wait their turn, per connection; one more closes it.
 * Closing at the 33rd dropped the answers to all 32 before it (50 GETs in one write: none answered, where
 * a plain Node or nginx server answers all 50). Reading stops while requests wait, so only what one read
 * held can queue: a flood still closes, a short burst is served in order.
 */
export const MAX_DEFERRED_REQUESTS = 256;

interface Pipeline {
  /** Requests being served. */
  open: number;
  /** Requests waiting for one of those to end, in order. */
  deferred: Array<() => void>;
}

/**
 * Counts each visitor connection's unanswered requests. Past the limit a request waits (and the connection
 * is not read meanwhile); past MAX_DEFERRED_REQUESTS waiting ones the connection is closed, and the
 * requests Node had already parsed from the same read arrive on a destroyed socket and are dropped.
 */
export class PipelinedRequests {
  private readonly pipelines = new WeakMap<Duplex, Pipeline>();
  private readonly warning: LimitWarning;

  constructor(logger: Logger) {
    this.warning = new LimitWarning((closed) =>
      logger.warn(
        { limit: MAX_PIPELINED_REQUESTS, waiting: MAX_DEFERRED_REQUESTS, connections: closed },
        'http visitors closed for pipelining more unanswered requests than the limit',
      ),
    );
  }

  /**
   * Calls `serve` now, or once an earlier request of the connection is done; or never, when the connection
   * is closed (or is closed now, for one request too many).
   */
  admit(socket: Duplex, serve: () => void): void {
    if (socket.destroyed) return;
    let pipeline = this.pipelines.get(socket);
    if (!pipeline) {
      pipeline = { open: 0, deferred: [] };
      this.pipelines.set(socket, pipeline);
    }
    if (pipeline.open < MAX_PIPELINED_REQUESTS) {
      pipeline.open += 1;
      serve();
      return;
    }
    if (pipeline.deferred.length >= MAX_DEFERRED_REQUESTS) {
      this.pipelines.delete(socket);
      socket.destroy();
      this.warning.count();
      return;
    }
    pipeline.deferred.push(serve);
    socket.pause();
  }

  /**
   * A request admitted on `socket` has been answered (or given up): the next waiting one is served. True
   * when the connection has no request left, answered or waiting.
   */
  done(socket: Duplex): boolean {
    const pipeline = this.pipelines.get(socket);
    if (!pipeline) return false;
    pipeline.open -= 1;
    if (socket.destroyed) {
      // Its waiting requests are never served: nothing of theirs has begun.
      if (pipeline.open <= 0) this.pipelines.delete(socket);
      pipeline.deferred.length = 0;
      return false;
    }
    const next = pipeline.deferred.shift();
    if (next) {
      pipeline.open += 1;
      if (pipeline.deferred.length === 0) socket.resume();
      // Not inside the ending request's own cleanup.
      queueMicrotask(() => {
        if (!socket.destroyed) next();
      });
      return false;
    }
    if (pipeline.open > 0) return false;
    this.pipelines.delete(socket);
    return true;
  }
}
