import {
  CreateBucketCommand, GetObjectCommand, HeadBucketCommand, HeadObjectCommand,
  ListObjectsV2Command, PutObjectCommand, S3Client, DeleteObjectCommand,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, readdir, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { isSnapshotKey } from '../core/ids.ts';
import { exists } from './fs-util.ts';
import { retried } from './retry.ts';
import {
  ChecksumError, hashing, localSnapshot, MalformedManifest, MANIFEST, objectsOf, objectStream, parseManifest, unpackObject,
  type IncompleteSnapshot, type Manifest, type ManifestEntry, type ObjectName, type SnapshotStore,
} from './snapshot-store.ts';

export interface S3StoreConfig {
  /** e.g. http://127.0.0.1:9000; unset: AWS's own endpoint for the region. */
  endpoint?: string;
  bucket: string;
  region: string;
  accessKeyId?: string;
  secretAccessKey?: string;
  /** Key prefix of every snapshot ("snapshots/" say); empty: the bucket's root. */
  prefix: string;
  /** Path-style addressing (http://host/bucket/key): what local servers want. */
  forcePathStyle: boolean;
}

/** Marks a local directory as a download of this store's (removable: the store holds it). */
const DOWNLOAD_MARK = '.downloaded-from-s3';

/** Multipart upload: parts of 16 MiB, two in flight (a part is buffered: at most ~48 MiB held). */
const PART_SIZE = 16 * 1024 * 1024;
const QUEUE_SIZE = 2;

/** Attempts of each S3 request (the SDK's standard retry strategy: exponential backoff, jitter, a retry quota). */
const S3_MAX_ATTEMPTS = 8;

/**
 * Snapshots in an S3-compatible object store: `<prefix><id>/snapshot.json`, `checkpoint` (a
 * tar of the images), `disk` (the sparse disk packed by tar: its holes are not uploaded) and, written last,
 * `<prefix><id>/manifest.json` with the sha256 and size of each. Uploads stream (multipart,
 * bounded memory); downloads go to a local file first, are checked against the manifest, and
 * only then unpacked, into a temporary directory renamed into place.
 */
export class S3SnapshotStore implements SnapshotStore {
  readonly description: string;
  readonly client: S3Client;

  constructor(readonly cfg: S3StoreConfig) {
    this.description = `s3 ${cfg.endpoint ?? 'aws'}/${cfg.bucket}/${cfg.prefix}`;
    this.client = new S3Client({
      endpoint: cfg.endpoint,
      region: cfg.region,
      forcePathStyle: cfg.forcePathStyle,
      credentials: cfg.accessKeyId && cfg.secretAccessKey ? { accessKeyId: cfg.accessKeyId, secretAccessKey: cfg.secretAccessKey } : undefined,
      // A store that throttles (SlowDown) or is briefly away is retried with backoff and jitter,
      // longer than the SDK's default three attempts (put and get retry whole objects on top).
      maxAttempts: S3_MAX_ATTEMPTS,
      // Only what S3 requires: some compatible servers do not know the newer checksum headers.
      requestChecksumCalculation: 'WHEN_REQUIRED',
      responseChecksumValidation: 'WHEN_REQUIRED',
    });
  }

  private key(id: string, name: string): string {
    if (!isSnapshotKey(id)) throw new Error(`invalid snapshot id "${id}"`);
    return `${this.cfg.prefix}${id}/${name}`;
  }

  async prepare(): Promise<void> {
    try {
      await this.client.send(new HeadBucketCommand({ Bucket: this.cfg.bucket }));
    } catch (e) {
      if (status(e) !== 404) throw new Error(`S3 bucket ${this.cfg.bucket}: ${msg(e)}`);
      // Nodes of a new fleet start together: another one may have made the bucket since the
      // HEAD (the store answers that we own it already; that agent then failed to start).
      await this.client.send(new CreateBucketCommand({ Bucket: this.cfg.bucket })).catch((err: unknown) => {
        if ((err as { name?: string }).name !== 'BucketAlreadyOwnedByYou') throw err;
      });
    }
  }

  async put(id: string, staging: string): Promise<void> {
    // What an earlier put of this id left (a manifest would vouch for objects being replaced;
    // and some servers refuse to overwrite an object made by a multipart upload).
    await this.delete(id);
    // An object whose upload failed is sent again from the staging (the SDK already retries each
    // request; this rides out a store that is away for a few seconds).
    const objects: ManifestEntry[] = [];
    for (const name of await objectsOf(staging)) objects.push(await retried(() => this.upload(id, staging, name)));
    const manifest: Manifest = { version: 1, id, createdAt: new Date().toISOString(), objects };
    await retried(() => this.client.send(new PutObjectCommand({
      Bucket: this.cfg.bucket, Key: this.key(id, MANIFEST), Body: JSON.stringify(manifest), ContentType: 'application/json',
    })));
    await rm(staging, { recursive: true, force: true });
  }

  private async upload(id: string, dir: string, name: ObjectName): Promise<ManifestEntry> {
    const { stream, done } = objectStream(dir, name);
    const h = hashing();
    const body = stream.pipe(h);
    stream.on('error', (e) => h.destroy(e));
    const upload = new Upload({
      client: this.client,
      params: { Bucket: this.cfg.bucket, Key: this.key(id, name), Body: body },
      partSize: PART_SIZE,
      queueSize: QUEUE_SIZE,
      leavePartsOnError: false,
    });
    try {
      await Promise.all([upload.done(), done]);
    } catch (e) {
      stream.destroy(); // tar stops on its broken pipe
      throw e;
    }
    return { name, ...h.digest() };
  }

  async get(id: string, into: string): Promise<void> {
    const manifest = await this.manifest(id);
    if (!manifest) throw new Error(`no complete snapshot ${id} in ${this.description}`);
    const tmp = `${path.dirname(into)}/.${path.basename(into)}.download-${randomBytes(4).toString('hex')}`;
    await mkdir(tmp, { mode: 0o711 });
    try {
      for (const entry of manifest.objects) {
        const file = entry.name === 'snapshot.json' ? localSnapshot(tmp).meta : path.join(tmp, `.${entry.name}`);
        await this.download(id, entry, file);
        if (entry.name !== 'snapshot.json') {
          await unpackObject(file, entry.name, tmp);
          await rm(file, { force: true });
        }
      }
      await writeFile(path.join(tmp, DOWNLOAD_MARK), `${this.description}\n`);
      await rename(tmp, into);
    } catch (e) {
      await rm(tmp, { recursive: true, force: true });
      throw e;
    }
  }

  /** One object into a local file, hashed on the way and checked against the manifest. */
  private async download(id: string, entry: ManifestEntry, file: string): Promise<void> {
    const res = await this.client.send(new GetObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(id, entry.name) }));
    const h = hashing();
    await pipeline(res.Body as Readable, h, createWriteStream(file, { mode: 0o600 }));
    const got = h.digest();
    // Not synced: a download is used at once, and the store keeps the snapshot anyway.
    if (got.sha256 !== entry.sha256 || got.size !== entry.size) throw new ChecksumError(id, entry.name, entry.sha256, got.sha256);
  }

  async open(id: string, local: string): Promise<void> {
    await rm(local, { recursive: true, force: true }); // a download an earlier failure left
    await this.get(id, local);
  }

  async close(_id: string, local: string): Promise<void> {
    await rm(local, { recursive: true, force: true });
  }

  async meta(id: string): Promise<unknown | null> {
    // A store that fails to answer is an error (a resume should be tried again), not an answer
    // that the snapshot is missing; a manifest that is not one makes no complete snapshot.
    const manifest = await this.manifest(id).catch((e: unknown) => {
      if (e instanceof MalformedManifest) return null;
      throw e;
    });
    const entry = manifest?.objects.find((o) => o.name === 'snapshot.json');
    if (!entry) return null;
    const text = await this.getText(id, 'snapshot.json');
    if (text === null) return null;
    if (createHash('sha256').update(text).digest('hex') !== entry.sha256) return null;
    return JSON.parse(text);
  }

  async exists(id: string): Promise<boolean> {
    try {
      await this.client.send(new HeadObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(id, MANIFEST) }));
      return true;
    } catch (e) {
      if (status(e) === 404) return false;
      throw e;
    }
  }

  async list(): Promise<string[]> {
    return [...(await this.scan()).entries()].filter(([, o]) => o.names.has(MANIFEST)).map(([id]) => id);
  }

  async listIncomplete(): Promise<IncompleteSnapshot[]> {
    return [...(await this.scan()).entries()].filter(([, o]) => !o.names.has(MANIFEST)).map(([id, o]) => ({ id, modifiedAt: o.modifiedAt }));
  }

  async delete(id: string): Promise<void> {
    await this.client.send(new DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(id, MANIFEST) }));
    // One by one (a snapshot has four objects at most): some servers want a Content-MD5 on a
    // multi-object delete, which the SDK no longer sends.
    for (const name of (await this.scan(id)).get(id)?.names ?? []) {
      await this.client.send(new DeleteObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(id, name) }));
    }
  }

  /**
   * What this store left in the local directory: downloads (marked as such) and download
   * attempts, and pause staging whose sandbox is gone (not changed for ten minutes: were the
   * directory shared by mistake, another node's pause is left alone). Anything else there, such
   * as a directory store's snapshots before the node was switched to S3, is not touched.
   */
  async cleanLocal(localRoot: string, isLive: (id: string) => Promise<boolean>): Promise<string[]> {
    const notes: string[] = [];
    for (const name of await readdir(localRoot).catch(() => [] as string[])) {
      const id = /^\.?([a-z0-9]{20})(\.|$)/.exec(name)?.[1];
      if (!id) continue;
      const full = path.join(localRoot, name);
      if (name === id) {
        if (!(await exists(path.join(full, DOWNLOAD_MARK)))) continue;
      } else if (name.includes('.partial-')) {
        if (await isLive(id)) continue; // the runtime's to finish
        const st = await stat(full).catch(() => null);
        if (!st || Date.now() - st.mtimeMs < 10 * 60_000) continue;
      } else if (!name.includes('.download-')) continue;
      await rm(full, { recursive: true, force: true });
      notes.push(`${id}: local ${name.includes('.partial-') ? 'staging' : 'download'} ${name} of a snapshot in ${this.description} was removed`);
    }
    return notes;
  }

  async manifest(id: string): Promise<Manifest | null> {
    const text = await this.getText(id, MANIFEST);
    return text === null ? null : parseManifest(text, id);
  }

  private async getText(id: string, name: string): Promise<string | null> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.cfg.bucket, Key: this.key(id, name) }));
      return await res.Body!.transformToString();
    } catch (e) {
      if (status(e) === 404) return null;
      throw e;
    }
  }

  /** Object names under each snapshot id (of one id when given), and when the last was written. */
  private async scan(id?: string): Promise<Map<string, { names: Set<string>; modifiedAt: Date }>> {
    const out = new Map<string, { names: Set<string>; modifiedAt: Date }>();
    const prefix = id ? this.key(id, '') : this.cfg.prefix;
    let token: string | undefined;
    do {
      const page = await this.client.send(new ListObjectsV2Command({ Bucket: this.cfg.bucket, Prefix: prefix, ContinuationToken: token }));
      for (const o of page.Contents ?? []) {
        const rest = o.Key!.slice(this.cfg.prefix.length);
        const slash = rest.indexOf('/');
        const sid = rest.slice(0, slash);
        if (slash < 0 || !isSnapshotKey(sid)) continue;
        let entry = out.get(sid);
        if (!entry) out.set(sid, (entry = { names: new Set(), modifiedAt: new Date(0) }));
        entry.names.add(rest.slice(slash + 1));
        if (o.LastModified && o.LastModified > entry.modifiedAt) entry.modifiedAt = o.LastModified;
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    return out;
  }
}

/** Up to three attempts, 1 s then 3 s apart. */
/** The HTTP status of an S3 error (404 for its not-found names). */
export function status(e: unknown): number | undefined {
  const m = (e as { $metadata?: { httpStatusCode?: number }; name?: string }) ?? {};
  if (m.name === 'NoSuchKey' || m.name === 'NotFound' || m.name === 'NoSuchBucket') return 404;
  return m.$metadata?.httpStatusCode;
}

function msg(e: unknown) {
  return e instanceof Error ? e.message : String(e);
}
