import { z } from 'zod';
import { headerTableProblems } from './http-field-syntax.js';
import { responseHeaderRefusal } from './response-header-names.js';
import { PROXY_TYPES, type ProxyType } from './rules.js';

/** The HTTP path of the server's control endpoint unless its config sets another (`path`). */
export const DEFAULT_CONTROL_PATH = '/_porthole';

/** Proxy names: what logs, results and the admin API use to talk about one proxy. */
export const PROXY_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
export const PROXY_NAME_RULE =
  'letters, digits, ".", "_" or "-", starting with a letter or digit, at most 64';

export const proxyNameSchema = z.string().regex(PROXY_NAME, `must be ${PROXY_NAME_RULE} characters`);
const port = z.number().int().min(1).max(65535);

/**
 * A tcp or udp proxy's `remote_port` of 0: the server picks a port the client may hold and says which in the
 * register_result (`remote_port`). A server older than this reads it as a port out of range and refuses that
 * entry alone ("remote_port: Too small: ..."), so no new protocol version is needed.
 */
export const PICKED_PORT = 0;

/** A udp flow's idle timeout, on either end: what a register may ask for, and what a config may set. */
export const UDP_IDLE_TIMEOUT_MIN_MS = 100;
export const UDP_IDLE_TIMEOUT_MAX_MS = 86_400_000;

/** The server writes these into request heads itself: nothing may end a line or the head early. */
const HOST_HEADER_VALUE = /^[\x21-\x7e]+$/;

/** An http proxy's header table (request_headers, response_headers): field name = one-line value. */
const headerFieldsSchema = z.record(z.string(), z.string()).superRefine((table, ctx) => {
  for (const { field, message } of headerTableProblems(table))
    ctx.addIssue({ code: 'custom', path: field === undefined ? [] : [field], message });
});

/**
 * A proxy as the client registers it. tcp and udp proxies carry `remote_port`; http and tls proxies carry
 * `hosts` and/or `subdomain`. Which fields a type requires is checked by the server (with reasons the
 * client prints), not here. Each entry of a register is checked on its own (parseRegisterEntry): one the
 * server cannot take is refused with its reason, and the others register.
 */
export const proxySpecSchema = z.object({
  name: proxyNameSchema,
  type: z.enum(PROXY_TYPES as [ProxyType, ...ProxyType[]], {
    // A newer client's new type reaches an older server: say what this one knows.
    error: () => `not a proxy type this server knows (${PROXY_TYPES.join(', ')})`,
  }),
  /** tcp/udp: the public port; PICKED_PORT (0): one the server picks. */
  remote_port: z.number().int().min(PICKED_PORT).max(65535).optional(),
  /**
   * tcp/udp with remote_port 0: the port the server gave this proxy before (an earlier session, or this one
   * before a reload); the server gives it again if the proxy may hold it and it is free. Not part of what the
   * proxy is: a register that differs only here changes nothing.
   */
  previous_port: port.optional(),
  /**
   * tcp/udp: the address to bind remote_port on instead of the server's proxy_bind (ssh -R's
   * bind_address), one of the server's allow_bind. A server older than this drops the field and binds
   * proxy_bind: the client sees that in the register_result's remote_addr and in each stream's public_addr,
   * and serves none of it (see the client's logResults).
   */
  remote_bind: z.string().max(64).optional(),
  /** http/tls: hostnames, exact or "*.suffix". */
  hosts: z.array(z.string().max(255)).max(64).optional(),
  /** http/tls: a name in front of the server's subdomain_host. */
  subdomain: z.string().max(63).optional(),
  /** http: path prefixes this proxy serves on its hosts (longest wins); default ["/"]. */
  locations: z.array(z.string().max(1024)).max(64).optional(),
  /** http: basic auth the server asks visitors for. */
  http_user: z.string().max(256).optional(),
  http_password: z.string().max(256).optional(),
  /** http: the Host header the local service receives. */
  host_header_rewrite: z.string().max(255).regex(HOST_HEADER_VALUE).optional(),
  /** http: headers set on every request forwarded to the local service. */
  request_headers: headerFieldsSchema.optional(),
  /**
   * http: fields set on every response the service sends through the proxy (101 aside), replacing the
   * service's own of that name. The server says it applies them (the result's `response_headers`) and marks
   * each stream; an older server drops the field, and the client gives the proxy back rather than serve it
   * without the headers asked for.
   */
  response_headers: headerFieldsSchema
    .superRefine((fields, ctx) => {
      for (const name of Object.keys(fields)) {
        const refusal = responseHeaderRefusal(name);
        if (refusal) ctx.addIssue({ code: 'custom', path: [name], message: refusal });
      }
    })
    .optional(),
  /** tcp/tls: the client writes a PROXY protocol header to the local service (informational here). */
  proxy_protocol: z.enum(['v1', 'v2']).optional(),
  /** tcp/tls: visitor connections open at once; more are refused. Capped by the server. */
  max_connections: z.number().int().min(1).max(1_000_000).optional(),
  /** udp: a flow without datagrams for this long ends (both ends); the server's default otherwise. */
  udp_idle_timeout_ms: z.number().int().min(UDP_IDLE_TIMEOUT_MIN_MS).max(UDP_IDLE_TIMEOUT_MAX_MS).optional(),
  /** udp: concurrent flows (remote address:port) this proxy accepts; capped by the server. */
  max_flows: z.number().int().min(1).max(1_000_000).optional(),
  /**
   * A load-balancing group: proxies of one type and group asking for the same port (tcp) or names (http,
   * tls) share it, from one client or several, and take new connections in turn. A server older than this
   * drops the key, and refuses the second proxy as it refuses any port or name in use.
   */
  group: proxyNameSchema.optional(),
  /**
   * tcp, udp: no public port; reached only by visitors (clients whose token's `visit` grants "owner/name"). An
   * older server drops the field and refuses the entry for its missing remote_port, so it never goes public.
   */
  private: z.boolean().optional(),
  /**
   * tcp, tls, tcpmux, http: the client asks that this proxy's streams be compressed (CompressedStream). A
   * server that takes it says so in the result (`compression`) and marks each stream's header; an older
   * server drops the field, says nothing, and the client runs the proxy uncompressed.
   */
  compression: z.boolean().optional(),
});
export type ProxySpec = z.infer<typeof proxySpecSchema>;

