// A sandbox's directories on the node: its bundle, its disk's layout, the files the node writes
// into it, and the overlay mount and OCI spec its container starts from (layout.ts has the map).
import { chmod, chown, copyFile, mkdir, readdir, rename, rmdir, symlink, unlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from './command.ts';
import type { RuntimeConfig } from './config.ts';
import { unmountDisk } from './disk.ts';
import { exists, isMountPoint, mountedAmong, removeTree, unmount } from './fs-util.ts';
import { sandboxPaths, type SandboxPaths } from './layout.ts';
import type { NetworkManager } from './network.ts';
import { buildOciSpec, MASKED_DIRECTORIES } from './oci-spec.ts';
import { hostResolvConf, sandboxFileContents, BOOT_ID_FILE, BOOT_ID_PATH, writeBootId, writeSandboxEnv, writeSandboxFiles, type SandboxFileHashes } from './sandbox-files.ts';
import type { SandboxRecord } from './sandbox-records.ts';

/** The sandbox's directory (the bundle), its rootfs mount point, and the name of its lower layer. */
export async function prepareDirs(p: SandboxPaths, lower: string) {
  // The sandbox's root (host uid `shift`) must be able to reach its rootfs and bind sources.
  await mkdir(p.dir, { recursive: true, mode: 0o711 });
  await mkdir(p.rootfs, { mode: 0o755 });
  await mkdir(p.disk, { mode: 0o711 });
  // The overlay names its lower layer by this link, so mountinfo shows "lower", not a host path.
  await symlink(lower, p.lowerLink);
}

/**
 * Lays out a mounted disk. The directories that name sandbox-writable ones (the disk's root,
 * etc/, init/) are host root's, so nothing inside can replace what the agent opens; the socket
 * directory starts empty at every start (a restored init binds its socket again).
 */
export async function prepareDisk(cfg: RuntimeConfig, p: SandboxPaths, o: { fresh: boolean; freshBoot: boolean; bootId: 'new' | 'keep' }) {
  const shift = cfg.uidShift;
  await chmod(p.disk, 0o711);
  if (o.fresh) {
    await mkdir(p.upper, { mode: 0o755 });
    await chown(p.upper, shift, shift);
  }
  // A disk converted from an old snapshot holds only its upper layer.
  await mkdir(p.work, { recursive: true, mode: 0o700 });
  await removeSocketDir(p.socketDir);
  await mkdir(p.socketDir, { mode: 0o700 });
  await chown(p.socketDir, shift, shift);
  await mkdir(p.initDir, { recursive: true, mode: 0o755 });
  if (o.freshBoot || !(await exists(p.initBinary))) {
    const staged = `${p.initBinary}.new`;
    await copyFile(cfg.initBinary, staged);
    await chmod(staged, 0o555);
    await rename(staged, p.initBinary);
  }
  await writeBootId(p.etcDir, { keep: o.bootId === 'keep' });
}

/**
 * The init's socket directory as a snapshot left it (a restored init binds its socket again in a
 * new one). Its contents are the sandbox's, but nothing of the sandbox runs now and the
 * directory itself is out of its reach (bound at /run/nestbox): its entries are unlinked one
 * by one (unlink never follows a link), in this process rather than by an rm process (one of
 * a resume's steps); a directory among them (the sandbox's own doing) leaves it all to rm.
 */
async function removeSocketDir(dir: string) {
  const entries = await readdir(dir, { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  if (!entries) return;
  if (entries.some((e) => e.isDirectory())) return removeTree(dir);
  await Promise.all(entries.map((e) => unlink(path.join(dir, e.name))));
  await rmdir(dir);
}

/**
 * /etc/hosts, hostname and resolv.conf of the sandbox (see sandbox-files.ts), and the sandbox's
 * variables (those of its create request) for programs started before them: a warm template's
 * server reads /etc/nestbox/env.json (read-only to the sandbox, rewritten at every start).
 */
export async function writeEtcFiles(cfg: RuntimeConfig, p: SandboxPaths, record: SandboxRecord, previous?: SandboxFileHashes) {
  const [, hashes] = await Promise.all([
    writeSandboxEnv(p.etcDir, record.envVars),
    hostResolvConf().then((resolv) => writeSandboxFiles(p.etcDir, sandboxFileContents(record.sandboxId, record.address, resolv), cfg.uidShift, previous)),
  ]);
  return hashes;
}

/**
 * The sandbox's CRIU configuration (runc passes it to CRIU at dump and restore, beside its own
 * options): the boot id bind is an external mount, recorded by a key at dump and bound again
 * from this node's file at restore. So are the masks of the masked directories: an empty
 * directory is all they hold, and CRIU would otherwise pack each one's tmpfs with a tar (and a
 * gzip) process at every dump and unpack it at every restore (9-17 ms each, measured). Each
 * line serves one direction; the other ignores it, as a dump ignores a mount it does not have.
 */
function criuConfig(p: SandboxPaths, host: BundleHost): string {
  const { maskSource, cgroupYard } = host;
  return [
    `ext-mount-map ${BOOT_ID_PATH}:${BOOT_ID_MOUNT_KEY}`,
    `ext-mount-map ${BOOT_ID_MOUNT_KEY}:${path.join(p.etcDir, BOOT_ID_FILE)}`,
    ...(maskSource ? MASKED_DIRECTORIES.flatMap((dir, i) => [`ext-mount-map ${dir}:${MASK_MOUNT_KEY}${i}`, `ext-mount-map ${MASK_MOUNT_KEY}${i}:${maskSource}`]) : []),
    // The node's hierarchies, mounted already (cgroup-yard.ts), instead of CRIU's own mounts.
    ...(cgroupYard ? [`cgroup-yard ${cgroupYard}`] : []),
    '',
  ].join('\n');
}
const BOOT_ID_MOUNT_KEY = 'nestbox-boot-id';
const MASK_MOUNT_KEY = 'nestbox-masked-';

/** The overlay (template below, the disk's upper layer above) at the rootfs: it needs only the laid-out disk. */
export async function mountRootfs(p: SandboxPaths) {
  // Relative names (from the bundle directory): the sandbox's mountinfo tells nothing of the host.
  const rel = (to: string) => path.relative(p.dir, to);
  await run(
    ['mount', '-t', 'overlay', 'overlay', '-o', `lowerdir=${rel(p.lowerLink)},upperdir=${rel(p.upper)},workdir=${rel(p.work)}`, rel(p.rootfs)],
    { cwd: p.dir },
  );
}

/** The node's mounts of a sandbox: the overlay first (its upper layer is on the disk), then the disk. */
export async function unmountSandbox(p: SandboxPaths) {
  // Both by one umount process, in that order (a process less on every kill and pause); what
  // it left, if anything, goes one by one below.
  const mounted = await mountedAmong([p.rootfs, p.disk]);
  const first = [p.rootfs, p.disk].filter((m) => mounted.has(m));
  if (first.length > 0) await run(['umount', ...first], { allowFailure: true });
  if ((await mountedAmong([p.rootfs, p.disk])).size === 0) return;
  await unmount(p.rootfs);
  if (await isMountPoint(p.rootfs)) throw new Error(`the root file system at ${p.rootfs} is still mounted; its disk stays where it is`);
  await unmountDisk(p.disk);
}

/** What of the node a sandbox's bundle names. */
export interface BundleHost {
  /** The network hook. */
  network: NetworkManager;
  /** CRIU's cgroup yard (none: CRIU mounts its own; cgroup-yard.ts). */
  cgroupYard: string | null;
  /** What a restore binds over the masked directories (none: CRIU packs their tmpfs; mask-source.ts). */
  maskSource: string | null;
}

/** The OCI spec, the sandbox's CRIU configuration and its record (the rootfs mounted or not yet). */
export async function writeBundle(cfg: RuntimeConfig, host: BundleHost, record: SandboxRecord) {
  await writeBundleAt(cfg, host, sandboxPaths(cfg, record.sandboxId), record);
}

/** writeBundle() into the directory `p` (a container made ahead's, record.sandboxId its own id). */
export async function writeBundleAt(cfg: RuntimeConfig, host: BundleHost, p: SandboxPaths, record: SandboxRecord) {
  const spec = buildOciSpec({
    sandboxId: record.sandboxId,
    rootfs: p.rootfs,
    initBinary: p.initBinary,
    socketDir: p.socketDir,
    etcDir: p.etcDir,
    networkHook: host.network.hook(record.address),
    bindHook: cfg.bindHook,
    criuConfig: p.criuConfig,
    resources: record.resources,
    uidShift: cfg.uidShift,
    uidRange: cfg.uidRange,
  });
  await Promise.all([
    writeFile(path.join(p.dir, 'config.json'), JSON.stringify(spec)),
    writeFile(p.criuConfig, criuConfig(p, host)),
    writeFile(p.record, JSON.stringify(record)),
  ]);
}
