import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir } from 'node:fs/promises';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import path from 'node:path';
import { hashCheckpointHere, hashCheckpointOffThread } from './checkpoint-hasher.ts';
import { run } from './command.ts';
import { exists } from './fs-util.ts';
import { sizesDigest } from './listing-digest.ts';
// Implementations (they import this file's helpers; nothing of theirs runs at load time).
import { DirectorySnapshotStore } from './directory-snapshot-store.ts';
import { S3SnapshotStore, type S3StoreConfig } from './s3-snapshot-store.ts';

/**
 * Where paused sandboxes are kept. A snapshot is what pause staged in a local directory:
 *
 *   snapshot.json     the SnapshotRecord (the sandbox's record, memory or not, when)
 *   checkpoint/       CRIU's images (only with memory), owned by the sandbox's mapped root
 *   disk.img          the sandbox's disk, a sparse ext4 image
 *
 * and is stored as (at most) three objects: `snapshot.json`, `checkpoint` and `disk`, the
 * last two being the canonical tar streams of the directory and of the image (GNU tar, names
 * sorted, mtimes zeroed, numeric owners, the disk `--sparse`: its holes are not stored). The
 * names of multipart objects carry no dot: radosgw's POSIX driver (the local test server)
 * loses multipart uploads of keys with one. A snapshot is complete only once its manifest (a
 * digest and size of every object: see ManifestEntry) is written, and it is written last;
 * readers ignore snapshots without one, a download checks every object against it before it
 * is unpacked, and a restore in place checks the listings it holds.
 *
 * Two implementations: the directory store (directory-snapshot-store.ts; a directory, shared
 * between nodes when they share a file system; the runtime restores from it in place) and the
 * S3 store (s3-snapshot-store.ts; any S3-compatible object store; the runtime downloads a
 * snapshot into its local snapshot directory to restore it).
 */
export interface SnapshotStore {
  /** For logs: where snapshots go. */
  readonly description: string;
  /** At agent start: the bucket exists (S3); snapshots older than manifests get one (directory). */
  prepare(): Promise<void>;
  /**
   * Stores the snapshot staged in the local directory `staging` under `id`, manifest last, and
   * consumes the staging directory. When this resolves the snapshot is complete and durable;
   * when it rejects no complete snapshot of `id` was made (the staging directory stays).
   */
  put(id: string, staging: string): Promise<void>;
  /**
   * Optional head start on a later `put` of `staging`: its object `name` is complete and will
   * not change any more (a pause's checkpoint once handed over, its disk once moved in), so the
   * store may hash it and sync it to disk now, beside the rest of the pause; `put` then uses
   * what it found (and does all of it itself when this found nothing, or failed).
   */
  prestage?(staging: string, name: ObjectName): void;
  /**
   * Optional head start on the checkpoint, earlier still: called when CRIU starts to dump into
   * `staging`'s images (the store may sync them as they are written); `abandon` when the dump
   * failed. The checkpoint's `prestage` follows once the dump is over.
   */
  followDump?(staging: string): { abandon(): void };
  /** The caller gives up on `staging` (it removes it): whatever head start the store keeps for it goes. */
  discard?(staging: string): void;
  /**
   * Where a complete snapshot can be read in place (the directory store), or null (it must be
   * fetched with `get`). What is there must not be changed.
   */
  localPath?(id: string): string | null;
  /** Copies (downloads) a complete snapshot into the new local directory `into`, verified. */
  get(id: string, into: string): Promise<void>;
  /**
   * Resume's view: makes the snapshot whole and readable at `local` (the runtime's
   * `<snapshotDir>/<id>`): the directory store restores from its own directory in place, the
   * S3 store downloads it there (verified).
   */
  open(id: string, local: string): Promise<void>;
  /**
   * A resume that opened the snapshot did not consume it and `local` holds it whole again: the
   * directory store records its (remounted) disk in a new manifest, the S3 store drops the
   * download (the stored snapshot never changed).
   */
  close(id: string, local: string): Promise<void>;
  /** The snapshot.json of a complete snapshot, or null. */
  meta(id: string): Promise<unknown | null>;
  exists(id: string): Promise<boolean>;
  /** Ids of complete snapshots. */
  list(): Promise<string[]>;
  /**
   * Snapshots with stored objects but no manifest: puts cut short, deletes half done, or a put in
   * progress right now (hence the time of its last change: collect only old ones).
   */
  listIncomplete(): Promise<IncompleteSnapshot[]>;
  /** Removes a snapshot, manifest first (so it is never seen complete with objects missing). */
  delete(id: string): Promise<void>;
  /**
   * At agent start, after the runtime's own repairs: what is left in the local snapshot
   * directory that no store holds any more (S3: downloads and staging of this node). Returns
   * one line per removal.
   */
  cleanLocal(localRoot: string, isLive: (id: string) => Promise<boolean>): Promise<string[]>;
}

