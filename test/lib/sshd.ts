// A private OpenSSH server on loopback for the "real peer" tests: its own host key, user key and
// sshd_config in the test's temp dir; nothing of the machine's ssh set-up is used or changed.
import { mkdir, readFile } from 'node:fs/promises';
import { freePort, type Harness, type Proc, type RunResult, run, runOk } from './processes.js';

export interface Sshd {
  proc: Proc;
  port: number;
  /** private key whose public half is authorized for root */
  keyPath: string;
}

export async function startSshd(h: Harness): Promise<Sshd> {
  // sshd's privilege separation needs this directory to exist.
  await mkdir('/run/sshd', { recursive: true, mode: 0o755 });
  const hostKey = h.path('ssh_host_ed25519_key');
  const keyPath = h.path('id_ed25519');
  await runOk('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-f', hostKey]);
  await runOk('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'porthole-e2e', '-f', keyPath]);
  const authorized = await h.file('authorized_keys', await readFile(`${keyPath}.pub`, 'utf8'));
  let lastError: unknown;
  for (let attempt = 0; attempt < 5; attempt++) {
    const port = await freePort();
    const config = await h.file(
      `sshd_config_${attempt}`,
      [
        `Port ${port}`,
        'ListenAddress 127.0.0.1',
        `HostKey ${hostKey}`,
        `AuthorizedKeysFile ${authorized}`,
        `PidFile ${h.path(`sshd_${attempt}.pid`)}`,
        'UsePAM no',
        'StrictModes no',
        'PermitRootLogin prohibit-password',
        'PasswordAuthentication no',
        'KbdInteractiveAuthentication no',
        'UseDNS no',
        'LogLevel INFO',
        '',
      ].join('\n'),
    );
    // -D: stay in the foreground (we own the pid); -e: log to stderr.
    const proc = h.spawn(`sshd#${attempt}`, '/usr/sbin/sshd', ['-D', '-e', '-f', config]);
    try {
      await proc.waitForOutput(/Server listening on 127\.0\.0\.1 port/, 10_000);
      return { proc, port, keyPath };
    } catch (err) {
      lastError = err;
      await proc.stop(1000);
    }
  }
  throw new Error(`sshd did not start: ${(lastError as Error).message}`);
}

/** Log in as root through host:port with the test key and run `command`; stdin from `input`. */
export function sshRun(
  sshd: Sshd,
  port: number,
  command: string,
  input?: Buffer,
  timeoutMs = 30_000,
): Promise<RunResult> {
  return run('ssh', [...sshOptions(sshd), '-p', String(port), 'root@127.0.0.1', command], {
    timeoutMs,
    input,
  });
}

/**
 * Log in as root at `host` (a name, not resolved: the ProxyCommand carries it), reached through
 * `proxyCommand` (ssh's %h and %p in it), and run `command`.
 */
export function sshRunVia(
  sshd: Sshd,
  host: string,
  proxyCommand: string,
  command: string,
  input?: Buffer,
  timeoutMs = 30_000,
): Promise<RunResult> {
  const args = [...sshOptions(sshd), '-o', `ProxyCommand=${proxyCommand}`, '-p', String(sshd.port)];
  return run('ssh', [...args, `root@${host}`, command], { timeoutMs, input });
}

function sshOptions(sshd: Sshd): string[] {
  return [
    '-i',
    sshd.keyPath,
    '-o',
    'StrictHostKeyChecking=no',
    '-o',
    'UserKnownHostsFile=/dev/null',
    '-o',
    'BatchMode=yes',
    '-o',
    'ConnectTimeout=10',
    '-o',
    'LogLevel=ERROR',
  ];
}
