// A failed connect in words that name the peer, for the dial's `connect failed` line and `status`.

/**
 * Node's own message, "connect ECONNREFUSED 127.0.0.1:7000", which names the address. A name with several
 * addresses (a VPS with AAAA and A records, `localhost` as ::1 and 127.0.0.1) is tried address by address
 * (Node 20's autoSelectFamily), and when every one fails the error is an AggregateError with an empty message
 * of its own: each attempt is named instead ("connect ECONNREFUSED ::1:7000; connect ECONNREFUSED
 * 127.0.0.1:7000"), where its code alone would not say which addresses were tried.
 */
export function describeConnectError(err: NodeJS.ErrnoException): string {
  if (err instanceof AggregateError && err.errors.length > 0)
    return err.errors.map((inner: NodeJS.ErrnoException) => describeConnectError(inner)).join('; ');
  return (err.message || err.code || String(err)).trim();
}
