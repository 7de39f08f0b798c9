// Templates travel through the snapshot store, as snapshots do: a node that imports or builds a
// template publishes it (one tar, then its manifest, written last: template-archive.ts); a node
// asked for a template it lacks fetches it, checks it against the manifest and renames it into
// place whole. With the object store they are `<prefix>templates/<name>/{template.tar,
// manifest.json}` (S3Templates, here); with the directory store, `<snapshot dir>/.templates/<name>/`
// beside the snapshots (directory-templates.ts), so nodes that share only the snapshot directory
// still share their templates. Nodes that share the templates directory as well publish too
// (harmless: a copy) and never need to fetch. A warm capture is each node's own (its data
// directory) and is not distributed.
import { DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { TEMPLATE_NAME_PATTERN } from '../core/ids.ts';
import type { RuntimeConfig } from './config.ts';
import { DirectoryTemplates } from './directory-templates.ts';
import { DirectorySnapshotStore } from './directory-snapshot-store.ts';
import { exists } from './fs-util.ts';
import { KeyedMutex } from './keyed-mutex.ts';
import { retried } from './retry.ts';
import { S3SnapshotStore, status } from './s3-snapshot-store.ts';
import type { SnapshotStore } from './snapshot-store.ts';
import { assertTemplateName, packTemplate, parseTemplateManifest, unpackTemplate, type TemplateManifest } from './template-archive.ts';

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

/** No store: a template is only on the node that made it (a node on its own, with any other store). */
export class LocalTemplates implements TemplateDistribution {
  readonly description = 'this node only';
  async publish() {}
  async fetch() {
    return false;
  }
  async remove() {}
  async list() {
    return [];
  }
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
    assertTemplateName(name);
    return `${this.store.cfg.prefix}templates/${name}/${object}`;
  }

  async publish(name: string): Promise<void> {
    await this.locks.run(name, async () => {
      const packed = await packTemplate(this.cfg.templatesDir, name);
      // The old manifest goes first: nothing vouches for an object being replaced.
      await retried(() => this.store.client.send(new DeleteObjectCommand({ Bucket: this.store.cfg.bucket, Key: this.key(name, 'manifest.json') })));
      const upload = new Upload({
        client: this.store.client,
        params: { Bucket: this.store.cfg.bucket, Key: this.key(name, 'template.tar'), Body: packed.body },
        partSize: PART_SIZE, queueSize: 2, leavePartsOnError: false,
      });
      await Promise.all([upload.done(), packed.done]);
      await retried(() => this.store.client.send(new PutObjectCommand({
        Bucket: this.store.cfg.bucket, Key: this.key(name, 'manifest.json'), Body: JSON.stringify(packed.manifest()), ContentType: 'application/json',
      })));
      this.listed = null;
    });
  }

  async fetch(name: string): Promise<boolean> {
    assertTemplateName(name);
    return this.locks.run(name, async () => {
      if (await exists(path.join(this.cfg.templatesDir, name, 'rootfs'))) return true; // fetched by a create that went first
      const manifest = await this.manifest(name);
      if (!manifest) return false;
      const res = await this.store.client.send(new GetObjectCommand({ Bucket: this.store.cfg.bucket, Key: this.key(name, 'template.tar') }));
      await unpackTemplate(this.cfg.templatesDir, name, manifest, res.Body as Readable);
      return true;
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
      return parseTemplateManifest(await res.Body!.transformToString(), name);
    } catch (e) {
      if (status(e) === 404) return null;
      throw e;
    }
  }
}

/** The templates go where the snapshots go: the object store, or the snapshot directory. */
export function createTemplateDistribution(cfg: Pick<RuntimeConfig, 'templatesDir'>, store: SnapshotStore): TemplateDistribution {
  if (store instanceof S3SnapshotStore) return new S3Templates(cfg, store);
  if (store instanceof DirectorySnapshotStore) return new DirectoryTemplates(cfg, store.root);
  return new LocalTemplates();
}
