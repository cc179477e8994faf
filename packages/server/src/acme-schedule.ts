// When the ACME manager acts: a certificate is renewed once a third of its lifetime is left (Let's
// Encrypt's 90 days: at 30 days left), checked at most RECHECK_MS apart; a failed order is tried again
// after a doubling wait, from a minute up to six hours.

export const RECHECK_MS = 12 * 60 * 60_000;
export const FIRST_RETRY_MS = 60_000;
export const MAX_RETRY_MS = 6 * 60 * 60_000;

/** The time (ms since the epoch) a certificate valid from `notBefore` to `notAfter` is due for renewal. */
export function renewalDue(notBefore: number, notAfter: number): number {
  return notAfter - Math.max(0, notAfter - notBefore) / 3;
}

/**
 * How long to wait before looking at a certificate due at `due` again: until then, but never more than
 * RECHECK_MS (a clock moved, or a timer slept through a suspend).
 */
export function checkDelay(due: number, now: number): number {
  return Math.min(RECHECK_MS, Math.max(0, due - now));
}

/** The wait after the `failures`th failed order in a row (1, 2, ...). */
export function retryDelay(failures: number): number {
  const doublings = Math.max(0, Math.min(failures - 1, 30));
  return Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** doublings);
}
