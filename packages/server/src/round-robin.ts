/**
 * The members of a load-balancing group (proxies sharing one public port or name), taken in turn: each
 * new connection goes to the member after the one the last connection went to.
 */
export class RoundRobin<M> {
  private members: M[] = [];
  private turn = 0;

  get size(): number {
    return this.members.length;
  }

  list(): readonly M[] {
    return this.members;
  }

  add(member: M): void {
    if (!this.members.includes(member)) this.members.push(member);
  }

  /** Takes `member` out; true when none is left. */
  remove(member: M): boolean {
    this.members = this.members.filter((m) => m !== member);
    return this.members.length === 0;
  }

  /**
   * The next member in turn that `accepts` (one whose connection limit is full is passed over while
   * another has room); undefined when none does.
   */
  pick(accepts: (member: M) => boolean = () => true): M | undefined {
    return pickInTurn(this.members, this.turn, accepts, (next) => {
      this.turn = next;
    });
  }
}

/**
 * The first of `members` from index `turn % length` on that `accepts`; `advance` is given the index after
 * it, where the next search starts.
 */
export function pickInTurn<M>(
  members: readonly M[],
  turn: number,
  accepts: (member: M) => boolean,
  advance: (next: number) => void,
): M | undefined {
  const n = members.length;
  for (let i = 0; i < n; i++) {
    const index = (turn + i) % n;
    const member = members[index]!;
    if (!accepts(member)) continue;
    advance(index + 1);
    return member;
  }
  return undefined;
}
