// server.toml's [[plugins]]: frp's [[httpPlugins]], HTTP services of the operator's own that are asked
// before a client signs in, registers a proxy or lets a visitor through, and told when a proxy closes
// (server-plugins.ts).
import { durationField, expected, HTTP_FIELD_VALUE, HTTP_TOKEN } from '@porthole/protocol';
import { z } from 'zod';

/** The frp plugin operations porthole asks about; frp's others are named in FRP_OPS_LEFT_OUT. */
export const PLUGIN_OPS = ['Login', 'NewProxy', 'NewUserConn', 'CloseProxy'] as const;
export type PluginOp = (typeof PLUGIN_OPS)[number];

/** frp's ops that porthole does not send: a table naming one is refused rather than left silently unasked. */
const FRP_OPS_LEFT_OUT = ['Ping', 'NewWorkConn'];

/**
 * The longest a plugin may take. A client waits 10 s for its hello_ok, and Login is asked before that is
 * sent: a plugin slower than this would make every client give up before its answer came.
 */
export const MAX_PLUGIN_TIMEOUT_MS = 8_000;

export interface PluginConfig {
  name: string;
  /** Where the POSTs go, without the query (`?version=0.1.0&op=...` is added to each). */
  url: URL;
  ops: readonly PluginOp[];
  timeoutMs: number;
  /** Sent with every request (a shared secret the service checks); never logged. */
  headers: Readonly<Record<string, string>>;
  /** ca_file as written: an https plugin's certificate is checked against it instead of the system's CAs. */
  caFile?: string;
  /** caFile's certificates, read as the config loads (server config.ts). */
  ca?: Buffer;
}

const opField = z.string({ error: expected(`one of ${PLUGIN_OPS.join(', ')}`) }).transform((op, ctx) => {
  if ((PLUGIN_OPS as readonly string[]).includes(op)) return op as PluginOp;
  ctx.addIssue({
    code: 'custom',
    message: FRP_OPS_LEFT_OUT.includes(op)
      ? `frp's ${op} is not sent by porthole; supported: ${PLUGIN_OPS.join(', ')}`
      : `"${op}" is not a plugin op; expected one of ${PLUGIN_OPS.join(', ')} (frp's names, case as written)`,
  });
  return z.NEVER;
});

/** An http(s) URL without query or fragment; `what` names the key in the message. */
function pluginUrl(text: string, what: string, ctx: z.RefinementCtx, path: string[]): URL | undefined {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    ctx.addIssue({ code: 'custom', path, message: `${what} is not a URL: "${text}"` });
    return undefined;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    ctx.addIssue({
      code: 'custom',
      path,
      message: `${what} must be http:// or https://, not ${url.protocol}`,
    });
    return undefined;
  }
  if (url.search !== '' || url.hash !== '') {
    ctx.addIssue({
      code: 'custom',
      path,
      message: `${what} must have no query or fragment (the server adds ?version=0.1.0&op=...)`,
    });
    return undefined;
  }
  return url;
}

const pluginSchema = z
  .strictObject(
    {
      name: z
        .string({ error: expected('a name like "user-manager"') })
        .regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, 'must be letters, digits, ".", "_" or "-", at most 64'),
      url: z.string({ error: expected('a URL like "http://127.0.0.1:9000/handler"') }).optional(),
      addr: z.string({ error: expected('an address like "127.0.0.1:9000"') }).optional(),
      path: z
        .string({ error: expected('a path like "/handler"') })
        .regex(/^\/[^\s?#]*$/, 'must start with "/" and contain no spaces, "?" or "#"')
        .optional(),
      ops: z.array(opField, { error: expected('a list like ["Login", "NewProxy"]') }).min(1),
      timeout: durationField
        .refine((ms) => ms > 0, 'must be longer than 0')
        .refine(
          (ms) => ms <= MAX_PLUGIN_TIMEOUT_MS,
          `must be at most ${MAX_PLUGIN_TIMEOUT_MS / 1000}s (a client gives up its sign-in after 10s)`,
        )
        .prefault('3s'),
      headers: z
        .record(
          z.string().regex(HTTP_TOKEN, 'must be a header field name'),
          z.string({ error: expected('a string') }).regex(HTTP_FIELD_VALUE, 'must be a header field value'),
          { error: expected('a table like { Authorization = "Bearer ..." }') },
        )
        .default({}),
      ca_file: z.string({ error: expected('a file path') }).optional(),
    },
    { error: expected('a [[plugins]] table with name, url (or addr and path) and ops') },
  )
  .transform((raw, ctx): PluginConfig => {
    if ((raw.url === undefined) === (raw.addr === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'set exactly one of url, or addr (with path, as in frp)' });
      return z.NEVER;
    }
    if (raw.url !== undefined && raw.path !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['path'],
        message: 'goes with addr; put the path into url instead',
      });
      return z.NEVER;
    }
    const url =
      raw.url === undefined
        ? pluginUrl(
            `${/^https?:\/\//.test(raw.addr!) ? '' : 'http://'}${raw.addr}${raw.path ?? '/'}`,
            'addr',
            ctx,
            ['addr'],
          )
        : pluginUrl(raw.url, 'url', ctx, ['url']);
    if (url === undefined) return z.NEVER;
    if (raw.ca_file !== undefined && url.protocol !== 'https:') {
      ctx.addIssue({
        code: 'custom',
        path: ['ca_file'],
        message: `checks an https:// plugin's certificate; this one is ${url.protocol}//`,
      });
      return z.NEVER;
    }
    return {
      name: raw.name,
      url,
      ops: [...new Set(raw.ops)],
      timeoutMs: raw.timeout,
      headers: raw.headers,
      ...(raw.ca_file === undefined ? {} : { caFile: raw.ca_file }),
    };
  });

/** server.toml's `plugins`: the tables in the order they are asked; names unique, for the logs. */
export const pluginsField = z
  .array(pluginSchema, { error: expected('[[plugins]] tables') })
  .max(16)
  .superRefine((plugins, ctx) => {
    const seen = new Set<string>();
    for (const [index, plugin] of plugins.entries()) {
      if (seen.has(plugin.name))
        ctx.addIssue({ code: 'custom', path: [index, 'name'], message: `"${plugin.name}" is named twice` });
      seen.add(plugin.name);
    }
  })
  .default([]);
