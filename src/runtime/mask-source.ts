import { mkdir } from 'node:fs/promises';
import { run } from './command.ts';
import { isMountPoint } from './fs-util.ts';

/**
 * What a restore binds over a sandbox's masked directories (/proc/acpi, /sys/firmware, ...):
 * one empty read-only tmpfs of the host's, mounted once (the agents of a host share it; /run
 * is emptied at boot). runc masks a directory with an empty read-only tmpfs of the sandbox's
 * own, which CRIU would pack with a tar process at each dump and unpack at each restore; kept
 * as external mounts instead (criuConfig), they come back as binds of this one.
 *
 * Its flags are exactly those of runc's masks (read-only, relatime; no nosuid, nodev or
 * noexec): CRIU remounts a bind with the dumped mount's flags, which in the sandbox's user
 * namespace may not clear a flag the source has. Read-only, owned by the host's root (unmapped
 * in a sandbox, so not even its root may write it), it hides what the tmpfs hid, and its root
 * is `/`: the sandbox's mount table names no host path. (Not under /run/nestbox, which is the
 * host root's alone: CRIU binds it as the sandbox's root, which must reach it.)
 */
export const MASK_SOURCE = '/run/nestbox-masked';

/** Mounts the mask source if it is not mounted yet; null (CRIU packs the masks as before) if it cannot be. */
export async function prepareMaskSource(dir = MASK_SOURCE): Promise<string | null> {
  if (await isMountPoint(dir)) return dir;
  await mkdir(dir, { recursive: true, mode: 0o755 });
  const r = await run(['mount', '-t', 'tmpfs', '-o', 'ro,relatime,mode=0555,size=4k,nr_inodes=2', 'nestbox-masked', dir], { allowFailure: true });
  if (r.code !== 0 && !(await isMountPoint(dir))) {
    process.stderr.write(`nestbox: the masked directories' source could not be mounted at ${dir} (${r.stderr.trim()}); CRIU packs them at each dump\n`);
    return null;
  }
  return dir;
}
