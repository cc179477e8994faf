// "Did you mean": the known name a mistyped one most likely stands for (config keys, command-line options).

/** Edits (insert, delete, substitute, swap two neighbours) between a and b, or `limit + 1` once past it. */
function editDistance(a: string, b: string, limit: number): number {
  if (Math.abs(a.length - b.length) > limit) return limit + 1;
  let before = new Array<number>(b.length + 1);
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    let best = i;
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(row[j]! + 1, next[j - 1]! + 1, row[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1])
        d = Math.min(d, before[j - 2]! + 1);
      next.push(d);
      best = Math.min(best, d);
    }
    if (best > limit) return limit + 1;
    before = row;
    row = next;
  }
  return row[b.length]!;
}

/** "proxies" for "proxy", "certs" for "cert": the plural a table array's name usually has. */
function pluralOf(word: string): string {
  return /[^aeiou]y$/.test(word) ? `${word.slice(0, -1)}ies` : `${word}s`;
}

/**
 * The one name among `known` that `typed` is closest to: its plural (`[[proxy]]` for `[[proxies]]`), within
 * two edits (one for names of four letters or fewer), or the only name that starts with it. Undefined when
 * nothing is close or two are equally so.
 */
export function closestName(typed: string, known: Iterable<string>): string | undefined {
  const word = typed.toLowerCase();
  const limit = word.length <= 4 ? 1 : 2;
  const names = [...known];
  if (names.includes(typed)) return undefined;
  const plural = pluralOf(word);
  const pluralName = names.find((name) => name.toLowerCase() === plural);
  if (pluralName !== undefined) return pluralName;
  let best: string | undefined;
  let bestDistance = limit + 1;
  let tied = false;
  const prefixed: string[] = [];
  for (const name of names) {
    if (word.length >= 3 && name.toLowerCase().startsWith(word)) prefixed.push(name);
    const distance = editDistance(word, name.toLowerCase(), limit);
    if (distance < bestDistance) {
      best = name;
      bestDistance = distance;
      tied = false;
    } else if (distance === bestDistance && distance <= limit) {
      tied = true;
    }
  }
  if (best !== undefined && !tied) return best;
  return prefixed.length === 1 ? prefixed[0] : undefined;
}