export interface IncompleteSnapshot {
  id: string;
  /** When one of its objects was last written. */
  modifiedAt: Date;
}

/**
 * For the reconciler: deletes the incomplete snapshots not changed for `graceMs` (a put in
 * progress on some node is younger than that). Returns one line per snapshot deleted.
 */
export async function collectIncomplete(store: SnapshotStore, graceMs: number, now = Date.now()): Promise<string[]> {
  const notes: string[] = [];
  for (const s of await store.listIncomplete()) {
    if (now - s.modifiedAt.getTime() < graceMs) continue;
    await store.delete(s.id);
    notes.push(`${s.id}: incomplete snapshot (no manifest, last written ${s.modifiedAt.toISOString()}) deleted`);
  }
  return notes;
}

export const MANIFEST = 'manifest.json';
export const OBJECT_NAMES = ['snapshot.json', 'checkpoint', 'disk'] as const;
export type ObjectName = (typeof OBJECT_NAMES)[number];

export interface ManifestEntry {
  name: ObjectName;
  sha256: string;
  size: number;
  /**
   * What `sha256` digests. Absent: the object's canonical stream (what a store uploads and a
   * download checks). "sizes", for the directory store's checkpoint and disk (kept unpacked and
   * restored in place): a listing of its files' names, modes, owners and sizes, checked at every
   * resume (listing-digest.ts). "files", of the directory store's checkpoints paused before
   * that: each image's own sha256, listed (checkpoint-digest.mjs).
   */
  digest?: 'files' | 'sizes';
}

export interface Manifest {
  version: 1;
  id: string;
  createdAt: string;
  objects: ManifestEntry[];
}

/** A manifest that is not one (a snapshot with it is not complete). */
export class MalformedManifest extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'MalformedManifest';
  }
}

export function parseManifest(text: string, id: string): Manifest {
  let m: Manifest;
  try {
    m = JSON.parse(text) as Manifest;
  } catch {
    throw new MalformedManifest(`snapshot ${id}: malformed manifest (not JSON)`);
  }
  if (m?.version !== 1 || m.id !== id || !Array.isArray(m.objects)) throw new MalformedManifest(`snapshot ${id}: malformed manifest`);
  for (const o of m.objects) {
    if (!OBJECT_NAMES.includes(o.name) || !/^[0-9a-f]{64}$/.test(o.sha256) || !Number.isSafeInteger(o.size)
      || (o.digest !== undefined && !(o.digest === 'files' && o.name === 'checkpoint') && !(o.digest === 'sizes' && o.name !== 'snapshot.json'))) {
      throw new MalformedManifest(`snapshot ${id}: malformed manifest entry ${JSON.stringify(o)}`);
    }
  }
  if (!m.objects.some((o) => o.name === 'snapshot.json')) throw new MalformedManifest(`snapshot ${id}: manifest without snapshot.json`);
  return m;
}

export class ChecksumError extends Error {
  constructor(id: string, name: string, want: string, got: string) {
    super(`snapshot ${id}: ${name} fails its checksum (manifest ${want.slice(0, 12)}…, stored ${got.slice(0, 12)}…)`);
    this.name = 'ChecksumError';
  }
}

/** The local pieces of a staged or downloaded snapshot. */
export function localSnapshot(dir: string) {
  return {
    dir,
    meta: path.join(dir, 'snapshot.json'),
    images: path.join(dir, 'checkpoint'),
    diskImage: path.join(dir, 'disk.img'),
    manifest: path.join(dir, MANIFEST),
  };
}

/** The objects a local snapshot directory makes (the checkpoint only when it has one). */
export async function objectsOf(dir: string): Promise<ObjectName[]> {
  const l = localSnapshot(dir);
  const out: ObjectName[] = ['snapshot.json'];
  if (await exists(l.images)) out.push('checkpoint');
  if (await exists(l.diskImage)) out.push('disk');
  return out;
}

/**
 * The canonical byte stream of one object of a local snapshot: snapshot.json as it is, the
 * checkpoint directory and the disk as tar streams (the disk sparse: a 2 GiB image holding a
 * few MiB packs to a few MiB, and tar finds the holes with SEEK_HOLE instead of reading them).
 * Deterministic, so that the directory store can check a snapshot it keeps unpacked.
 */
