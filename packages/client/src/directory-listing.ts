// The page a directory without index.html answers with: its names as links, nothing else. Names are a
// stranger's to choose (whoever can drop a file in the share), so each is escaped as text and percent-encoded
// as a link, and the page may run no script.

export interface ListedEntry {
  name: string;
  isDirectory: boolean;
}

/** No script, no remote anything: a name that slipped through escaping still could not run. */
export const LISTING_CSP = "default-src 'none'; style-src 'unsafe-inline'";

const HTML_ESCAPES: Record<string, string> = {
  '&': '&amp;',
  '<': '&lt;',
  '>': '&gt;',
  '"': '&quot;',
  "'": '&#39;',
};

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => HTML_ESCAPES[c]!);
}

/** The listing of the directory at URL path `urlPath` (decoded, for the title), directories first. */
export function listingHtml(urlPath: string, entries: readonly ListedEntry[], atTop: boolean): string {
  const sorted = [...entries].sort((a, b) =>
    a.isDirectory !== b.isDirectory
      ? a.isDirectory
        ? -1
        : 1
      : a.name < b.name
        ? -1
        : a.name > b.name
          ? 1
          : 0,
  );
  const links = sorted.map((entry) => {
    const slash = entry.isDirectory ? '/' : '';
    // Relative to the directory's own URL (which ends in "/"); ":" is encoded, so no name reads as a scheme.
    return `<li><a href="${escapeHtml(encodeURIComponent(entry.name))}${slash}">${escapeHtml(entry.name)}${slash}</a></li>`;
  });
  if (!atTop) links.unshift('<li><a href="../">../</a></li>');
  const title = `Index of ${escapeHtml(urlPath)}`;
  return [
    '<!DOCTYPE html>',
    `<html><head><meta charset="utf-8"><title>${title}</title></head>`,
    `<body><h1>${title}</h1>`,
    '<ul>',
    ...links,
    '</ul></body></html>',
    '',
  ].join('\n');
}