/** A client's `metadata` table (frp's metadatas), at most this many entries. */
export const MAX_CLIENT_METADATA_ENTRIES = 32;
export const MAX_CLIENT_METADATA_KEY = 64;
export const MAX_CLIENT_METADATA_VALUE = 1024;
/** What the server's plugins are told of a client (frp's metas), bounded: it is held for the session. */
export const clientMetadataSchema = z
  .record(z.string().min(1).max(MAX_CLIENT_METADATA_KEY), z.string().max(MAX_CLIENT_METADATA_VALUE))
  .refine(
    (metadata) => Object.keys(metadata).length <= MAX_CLIENT_METADATA_ENTRIES,
    `at most ${MAX_CLIENT_METADATA_ENTRIES} entries`,
  );

/** Why a udp proxy cannot have compression: the client's config check and the server's refusal say it. */
export const UDP_COMPRESSION_REASON =
  'compression applies to tcp, tls, tcpmux and http proxies; udp datagrams are too small to gain from it';

const hello = z.object({
  type: z.literal('hello'),
  version: z.number().int(),
  instance_id: z.string().min(1).max(128),
  client_version: z.string().max(64),
  /**
   * The client's `metadata` table, passed to the server's plugins as frp's metas. An older server drops the
   * field (its plugins, if any, are not porthole's); an older client leaves it out (metas are empty).
   */
  metadata: clientMetadataSchema.optional(),
});
const helloOk = z.object({
  type: z.literal('hello_ok'),
  client: z.string(),
  session_id: z.string(),
  server_version: z.string(),
  /**
   * The operator's cap on this client's public proxies together, each direction, as written ("10MB"),
   * enforced by the server. An older client drops the field; an older server leaves it out.
   */
  bandwidth_limit: z.string().max(64).optional(),
});
/** The entries are checked one by one by parseRegisterEntry, so that one bad entry costs only itself. */
const register = z.object({ type: z.literal('register'), proxies: z.array(z.unknown()).max(1024) });
const proxyResult = z.object({
  proxy: z.string(),
  ok: z.boolean(),
  remote_addr: z.string().optional(),
  /** tcp/udp: the port bound, the one the server picked for remote_port 0 (an older server leaves it out). */
  remote_port: port.optional(),
  /** http/tls: where visitors reach the proxy, e.g. "http://app.example.com:8080/api". */
  urls: z.array(z.string()).max(1024).optional(),
  /** A private proxy: the name visitors ask for it by, "owner/proxy". */
  service: z.string().optional(),
  /** The server compresses this proxy's streams, as the register asked (an older server leaves it out). */
  compression: z.literal(true).optional(),
  /** This server sets the proxy's response_headers, as the register asked (an older server leaves it out). */
  response_headers: z.literal(true).optional(),
  reason: z.string().optional(),
});
export type ProxyResult = z.infer<typeof proxyResult>;
/** The notice code that tells a client the operator's cap on it changed (see the notice's bandwidth_limit). */
export const BANDWIDTH_LIMIT_NOTICE = 'bandwidth_limit';
/** The notice code of a sign-in the server's plugins refused (its session ends; exit_on_auth_failure stops on it). */
export const LOGIN_REFUSED_NOTICE = 'login_refused';
/** A sign-in refused because a plugin could not be asked: the session ends, and a later try may pass. */
export const LOGIN_UNAVAILABLE_NOTICE = 'login_unavailable';
const registerResult = z.object({ type: z.literal('register_result'), results: z.array(proxyResult) });
const unregister = z.object({ type: z.literal('unregister'), proxies: z.array(z.string()).max(1024) });
const notice = z.object({
  type: z.literal('notice'),
  level: z.enum(['info', 'warn', 'error']),
  message: z.string(),
  /** Machine-readable cause, e.g. "replaced" when another session of the same client took over. */
  code: z.string().optional(),
  /**
   * Proxies the notice is about; with code "proxies_closed" the server has closed these, with
   * "proxies_moved" it routes them by new names (a register_result with their urls follows).
   */
  proxies: z.array(z.string()).max(1024).optional(),
  /**
   * With code BANDWIDTH_LIMIT_NOTICE: the operator's cap on this client now (a reload changed the server's
   * client_bandwidth_limit), as hello_ok's bandwidth_limit; absent: no cap any more. An older client drops
   * the field and logs the notice's message as it logs any notice of a code it does not know.
   */
  bandwidth_limit: z.string().max(64).optional(),
});

