// Where the operator's admin key is kept on the control-plane host: `<control dir>/admin-key`,
// mode 0600, so that the `nestbox` CLI run by root on that host can use it without copying it.
// Written by the start that created the key; the database itself keeps only its hash.
import { readFileSync } from 'node:fs';
import { mkdir, open, rename, rm } from 'node:fs/promises';
import path from 'node:path';

export const ADMIN_KEY_FILE_NAME = 'admin-key';

/** The control plane's directory, as `nestbox up` picks it: NESTBOX_CONTROL_DIR, else $NESTBOX_HOME/control. */
export function controlDirFromEnv(env: NodeJS.ProcessEnv = process.env): string {
  return env.NESTBOX_CONTROL_DIR || path.join(env.NESTBOX_HOME || '/var/lib/nestbox', 'control');
}

export function adminKeyFilePath(controlDir: string): string {
  return path.join(controlDir, ADMIN_KEY_FILE_NAME);
}

/**
 * Writes the key and replaces the file in one rename. The temporary file is created exclusively
 * with mode 0600, so the key is never readable by others, not even for an instant, and a link
 * planted at that name is refused rather than followed.
 */
export async function writeAdminKeyFile(file: string, key: string): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  const tmp = `${file}.${process.pid}.tmp`;
  await rm(tmp, { force: true });
  const fh = await open(tmp, 'wx', 0o600); // a umask only takes bits away
  try {
    await fh.writeFile(`${key}\n`);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
}

/** Writes the key unless `file` is null; reports a failure instead of throwing (the key is printed anyway). */
export async function keepAdminKey(file: string | null, key: string): Promise<{ file: string | null; error: string | null }> {
  if (file === null) return { file: null, error: null };
  try {
    await writeAdminKeyFile(file, key);
    return { file, error: null };
  } catch (e) {
    return { file: null, error: `cannot write the admin key to ${file}: ${(e as Error).message}` };
  }
}

/** The key kept in `file`; null when there is no such file. Other failures (permissions) throw. */
export function readAdminKeyFile(file: string): string | null {
  try {
    return readFileSync(file, 'utf8').trim();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}
