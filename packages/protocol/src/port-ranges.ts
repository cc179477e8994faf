/** A set of TCP/UDP ports written as "2000-2999,8080" (also an array of such parts). */
export class PortRanges {
  private constructor(
    private readonly ranges: ReadonlyArray<readonly [number, number]>,
    private readonly text: string,
  ) {}

  /** Parses "2000-2999,8080" or ["2000-2999", "8080", 9000]; throws with the offending part on error. */
  static parse(spec: string | ReadonlyArray<string | number>): PortRanges {
    const parts = typeof spec === 'string' ? spec.split(',') : spec.flatMap((p) => String(p).split(','));
    const ranges: Array<[number, number]> = [];
    for (const raw of parts) {
      const part = raw.trim();
      if (part === '') throw new Error(`empty port range in "${String(spec)}"`);
      const match = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(part);
      if (!match)
        throw new Error(`invalid port range "${part}" (expected a port like 8080 or a range like 2000-2999)`);
      const low = Number(match[1]);
      const high = match[2] === undefined ? low : Number(match[2]);
      if (low < 1 || high > 65535) throw new Error(`port range "${part}" is outside 1-65535`);
      if (low > high) throw new Error(`port range "${part}" is reversed`);
      ranges.push([low, high]);
    }
    return new PortRanges(ranges, ranges.map(([l, h]) => (l === h ? `${l}` : `${l}-${h}`)).join(','));
  }

  /** Every port 1-65535. */
  static all(): PortRanges {
    return new PortRanges([[1, 65535]], '1-65535');
  }

  contains(port: number): boolean {
    return this.ranges.some(([low, high]) => port >= low && port <= high);
  }

  /** The ports in both sets. */
  intersect(other: PortRanges): PortRanges {
    const both: Array<[number, number]> = [];
    for (const [low, high] of this.ranges)
      for (const [otherLow, otherHigh] of other.ranges) {
        const from = Math.max(low, otherLow);
        const to = Math.min(high, otherHigh);
        if (from <= to) both.push([from, to]);
      }
    return PortRanges.of(both);
  }

  /** How many distinct ports the set holds. */
  get size(): number {
    return PortRanges.merged(this.ranges).reduce((sum, [low, high]) => sum + high - low + 1, 0);
  }

  /** The `index`th port of the set in ascending order (0 <= index < size). */
  at(index: number): number {
    let left = index;
    for (const [low, high] of PortRanges.merged(this.ranges)) {
      if (left <= high - low) return low + left;
      left -= high - low + 1;
    }
    throw new RangeError(`port index ${index} is outside a set of ${this.size} ports`);
  }

  /** Sorted, overlapping and adjacent ranges joined. */
  private static merged(ranges: ReadonlyArray<readonly [number, number]>): Array<[number, number]> {
    const out: Array<[number, number]> = [];
    for (const [low, high] of [...ranges].sort((a, b) => a[0] - b[0])) {
      const last = out.at(-1);
      if (last && low <= last[1] + 1) last[1] = Math.max(last[1], high);
      else out.push([low, high]);
    }
    return out;
  }

  /** A set of these ranges in canonical form. */
  private static of(ranges: ReadonlyArray<readonly [number, number]>): PortRanges {
    const merged = PortRanges.merged(ranges);
    return new PortRanges(merged, merged.map(([l, h]) => (l === h ? `${l}` : `${l}-${h}`)).join(','));
  }

  /** The ports of this set that `other` does not have, as canonical text ("" when there are none). */
  outside(other: PortRanges): string {
    const cuts = [...other.ranges].sort((a, b) => a[0] - b[0]);
    const left: string[] = [];
    for (const [low, high] of this.ranges) {
      let from = low;
      for (const [cutLow, cutHigh] of cuts) {
        if (cutHigh < from || cutLow > high) continue;
        if (cutLow > from) left.push(cutLow - 1 === from ? `${from}` : `${from}-${cutLow - 1}`);
        from = cutHigh + 1;
        if (from > high) break;
      }
      if (from <= high) left.push(from === high ? `${from}` : `${from}-${high}`);
    }
    return left.join(',');
  }

  /** Canonical text, e.g. "2222,8000-8099"; parses back to the same set. */
  toString(): string {
    return this.text;
  }
}
