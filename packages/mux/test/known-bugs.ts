/**
 * Tests that demonstrate open @porthole/mux bugs (details and reproducers: /work/notes/mux-bugs.md). They run
 * as `todo`: their failure is reported but does not fail `npm test`. When a bug is fixed, set its entry to
 * undefined here, so that the tests guard against a regression.
 */
export const knownBugs: Record<'windowStall' | 'unboundedAnswers', string | undefined> = {
  windowStall:
    'mux bug #1: with maxStreamWindow 256 KiB a reader that starts late stalls forever (window granted only in _read)',
  unboundedAnswers: 'mux bug #2: ping ACKs / RSTs are queued without bound while the peer does not read them',
};
