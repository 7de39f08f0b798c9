import { randomBytes } from 'node:crypto';
import { lstat, readdir, readFile, rename } from 'node:fs/promises';
import path from 'node:path';
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
  return new Set((await mountPoints()).filter((m) => wanted.has(m)));
}

/** What is mounted at `dir` (absolute, without links) or anywhere below it. */
async function mountedUnder(dir: string): Promise<string[]> {
  return (await mountPoints()).filter((m) => m === dir || m.startsWith(`${dir}/`));
}

/** The mount points of this process's mount table. */
async function mountPoints(): Promise<string[]> {
  const out: string[] = [];
  for (const line of (await readFile('/proc/self/mountinfo', 'utf8')).split('\n')) {
    // id parent major:minor root MOUNT-POINT options ... (octal escapes for space, tab, newline, backslash)
    const field = line.split(' ')[4];
    if (field !== undefined) out.push(unescapeMountField(field));
  }
  return out;
}

/** A path field of mountinfo as it is (mountinfo writes space, tab, newline and backslash as octal escapes). */
export function unescapeMountField(f: string): string {
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
 * something still mounted in it is refused, loudly, instead. The mount table is read first:
 * rm's --one-file-system compares devices, and a bind mount from the same file system has the
 * same one (rm would delete through it); it stays as the guard for a mount made meanwhile.
 */
export async function removeTree(dir: string): Promise<void> {
  if (!(await exists(dir))) return;
  const refuse = (inside: string[]) => new Error(`cannot remove ${dir}: still mounted under it: ${inside.join(', ') || '(unknown)'}`);
  const before = await mountedUnder(path.resolve(dir));
  if (before.length > 0) throw refuse(before);
  await run(['rm', '-rf', '--one-file-system', '--', dir], { allowFailure: true });
  if (await exists(dir)) throw refuse(await mountedUnder(path.resolve(dir)));
}

/** The name prefix of a tree discardTree() moved aside, until it is removed. */
const DISCARDED_PREFIX = '.discarded-';

/**
 * Takes a directory tree out of the way at once: renamed beside itself (the same file system,
 * so one rename), then removed in the background as removeTree() would. The path is free when
 * this resolves. A removal cut short leaves a `.discarded-*` directory, which
 * removeDiscarded() of its parent takes; a removal that fails is reported, never thrown.
 */
export async function discardTree(dir: string): Promise<void> {
  if (!(await exists(dir))) return;
  const aside = path.join(path.dirname(dir), `${DISCARDED_PREFIX}${path.basename(dir)}-${randomBytes(4).toString('hex')}`);
  await rename(dir, aside);
  void removeTree(aside).catch((e: unknown) => {
    process.stderr.write(`nestbox: ${aside} (discarded) was not removed: ${e instanceof Error ? e.message : String(e)}\n`);
  });
}

/**
 * Removes the trees discardTree() left in `parent` (a removal cut short); returns the names of
 * those removed. One that cannot go (something still mounted in it) is reported and left.
 */
export async function removeDiscarded(parent: string): Promise<string[]> {
  const removed: string[] = [];
  for (const name of (await readdir(parent).catch(() => [] as string[])).filter((n) => n.startsWith(DISCARDED_PREFIX))) {
    try {
      await removeTree(path.join(parent, name));
      removed.push(name);
    } catch (e) {
      process.stderr.write(`nestbox: ${path.join(parent, name)} (discarded) was not removed: ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }
  return removed;
}
