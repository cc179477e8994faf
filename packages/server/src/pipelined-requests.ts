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
 * Counts each visitor connection's unanswered requests; one past the limit closes the connection. The
 * requests Node had already parsed from the same read arrive on a destroyed socket and are dropped.
 */
export class PipelinedRequests {
  private readonly open = new WeakMap<Duplex, number>();
  private readonly warning: LimitWarning;

  constructor(logger: Logger) {
    this.warning = new LimitWarning((closed) =>
      logger.warn(
        { limit: MAX_PIPELINED_REQUESTS, connections: closed },
        'http visitors closed for pipelining more unanswered requests than the limit',
      ),
    );
  }

  /** False: the request is not to be served (its connection is closed, or is closed now). */
  admit(socket: Duplex): boolean {
    if (socket.destroyed) return false;
    const open = (this.open.get(socket) ?? 0) + 1;
    if (open > MAX_PIPELINED_REQUESTS) {
      this.open.delete(socket);
      socket.destroy();
      this.warning.count();
      return false;
    }
    this.open.set(socket, open);
    return true;
  }

  /** A request admitted on `socket` has been answered (or given up). */
  done(socket: Duplex): void {
    const open = this.open.get(socket);
    if (open === undefined) return;
    if (open <= 1) this.open.delete(socket);
    else this.open.set(socket, open - 1);
  }
}
