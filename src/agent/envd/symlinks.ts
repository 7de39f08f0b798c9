// A symlink's target as envd reports it: the absolute path it resolves to (Go's
// filepath.EvalSymlinks), not the link's text. Resolved inside the sandbox, component by
// component, through the init's lstat: the agent never follows a sandbox's link on the host.
import path from 'node:path/posix';
import type { Entry } from '../../runtime/init/answers.ts';
import type { InitClient } from '../../runtime/init/client.ts';

// As the kernel's limit on links followed in one lookup.
const MAX_LINKS = 40;

/**
 * The absolute path `target` (the text of the link at `linkPath`) resolves to. Where the chain
 * cannot be followed (a missing component, a loop, a component the user may not see), the rest
 * is joined as it is: the answer stays absolute and as resolved as the sandbox allows.
 */
export async function resolveLinkTarget(init: InitClient, user: string, linkPath: string, target: string): Promise<string> {
  let pending = parts(path.resolve(path.dirname(linkPath), target));
  let resolved = '/';
  let links = 0;
  while (pending.length > 0) {
    const part = pending.shift()!;
    const next = path.join(resolved, part);
    let entry: Entry;
    try {
      entry = await init.stat(next, user);
    } catch {
      return path.join(next, ...pending);
    }
    if (entry.type !== 'symlink' || entry.symlink_target === null) {
      resolved = next;
      continue;
    }
    if (++links > MAX_LINKS) return path.join(next, ...pending);
    pending = [...parts(path.resolve(resolved, entry.symlink_target)), ...pending];
    resolved = '/';
  }
  return resolved;
}

const parts = (abs: string) => abs.split('/').filter(Boolean);

/** The entry with its symlink target resolved (entries that are not links are returned as they are). */
export async function withResolvedTarget(init: InitClient, user: string, e: Entry): Promise<Entry> {
  if (e.type !== 'symlink' || e.symlink_target === null) return e;
  return { ...e, symlink_target: await resolveLinkTarget(init, user, e.path, e.symlink_target) };
}
