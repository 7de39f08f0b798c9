import { mkdir, readFile, rename, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { unescapeMountField } from './fs-util.ts';

/**
 * CRIU's cgroup yard: a directory with one entry per cgroup hierarchy, where CRIU finds each
 * hierarchy mounted. Without one, CRIU mounts every hierarchy of the host afresh at each dump
 * and each restore and unmounts them after (10-15 ms of a pause's dump, measured on a cgroup
 * v1 host with ten hierarchies). The node's yard is links to the hierarchies the host has
 * mounted already, made once at agent start; the sandboxes' CRIU configuration names it.
 *
 * CRIU names a hierarchy's entry after the controllers of /proc/<pid>/cgroup: `name=X` is
 * `X`, the cgroup v2 hierarchy (no controllers listed) is `unified`, any other is its
 * controller list as written there (`cpu,cpuacct`).
 */

export interface YardEntry {
  /** The entry's name in the yard, as CRIU looks it up. */
  name: string;
  /** Where the host has that hierarchy's root mounted. */
  mountPoint: string;
}

/**
 * The yard's entries for the hierarchies `procCgroup` (a /proc/<pid>/cgroup) lists, found in
 * `mountInfo` (a /proc/<pid>/mountinfo); null when one of them has no mount of its root (a
 * cgroup namespace, say): CRIU then mounts its own, as without a yard.
 */
export function yardEntries(procCgroup: string, mountInfo: string): YardEntry[] | null {
  const mounts = mountInfo.split('\n').filter(Boolean).map(parseMountInfoLine).filter((m) => m !== null);
  const entries: YardEntry[] = [];
  for (const line of procCgroup.split('\n').filter(Boolean)) {
    const fields = line.split(':');
    const controllers = fields[1];
    if (fields.length < 3 || controllers === undefined) return null;
    const wanted = controllers === '' ? null : controllers.split(',').sort().join(',');
    const mount = mounts.find((m) => m.root === '/' && (wanted === null ? m.fsType === 'cgroup2' : m.fsType === 'cgroup' && m.controllers === wanted));
    if (!mount) return null;
    const name = controllers === '' ? 'unified' : controllers.startsWith('name=') ? controllers.slice('name='.length) : controllers;
    if (name === '' || name.includes('/') || name === '.' || name === '..') return null;
    entries.push({ name, mountPoint: mount.mountPoint });
  }
  return entries.length > 0 ? entries : null;
}

interface CgroupMount {
  root: string;
  mountPoint: string;
  fsType: string;
  /** For cgroup v1: the hierarchy's controllers and name= of its super options, sorted. */
  controllers: string;
}

/** One line of mountinfo: `id parent major:minor root mountpoint options [optional...] - fstype source superoptions`. */
function parseMountInfoLine(line: string): CgroupMount | null {
  const [left, right] = line.split(' - ');
  if (!left || !right) return null;
  const l = left.split(' ');
  const [fsType, , superOptions = ''] = right.split(' ');
  if (fsType !== 'cgroup' && fsType !== 'cgroup2') return null;
  const controllers = superOptions
    .split(',')
    .filter((o) => !['rw', 'ro', 'nsdelegate', 'memory_recursiveprot', 'clone_children', 'noprefix', 'xattr', 'favordynmods', 'cpuset_v2_mode'].includes(o) && !o.startsWith('release_agent='))
    .sort()
    .join(',');
  return { root: unescapeMountField(l[3] ?? ''), mountPoint: unescapeMountField(l[4] ?? ''), fsType, controllers };
}

/**
 * Makes the node's yard at `dir` (replaced whole: an agent start sees the host's mounts as
 * they are now) and returns it; null when the host's hierarchies cannot all be found.
 */
export async function prepareCgroupYard(dir: string): Promise<string | null> {
  const entries = yardEntries(await readFile('/proc/self/cgroup', 'utf8'), await readFile('/proc/self/mountinfo', 'utf8'));
  await rm(dir, { recursive: true, force: true });
  if (!entries) return null;
  const staging = `${dir}.${process.pid}`;
  await rm(staging, { recursive: true, force: true });
  await mkdir(staging, { mode: 0o700 });
  for (const e of entries) await symlink(e.mountPoint, path.join(staging, e.name));
  await rename(staging, dir);
  return dir;
}
