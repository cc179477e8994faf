// One [[visitors]] table of client.toml (or a --visit rule): a local port whose connections go to another
// client's private service.
import {
  expected,
  formatHostPort,
  type HostPort,
  hostPortField,
  parseHostPort,
  proxyNameSchema,
  SERVICE_NAME,
  SERVICE_NAME_RULE,
} from '@porthole/protocol';
import { z } from 'zod';

export const visitorSchema = z.strictObject({
  name: proxyNameSchema,
  service: z
    .string({ error: expected('a service like "homelab/ssh"') })
    .regex(SERVICE_NAME, `must be ${SERVICE_NAME_RULE}`),
  bind: hostPortField(),
});

export type RawVisitor = z.output<typeof visitorSchema>;

export interface VisitorConfig {
  name: string;
  /** "owner/proxy": the owning client's name (its token's sub) and its private proxy's name. */
  service: string;
  /** Where this client listens for the connections it takes there. */
  bind: HostPort;
}

export function toVisitorConfig(raw: RawVisitor): VisitorConfig {
  return { name: raw.name, service: raw.service, bind: raw.bind };
}

/** The `bind` of log lines and status: "127.0.0.1:2222". */
export function describeBind(visitor: VisitorConfig): string {
  return formatHostPort(visitor.bind.host, visitor.bind.port);
}

/**
 * A `--visit [BIND_HOST:]PORT:OWNER/PROXY` rule as a [[visitors]] table: named visit-PORT, bound to
 * 127.0.0.1 unless the rule names a host. Throws with the reason.
 */
export function visitRule(rule: string): { name: string; service: string; bind: string } {
  const at = rule.lastIndexOf(':');
  const service = rule.slice(at + 1);
  const bindText = rule.slice(0, at);
  if (at === -1 || !SERVICE_NAME.test(service))
    throw new Error(`"${rule}": expected [BIND_HOST:]PORT:OWNER/PROXY, e.g. 2222:homelab/ssh`);
  const bind = /^\d+$/.test(bindText) ? `127.0.0.1:${bindText}` : bindText;
  const { port } = parseHostPort(bind);
  return { name: `visit-${port}`, service, bind };
}
