/**
 * Those waiting for a count of open things (connections, requests) to reach zero, each for at most its own
 * timeout: a SIGTERM drain waits on them.
 */
export class IdleWaiters {
  private waiters: (() => void)[] = [];

  /** Resolves true at the next `idle()`, or at once if `isIdle`; false if `timeoutMs` passes first. */
  wait(isIdle: boolean, timeoutMs: number): Promise<boolean> {
    if (isIdle) return Promise.resolve(true);
    return new Promise((resolve) => {
      const waiter = (): void => {
        clearTimeout(timer);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        resolve(false);
      }, timeoutMs);
      this.waiters.push(waiter);
    });
  }

  /** The count reached zero: every waiter resolves true. */
  idle(): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter();
  }
}
