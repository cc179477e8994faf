import { STATUS_CODES } from 'node:http';

/**
 * A last answer to a request read off a raw byte stream (an upgrade, a tcpmux CONNECT, an http-proxy
 * request): `status`, extra `fields` ("Name: value" lines), `body` as its text, and Connection: close, since
 * the connection ends after it.
 */
export function plainErrorResponse(status: number, body: string, fields: readonly string[] = []): string {
  const text = `${body}\n`;
  return (
    `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\n` +
    fields.map((field) => `${field}\r\n`).join('') +
    'Content-Type: text/plain; charset=utf-8\r\n' +
    `Content-Length: ${Buffer.byteLength(text)}\r\n` +
    'Connection: close\r\n\r\n' +
    text
  );
}
