/** Two optional buffers hold the same bytes (both absent counts as the same). */
export function sameBuffer(a: Buffer | undefined, b: Buffer | undefined): boolean {
  return a === undefined || b === undefined ? a === b : a.equals(b);
}
