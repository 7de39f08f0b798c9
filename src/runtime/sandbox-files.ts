import { createHash, randomUUID } from 'node:crypto';
import { constants } from 'node:fs';
import { mkdir, open, readFile } from 'node:fs/promises';
import path from 'node:path';

/**
 * The files the node provides inside a sandbox: /etc/hosts, /etc/hostname, /etc/resolv.conf.
 * As container engines do, they are the node's own files, in a directory of host root's on the
 * sandbox's disk, bound over the sandbox's paths: the sandbox may edit their contents, but never
 * replace them with a link, and the agent opens them with O_NOFOLLOW all the same.
 *
 * On a resume the files are brought up to date (a new address, another node's name servers)
 * unless the sandbox changed them: then its version stays, as Docker does.
 */

export const SANDBOX_FILES = ['hosts', 'hostname', 'resolv.conf'] as const;
export type SandboxFileName = (typeof SANDBOX_FILES)[number];
/** sha256 of what the node last wrote into each file. */
export type SandboxFileHashes = Partial<Record<SandboxFileName, string>>;

/** Contents larger than this were not written by the node. */
const MAX_NODE_FILE = 64 * 1024;

/**
 * A sandbox's host name is its id (as its UTS namespace's, see oci-spec.ts and
 * sandbox-hostname.ts); /etc/hosts maps it to the sandbox's address, so that `hostname -f`,
 * sudo and the like resolve it without a name server.
 */
export function sandboxFileContents(hostname: string, address: string, hostResolvConf: string): Record<SandboxFileName, string> {
  return {
    hosts: `127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n${address}\t${hostname}\n`,
    hostname: `${hostname}\n`,
    // The host's loopback resolvers are unreachable from a sandbox.
    'resolv.conf': hostResolvConf.split('\n').filter((l) => !/^nameserver\s+(127\.|::1)/.test(l)).join('\n'),
  };
}

/** The file (in the etc directory) bound read-only at SANDBOX_ENV_PATH inside the sandbox. */
export const SANDBOX_ENV_FILE = 'env.json';
export const SANDBOX_ENV_PATH = '/etc/nestbox/env.json';

/** Writes the sandbox's variables as JSON, host root's and read-only to the sandbox (never through a link). */
export async function writeSandboxEnv(etcDir: string, env: Record<string, string>): Promise<void> {
  await writeHostRootFile(etcDir, SANDBOX_ENV_FILE, JSON.stringify(env ?? {}));
}

/**
 * The sandbox's boot id, bound over /proc/sys/kernel/random/boot_id (the host's otherwise):
 * a new one at each boot (create, resume without memory) and for each new sandbox restored
 * from another's memory; a resume with memory keeps it (the same boot goes on).
 */
export const BOOT_ID_FILE = 'boot_id';
export const BOOT_ID_PATH = '/proc/sys/kernel/random/boot_id';

export async function writeBootId(etcDir: string, o: { keep: boolean }): Promise<void> {
  if (o.keep) {
    const kept = await readFile(path.join(etcDir, BOOT_ID_FILE), 'utf8').catch(() => '');
    if (/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n$/.test(kept)) return;
  }
  await writeHostRootFile(etcDir, BOOT_ID_FILE, `${randomUUID()}\n`);
}

/** A file of host root's, 0644, in the etc directory (opened without following links). */
async function writeHostRootFile(etcDir: string, name: string, contents: string): Promise<void> {
  await mkdir(etcDir, { recursive: true, mode: 0o755 });
  const f = await open(path.join(etcDir, name), constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o644);
  try {
    await Promise.all([f.writeFile(contents), f.chown(0, 0), f.chmod(0o644)]);
  } finally {
    await f.close();
  }
}

export async function hostResolvConf(): Promise<string> {
  return readFile('/etc/resolv.conf', 'utf8').catch(() => '');
}

const sha256 = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');

/**
 * Writes the files into `etcDir` (a directory of host root's), owned by the sandbox's root.
 * With `previous` (the hashes of the last write), a file whose contents differ from what the
 * node wrote is left as the sandbox made it. Returns the hashes of what is there now.
 */
export async function writeSandboxFiles(
  etcDir: string,
  contents: Record<SandboxFileName, string>,
  owner: number,
  previous?: SandboxFileHashes,
): Promise<SandboxFileHashes> {
  await mkdir(etcDir, { recursive: true, mode: 0o755 });
  const hashes: SandboxFileHashes = {};
  await Promise.all(SANDBOX_FILES.map(async (name) => {
    const file = path.join(etcDir, name);
    const before = previous?.[name];
    if (before !== undefined) {
      const current = await readNodeFile(file);
      if (current === 'foreign' || (current !== 'missing' && sha256(current) !== before)) {
        hashes[name] = before; // the sandbox's own version stays; what the node wrote is still `before`
        return;
      }
    }
    // In place (never replaced): a container made ahead has these files bound already.
    const f = await open(file, constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW, 0o644);
    try {
      await Promise.all([f.writeFile(contents[name]), f.chown(owner, owner), f.chmod(0o644)]);
    } finally {
      await f.close();
    }
    hashes[name] = sha256(contents[name]);
  }));
  return hashes;
}

/** The file's contents; 'foreign' when it cannot be what the node wrote (too large, not a file). */
async function readNodeFile(file: string): Promise<Buffer | 'missing' | 'foreign'> {
  let f;
  try {
    f = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'foreign';
  }
  try {
    const st = await f.stat();
    if (!st.isFile() || st.size > MAX_NODE_FILE) return 'foreign';
    const buf = Buffer.alloc(MAX_NODE_FILE + 1);
    const { bytesRead } = await f.read(buf, 0, buf.length, 0);
    return bytesRead > MAX_NODE_FILE ? 'foreign' : buf.subarray(0, bytesRead);
  } finally {
    await f.close();
  }
}
