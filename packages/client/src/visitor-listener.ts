// A [[visitors]] table at work: a local port whose every connection (tcp) or sender (udp, UdpVisitor)
// becomes a stream this client opens, asking the server for another client's private service, then
// carrying bytes both ways.
import { createServer, type Server, type Socket } from 'node:net';
import type { Session, Stream } from '@porthole/mux';
import {
  type CoalescedLines,
  type ConnectionTracker,
  formatPeerAddress,
  type Logger,
  listenServer,
  readVisitAnswer,
  resetConnection,
  type VisitAnswer,
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
  /** 'visit refused' lines, one per visitor and reason per 10 s (a sender retrying in a loop). */
  readonly refusals: CoalescedLines;
}

/** What `status` shows of a visitor. */
export interface VisitorState {
  listening: boolean;
  /** Why it does not listen (a bind failure), or why its last visit was refused. */
  error?: string;
  lastRefusal?: string;
  /** udp: its flows open now (a tcp visitor's connections are the tracker's). */
  openFlows?: number;
}

/** A visit the server let through: the stream to carry, and its answer (the owner's conn...). */
export interface AcceptedVisit {
  stream: Stream;
  answer: VisitAnswer;
}

/** What tcp and udp visitors share: the bind, the visit request and its answer, refusals, the state. */
export abstract class Visitor {
  protected listening = false;
  private bindError: string | undefined;
  private lastRefusal: string | undefined;

  constructor(
    protected config: VisitorConfig,
    protected readonly host: VisitorHost,
  ) {}

  get name(): string {
    return this.config.name;
  }

  get current(): VisitorConfig {
    return this.config;
  }

  /** A reload that changes only the service (or max_flows): the next visits ask for the new one. */
  retarget(config: VisitorConfig): void {
    this.config = config;
    this.lastRefusal = undefined;
  }

  /** Binds `bind`; a failure is logged and kept for `status`, not thrown: the client's other work goes on. */
  async listen(): Promise<void> {
    try {
      await this.bind();
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      this.bindError = `cannot listen on ${describeBind(this.config)}: ${code ?? (err as Error).message}`;
      this.host.logger.error(
        { visitor: this.config.name, bind: describeBind(this.config), reason: this.bindError },
        'visitor listen failed',
      );
      return;
    }
    this.listening = true;
    this.host.logger.info(
      {
        visitor: this.config.name,
        type: this.config.type,
        service: this.config.service,
        bind: describeBind(this.config),
      },
      'visitor listening',
    );
  }

  /** Stops taking new visits; those under way carry on (tcp) or end (udp: the port is their socket). */
  abstract close(): Promise<void>;

  state(): VisitorState {
    return {
      listening: this.listening,
      ...(this.bindError === undefined ? {} : { error: this.bindError }),
      ...(this.lastRefusal === undefined ? {} : { lastRefusal: this.lastRefusal }),
    };
  }

  /** Takes `bind`; rejects with the errno error. */
  protected abstract bind(): Promise<void>;

  /**
   * Opens a stream asking for the service, and waits for the server's answer. `opened` sees the stream at
   * once (a udp flow writes its first datagrams behind the request). Resolves with the visit, or with the
   * reason it was refused (logged, kept for status); the stream is then destroyed.
   */
  protected async visit(
    remoteAddr: string,
    opened?: (stream: Stream) => void,
  ): Promise<AcceptedVisit | string> {
    const { type, service } = this.config;
    const session = this.host.session();
    if (typeof session === 'string') return this.refused(remoteAddr, session);
    const stream = session.open();
    stream.on('error', () => {});
    // A tcp visit asks as visitors before udp ones did: an older server knows that request.
    writeVisitRequest(stream, type === 'tcp' ? { visit: service } : { visit: service, type });
    opened?.(stream);
    let answer: VisitAnswer | null;
    try {
      answer = await withTimeout(readVisitAnswer(stream), VISIT_ANSWER_TIMEOUT_MS, 'the visit answer');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      stream.destroy();
      return this.refused(
        remoteAddr,
        code === 'ERR_STREAM_RESET' ? NO_ANSWER : `the visit failed: ${(err as Error).message}`,
      );
    }
    if (answer === null || !answer.ok) {
      stream.destroy();
      return this.refused(remoteAddr, answer?.reason ?? NO_ANSWER);
    }
    this.lastRefusal = undefined;
    return { stream, answer };
  }

  /** Logs a refusal (one line per 10 s for the same one) and keeps it for status; returns `reason`. */
  protected refused(remoteAddr: string, reason: string): string {
    this.lastRefusal = reason;
    const { name, type, service } = this.config;
    this.host.refusals.say(`${name}\u0000${reason}`, {
      visitor: name,
      type,
      service,
      remote_addr: remoteAddr,
      reason,
    });
    return reason;
  }
}

/** A tcp visitor: a listener whose every connection is one visit. */
export class TcpVisitor extends Visitor {
  private readonly server: Server;

  constructor(config: VisitorConfig, host: VisitorHost) {
    super(config, host);
    this.server = createServer({ allowHalfOpen: true, pauseOnConnect: true }, (socket) => {
      void this.onConnection(socket);
    });
  }

  /** A bind's failure is listen()'s to log ("visitor listen failed"); the errors after it are logged here. */
  protected async bind(): Promise<void> {
    const visitor = this.config.name;
    await listenServer(this.server, this.config.bind, (err) =>
      this.host.logger.error({ visitor, reason: err.message }, 'visitor listener error'),
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

  private async onConnection(socket: Socket): Promise<void> {
    socket.on('error', () => {});
    socket.setNoDelay(true);
    const { name, service } = this.config;
    const remoteAddr = formatPeerAddress(socket.remoteAddress ?? '', socket.remotePort ?? 0);
    const visit = await this.visit(remoteAddr);
    if (typeof visit === 'string') {
      resetConnection(socket);
      return;
    }
    if (socket.destroyed) {
      visit.stream.destroy();
      return;
    }
    this.host.tracker.carry(socket, visit.stream, {
      labels: ['local', 'tunnel'],
      logger: this.host.logger,
      fields: { visitor: name, service, conn: visit.answer.conn, remote_addr: remoteAddr },
    });
  }
}
