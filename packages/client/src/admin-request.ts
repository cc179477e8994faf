import { request } from 'node:http';
import { formatHostPort, type HostPort } from '@porthole/protocol';

const ADMIN_TIMEOUT_MS = 5000;

/** What a running client's [admin] endpoint answered: the HTTP status and the JSON body. */
export interface AdminAnswer {
  status: number;
  body: unknown;
}

/**
 * One request to a running client's [admin] endpoint (`status`, `reload`). A POST says it sends JSON, which
 * the endpoint requires of a POST (see screenAdminRequest). Rejects when it cannot be reached, does not
 * answer in time, or answers something other than JSON.
 */
export function askClientAdmin(admin: HostPort, method: 'GET' | 'POST', path: string): Promise<AdminAnswer> {
  const where = formatHostPort(admin.host, admin.port);
  return new Promise((resolve, reject) => {
    const body = method === 'POST' ? '{}' : undefined;
    const req = request(
      {
        host: admin.host,
        port: admin.port,
        method,
        path,
        timeout: ADMIN_TIMEOUT_MS,
        headers:
          body === undefined ? {} : { 'Content-Type': 'application/json', 'Content-Length': body.length },
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (chunk: Buffer) => chunks.push(chunk));
        res.on('end', () => {
          try {
            resolve({
              status: res.statusCode ?? 0,
              body: JSON.parse(Buffer.concat(chunks).toString('utf8')),
            });
          } catch {
            reject(new Error(`${where} answered HTTP ${res.statusCode} with something other than JSON`));
          }
        });
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error(`no answer from ${where} within ${ADMIN_TIMEOUT_MS} ms`)));
    req.on('error', reject);
    req.end(body);
  });
}
