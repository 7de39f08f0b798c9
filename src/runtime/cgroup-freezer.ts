// A container's cgroup freezer, written directly: no runc process, and no wait in CRIU's steps.
// CRIU freezes a container itself when it finds it running, but checks for the frozen state in
// steps of 100 ms: a pause whose processes took a moment to stop lost 100 ms there (a third of
// its dump). Frozen here first, CRIU finds the cgroup frozen and dumps at once.
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { waitUntil } from './retry.ts';

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

/**
 * Freezes the cgroup for a CRIU dump, at a moment when none of its tasks waits for a vfork()ed
 * child to exec. Such a task sleeps in the kernel until its child execs, and if the freeze caught
 * the child before that, CRIU cannot stop the parent: it gives up after 10 s ("Unseizable
 * non-zombie ... state D"). A shell loop makes this common (dash vforks every command it runs:
 * 6 freezes in 8 caught one, and 13 pauses in 40 of `while :; do /bin/true; done` failed). Each
 * time one is found, the cgroup is thawed until those parents are out of the wait (their child
 * exec'd, within a ms), and frozen again; after VFORK_WAIT_MS of that it is left to CRIU. A node
 * whose kernel does not show wait channels finds none.
 */
export async function freezeForDump(f: Freezer): Promise<void> {
  const giveUpAt = performance.now() + VFORK_WAIT_MS;
  for (;;) {
    await freeze(f);
    const waiting = await vforkWaiters(f);
    if (waiting.length === 0 || performance.now() > giveUpAt) return;
    await thaw(f);
    await waitUntil(async () => (await Promise.all(waiting.map(inVforkWait))).every((w) => !w), { timeoutMs: 50, maxDelayMs: 1 });
  }
}

/** How long a freeze for a dump keeps trying to find no task in a vfork wait (freezeForDump). */
const VFORK_WAIT_MS = 1_000;

/** The kernel functions a task waiting for its vfork()ed child sleeps in (by kernel version). */
const VFORK_WAIT = new Set(['kernel_clone', 'wait_for_vfork_done', '_do_fork', 'do_fork']);

/** The tasks (threads) of the cgroup waiting for a vfork()ed child to exec. */
async function vforkWaiters(f: Freezer): Promise<string[]> {
  const list = await readFile(path.join(f.dir, f.version === 1 ? 'tasks' : 'cgroup.threads'), 'utf8').catch(() => '');
  const tids = list.split('\n').filter((t) => /^\d+$/.test(t));
  const waiting = await Promise.all(tids.map(inVforkWait));
  return tids.filter((_, i) => waiting[i]);
}

/** Whether the task sleeps in a vfork wait: its wait channel, which the kernel writes (no task can change it). */
async function inVforkWait(tid: string): Promise<boolean> {
  return VFORK_WAIT.has((await readFile(`/proc/${tid}/wchan`, 'utf8').catch(() => '')).trim());
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
