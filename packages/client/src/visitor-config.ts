// One [[visitors]] table of client.toml (or a --visit rule): a local port whose connections go to another
// client's private service.
import {
  expected,
  formatHostPort,
  type HostPort,
  hostPortField,
  parseHostPort,
  positiveIntField,
  proxyNameSchema,
  SERVICE_NAME,
  SERVICE_NAME_RULE,
  VISIT_TYPES,
  type VisitType,
} from '@porthole/protocol';
import { z } from 'zod';

/** A udp visitor's senders (flows) at once, when its table does not say: the server's udp_max_flows default. */
export const DEFAULT_VISITOR_MAX_FLOWS = 1024;

export const visitorSchema = z
  .strictObject({
    name: proxyNameSchema,
    type: z.enum(VISIT_TYPES, { error: expected('"tcp" or "udp"') }).default('tcp'),
    service: z
      .string({ error: expected('a service like "homelab/ssh"') })
      .regex(SERVICE_NAME, `must be ${SERVICE_NAME_RULE}`),
    bind: hostPortField(),
    max_flows: positiveIntField('a number of flows').max(1_000_000).optional(),
  })
  .superRefine((visitor, ctx) => {
    if (visitor.max_flows !== undefined && visitor.type !== 'udp')
      ctx.addIssue({
        code: 'custom',
        path: ['max_flows'],
        message: `applies to udp visitors, not ${visitor.type} (set type = "udp")`,
      });
  });

export type RawVisitor = z.output<typeof visitorSchema>;

export interface VisitorConfig {
  name: string;
  /** What it carries to the service: connections (tcp) or datagrams (udp); the service's type must match. */
  type: VisitType;
  /** "owner/proxy": the owning client's name (its token's sub) and its private proxy's name. */
  service: string;
  /** Where this client listens for the connections (or datagrams) it takes there. */
  bind: HostPort;
  /** udp: senders on `bind` carried at once; past it, a new one takes a silent one's place or is dropped. */
  maxFlows?: number;
}

export function toVisitorConfig(raw: RawVisitor): VisitorConfig {
  return {
    name: raw.name,
    type: raw.type,
    service: raw.service,
    bind: raw.bind,
    ...(raw.max_flows === undefined ? {} : { maxFlows: raw.max_flows }),
  };
}

/** The `bind` of log lines and status: "127.0.0.1:2222". */
export function describeBind(visitor: VisitorConfig): string {
  return formatHostPort(visitor.bind.host, visitor.bind.port);
}

/**
 * A `--visit [udp:|tcp:][BIND_HOST:]PORT:OWNER/PROXY` rule as a [[visitors]] table: tcp unless it says udp,
 * named visit-PORT (a udp one visit-udp-PORT, so both may share a port number), bound to 127.0.0.1 unless
 * the rule names a host. Throws with the reason.
 */
export function visitRule(rule: string): { name: string; type: VisitType; service: string; bind: string } {
  const typed = /^(tcp|udp):(.*)$/.exec(rule);
  const type: VisitType = typed?.[1] === 'udp' ? 'udp' : 'tcp';
  const rest = typed ? typed[2]! : rule;
  const at = rest.lastIndexOf(':');
  const service = rest.slice(at + 1);
  const bindText = rest.slice(0, at);
  if (at === -1 || !SERVICE_NAME.test(service))
    throw new Error(
      `"${rule}": expected [udp:][BIND_HOST:]PORT:OWNER/PROXY, e.g. 2222:homelab/ssh or udp:5353:homelab/dns`,
    );
  const bind = /^\d+$/.test(bindText) ? `127.0.0.1:${bindText}` : bindText;
  const { port } = parseHostPort(bind);
  return { name: type === 'udp' ? `visit-udp-${port}` : `visit-${port}`, type, service, bind };
}
