/** What a waiting sender carries for SendOrder; the fields belong to the order, not to the sender. */
export interface SendTurn {
  /** Where this sender's waiting frame starts on the order's virtual clock. */
  sendStart: number;
  /** Where its last frame served finished. */
  sendFinish: number;
  /** Where its waiting frame is expected to finish: the order serves the earliest first. */
  sendDue: number;
  /** Its place in the heap, or -1 while it is not waiting. */
  sendIndex: number;
  /** Ties on sendDue go to the one that waited first. */
  sendSeq: number;
}

/**
 * The order in which senders waiting for room in a shared connection get to write: fair queueing on a
 * virtual clock of bytes. A waiting sender's next frame starts where its previous frame finished, or at the
 * clock if it has been idle since, and is due its expected length later; the frame due first is served, and
 * the clock moves on to that frame's start (start-time fair queueing's clock, Goyal, Vin and Cheng, 1996).
 * A sender that sends little (a datagram, a keystroke, a request) starts at the clock and is due a few bytes
 * later, ahead of every bulk sender's next frame; served by start alone it tied with the bulk senders of the
 * round under way and waited for all of them (with 200 downloads on a 2 Mbit/s uplink, 5-14 s an echo).
 * One sending in small pieces gains nothing, since its starts advance by every byte it sent. A min-heap:
 * O(log n) in the senders waiting.
 */
export class SendOrder<T extends SendTurn> {
  private readonly heap: T[] = [];
  private clock = 0;
  private seq = 0;

  get size(): number {
    return this.heap.length;
  }

  /** Queues `sender`'s next frame, expected to be `bytes` long; a sender already waiting keeps its place. */
  add(sender: T, bytes: number): void {
    if (sender.sendIndex >= 0) return;
    sender.sendStart = Math.max(this.clock, sender.sendFinish);
    sender.sendDue = sender.sendStart + bytes;
    sender.sendSeq = this.seq++;
    sender.sendIndex = this.heap.length;
    this.heap.push(sender);
    this.siftUp(sender.sendIndex);
  }

  /** Takes the sender whose frame is due first; charge() it with the bytes it then sends. */
  next(): T | undefined {
    const heap = this.heap;
    const first = heap[0];
    if (!first) return undefined;
    const last = heap.pop()!;
    if (last !== first) {
      heap[0] = last;
      last.sendIndex = 0;
      this.siftDown(0);
    }
    first.sendIndex = -1;
    // Served by due, a frame may start before one served earlier: the clock never goes back.
    this.clock = Math.max(this.clock, first.sendStart);
    return first;
  }

  /** The frame of the sender just taken from next() is `bytes` long. */
  charge(sender: T, bytes: number): void {
    sender.sendFinish = sender.sendStart + bytes;
  }

  /** Takes `sender` out of the order, whatever its place (it will send nothing more). */
  remove(sender: T): void {
    const index = sender.sendIndex;
    if (index < 0) return;
    sender.sendIndex = -1;
    const heap = this.heap;
    const last = heap.pop()!;
    if (last === sender) return;
    heap[index] = last;
    last.sendIndex = index;
    this.siftUp(index);
    this.siftDown(last.sendIndex);
  }

  clear(): void {
    for (const sender of this.heap) sender.sendIndex = -1;
    this.heap.length = 0;
  }

  private before(a: T, b: T): boolean {
    return a.sendDue < b.sendDue || (a.sendDue === b.sendDue && a.sendSeq < b.sendSeq);
  }

  private siftUp(index: number): void {
    const heap = this.heap;
    const item = heap[index]!;
    while (index > 0) {
      const parentIndex = (index - 1) >> 1;
      const parent = heap[parentIndex]!;
      if (!this.before(item, parent)) break;
      heap[index] = parent;
      parent.sendIndex = index;
      index = parentIndex;
    }
    heap[index] = item;
    item.sendIndex = index;
  }

  private siftDown(index: number): void {
    const heap = this.heap;
    const item = heap[index]!;
    const half = heap.length >> 1;
    while (index < half) {
      let childIndex = 2 * index + 1;
      let child = heap[childIndex]!;
      const right = heap[childIndex + 1];
      if (right && this.before(right, child)) {
        childIndex += 1;
        child = right;
      }
      if (!this.before(child, item)) break;
      heap[index] = child;
      child.sendIndex = index;
      index = childIndex;
    }
    heap[index] = item;
    item.sendIndex = index;
  }
}
