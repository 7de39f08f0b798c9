// Templates travel through the object store, as snapshots do: a node that imports or builds a
// template publishes it (`<prefix>templates/<name>/template.tar`, then its manifest, written
// last); a node asked for a template it lacks fetches it, checks it against the manifest and
// renames it into place whole. With the directory snapshot store, nodes share the templates
// directory itself (a shared file system), and there is nothing to distribute.
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { lstat, mkdir, readdir, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { TEMPLATE_NAME_PATTERN } from '../core/ids.ts';
import { run } from './command.ts';
import type { RuntimeConfig } from './config.ts';
import { exists } from './fs-util.ts';
import { KeyedMutex } from './keyed-mutex.ts';
import { retried } from './retry.ts';
import { S3SnapshotStore, status } from './s3-snapshot-store.ts';
import { hashing, type SnapshotStore } from './snapshot-store.ts';

export interface TemplateDistribution {
  readonly description: string;
  /** Puts the node's template `name` in the store (replacing an earlier copy). */
  publish(name: string): Promise<void>;
  /** Makes `name` present on this node from the store; false when the store has no such template. */
  fetch(name: string): Promise<boolean>;
  /** Removes the store's copy (a deleted template). */
  remove(name: string): Promise<void>;
  /** The templates the store holds complete (a node can start any of them: it fetches what it lacks). */
  list(): Promise<string[]>;
}

/** Nodes share the templates directory: nothing to move. */
export class SharedDirectoryTemplates implements TemplateDistribution {
  readonly description = 'the shared templates directory';
  async publish() {}
  async fetch() {
    return false;
  }
  async remove() {}
  async list() {
    return [];
  }
}

interface TemplateManifest {
  version: 1;
  name: string;
  sha256: string;
  size: number;
  publishedAt: string;
}

const PART_SIZE = 16 * 1024 * 1024;
/** The store's list is read at most this often (heartbeats ask for it every few seconds). */
const LIST_CACHE_MS = 15_000;

export class S3Templates implements TemplateDistribution {
  readonly description: string;
  private readonly locks = new KeyedMutex();
  private listed: { at: number; names: string[] } | null = null;

  constructor(
    private readonly cfg: Pick<RuntimeConfig, 'templatesDir'>,
    private readonly store: S3SnapshotStore,
  ) {
    this.description = `${store.description}templates/`;
  }

  private key(name: string, object: 'template.tar' | 'manifest.json') {
    if (!TEMPLATE_NAME_PATTERN.test(name)) throw new Error(`invalid template name "${name}"`);
    return `${this.store.cfg.prefix}templates/${name}/${object}`;
  }

  async publish(name: string): Promise<void> {
    const dir = path.join(this.cfg.templatesDir, name);
    if (!(await exists(path.join(dir, 'rootfs')))) throw new Error(`template ${name} is not on this node`);
    await this.locks.run(name, async () => {
      // The old manifest goes first: nothing vouches for an object being replaced.
      await retried(() => this.store.client.send(new DeleteObjectCommand({ Bucket: this.store.cfg.bucket, Key: this.key(name, 'manifest.json') })));
      const members = ['rootfs', ...((await exists(path.join(dir, 'template.json'))) ? ['template.json'] : [])];
      const { stream, done } = tarStream(dir, members);
      const h = hashing();
      const body = stream.pipe(h);
      stream.on('error', (e) => h.destroy(e));
      const upload = new Upload({
        client: this.store.client,
        params: { Bucket: this.store.cfg.bucket, Key: this.key(name, 'template.tar'), Body: body },
        partSize: PART_SIZE, queueSize: 2, leavePartsOnError: false,
      });
      await Promise.all([upload.done(), done]);
      const manifest: TemplateManifest = { version: 1, name, ...h.digest(), publishedAt: new Date().toISOString() };
      await retried(() => this.store.client.send(new PutObjectCommand({
        Bucket: this.store.cfg.bucket, Key: this.key(name, 'manifest.json'), Body: JSON.stringify(manifest), ContentType: 'application/json',
      })));
      this.listed = null;
    });
  }

  async fetch(name: string): Promise<boolean> {
    return this.locks.run(name, async () => {
      const final = path.join(this.cfg.templatesDir, name);
      if (await exists(path.join(final, 'rootfs'))) return true; // fetched by a create that went first
      const manifest = await this.manifest(name);
      if (!manifest) return false;
      const staging = path.join(this.cfg.templatesDir, `.fetch-${name}-${randomBytes(4).toString('hex')}`);
      await mkdir(staging, { mode: 0o755 });
      try {
        const file = path.join(staging, '.template.tar');
        const res = await this.store.client.send(new GetObjectCommand({ Bucket: this.store.cfg.bucket, Key: this.key(name, 'template.tar') }));
        const h = hashing();
        await pipeline(res.Body as Readable, h, createWriteStream(file, { mode: 0o600 }));
        const got = h.digest();
        if (got.sha256 !== manifest.sha256 || got.size !== manifest.size) {
          throw new Error(`template ${name} in the store fails its checksum (manifest ${manifest.sha256.slice(0, 12)}…, got ${got.sha256.slice(0, 12)}…)`);
        }
        // Owners and modes as published: the rootfs belongs to the sandboxes' mapped range.
        await run(['tar', '-C', staging, '--numeric-owner', '--same-owner', '--same-permissions', '-xf', file]);
        await rm(file, { force: true });
        const entries = (await readdir(staging)).filter((e) => e !== 'rootfs' && e !== 'template.json');
        if (entries.length) throw new Error(`template ${name} in the store holds more than a template: ${entries.join(', ')}`);
        if (!(await lstat(path.join(staging, 'rootfs'))).isDirectory()) throw new Error(`template ${name} in the store has no rootfs directory`);
        await rename(staging, final);
        return true;
      } catch (e) {
        await rm(staging, { recursive: true, force: true });
        throw e;
      }
    });
  }

  async remove(name: string): Promise<void> {
    await this.locks.run(name, async () => {
      for (const object of ['manifest.json', 'template.tar'] as const) {
        await retried(() => this.store.client.send(new DeleteObjectCommand({ Bucket: this.store.cfg.bucket, Key: this.key(name, object) })));
      }
      this.listed = null;
    });
  }

  async list(): Promise<string[]> {
    if (this.listed && Date.now() - this.listed.at < LIST_CACHE_MS) return this.listed.names;
    const prefix = `${this.store.cfg.prefix}templates/`;
    const names: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.store.client.send(new ListObjectsV2Command({ Bucket: this.store.cfg.bucket, Prefix: prefix, ContinuationToken: token }));
      for (const o of page.Contents ?? []) {
        const [name, object] = o.Key!.slice(prefix.length).split('/');
        if (object === 'manifest.json' && name && TEMPLATE_NAME_PATTERN.test(name)) names.push(name);
      }
      token = page.IsTruncated ? page.NextContinuationToken : undefined;
    } while (token);
    this.listed = { at: Date.now(), names };
    return names;
  }

  private async manifest(name: string): Promise<TemplateManifest | null> {
    try {
      const res = await this.store.client.send(new GetObjectCommand({ Bucket: this.store.cfg.bucket, Key: this.key(name, 'manifest.json') }));
      const m = JSON.parse(await res.Body!.transformToString()) as TemplateManifest;
      if (m?.version !== 1 || m.name !== name || !/^[0-9a-f]{64}$/.test(m.sha256) || !Number.isSafeInteger(m.size)) {
        throw new Error(`template ${name}: malformed manifest in the store`);
      }
      return m;
    } catch (e) {
      if (status(e) === 404) return null;
      throw e;
    }
  }
}

/** A template directory as one tar stream (names sorted, numeric owners: the same bytes each time). */
function tarStream(dir: string, members: string[]): { stream: Readable; done: Promise<void> } {
  const child = spawn('tar', ['-C', dir, '--sort=name', '--numeric-owner', '--format=gnu', '--sparse', '-cf', '-', '--', ...members], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const done = new Promise<void>((resolve, reject) => {
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve() : reject(new Error(`tar of template ${path.basename(dir)} failed (${code}): ${stderr.trim()}`))));
  });
  done.catch(() => undefined);
  return { stream: child.stdout, done };
}

/** Through the object store when snapshots are there; otherwise nodes share the templates directory. */
export function createTemplateDistribution(cfg: Pick<RuntimeConfig, 'templatesDir'>, store: SnapshotStore): TemplateDistribution {
  return store instanceof S3SnapshotStore ? new S3Templates(cfg, store) : new SharedDirectoryTemplates();
}
