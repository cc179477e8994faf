/** What a waiting sender carries for SendOrder; the fields belong to the order, not to the sender. */
export interface SendTurn {
  /** Where this sender's waiting frame starts on the order's virtual clock. */
  sendStart: number;
  /** Where its last frame served finished. */
  sendFinish: number;
  /** Its place in the heap, or -1 while it is not waiting. */
  sendIndex: number;
  /** Ties on sendStart go to the one that waited first. */
  sendSeq: number;
}

/**
 * The order in which senders waiting for room in a shared connection get to write: start-time fair
 * queueing (Goyal, Vin and Cheng, 1996). A waiting sender's next frame starts where its previous frame
 * finished, or at the virtual clock if it has been idle since; the earliest start is served next, the clock
 * moves to it, and the frame finishes that many bytes later. A sender that sends little (a datagram, a
 * keystroke, a request) starts at the clock and goes ahead of the bulk senders' next frames; one sending in
 * small pieces gains nothing, since its starts advance by every byte it sent. A min-heap: O(log n) in the
 * senders waiting.
 */
export class SendOrder<T extends SendTurn> {
  private readonly heap: T[] = [];
  private clock = 0;
  private seq = 0;

  get size(): number {
    return this.heap.length;
  }

  /** Queues `sender`'s next frame; a sender already waiting keeps its place. */
  add(sender: T): void {
    if (sender.sendIndex >= 0) return;
    sender.sendStart = Math.max(this.clock, sender.sendFinish);
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
    this.clock = first.sendStart;
    return first;
  }

  /** The frame of the sender just taken from next() is `bytes` long. */
  charge(sender: T, bytes: number): void {
    sender.sendFinish = sender.sendStart + bytes;
  }

  clear(): void {
    for (const sender of this.heap) sender.sendIndex = -1;
    this.heap.length = 0;
  }

  private before(a: T, b: T): boolean {
    return a.sendStart < b.sendStart || (a.sendStart === b.sendStart && a.sendSeq < b.sendSeq);
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
