// A request's Range header read for one file (RFC 9110 section 14): a single "bytes=" range only, the one
// kind download managers, video players and `curl -r` send for a resumed or seeked download.

export type RangeAnswer =
  /** No range to honour: the whole file (no header, another unit, several ranges, or a malformed one). */
  | { kind: 'whole' }
  /** Bytes `start` to `end` inclusive. */
  | { kind: 'part'; start: number; end: number }
  /** A well-formed range that lies past the file's end: 416. */
  | { kind: 'unsatisfiable' };

const SINGLE = /^bytes[ \t]*=[ \t]*(\d*)[ \t]*-[ \t]*(\d*)[ \t]*$/i;

export function readRange(header: string | undefined, size: number): RangeAnswer {
  if (header === undefined) return { kind: 'whole' };
  const match = SINGLE.exec(header);
  if (!match) return { kind: 'whole' };
  const [, first, last] = match as unknown as [string, string, string];
  if (first === '' && last === '') return { kind: 'whole' };
  if (first === '') {
    // "bytes=-500": the last 500 bytes.
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'part', start: Math.max(0, size - suffix), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
  if (last !== '' && Number(last) < start) return { kind: 'whole' };
  if (start >= size) return { kind: 'unsatisfiable' };
  return { kind: 'part', start, end };
}
