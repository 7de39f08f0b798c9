import { open, statfs } from 'node:fs/promises';
import { run } from './command.ts';
import { isMountPoint } from './fs-util.ts';

/**
 * A sandbox's disk: a sparse file holding an ext4 file system of the sandbox's disk size,
 * loop-mounted on the node. Its upper layer, socket directory and node-provided files live on
 * it, so a sandbox that fills it gets ENOSPC from its own file system and never touches the
 * host's; and the whole of what a sandbox wrote is one file, which pause moves into the
 * snapshot store and resume moves back, on any node.
 *
 * The sandbox only ever reaches the file system through the kernel (overlay and bind mounts of
 * directories on it); it never sees the image or the loop device, so the image's metadata is
 * always the kernel's own.
 */

/** Mount options: nothing on a sandbox's disk is a device or setuid for the host. */
const MOUNT_OPTIONS = 'loop,nosuid,nodev,noatime,discard';

export async function createDisk(image: string, sizeMB: number): Promise<void> {
  const f = await open(image, 'wx', 0o600);
  try {
    await f.truncate(sizeMB * 1024 * 1024);
  } finally {
    await f.close();
  }
  // No journal (a disk is unmounted cleanly before it moves, and a host crash loses the running
  // sandbox anyway), no reserved blocks (the sandbox gets the size it asked for), inode tables
  // initialised lazily (a new disk is a few hundred KiB of metadata).
  await run(['mkfs.ext4', '-q', '-F', '-O', '^has_journal', '-E', 'lazy_itable_init=1,nodiscard', '-m', '0', '-L', 'nestbox', image]);
}

export async function mountDisk(image: string, mountPoint: string): Promise<void> {
  await run(['mount', '-t', 'ext4', '-o', MOUNT_OPTIONS, image, mountPoint]);
}

/**
 * Unmounts a disk (its loop device detaches with it); a disk not mounted is fine. Never lazily:
 * a disk still mounted in the background would be written to after its image moved on.
 */
export async function unmountDisk(mountPoint: string): Promise<void> {
  for (let attempt = 0; await isMountPoint(mountPoint); attempt++) {
    const r = await run(['umount', mountPoint], { allowFailure: true });
    if (r.code === 0) continue;
    if (attempt >= 20) throw new Error(`cannot unmount the sandbox disk at ${mountPoint}: ${r.stderr.trim()}`);
    await new Promise((resolve) => setTimeout(resolve, 50)); // a file closing as its sandbox went away
  }
}

/**
 * Waits (up to `timeoutMs`) until no loop device is attached to `image`; false if one still is.
 * The kernel detaches a mount's loop device after the unmount returns and may write to the image
 * until then (the last discards punch holes): an image stored right away can change under its
 * reader ("tar: disk.img: file changed as we read it", seen in a chaos run). A loop device held
 * longer (the mount copied into another mount namespace that has not let go yet) is not waited
 * for: the store's retries cover the rare change then.
 */
export async function waitForLoopDetach(image: string, timeoutMs = 2_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  for (let delay = 2; ; delay = Math.min(delay * 2, 100)) {
    const r = await run(['losetup', '--noheadings', '-j', image], { allowFailure: true });
    if (r.code === 0 && r.stdout.trim() === '') return true;
    if (Date.now() > deadline) return false;
    await new Promise((resolve) => setTimeout(resolve, delay));
  }
}

export interface DiskUsage {
  usedBytes: number;
  totalBytes: number;
}

export async function diskUsage(mountPoint: string): Promise<DiskUsage> {
  const s = await statfs(mountPoint);
  return { usedBytes: (s.blocks - s.bfree) * s.bsize, totalBytes: s.blocks * s.bsize };
}
