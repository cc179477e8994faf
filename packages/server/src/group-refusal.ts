// The reason a proxy cannot share a port or name with a load-balancing group (or a group with a lone proxy).

/** How a proxy's group reads in a refusal: `group "web"`, or `no group`. */
function groupWords(group: string | undefined): string {
  return group === undefined ? 'no group' : `group "${group}"`;
}

/**
 * Why `spec` may not share `what` (`port 8080`, `hostname app.example.com`) with the proxy holding it, or
 * undefined when both are of one type and one group. Said only where the holder is in a group or `spec`
 * asks for one: otherwise the usual "in use by another client" applies.
 */
export function groupRefusal(
  what: string,
  holder: { group: string | undefined; type: string },
  spec: { group?: string | undefined; type: string },
): string | undefined {
  if (holder.group === undefined && spec.group === undefined) return undefined;
  if (holder.group === spec.group && holder.type === spec.type) return undefined;
  const theirs = `${holder.type} proxies in ${groupWords(holder.group)}`;
  return `${what} is used by ${theirs}; this ${spec.type} proxy is in ${groupWords(spec.group)}`;
}
