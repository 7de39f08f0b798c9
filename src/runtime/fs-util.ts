import { chown, lstat, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { run } from './command.ts';

/** Moves a directory tree, across file systems when it must. */
export async function moveTree(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    await run(['cp', '-a', '--', from, to]);
    await rm(from, { recursive: true, force: true });
  }
}

export async function chownTree(root: string, uid: number, gid: number): Promise<void> {
  await chown(root, uid, gid);
  for (const name of await readdir(root)) {
    const p = path.join(root, name);
    const st = await lstat(p);
    if (st.isDirectory()) await chownTree(p, uid, gid);
    else await chown(p, uid, gid);
  }
}

export async function exists(p: string): Promise<boolean> {
  try {
    await lstat(p);
    return true;
  } catch {
    return false;
  }
}

export async function isMountPoint(p: string): Promise<boolean> {
  const r = await run(['mountpoint', '-q', p], { allowFailure: true });
  return r.code === 0;
}

export async function unmount(p: string): Promise<void> {
  if (!(await isMountPoint(p))) return;
  const r = await run(['umount', p], { allowFailure: true });
  if (r.code !== 0) await run(['umount', '-l', p]);
}
