// A [[visitors]] table at work: a local listener whose every connection becomes a stream this client opens,
// asking the server for another client's private service, then carrying bytes both ways.
import { createServer, type Server, type Socket } from 'node:net';
import type { Session } from '@porthole/mux';
import {
  type ConnectionTracker,
  formatPeerAddress,
  type Logger,
  listenServer,
  readVisitAnswer,
  resetConnection,
  withTimeout,
  writeVisitRequest,
} from '@porthole/protocol';
import { describeBind, type VisitorConfig } from './visitor-config.js';

/** The server answers a visit once it has opened the owner's stream; one that does not by then is gone. */
const VISIT_ANSWER_TIMEOUT_MS = 10_000;

/**
 * A server older than private services resets every stream a client opens after its control stream: a
 * visit ended without an answer reads as that.
 */
const NO_ANSWER =
  'the server ended the visit without an answer (a server older than private services does so: it has no visitors)';

export interface VisitorHost {
  /** The live session to open visits on, or why there is none. */
  session(): Session | string;
  readonly tracker: ConnectionTracker;
  readonly logger: Logger;
}

/** What `status` shows of a visitor. */
export interface VisitorState {
  listening: boolean;
  /** Why it does not listen (a bind failure), or why its last visit was refused. */
  error?: string;
  lastRefusal?: string;
}

export class VisitorListener {
  private readonly server: Server;
  private listening = false;
  private bindError: string | undefined;
  private lastRefusal: string | undefined;

  constructor(
    private config: VisitorConfig,
    private readonly host: VisitorHost,
  ) {
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => {
      void this.onConnection(socket);
    });
    // A bind's failure is listen()'s to log ("visitor listen failed", once); this is for the errors after.
    this.server.on('error', (err) => {
      if (this.listening)
        host.logger.error({ visitor: this.config.name, reason: err.message }, 'visitor listener error');
    });
  }

  get name(): string {
    return this.config.name;
  }

  get current(): VisitorConfig {
    return this.config;
  }

  /** A reload that changes only the service: the next connections ask for the new one. */
  retarget(config: VisitorConfig): void {
    this.config = config;
    this.lastRefusal = undefined;
  }

  /** Binds `bind`; a failure is logged and kept for `status`, not thrown: the client's other work goes on. */
  async listen(): Promise<void> {
    const visitor = this.config.name;
    try {
      await listenServer(this.server, this.config.bind, (err) =>
        this.host.logger.error({ visitor, reason: err.message }, 'visitor listener error'),
      );
    } catch (err) {
      const { code, message } = err as NodeJS.ErrnoException;
      this.bindError = `cannot listen on ${describeBind(this.config)}: ${code ?? message}`;
      const bind = describeBind(this.config);
      this.host.logger.error({ visitor, bind, reason: this.bindError }, 'visitor listen failed');
      return;
    }
    this.listening = true;
    this.host.logger.info(
      { visitor, service: this.config.service, bind: describeBind(this.config) },
      'visitor listening',
    );
  }

  /**
   * Stops accepting; connections under way carry on. Resolves once the port is let go, not when those
   * connections end (server.close's callback): a SIGTERM, or a reload moving the visitor to another port and
   * back, would wait on an ssh session for as long as it stays open.
   */
  close(): Promise<void> {
    this.listening = false;
    if (this.server.listening) this.server.close();
    // The listening handle closes at once; its release completes in the loop's next turn.
    return new Promise((resolve) => setImmediate(resolve));
  }

  state(): VisitorState {
    return {
      listening: this.listening,
      ...(this.bindError === undefined ? {} : { error: this.bindError }),
      ...(this.lastRefusal === undefined ? {} : { lastRefusal: this.lastRefusal }),
    };
  }

  private async onConnection(socket: Socket): Promise<void> {
    socket.on('error', () => {});
    socket.setNoDelay(true);
    const { name, service } = this.config;
    const remoteAddr = formatPeerAddress(socket.remoteAddress ?? '', socket.remotePort ?? 0);
    const session = this.host.session();
    if (typeof session === 'string') return this.refuse(socket, remoteAddr, session);
    const stream = session.open();
    stream.on('error', () => {});
    writeVisitRequest(stream, { visit: service });
    let answer: Awaited<ReturnType<typeof readVisitAnswer>>;
    try {
      answer = await withTimeout(readVisitAnswer(stream), VISIT_ANSWER_TIMEOUT_MS, 'the visit answer');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      const reason = code === 'ERR_STREAM_RESET' ? NO_ANSWER : `the visit failed: ${(err as Error).message}`;
      stream.destroy();
      return this.refuse(socket, remoteAddr, reason);
    }
    if (answer === null || !answer.ok) {
      stream.destroy();
      return this.refuse(socket, remoteAddr, answer?.reason ?? NO_ANSWER);
    }
    if (socket.destroyed) {
      stream.destroy();
      return;
    }
    this.lastRefusal = undefined;
    this.host.tracker.carry(socket, stream, {
      labels: ['local', 'tunnel'],
      logger: this.host.logger,
      fields: { visitor: name, service, conn: answer.conn, remote_addr: remoteAddr },
    });
  }

  private refuse(socket: Socket, remoteAddr: string, reason: string): void {
    this.lastRefusal = reason;
    this.host.logger.warn(
      { visitor: this.config.name, service: this.config.service, remote_addr: remoteAddr, reason },
      'visit refused',
    );
    resetConnection(socket);
  }
}
