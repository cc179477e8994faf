const UNIT_MS = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 } as const;
const DURATION = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)$/;

/** Parses "250ms", "10s", "5m", "2h", "90d" into milliseconds; throws with the reason on anything else. */
export function parseDuration(text: string): number {
  const match = DURATION.exec(text.trim());
  if (!match)
    throw new Error(`invalid duration "${text}" (expected a number and a unit: 250ms, 10s, 5m, 2h, 90d)`);
  const ms = Number(match[1]) * UNIT_MS[match[2] as keyof typeof UNIT_MS];
  if (!Number.isFinite(ms) || ms > Number.MAX_SAFE_INTEGER)
    throw new Error(`duration "${text}" is too large`);
  return Math.round(ms);
}

/** The shortest exact spelling of a duration in ms, for messages ("1500ms", "30s", "90d"). */
export function formatDuration(ms: number): string {
  for (const unit of ['d', 'h', 'm', 's'] as const) {
    if (ms >= UNIT_MS[unit] && ms % UNIT_MS[unit] === 0) return `${ms / UNIT_MS[unit]}${unit}`;
  }
  return `${ms}ms`;
}

/** A span for a person to read, to the second at most, two units at most: "45s", "2m 5s", "3h 2m", "4d 1h". */
export function humanAge(ms: number): string {
  const s = Math.max(0, Math.floor(ms / 1000));
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${s % 60}s`;
  const h = Math.floor(m / 60);
  if (h < 48) return `${h}h ${m % 60}m`;
  return `${Math.floor(h / 24)}d ${h % 24}h`;
}
