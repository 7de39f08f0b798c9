// A container's cgroup freezer, written directly: no runc process, and no wait in CRIU's steps.
// CRIU freezes a container itself when it finds it running, but checks for the frozen state in
// steps of 100 ms: a pause whose processes took a moment to stop lost 100 ms there (a third of
// its dump). Frozen here first, CRIU finds the cgroup frozen and dumps at once.
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';

/** Where one container's freezer is: cgroup v1's freezer controller, or v2's core files. */
export interface Freezer {
  version: 1 | 2;
  dir: string;
}

const CGROUP_ROOT = '/sys/fs/cgroup/';
/** How long the processes may take to stop before the freeze is given up (and undone). */
const FREEZE_TIMEOUT_MS = 5_000;

/**
 * The freezer of a container, from the cgroup paths runc recorded in its state (v1: one per
 * controller; v2: the unified directory under the empty key). Null when none is recorded.
 */
export function freezerOf(cgroupPaths: Record<string, unknown> | undefined): Freezer | null {
  const v1 = cgroupPaths?.freezer;
  if (typeof v1 === 'string' && isCgroupDir(v1)) return { version: 1, dir: v1 };
  const v2 = cgroupPaths?.[''];
  if (typeof v2 === 'string' && isCgroupDir(v2)) return { version: 2, dir: v2 };
  return null;
}

function isCgroupDir(p: string): boolean {
  return path.isAbsolute(p) && path.normalize(p) === p && p.startsWith(CGROUP_ROOT);
}

/**
 * Freezes every process of the cgroup and resolves once the kernel reports them all frozen.
 * A freeze that does not complete in time is undone and thrown: the processes run on.
 */
export async function freeze(f: Freezer, timeoutMs = FREEZE_TIMEOUT_MS): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (let attempt = 0; ; attempt++) {
    // cgroup v1: a write of FROZEN also retries the tasks that a fork or a wake-up let slip
    // (the state can stay FREEZING for good otherwise); v2 keeps trying by itself.
    if (f.version === 1 || attempt === 0) await request(f, true);
    if (await isFrozen(f)) return;
    if (performance.now() > deadline) {
      await request(f, false);
      throw new Error(`the processes of ${f.dir} did not all stop within ${timeoutMs} ms; they were let go on`);
    }
    // The first checks come right away (most freezes take well under a ms), then every ms.
    if (attempt >= 3) await new Promise((r) => setTimeout(r, 1));
  }
}

/** Lets the cgroup's processes go on; nothing to do when it is not frozen or is gone. */
export async function thaw(f: Freezer): Promise<void> {
  await request(f, false).catch((e: NodeJS.ErrnoException) => {
    if (e.code !== 'ENOENT') throw e;
  });
}

export async function isFrozen(f: Freezer): Promise<boolean> {
  if (f.version === 1) return (await readFile(path.join(f.dir, 'freezer.state'), 'utf8')).trim() === 'FROZEN';
  return /^frozen 1$/m.test(await readFile(path.join(f.dir, 'cgroup.events'), 'utf8'));
}

async function request(f: Freezer, frozen: boolean) {
  if (f.version === 1) await writeFile(path.join(f.dir, 'freezer.state'), frozen ? 'FROZEN' : 'THAWED');
  else await writeFile(path.join(f.dir, 'cgroup.freeze'), frozen ? '1' : '0');
}
