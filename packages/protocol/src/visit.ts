// Visitors of private services: the request a visiting client writes first on a stream it opens, the
// server's answer, and what a token's `visit` claim allows.
import type { Readable, Writable } from 'node:stream';
import { z } from 'zod';
import { PROXY_NAME, PROXY_NAME_RULE } from './control-messages.js';
import { MessageReader, writeMessage } from './message-codec.js';
import { MAX_STREAM_HEADER_BYTES } from './stream-header.js';

/** "owner/proxy": the owning client's name (its token's sub) and its private proxy's name. */
const SERVICE_PART = PROXY_NAME.source.slice(1, -1);
export const SERVICE_NAME = new RegExp(`^${SERVICE_PART}/${SERVICE_PART}$`);
/** A `visit` grant entry: a service, or every service of one owner ("homelab/*"). */
const VISIT_GRANT = new RegExp(`^${SERVICE_PART}/(?:\\*|${SERVICE_PART})$`);
export const SERVICE_NAME_RULE = `"owner/proxy": the owning client's name and its proxy's, each ${PROXY_NAME_RULE} characters`;

/** Why `text` is not a service name ("homelab/ssh"), or undefined. */
export function serviceNameRefusal(text: string): string | undefined {
  return SERVICE_NAME.test(text)
    ? undefined
    : `"${text}" is not a service name: write it ${SERVICE_NAME_RULE}`;
}

/** Why `text` is not a `visit` grant entry ("homelab/ssh" or "homelab/*"), or undefined. */
export function visitGrantRefusal(text: string): string | undefined {
  return VISIT_GRANT.test(text)
    ? undefined
    : `"${text}" is not a service to visit: write it "owner/proxy", or "owner/*" for all of one client's`;
}

/** Whether a token's `visit` claim lets its client visit `service`; no claim: no visits. */
export function visitGrantAllows(grant: readonly string[] | undefined, service: string): boolean {
  if (grant === undefined) return false;
  const owner = service.slice(0, service.indexOf('/'));
  return grant.some((entry) => entry === service || entry === `${owner}/*`);
}

/** What a visitor carries: a tcp connection's bytes, or a udp flow's u16-framed datagrams. */
export const VISIT_TYPES = ['tcp', 'udp'] as const;
export type VisitType = (typeof VISIT_TYPES)[number];

const visitRequestSchema = z.object({
  /** The service asked for, "owner/proxy". */
  visit: z.string().regex(SERVICE_NAME, `must be ${SERVICE_NAME_RULE}`),
  /** Absent: tcp (what visitors older than udp ones ask for). */
  type: z.enum(VISIT_TYPES).optional(),
});
export type VisitRequest = z.infer<typeof visitRequestSchema>;

const visitAnswerSchema = z.object({
  ok: z.boolean(),
  /** Why the visit was refused, for the visiting client's log. */
  reason: z.string().max(1024).optional(),
  /** The owner's connection id, so the three logs can be matched. */
  conn: z.number().int().nonnegative().optional(),
  /** A udp visit: the flow's idle timeout, the service's, which the owner's end keeps too. */
  udp_idle_timeout_ms: z.number().int().positive().optional(),
});
export type VisitAnswer = z.infer<typeof visitAnswerSchema>;

/** Writes the request that opens a client-opened visit stream. */
export function writeVisitRequest(stream: Writable, request: VisitRequest): boolean {
  return writeMessage(stream, request, MAX_STREAM_HEADER_BYTES);
}

/** Reads and validates a visit request; leaves the bytes after it in the stream. */
export async function readVisitRequest(stream: Readable): Promise<VisitRequest> {
  const raw = await new MessageReader(stream, MAX_STREAM_HEADER_BYTES).read();
  if (raw === null) throw new Error('stream ended before its visit request');
  const result = visitRequestSchema.safeParse(raw);
  if (!result.success) throw new Error(`invalid visit request: ${result.error.issues[0]!.message}`);
  return result.data;
}

export function writeVisitAnswer(stream: Writable, answer: VisitAnswer): boolean {
  return writeMessage(stream, answer, MAX_STREAM_HEADER_BYTES);
}

/** Reads the server's answer to a visit; null when the stream ended without one. */
export async function readVisitAnswer(stream: Readable): Promise<VisitAnswer | null> {
  const raw = await new MessageReader(stream, MAX_STREAM_HEADER_BYTES).read();
  if (raw === null) return null;
  const result = visitAnswerSchema.safeParse(raw);
  if (!result.success) throw new Error(`invalid visit answer: ${result.error.issues[0]!.message}`);
  return result.data;
}
