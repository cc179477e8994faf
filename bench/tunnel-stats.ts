// Medians and spread over rounds, and the porthole/peer ratios the report leads with.

export interface Spread {
  median: number;
  min: number;
  max: number;
  /** how many rounds produced a figure */
  n: number;
}

export function spread(values: number[]): Spread | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  const median = sorted.length % 2 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
  return { median, min: sorted[0]!, max: sorted[sorted.length - 1]!, n: sorted.length };
}

/** porthole's median over the peer's median (for "lower is better" metrics a ratio above 1 is worse). */
export function ratio(porthole: Spread | undefined, peer: Spread | undefined): number | undefined {
  if (!porthole || !peer || peer.median === 0) return undefined;
  return porthole.median / peer.median;
}

/** Figures with about three significant digits: 21.4, 0.318, 14500. */
export function formatFigure(value: number): string {
  const abs = Math.abs(value);
  if (abs >= 1000) return Math.round(value).toString();
  if (abs >= 100) return value.toFixed(0);
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  if (abs === 0) return '0';
  return value.toPrecision(2);
}

export function formatSpread(s: Spread | undefined): string {
  if (!s) return '–';
  if (s.n === 1) return formatFigure(s.median);
  return `${formatFigure(s.median)} (${formatFigure(s.min)}–${formatFigure(s.max)})`;
}

export function formatRatio(r: number | undefined): string {
  return r === undefined ? '–' : `${r >= 10 ? r.toFixed(0) : r.toFixed(2)}x`;
}
