// runc's state of a container made ahead (a pool's), rewritten for the sandbox that takes it (pure).
import path from 'node:path';

/** What a container made ahead becomes when a sandbox takes it. */
export interface Adoption {
  /** The sandbox's id: the container's from now on. */
  id: string;
  /** The bundle directory it was made in (renamed since), and the sandbox's. */
  fromDir: string;
  toDir: string;
  hostname: string;
}

/** A cgroup directory named for the container (`/sys/fs/cgroup/<hierarchy>/.../<id>`). */
export function isOwnCgroup(cgroup: unknown, id: string): cgroup is string {
  return typeof cgroup === 'string' && cgroup.startsWith('/sys/fs/cgroup/') && path.basename(cgroup) === id && !cgroup.includes('/../');
}

/**
 * The name of the container's cgroups: its id, or the id it was made under (an adopted
 * container's, see adoptedState), as runc's state records it.
 */
export function cgroupNameOf(state: Record<string, unknown> | null): string {
  const cgroups = (state?.config as { cgroups?: { path?: unknown } } | undefined)?.cgroups;
  return typeof cgroups?.path === 'string' ? path.basename(cgroups.path) : String(state?.id ?? '');
}

/**
 * runc's state.json of the container as if runc had made it for the sandbox: its id, every path
 * under its old bundle directory (rootfs, bind sources, the bundle label, the CRIU configuration
 * annotation, hook arguments) under the sandbox's, its host name. Nothing else changes: the
 * init's pid and start time, the namespaces, the resources, the cgroups (they keep the name they
 * were made under). runc reads these at every later call (kill, checkpoint, delete).
 */
export function adoptedState(state: Record<string, unknown>, a: Adoption): Record<string, unknown> {
  const movePath = (s: string) => (s === a.fromDir ? a.toDir : s.startsWith(a.fromDir + '/') ? a.toDir + s.slice(a.fromDir.length) : s);
  const rewrite = (v: unknown): unknown => {
    if (typeof v === 'string') return v.replace(/(^|=)(\/[^\s]*)/g, (_m, lead: string, p: string) => lead + movePath(p));
    if (Array.isArray(v)) return v.map(rewrite);
    if (v && typeof v === 'object') return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, rewrite(x)]));
    return v;
  };
  const out = rewrite(state) as Record<string, unknown>;
  out.id = a.id;
  (out.config as Record<string, unknown>).hostname = a.hostname;
  return out;
}
