// HTTP Basic credentials a visitor must present: the server's http proxy's in Authorization, a tcpmux proxy's
// in the CONNECT request's Proxy-Authorization, the client's http-proxy local's in Proxy-Authorization. One
// check for all, so all compare in constant time.
import { createHash, timingSafeEqual } from 'node:crypto';

/** A proxy's http_user and http_password, as bytes. */
export interface BasicCredentials {
  user: Buffer;
  password: Buffer;
}

/** The credentials of a spec's http_user and http_password; undefined unless both are set. */
export function basicCredentialsOf(spec: {
  http_user?: string | undefined;
  http_password?: string | undefined;
}): BasicCredentials | undefined {
  return spec.http_user === undefined || spec.http_password === undefined
    ? undefined
    : { user: Buffer.from(spec.http_user), password: Buffer.from(spec.http_password) };
}

/** Equal in a time that says nothing of where they differ (nor of the secret's length). */
export function sameSecret(given: Buffer | string, expected: Buffer | string): boolean {
  const digest = (bytes: Buffer | string) => createHash('sha256').update(bytes).digest();
  return timingSafeEqual(digest(given), digest(expected));
}

/** True when `header` ("Basic dXNlcjpwYXNz") carries exactly these credentials. */
export function basicCredentialsMatch(header: string | undefined, auth: BasicCredentials): boolean {
  const match = header === undefined ? null : /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header);
  if (!match) return false;
  const decoded = Buffer.from(match[1]!, 'base64');
  const colon = decoded.indexOf(0x3a);
  if (colon < 0) return false;
  // Both compared in full, so the time taken does not say which one was wrong.
  const userOk = sameSecret(decoded.subarray(0, colon), auth.user);
  const passwordOk = sameSecret(decoded.subarray(colon + 1), auth.password);
  return userOk && passwordOk;
}
