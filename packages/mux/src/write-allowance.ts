/** How long what a writer queued may take to reach the kernel: the wait it adds for whatever comes next. */
const TARGET_DRAIN_MS = 10;
/** Long enough to see a link's rate through the bursts of a receiver that reads now and then. */
const SAMPLE_MS = 100;

/**
 * How many bytes a writer may leave queued on a socket: what the socket took in TARGET_DRAIN_MS, at the
 * rate it took bytes over the last SAMPLE_MS in which the allowance held the writer back, within
 * [min, max]. It starts at min; loopback and LAN links take megabytes in a millisecond, and it reaches max
 * in the first sample. On a slow uplink it stays at min: what waits here is seconds of waiting for
 * anything written behind it, and a writer that holds the rest back can still put something urgent ahead
 * of it. (Linux's byte queue limits size a NIC's queue the same way.) Samples in which the writer was
 * never held back say how much it had to send, not how fast the link is, and are dropped.
 */
export class WriteAllowance {
  bytes: number;
  private readonly min: number;
  private readonly max: number;
  private sampleStart = performance.now();
  private sampleTaken = 0;
  private heldBack = false;

  constructor(min: number, max: number) {
    this.min = min;
    this.max = max;
    this.bytes = min;
  }

  /** The writer was told to hold back. */
  holdingBack(): void {
    this.heldBack = true;
  }

  /** `taken`: bytes the socket has taken so far, in all. */
  socketTook(taken: number): void {
    const now = performance.now();
    const ms = now - this.sampleStart;
    if (ms < SAMPLE_MS) return;
    if (this.heldBack) {
      const bytes = ((taken - this.sampleTaken) / ms) * TARGET_DRAIN_MS;
      this.bytes = Math.round(Math.min(this.max, Math.max(this.min, bytes)));
    }
    this.sampleStart = now;
    this.sampleTaken = taken;
    this.heldBack = false;
  }
}
