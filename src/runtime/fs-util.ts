import { lstat, readFile, rename } from 'node:fs/promises';
import { run } from './command.ts';

/** Moves a directory tree, across file systems when it must. */
export async function moveTree(from: string, to: string): Promise<void> {
  try {
    await rename(from, to);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EXDEV') throw e;
    await run(['cp', '-a', '--', from, to]);
    await removeTree(from);
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

/**
 * Whether something is mounted at `p` (an absolute path without links), read from this
 * process's mount table: no process per check, which teardown and pause do several times.
 */
export async function isMountPoint(p: string): Promise<boolean> {
  return (await mountedAmong([p])).has(p);
}

/** Which of `paths` (absolute, without links) something is mounted at: one read of the mount table. */
export async function mountedAmong(paths: readonly string[]): Promise<Set<string>> {
  const wanted = new Set(paths);
  const found = new Set<string>();
  const table = await readFile('/proc/self/mountinfo', 'utf8');
  for (const line of table.split('\n')) {
    // id parent major:minor root MOUNT-POINT options ... (octal escapes for space, tab, newline, backslash)
    const field = line.split(' ')[4];
    if (field === undefined) continue;
    const mountPoint = unescapeMountField(field);
    if (wanted.has(mountPoint)) found.add(mountPoint);
  }
  return found;
}

function unescapeMountField(f: string): string {
  return f.includes('\\') ? f.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8))) : f;
}

/** Unmounts everything mounted at `p` (mounts may be stacked there). */
export async function unmount(p: string): Promise<void> {
  for (let i = 0; i < 8 && (await isMountPoint(p)); i++) {
    const r = await run(['umount', p], { allowFailure: true });
    if (r.code !== 0) await run(['umount', '-l', p]);
  }
}

/**
 * Removes a directory tree without ever crossing into a mounted file system. Deleting through
 * a forgotten overlay mount would not remove its files but write a whiteout for each of them
 * into its upper layer, wherever that layer lives now (a snapshot's, say): so a tree with
 * something still mounted in it is refused, loudly, instead.
 */
export async function removeTree(dir: string): Promise<void> {
  if (!(await exists(dir))) return;
  await run(['rm', '-rf', '--one-file-system', '--', dir], { allowFailure: true });
  if (await exists(dir)) {
    const mounts = await run(['findmnt', '-rn', '-o', 'TARGET'], { allowFailure: true });
    const inside = mounts.stdout.split('\n').filter((m) => m === dir || m.startsWith(dir + '/'));
    throw new Error(`cannot remove ${dir}: still mounted under it: ${inside.join(', ') || '(unknown)'}`);
  }
}
