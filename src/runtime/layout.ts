import path from 'node:path';
import type { RuntimeConfig } from './config.ts';

/**
 * Where one sandbox's pieces live on the node. Everything the sandbox can write lives on its own
 * disk (an ext4 image, mounted at `disk`), whose size is the sandbox's disk limit:
 *
 *   sandboxes/<id>/            root, 0711: the OCI bundle (config.json), sandbox.json, logs
 *     lower -> <template>      what the overlay's lowerdir names (no host path in mountinfo)
 *     disk.img                 the sandbox's disk
 *     disk/                    its mount point; the file system's root is host root's, 0711
 *       upper/ work/           the overlay's upper and work directories
 *       run/                   the init's socket directory, bound at /run/nestbox (sandbox-writable)
 *       etc/                   hosts, hostname, resolv.conf: bound over the sandbox's own (host root's dir);
                              env.json and boot_id, host root's files bound read-only
 *       init/nestbox-init      the init binary this sandbox runs, bound read-only
 *     rootfs/                  the overlay mount
 *
 * Only `disk/upper`, `disk/run` and the three files in `disk/etc` are writable from inside; the
 * directories that name them are host root's, so no path the agent resolves can be redirected.
 */
export function sandboxPaths(cfg: RuntimeConfig, id: string) {
  return sandboxPathsAt(path.join(cfg.dataDir, 'sandboxes', id));
}

/** The same layout under any directory (a pooled one, laid out before it is a sandbox's). */
export function sandboxPathsAt(dir: string) {
  const disk = path.join(dir, 'disk');
  return {
    dir, // also the OCI bundle: config.json lives here
    record: path.join(dir, 'sandbox.json'),
    lowerLink: path.join(dir, 'lower'),
    diskImage: path.join(dir, 'disk.img'),
    disk,
    upper: path.join(disk, 'upper'),
    work: path.join(disk, 'work'),
    socketDir: path.join(disk, 'run'),
    socket: path.join(disk, 'run', 'init.sock'),
    etcDir: path.join(disk, 'etc'),
    initDir: path.join(disk, 'init'),
    initBinary: path.join(disk, 'init', 'nestbox-init'),
    rootfs: path.join(dir, 'rootfs'),
    runcLog: path.join(dir, 'runc.log'),
    criuWork: path.join(dir, 'criu-work'),
    /**
     * Written by a kill once the container's processes and the mounts are gone, before it
     * answers; runc's record, the network and the directory go after the answer. One found at
     * agent start is a kill's remains (recovery).
     */
    killedMarker: path.join(dir, 'killed'),
    /** CRIU's configuration for this sandbox (the boot id mount). */
    criuConfig: path.join(dir, 'criu.conf'),
  };
}
export type SandboxPaths = ReturnType<typeof sandboxPaths>;

/** A snapshot: CRIU images (memory) and the disk (files) of a paused sandbox. */
export function snapshotPaths(cfg: RuntimeConfig, id: string, dirName = id) {
  return snapshotFiles(path.join(cfg.snapshotDir, dirName));
}

/** The files of a snapshot directory wherever it is. */
export function snapshotFiles(dir: string) {
  return {
    dir,
    meta: path.join(dir, 'snapshot.json'),
    images: path.join(dir, 'checkpoint'),
    diskImage: path.join(dir, 'disk.img'),
    /** Snapshots made before sandboxes had their own disk hold the upper layer as a directory. */
    legacyUpper: path.join(dir, 'upper'),
  };
}

export type SnapshotFiles = ReturnType<typeof snapshotFiles>;

export function templateRootfs(cfg: RuntimeConfig, template: string) {
  return path.join(cfg.templatesDir, template, 'rootfs');
}
