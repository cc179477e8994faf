// HTTP field syntax (RFC 9110 5.1, 5.5), one definition for every place that reads or writes header
// fields: the client's config check, the wire schema, and the server's response-head parser.

/** A field name (a token). */
export const HTTP_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** A whole field value: visible characters, spaces, tabs and obs-text; nothing that could end a line. */
export const HTTP_FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
