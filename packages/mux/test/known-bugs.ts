/**
 * Tests that demonstrate open @porthole/mux bugs (details and reproducers: /work/notes/mux-bugs.md). They run
 * as `todo`: their failure is reported but does not fail `npm test`. When a bug is fixed, set its entry to
 * undefined here, so that the tests guard against a regression.
 */
export const knownBugs: Record<'windowStall' | 'unboundedAnswers', string | undefined> = {
  windowStall: undefined,
  unboundedAnswers: undefined,
};