export function objectStream(dir: string, name: ObjectName): { stream: Readable; done: Promise<void> } {
  if (name === 'snapshot.json') {
    const stream = createReadStream(path.join(dir, 'snapshot.json'));
    return { stream, done: Promise.resolve() };
  }
  const member = packedMember(name);
  const child = spawn('tar', packArgs(dir, name), { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`tar of ${member} failed (${code}): ${stderr.trim()}`))));
  });
  done.catch(() => undefined); // observed by whoever awaits it
  return { stream: child.stdout, done };
}

/** The entry of a local snapshot directory that the checkpoint or the disk object packs. */
function packedMember(name: 'checkpoint' | 'disk'): string {
  return name === 'checkpoint' ? 'checkpoint' : 'disk.img';
}

/** tar's arguments for the canonical stream of the checkpoint or the disk (to its stdout). */
function packArgs(dir: string, name: 'checkpoint' | 'disk'): string[] {
  return ['-C', dir, '--sort=name', '--mtime=@0', '--numeric-owner', '--format=gnu', ...(name === 'disk' ? ['--sparse'] : []), '-cf', '-', '--', packedMember(name)];
}

/** A pass-through that hashes and counts what goes through it. */
export function hashing(): Transform & { digest: () => { sha256: string; size: number } } {
  const h = createHash('sha256');
  let size = 0;
  const t = new Transform({
    transform(chunk: Buffer, _enc, cb) {
      h.update(chunk);
      size += chunk.length;
      cb(null, chunk);
    },
  }) as Transform & { digest: () => { sha256: string; size: number } };
  let hex: string | undefined;
  t.digest = () => ({ sha256: (hex ??= h.digest('hex')), size });
  return t;
}

/**
 * The manifest entry of one object of a local snapshot: the digest of its canonical stream; with
 * `digest: 'sizes'` (the checkpoint or the disk), its files' listing; with `digest: 'files'`
 * (the checkpoint), its images' listed digests.
 */
export async function hashObject(dir: string, name: ObjectName, opts: { digest?: 'files' | 'sizes' } = {}): Promise<ManifestEntry> {
  if (opts.digest === 'sizes' && name !== 'snapshot.json') return { name, ...(await sizesDigest(dir, name)), digest: 'sizes' };
  if (name === 'checkpoint') {
    // In a thread of its own: a whole memory image is hashed meanwhile the agent goes on.
    const digest = opts.digest === 'files' ? 'files' : 'stream';
    const entry = await hashCheckpointOffThread(dir, { digest });
    if (entry) return entry;
    if (digest === 'files') return hashCheckpointHere(dir);
  }
  if (name === 'snapshot.json') {
    const { stream } = objectStream(dir, name);
    const h = hashing();
    await pipeline(stream, h, async function* (source) {
      for await (const _ of source) { /* discard */ }
    });
    return { name, ...h.digest() };
  }
  // tar's stream is hashed where tar runs (the spawner), never in the agent's thread: a disk may
  // hold gigabytes, and a fork from the agent costs it 15-20 ms beside an embedded database.
  const r = await run(['tar', ...packArgs(dir, name)], { digestStdout: true, allowFailure: true });
  if (r.code !== 0 || !r.stdoutDigest) throw new Error(`tar of ${packedMember(name)} failed (${r.code}): ${r.stderr.trim()}`);
  return { name, ...r.stdoutDigest };
}

/** Unpacks a verified object file into a local snapshot directory. */
export async function unpackObject(file: string, name: ObjectName, into: string): Promise<void> {
  if (name === 'snapshot.json') throw new Error('snapshot.json is not unpacked');
  // Only the one member the object is made of; owners and modes as stored (the images belong
  // to the sandbox's mapped root, 0600).
  const member = packedMember(name);
  await run(['tar', '-C', into, '--numeric-owner', '--same-owner', '--same-permissions', '-xf', file, '--', member]);
  // What a snapshot is made of, and nothing else: a plain disk image, a directory of plain files
  // (a link here would be followed by the mount or by CRIU).
  const st = await lstat(path.join(into, member));
  const ok = name === 'disk' ? st.isFile() : st.isDirectory();
  if (ok && name === 'checkpoint') {
    for (const entry of await readdir(path.join(into, member))) {
      if (!(await lstat(path.join(into, member, entry))).isFile()) throw new Error(`snapshot object ${name}: ${entry} is not a plain file`);
    }
  }
  if (!ok) throw new Error(`snapshot object ${name}: ${member} is not a ${name === 'disk' ? 'plain file' : 'directory'}`);
}

/** The store a node's configuration names: S3 when `cfg.s3` is set, else the directory. */
export function createSnapshotStore(cfg: { snapshotDir: string; s3?: S3StoreConfig }): SnapshotStore {
  return cfg.s3 ? new S3SnapshotStore(cfg.s3) : new DirectorySnapshotStore(cfg.snapshotDir);
}
