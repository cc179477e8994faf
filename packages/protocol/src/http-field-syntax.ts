// HTTP field syntax (RFC 9110 5.1, 5.5), one definition for every place that reads or writes header
// fields: the client's config check, the wire schema, and the server's response-head parser.

/** A field name (a token). */
export const HTTP_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/** A whole field value: visible characters, spaces, tabs and obs-text; nothing that could end a line. */
export const HTTP_FIELD_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/** The fields one header table (request_headers, response_headers) may hold: each goes into every head. */
export const MAX_HEADER_TABLE_FIELDS = 64;
const MAX_HEADER_NAME_LENGTH = 256;
const MAX_HEADER_VALUE_LENGTH = 8192;

/** What is wrong with a header table: each problem with the field it is about (none: the whole table). */
export function headerTableProblems(table: Record<string, string>): { field?: string; message: string }[] {
  const problems: { field?: string; message: string }[] = [];
  const count = Object.keys(table).length;
  if (count > MAX_HEADER_TABLE_FIELDS)
    problems.push({ message: `has ${count} fields; at most ${MAX_HEADER_TABLE_FIELDS} are allowed` });
  for (const [name, value] of Object.entries(table)) {
    if (!HTTP_TOKEN.test(name))
      problems.push({
        field: name,
        message: "is not an HTTP header name (letters, digits and !#$%&'*+-.^_`|~)",
      });
    else if (name.length > MAX_HEADER_NAME_LENGTH)
      problems.push({ field: name, message: `is longer than ${MAX_HEADER_NAME_LENGTH} characters` });
    if (!HTTP_FIELD_VALUE.test(value))
      problems.push({
        field: name,
        message: 'must be one line of text: no control characters but tab, none beyond U+00FF',
      });
    else if (value.length > MAX_HEADER_VALUE_LENGTH)
      problems.push({ field: name, message: `is longer than ${MAX_HEADER_VALUE_LENGTH} characters` });
  }
  return problems;
}
