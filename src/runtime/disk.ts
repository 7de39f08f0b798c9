import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, realpath, rename, rm, stat, statfs } from 'node:fs/promises';
import path from 'node:path';
import { run } from './command.ts';
import { isMountPoint } from './fs-util.ts';
import { waitUntil } from './retry.ts';

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

/**
 * Mount options: nothing on a sandbox's disk is a device or setuid for the host. No write
 * barriers: a flush of the sandbox's file system (its unmount at a pause, any fsync inside)
 * would reach the host as an fsync of the whole image, through the loop device, and wait for
 * everything else the host writes (a pause's unmount took up to 85 ms behind the sync of its
 * own memory image). Nothing depends on them: a running sandbox does not outlive a host crash,
 * and a pause syncs the image itself before it reports done.
 */
const MOUNT_OPTIONS = 'loop,nosuid,nodev,noatime,discard,barrier=0';

export async function createDisk(image: string, sizeMB: number, opts: { lowPriority?: boolean } = {}): Promise<void> {
  const f = await open(image, 'wx', 0o600);
  try {
    await f.truncate(sizeMB * 1024 * 1024);
  } finally {
    await f.close();
  }
  // No journal (a disk is unmounted cleanly before it moves, and a host crash loses the running
  // sandbox anyway), no reserved blocks (the sandbox gets the size it asked for), inode tables
  // initialised lazily (a new disk is a few hundred KiB of metadata).
  const mkfs = ['mkfs.ext4', '-q', '-F', '-O', '^has_journal', '-E', 'lazy_itable_init=1,nodiscard', '-m', '0', '-L', 'nestbox', image];
  await run(opts.lowPriority ? ['nice', '-n', '10', ...mkfs] : mkfs);
}

/**
 * A few new disks of the default size, made ahead (in the background, at low priority) so that
 * a create takes one instead of running mkfs on its way. A pooled disk is exactly what
 * createDisk makes (an image no sandbox ever mounted, with its own file system id): made
 * earlier, that is all. The pool is a directory of the node's data directory (the same file
 * system as the sandboxes', so a disk is taken by rename), emptied when the agent starts: a disk
 * half made by an agent that died is never handed out.
 */
export class DiskPool {
  private readonly ready: string[] = [];
  private making = 0;
  private started = false;

  constructor(
    private readonly dir: string,
    readonly sizeMB: number,
    private readonly size = 2,
  ) {}

  /** Empties the pool directory and starts filling it. */
  async start(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    this.ready.length = 0;
    this.started = true;
    this.refill();
  }

  /** Moves a pooled disk to `image` if one of `sizeMB` is ready; false if none is. */
  async take(image: string, sizeMB: number): Promise<boolean> {
    if (!this.started || sizeMB !== this.sizeMB) return false;
    const pooled = this.ready.shift();
    if (pooled === undefined) {
      this.refill();
      return false;
    }
    this.refill();
    try {
      await rename(pooled, image);
      return true;
    } catch {
      await rm(pooled, { force: true }).catch(() => undefined);
      return false;
    }
  }

  private refill() {
    while (this.started && this.ready.length + this.making < this.size) {
      this.making++;
      void this.makeOne().finally(() => this.making--);
    }
  }

  private async makeOne() {
    const name = randomBytes(6).toString('hex');
    const partial = path.join(this.dir, `.${name}.partial`);
    try {
      await createDisk(partial, this.sizeMB, { lowPriority: true });
      const image = path.join(this.dir, `${name}.img`);
      await rename(partial, image);
      this.ready.push(image);
    } catch (e) {
      await rm(partial, { force: true }).catch(() => undefined);
      // The pool stays short by one; creates make their own disk meanwhile.
      process.stderr.write(`nestbox: a pooled disk could not be made: ${e instanceof Error ? e.message : String(e)}\n`);
    }
  }
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
 *
 * `device`: the one loop device the disk was mounted from (loopDeviceOf(), read before the
 * unmount), so that only it is watched; otherwise every loop device of the node is read to find
 * the image's (a node keeps one per sandbox it ever ran at once: 200 reads took 5-14 ms).
 */
export async function waitForLoopDetach(image: string, o: { timeoutMs?: number; device?: string | null } = {}): Promise<boolean> {
  const { timeoutMs = 2_000, device } = o;
  const file = path.resolve(image);
  const devices = device ? [device] : await loopDevicesOf(file);
  if (devices === null) {
    // No sysfs: losetup, a process per check.
    return waitUntil(async () => {
      const r = await run(['losetup', '--noheadings', '-j', file], { allowFailure: true });
      return r.code === 0 && r.stdout.trim() === '';
    }, { timeoutMs, firstDelayMs: 2, maxDelayMs: 100 });
  }
  // Only the devices found attached are watched (a node has one per sandbox): each check is
  // one small read, so it is made often (the detach takes a few ms once the unmount is done).
  return waitUntil(async () => (await Promise.all(devices.map((n) => backingFileOf(n)))).every((b) => b !== file), { timeoutMs, firstDelayMs: 1, maxDelayMs: 4 });
}

/**
 * The loop device (`loopN`) of the disk `image` mounted at `mountPoint`, from the device number
 * of the mounted file system (a stat, and one sysfs read to check it is that image's); null when
 * `mountPoint` is not a mount of `image`. The mount point is the agent's own directory, and
 * sysfs is the kernel's.
 */
export async function loopDeviceOf(image: string, mountPoint: string): Promise<string | null> {
  const dev = (await stat(mountPoint, { bigint: true }).catch(() => null))?.dev;
  if (dev === undefined) return null;
  // Linux's dev_t encoding (glibc's gnu_dev_major/minor).
  const major = ((dev >> 8n) & 0xfffn) | ((dev >> 32n) & ~0xfffn);
  const minor = (dev & 0xffn) | ((dev >> 12n) & ~0xffn);
  const sys = `/sys/dev/block/${major}:${minor}`;
  const backing = (await readFile(`${sys}/loop/backing_file`, 'utf8').catch(() => '')).trim();
  if (backing !== path.resolve(image)) return null;
  const name = path.basename(await realpath(sys).catch(() => ''));
  return /^loop\d+$/.test(name) ? name : null;
}

/**
 * The loop devices attached to `file`, read from sysfs (what `losetup -j` reads, without a
 * process: a pause asks this right after its unmount); null where there is no sysfs.
 */
async function loopDevicesOf(file: string): Promise<string[] | null> {
  const all = await readdir('/sys/block').catch(() => null);
  if (!all) return null;
  const names = all.filter((n) => /^loop\d+$/.test(n));
  const backing = await Promise.all(names.map((n) => backingFileOf(n)));
  return names.filter((_, i) => backing[i] === file);
}

/** The file a loop device is attached to ('' once it is detached). */
async function backingFileOf(device: string): Promise<string> {
  return (await readFile(`/sys/block/${device}/loop/backing_file`, 'utf8').catch(() => '')).trim();
}

export interface DiskUsage {
  usedBytes: number;
  totalBytes: number;
}

export async function diskUsage(mountPoint: string): Promise<DiskUsage> {
  const s = await statfs(mountPoint);
  return { usedBytes: (s.blocks - s.bfree) * s.bsize, totalBytes: s.blocks * s.bsize };
}
