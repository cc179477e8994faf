/** How long the first line of a batch waits for company before the batch is written. */
export const LOG_FLUSH_DELAY_MS = 50;
/** Lines gathered beyond this many characters are written at once, without waiting. */
const MAX_PENDING_CHARS = 64 * 1024;

/** Where the gathered lines go: a synchronous writer (pino.destination with sync: true). */
export interface LineSink {
  write(data: string): boolean;
}

const unflushed = new Set<BatchedLineDestination>();
let exitHooked = false;

/**
 * A pino destination that writes the lines logged within LOG_FLUSH_DELAY_MS of each other with one write. The
 * server logs a line per HTTP request and both programs one per connection; a write() per line, to a pipe
 * whose reader (journald) it wakes, was a sixth of the http proxy's CPU under load, and at 1k req/s, where
 * each request has its own event-loop turn, a tenth of it. A line waits at most LOG_FLUSH_DELAY_MS, at most
 * MAX_PENDING_CHARS are held, and 'exit' (process.exit, an uncaught exception, the end of the program)
 * writes what is left: only a SIGKILL or a crash of Node itself can lose the last LOG_FLUSH_DELAY_MS of lines.
 */
export class BatchedLineDestination {
  private pending = '';
  private timer: NodeJS.Timeout | undefined;
  private readonly flushWhenDue = () => {
    this.timer = undefined;
    this.flush();
  };

  constructor(
    private readonly sink: LineSink,
    private readonly delayMs = LOG_FLUSH_DELAY_MS,
  ) {
    if (!exitHooked) {
      exitHooked = true;
      process.once('exit', () => {
        for (const destination of unflushed) destination.flush();
      });
    }
  }

  write(line: string): boolean {
    if (this.pending === '') unflushed.add(this);
    this.pending += line;
    if (this.pending.length >= MAX_PENDING_CHARS) {
      this.flush();
    } else if (this.timer === undefined) {
      // Unreferenced: a batch in waiting does not keep a finished program alive; 'exit' writes it.
      this.timer = setTimeout(this.flushWhenDue, this.delayMs).unref();
    }
    return true;
  }

  flush(): void {
    unflushed.delete(this);
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.pending === '') return;
    const data = this.pending;
    this.pending = '';
    this.sink.write(data);
  }
}