export const controlMessageSchema = z.discriminatedUnion('type', [
  hello,
  helloOk,
  register,
  registerResult,
  unregister,
  notice,
]);
export type ControlMessage = z.infer<typeof controlMessageSchema>;
export type ControlMessageOf<T extends ControlMessage['type']> = Extract<ControlMessage, { type: T }>;
const KNOWN_TYPES: ReadonlySet<string> = new Set(controlMessageSchema.options.map((o) => o.shape.type.value));

/** A message of a type this version does not know: a newer peer's, ignored (see parseControlMessage). */
export interface UnknownControlMessage {
  readonly type: 'unknown';
  /** The type the peer sent, cut to 64 characters: it goes into log lines. */
  readonly unknownType: string;
}

/** The peer sent something that is not a valid control message. */
export class ProtocolError extends Error {
  override readonly name = 'ProtocolError';
}

/**
 * Validates a decoded control message. Compatibility within one protocol version (hello's `version`; a
 * peer speaking another is refused at hello, so hello must keep its shape and come first):
 * - a newer peer may add fields: unknown ones are dropped;
 * - it may add message types: one of a type this version does not know comes back as an
 *   UnknownControlMessage, which the receiver ignores with one warn line per type and session (the server
 *   also tells the client in a notice with code `unknown_message`). Such a message must be one an older
 *   peer can leave unanswered;
 * - a client may register proxies an older server cannot take (a new type, a wider range): each entry is
 *   checked on its own (parseRegisterEntry) and refused with its reason; the others register.
 * A change an older peer cannot safely ignore (a reply it must send, a field that changes what another
 * means) needs a new PROTOCOL_VERSION. A message of a known type that does not validate throws
 * ProtocolError: the server ends that client's session over it; the client logs it and reads on (a server
 * that sends one will send it again to a client that reconnects).
 */
export function parseControlMessage(raw: unknown): ControlMessage | UnknownControlMessage {
  const type = typeof raw === 'object' && raw !== null && 'type' in raw ? raw.type : undefined;
  if (typeof type === 'string' && !KNOWN_TYPES.has(type))
    return { type: 'unknown', unknownType: type.slice(0, 64) };
  const result = controlMessageSchema.safeParse(raw);
  if (result.success) return result.data;
  const { at, message } = firstIssue(result.error);
  const where = at === '' ? '' : ` at ${at}`;
  throw new ProtocolError(
    `invalid control message (type ${String(type ?? '?').slice(0, 64)})${where}: ${message}`,
  );
}

/** One entry of a register: a proxy the server can take, or the name to refuse it by and why. */
export type RegisterEntry = { ok: true; spec: ProxySpec } | { ok: false; proxy: string; reason: string };

/**
 * Validates entry `index` (from 0) of a register. A refused entry is named by its name when that is a valid
 * proxy name, otherwise by a placeholder that no proxy name can be (it has spaces), which says so.
 */
export function parseRegisterEntry(raw: unknown, index: number): RegisterEntry {
  const result = proxySpecSchema.safeParse(raw);
  if (result.success) return { ok: true, spec: result.data };
  const name = typeof raw === 'object' && raw !== null && 'name' in raw ? raw.name : undefined;
  const named = proxyNameSchema.safeParse(name);
  const proxy = named.success
    ? named.data
    : `register entry ${index + 1} (${name === undefined ? 'without a name' : 'without a valid name'})`;
  const { at, message } = firstIssue(result.error);
  return { ok: false, proxy, reason: at === '' ? message : `${at}: ${message}` };
}

/** Where the first thing wrong is ("" for the value as a whole, else e.g. "hosts.3") and what it is. */
function firstIssue(error: z.ZodError): { at: string; message: string } {
  const issue = error.issues[0]!;
  return { at: issue.path.join('.'), message: issue.message };
}
