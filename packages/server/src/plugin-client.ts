// One [[plugins]] service, asked over HTTP as frps asks its httpPlugins: POST {url}?version=0.1.0&op=OP with
// {"version","op","content"}, answered {"reject","reject_reason","unchange","content"}.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import type { Logger } from '@porthole/protocol';
import type { PluginConfig, PluginOp } from './plugin-config.js';

/** frp's plugin protocol version, sent in the query and the body. */
export const FRP_PLUGIN_VERSION = '0.1.0';
/** Requests to one plugin in flight at once (its keep-alive connections); more wait in the agent. */
const MAX_CONNECTIONS = 16;
/** Requests to one plugin at once, waiting ones included: past this a visitor flood is refused, not queued. */
const MAX_OUTSTANDING = 256;
/** A longer answer is garbage: frp's answers are a few fields. */
const MAX_ANSWER_BYTES = 64 * 1024;

/** What a plugin decided; `failed` when it was not asked (down, slow, garbage), which refuses too, as in frp. */
export type PluginVerdict = { allowed: true } | { allowed: false; reason: string; failed: boolean };

export class PluginClient {
  private readonly agent: http.Agent;
  private outstanding = 0;
  /** Whether the line saying that content changes are not supported was written (once per plugin). */
  private toldUnchangeIgnored = false;

  constructor(
    readonly config: PluginConfig,
    private readonly logger: Logger,
  ) {
    this.agent =
      config.url.protocol === 'https:'
        ? new https.Agent({
            keepAlive: true,
            maxSockets: MAX_CONNECTIONS,
            ...(config.ca ? { ca: config.ca } : {}),
          })
        : new http.Agent({ keepAlive: true, maxSockets: MAX_CONNECTIONS });
  }

  /** Asks the plugin about `op`; never throws (a failure is a refusal). */
  async ask(op: PluginOp, content: object): Promise<PluginVerdict> {
    if (this.outstanding >= MAX_OUTSTANDING)
      return { allowed: false, failed: true, reason: `${MAX_OUTSTANDING} requests already waiting for it` };
    this.outstanding += 1;
    try {
      return this.judge(await this.post(op, content));
    } catch (err) {
      return { allowed: false, failed: true, reason: (err as Error).message };
    } finally {
      this.outstanding -= 1;
    }
  }

  /** Closes its kept-alive connections (a reload removed or changed the plugin, or the server stops). */
  close(): void {
    this.agent.destroy();
  }

  private judge(answer: unknown): PluginVerdict {
    if (typeof answer !== 'object' || answer === null || Array.isArray(answer))
      throw new Error('the answer is not a JSON object');
    const { reject, reject_reason: reason, unchange } = answer as Record<string, unknown>;
    // Go's json.Unmarshal in frps fails on these too, and frps then refuses.
    if (reject !== undefined && typeof reject !== 'boolean') throw new Error('"reject" is not a boolean');
    if (unchange !== undefined && typeof unchange !== 'boolean')
      throw new Error('"unchange" is not a boolean');
    if (reject === true)
      return {
        allowed: false,
        failed: false,
        reason: typeof reason === 'string' && reason !== '' ? reason.slice(0, 512) : 'rejected',
      };
    if (unchange !== true && !this.toldUnchangeIgnored) {
      this.toldUnchangeIgnored = true;
      this.logger.warn(
        { plugin: this.config.name },
        'plugin answered without "unchange": true; porthole does not take changed content from plugins and keeps the original',
      );
    }
    return { allowed: true };
  }

  private post(op: PluginOp, content: object): Promise<unknown> {
    const { url, headers, timeoutMs } = this.config;
    const body = JSON.stringify({ version: FRP_PLUGIN_VERSION, op, content });
    const target = new URL(url);
    target.search = `?version=${FRP_PLUGIN_VERSION}&op=${op}`;
    const request = url.protocol === 'https:' ? https.request : http.request;
    return new Promise((resolve, reject) => {
      const req = request(target, {
        method: 'POST',
        agent: this.agent,
        // The whole ask, the wait for a free connection included.
        signal: AbortSignal.timeout(timeoutMs),
        headers: {
          ...headers,
          'Content-Type': 'application/json',
          'Content-Length': Buffer.byteLength(body),
          'X-Frp-Reqid': randomUUID(),
        },
      });
      // The timeout aborts the request, or the answer's body if it had begun.
      const failed = (err: Error): void =>
        reject(
          err.name === 'AbortError' || err.name === 'TimeoutError'
            ? new Error(`no answer within ${timeoutMs} ms`)
            : err,
        );
      req.on('error', failed);
      req.on('response', (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          reject(new Error(`answered HTTP ${res.statusCode}`));
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (chunk: Buffer) => {
          size += chunk.length;
          if (size > MAX_ANSWER_BYTES) {
            req.destroy(new Error(`answered more than ${MAX_ANSWER_BYTES} bytes`));
            return;
          }
          chunks.push(chunk);
        });
        res.on('end', () => {
          try {
            resolve(JSON.parse(Buffer.concat(chunks).toString('utf8')));
          } catch {
            reject(new Error('the answer is not JSON'));
          }
        });
        res.on('error', failed);
      });
      req.end(body);
    });
  }
}
