// What the ACME client keeps on disk under [https.acme] storage: the account key (account.key, PKCS#8
// PEM) and per name <domain>.crt (the full chain) and <domain>.key. Files are 0600 in a 0700 directory,
// each written to a temporary name and renamed, so a crash never leaves half a key or chain behind.
import {
  createPrivateKey,
  generateKeyPairSync,
  type KeyObject,
  randomBytes,
  X509Certificate,
} from 'node:crypto';
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { createSecureContext } from 'node:tls';

export interface StoredCertificate {
  cert: Buffer;
  key: Buffer;
  notBefore: number;
  notAfter: number;
}

const ACCOUNT_KEY_FILE = 'account.key';

export class AcmeStorage {
  constructor(readonly dir: string) {}

  private async ensureDir(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
  }

  private async writeAtomically(name: string, data: string | Buffer): Promise<void> {
    await this.ensureDir();
    const path = join(this.dir, name);
    const temporary = `${path}.${randomBytes(6).toString('hex')}.tmp`;
    try {
      await writeFile(temporary, data, { mode: 0o600, flag: 'wx' });
      // The mode given is masked by the umask; the key must not be readable by others whatever it is.
      await chmod(temporary, 0o600);
      await rename(temporary, path);
    } catch (err) {
      await rm(temporary, { force: true });
      throw err;
    }
  }

  /**
   * The account key, made and saved on first use. A file that holds no usable key is named in the error
   * (the caller decides: the CA knows the account by this key, so it is not silently replaced).
   */
  async accountKey(): Promise<KeyObject> {
    const path = join(this.dir, ACCOUNT_KEY_FILE);
    let pem: Buffer | undefined;
    try {
      pem = await readFile(path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    if (pem !== undefined) {
      try {
        const key = createPrivateKey(pem);
        if (key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') throw new Error('not a P-256 key');
        return key;
      } catch (err) {
        throw new Error(`${path} holds no usable account key (${(err as Error).message})`);
      }
    }
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    await this.writeAtomically(ACCOUNT_KEY_FILE, privateKey.export({ type: 'pkcs8', format: 'pem' }));
    return privateKey;
  }

  /** The stored certificate for `domain`; undefined when there is none; throws when it cannot be used. */
  async certificate(domain: string): Promise<StoredCertificate | undefined> {
    let cert: Buffer;
    let key: Buffer;
    try {
      [cert, key] = await Promise.all([
        readFile(join(this.dir, `${domain}.crt`)),
        readFile(join(this.dir, `${domain}.key`)),
      ]);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    const x509 = new X509Certificate(cert);
    // Throws when the key is not the certificate's.
    createSecureContext({ cert, key });
    return { cert, key, notBefore: Date.parse(x509.validFrom), notAfter: Date.parse(x509.validTo) };
  }

  async saveCertificate(domain: string, chain: string, key: KeyObject): Promise<void> {
    // The key first: a chain beside the old key would not load, an old chain beside the new key is re-ordered.
    await this.writeAtomically(`${domain}.key`, key.export({ type: 'pkcs8', format: 'pem' }));
    await this.writeAtomically(`${domain}.crt`, chain);
  }
}
