import { chmod, mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { constants } from 'node:fs';
import path from 'node:path';
import { isSnapshotKey } from '../core/ids.ts';
import { run } from './command.ts';
import { followCheckpointDump, type DumpFollower } from './checkpoint-hasher.ts';
import { exists, moveTree } from './fs-util.ts';
import {
  ChecksumError, hashObject, localSnapshot, MANIFEST, objectsOf, parseManifest,
  type IncompleteSnapshot, type Manifest, type ManifestEntry, type ObjectName, type SnapshotStore,
} from './snapshot-store.ts';

/**
 * Snapshots as directories under one root (`NESTBOX_SNAPSHOT_DIR`), shared by the nodes that
 * share that file system: `<root>/<id>/` holds snapshot.json, checkpoint/, disk.img as pause
 * staged them, plus manifest.json (snapshot.json's sha256; of the checkpoint and the disk, the
 * listing of their files' names, modes, owners and sizes: see listing-digest.ts). A put writes
 * the manifest into the staging directory and renames it into place, so a snapshot appears
 * whole or not at all; resume restores from the directory in place (no copy), once the listings
 * check out, and a copy out (`get`) is verified whole.
 */
/** A deleted snapshot's directory while its files are removed (see delete()). */
const TRASH_PREFIX = '.deleted-';

export class DirectorySnapshotStore implements SnapshotStore {
  readonly description: string;
  /** prestage()'s work, by staging directory: each object's manifest entry, once hashed and synced. */
  private readonly headStarts = new Map<string, Map<ObjectName, Promise<ManifestEntry>>>();
  /** followDump()'s follows, by staging directory, until prestage() of the checkpoint takes them. */
  private readonly follows = new Map<string, DumpFollower>();

  constructor(readonly root: string) {
    this.description = `directory ${root}`;
  }

  dir(id: string): string {
    if (!isSnapshotKey(id)) throw new Error(`invalid snapshot id "${id}"`);
    return path.join(this.root, id);
  }

  localPath(id: string): string {
    return this.dir(id);
  }

  /** Snapshots written before manifests existed (a final name, a snapshot.json) are sealed. */
  async prepare(): Promise<void> {
    await mkdir(this.root, { recursive: true, mode: 0o711 });
    // Deleted snapshots whose removal was cut short (here or on a node sharing the directory).
    for (const name of await readdir(this.root).catch(() => [] as string[])) {
      if (name.startsWith(TRASH_PREFIX)) await rm(path.join(this.root, name), { recursive: true, force: true });
    }
    for (const name of await this.names()) {
      const l = localSnapshot(path.join(this.root, name));
      if (!(await exists(l.manifest)) && (await exists(l.meta))) {
        // A shared directory: another node may be deleting this snapshot right now (its manifest
        // goes first, so it looks unsealed). One that vanished is not sealed; it is not an error
        // (an agent restarting next to such a delete failed to start: the chaos fleet run).
        await this.seal(name, l.dir).catch(async (e) => {
          if (await exists(l.meta)) throw e;
          await rm(path.join(l.dir, `.${MANIFEST}.tmp`), { force: true });
        });
      }
    }
  }

  /**
   * While CRIU dumps into the staging's images: they are sent to the disk as they are written
   * (a thread follows them), so that once the dump is over the checkpoint's head start
   * (prestage) finds little left to sync.
   */
  followDump(staging: string): { abandon(): void } {
    const key = path.resolve(staging);
    const follow = followCheckpointDump(localSnapshot(staging).images);
    this.follows.get(key)?.abandon();
    this.follows.set(key, follow);
    return {
      abandon: () => {
        follow.abandon();
        if (this.follows.get(key) === follow) this.follows.delete(key);
      },
    };
  }

  discard(staging: string): void {
    const key = path.resolve(staging);
    this.follows.get(key)?.abandon();
    this.follows.delete(key);
    this.headStarts.delete(key);
  }

  prestage(staging: string, name: ObjectName): void {
    const key = path.resolve(staging);
    let started = this.headStarts.get(key);
    if (!started) this.headStarts.set(key, (started = new Map()));
    const follow = name === 'checkpoint' ? this.follows.get(key) : undefined;
    if (follow) this.follows.delete(key);
    const hashed = (follow?.finish() ?? Promise.resolve(null)).then(() => entryOf(staging, name));
    const entry = Promise.all([hashed, syncObject(staging, name)]).then(([e]) => e);
    entry.catch(() => undefined); // seal() hashes the object itself then
    started.set(name, entry);
  }

  async put(id: string, staging: string): Promise<void> {
    const final = this.dir(id);
    if (await exists(final)) throw new Error(`snapshot ${id} already exists`);
    await this.seal(id, staging);
    this.headStarts.delete(path.resolve(staging));
    await moveTree(staging, final);
    await fsyncDir(this.root);
  }

  async get(id: string, into: string): Promise<void> {
    const src = this.dir(id);
    const manifest = await this.manifest(id);
    if (!manifest) throw new Error(`no complete snapshot ${id}`);
    await this.verify(id, src, manifest);
    const tmp = `${into}.partial-${randomBytes(4).toString('hex')}`;
    try {
      // cp keeps the holes of the disk (it seeks over them) and the images' owners and modes.
      await run(['cp', '-a', '--sparse=always', '--', src, tmp]);
      await rename(tmp, into);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  /**
   * Restores in place: the snapshot's files must be those its manifest lists (the listings of
   * digest "sizes", a few stat calls; older manifests' content digests are not computed here).
   */
  async open(id: string, local: string): Promise<void> {
    if (path.resolve(local) !== path.resolve(this.dir(id))) throw new Error(`the directory store restores ${id} in place, not at ${local}`);
    const manifest = await this.manifest(id);
    if (!manifest) throw new Error(`no complete snapshot ${id}`);
    await this.verify(id, local, { ...manifest, objects: manifest.objects.filter((o) => o.digest === 'sizes') });
  }

  /** The disk was mounted by the resume that gave it back: its bytes changed, so it is sealed anew. */
  async close(id: string, local: string): Promise<void> {
    if (path.resolve(local) !== path.resolve(this.dir(id))) return;
    if (await exists(localSnapshot(local).meta)) await this.seal(id, local);
  }

  async meta(id: string): Promise<unknown | null> {
    if (!(await this.exists(id))) return null;
    try {
      return JSON.parse(await readFile(localSnapshot(this.dir(id)).meta, 'utf8'));
    } catch {
      return null;
    }
  }

  async exists(id: string): Promise<boolean> {
    return isSnapshotKey(id) && exists(path.join(this.dir(id), MANIFEST));
  }

  async list(): Promise<string[]> {
    const out: string[] = [];
    for (const name of await this.names()) if (await exists(path.join(this.root, name, MANIFEST))) out.push(name);
    return out;
  }

  async listIncomplete(): Promise<IncompleteSnapshot[]> {
    const out: IncompleteSnapshot[] = [];
    for (const name of await this.names()) {
      const dir = path.join(this.root, name);
      if (await exists(path.join(dir, MANIFEST))) continue;
      let modifiedAt = (await stat(dir)).mtime;
      for (const entry of await readdir(dir).catch(() => [] as string[])) {
        const m = (await stat(path.join(dir, entry)).catch(() => null))?.mtime;
        if (m && m > modifiedAt) modifiedAt = m;
      }
      out.push({ id: name, modifiedAt });
    }
    return out;
  }

  /**
   * The manifest goes first (the snapshot is no longer complete), then the directory is renamed
   * out of the way (its id is free at once) and its files are removed in the background: freeing
   * a memory image's blocks takes a resume tens of ms otherwise. A removal cut short leaves a
   * `.deleted-*` directory, which no reader takes for a snapshot and prepare() removes.
   */
  async delete(id: string): Promise<void> {
    const dir = this.dir(id);
    await rm(path.join(dir, MANIFEST), { force: true });
    const trash = path.join(this.root, `${TRASH_PREFIX}${randomBytes(6).toString('hex')}`);
    try {
      await rename(dir, trash);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return;
      await rm(dir, { recursive: true, force: true });
      return;
    }
    void rm(trash, { recursive: true, force: true }).catch((e) => {
      process.stderr.write(`nestbox: a deleted snapshot's files (${trash}) were not all removed: ${e instanceof Error ? e.message : String(e)}\n`);
    });
  }

  /** The store is the local snapshot directory: its staging is the runtime's to repair. */
  async cleanLocal(): Promise<string[]> {
    return [];
  }

  /** The manifest of a complete snapshot, or null. */
  async manifest(id: string): Promise<Manifest | null> {
    const text = await readFile(path.join(this.dir(id), MANIFEST), 'utf8').catch(() => null);
    return text === null ? null : parseManifest(text, id);
  }

  /** Every object of the manifest, hashed again from the directory. */
  async verify(id: string, dir: string, manifest: Manifest): Promise<void> {
    for (const want of manifest.objects) {
      const got = await hashObject(dir, want.name, want.digest ? { digest: want.digest } : {}).catch(() => ({ sha256: 'missing', size: -1 }));
      if (got.sha256 !== want.sha256 || got.size !== want.size) throw new ChecksumError(id, want.name, want.sha256, got.sha256);
    }
  }

  /**
   * Writes the manifest of a local snapshot directory (atomically, durably): what it vouches
   * for is on disk first, so that a host that crashes after a pause reported done still has
   * the snapshot the manifest describes.
   */
  private async seal(id: string, dir: string): Promise<void> {
    const started = this.headStarts.get(path.resolve(dir));
    // The objects side by side, each hashed and its files synced; an object whose head start
    // (prestage) succeeded is both already. The manifest waits for all.
    const objects = await Promise.all((await objectsOf(dir)).map(async (name) => {
      const early = await started?.get(name)?.catch(() => undefined);
      if (early) return early;
      const [entry] = await Promise.all([entryOf(dir, name), syncObject(dir, name)]);
      return entry;
    }));
    const manifest: Manifest = { version: 1, id, createdAt: new Date().toISOString(), objects };
    const tmp = path.join(dir, `.${MANIFEST}.tmp`);
    const f = await open(tmp, 'w', 0o600);
    try {
      await f.writeFile(JSON.stringify(manifest));
      await f.sync();
    } finally {
      await f.close();
    }
    await rename(tmp, path.join(dir, MANIFEST));
    await chmod(dir, 0o711).catch(() => undefined);
    await fsyncDir(dir);
  }

  private async names(): Promise<string[]> {
    return (await readdir(this.root).catch(() => [] as string[])).filter(isSnapshotKey);
  }
}

/**
 * The manifest entry this store writes for an object of a local snapshot: the checkpoint's and
 * the disk's digest is their files' listing, snapshot.json's its own.
 */
function entryOf(dir: string, name: ObjectName): Promise<ManifestEntry> {
  return hashObject(dir, name, name === 'snapshot.json' ? {} : { digest: 'sizes' });
}

/** Image files synced at once by a head start (the thread pool has 4 threads by default). */
const SYNC_BATCH = 3;

/** fsync of one object's files (the checkpoint's images and their directory, or the disk image). */
async function syncObject(dir: string, name: ObjectName) {
  const l = localSnapshot(dir);
  if (name === 'snapshot.json') return syncFile(l.meta);
  if (name === 'disk') return syncFile(l.diskImage);
  // A few at a time: a head start runs beside the rest of a pause, whose file operations need
  // the thread pool too. (The memory images, the bulk, were synced while the dump ran: see
  // followDump; what is left is small, and fsyncs at once share the file system's commits.)
  const files = await readdir(l.images);
  for (let i = 0; i < files.length; i += SYNC_BATCH) {
    await Promise.all(files.slice(i, i + SYNC_BATCH).map((f) => syncFile(path.join(l.images, f))));
  }
  await fsyncDir(l.images);
}

/** fsync of a file opened without following links. */
async function syncFile(file: string) {
  const f = await open(file, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  try {
    await f.sync();
  } finally {
    await f.close();
  }
}

async function fsyncDir(dir: string) {
  const f = await open(dir, 'r');
  try {
    await f.sync();
  } finally {
    await f.close();
  }
}
