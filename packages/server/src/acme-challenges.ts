// The http-01 answers of orders in progress, served on the [http] port before host routing:
// GET /.well-known/acme-challenge/<token> for the name the token's order is for. Any other request on
// that path (another token, another Host) goes on to the proxies, which may answer their own challenges.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { normalizeRequestHost } from '@porthole/protocol';
import type { ChallengeHolder } from './acme-client.js';

const CHALLENGE_PATH = '/.well-known/acme-challenge/';

export class AcmeChallenges implements ChallengeHolder {
  private readonly byToken = new Map<string, { domain: string; keyAuthorization: string }>();

  add(token: string, domain: string, keyAuthorization: string): void {
    this.byToken.set(token, { domain, keyAuthorization });
  }

  remove(token: string): void {
    this.byToken.delete(token);
  }

  /** Answers `req` when it asks for a token held here, for that token's name; false: not ours. */
  answer(req: IncomingMessage, res: ServerResponse): boolean {
    const url = req.url;
    if (this.byToken.size === 0 || url === undefined || !url.startsWith(CHALLENGE_PATH)) return false;
    const held = this.byToken.get(url.slice(CHALLENGE_PATH.length));
    if (held === undefined || (req.method !== 'GET' && req.method !== 'HEAD')) return false;
    if (normalizeRequestHost(req.headers.host) !== held.domain) return false;
    res.writeHead(200, {
      'Content-Type': 'application/octet-stream',
      'Content-Length': Buffer.byteLength(held.keyAuthorization),
    });
    res.end(req.method === 'HEAD' ? undefined : held.keyAuthorization);
    return true;
  }
}
