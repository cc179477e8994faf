// [https.acme]: the names porthole-server gets certificates for itself (ACME http-01), where it keeps them
// and which CA it asks. Read with the rest of [https] (routing-config.ts).
import { isIP } from 'node:net';
import { ConfigError, expected, parseHostPattern, readCaFile, resolveConfigPath } from '@porthole/protocol';
import { z } from 'zod';

export const LETS_ENCRYPT_DIRECTORY = 'https://acme-v02.api.letsencrypt.org/directory';

export interface AcmeSettings {
  /** One certificate each, in the order written. */
  domains: readonly string[];
  email: string | undefined;
  directory: string;
  /** The storage directory, resolved next to server.toml. */
  storage: string;
  /** ca_file's certificates, trusted for the directory's HTTPS instead of the system's. */
  ca: Buffer | undefined;
}

const domainField = z.string({ error: expected('a hostname') }).transform((text, ctx) => {
  let host: string;
  try {
    host = parseHostPattern(text);
  } catch (err) {
    ctx.addIssue({ code: 'custom', message: (err as Error).message });
    return z.NEVER;
  }
  // http-01 proves control of one name over port 80; a CA gives wildcards for dns-01 only, and no IPs here.
  const unprovable = host.startsWith('*.') ? 'a wildcard' : isIP(host) !== 0 ? 'an IP address' : undefined;
  if (unprovable !== undefined) {
    ctx.addIssue({
      code: 'custom',
      message: `"${text}" is ${unprovable}, which http-01 cannot prove: use [[https.certs]] for it`,
    });
    return z.NEVER;
  }
  return host;
});

export const acmeTableField = z
  .strictObject(
    {
      domains: z
        .array(domainField, { error: expected('a list of hostnames like ["app.example.com"]') })
        .min(1)
        .max(100)
        .superRefine((domains, ctx) => {
          domains.forEach((domain, i) => {
            if (domains.indexOf(domain) !== i)
              ctx.addIssue({ code: 'custom', path: [i], message: `"${domain}" is listed twice` });
          });
        }),
      email: z
        .string({ error: expected('an email address') })
        .regex(/^[^\s@<>]+@[^\s@<>]+\.[^\s@<>]+$/, 'must be an email address like "me@example.com"')
        .optional(),
      directory: z
        .string({ error: expected('a URL') })
        .regex(/^https:\/\/[^\s/]+(\/\S*)?$/, 'must be an https:// URL (an ACME directory)')
        .default(LETS_ENCRYPT_DIRECTORY),
      storage: z
        .string({ error: expected('a directory path') })
        .min(1)
        .default('acme'),
      ca_file: z.string({ error: expected('a file path') }).optional(),
    },
    { error: expected('an [https.acme] table with domains') },
  )
  .optional();

type RawAcme = NonNullable<z.output<typeof acmeTableField>>;

/** [https.acme] read and checked; `httpListening`: the [http] port that answers the CA's challenges is set. */
export function loadAcmeSettings(file: string, raw: RawAcme, httpListening: boolean): AcmeSettings {
  if (!httpListening)
    throw ConfigError.at(
      file,
      'https.acme',
      'needs [http] listen: the CA checks each name over plain HTTP (http-01), on port 80 in production',
    );
  const ca =
    raw.ca_file === undefined
      ? undefined
      : readCaFile(
          file,
          'https.acme.ca_file',
          resolveConfigPath(file, raw.ca_file),
          "ca_file is the ACME server's CA certificate, not a key",
        );
  return {
    domains: raw.domains,
    email: raw.email,
    directory: raw.directory,
    storage: resolveConfigPath(file, raw.storage),
    ca,
  };
}
