import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, chown, mkdir, open, readdir, readFile, rm, stat, symlink, truncate, utimes, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DeleteObjectCommand, ListObjectsV2Command, PutObjectCommand } from '@aws-sdk/client-s3';
import { newSandboxId } from '../src/core/ids.ts';
import { DirectorySnapshotStore } from '../src/runtime/directory-snapshot-store.ts';
import { S3SnapshotStore } from '../src/runtime/s3-snapshot-store.ts';
import { s3ConfigFromEnv } from '../src/runtime/config.ts';
import { ChecksumError, collectIncomplete, createSnapshotStore, hashing, hashObject, MANIFEST, objectStream, type SnapshotStore } from '../src/runtime/snapshot-store.ts';
import { pipeline } from 'node:stream/promises';
import { TEST_ROOT } from './helpers/agent-harness.ts';
import { followCheckpointDump } from '../src/runtime/checkpoint-hasher.ts';
import { NestboxError } from '../src/core/errors.ts';
import type { RuntimeConfig } from '../src/runtime/config.ts';
import { KeyedMutex } from '../src/runtime/keyed-mutex.ts';
import type { Runc } from '../src/runtime/runc.ts';
import { NodeInventory } from '../src/runtime/sandbox-inventory.ts';
import { startS3Server, type TestS3Server } from './helpers/s3-server.ts';

// The store contract, run against both implementations: the directory store and the S3 store
// on a real S3 server (radosgw, installed by scripts/setup.sh).

const DISK_BYTES = 4 * 1024 ** 3; // a 4 GiB sparse disk image...
const DATA = [0, 1024 ** 2 * 37, 3 * 1024 ** 3 + 4096]; // ...holding 3 x 256 KiB of data
const CHUNK = 256 * 1024;
const UID = 100000;
// Images bigger than a multipart part (16 MiB): the upload goes in parts.
const IMAGE_BYTES = 20 * 1024 * 1024;

let base: string;
let s3: TestS3Server;

before(async () => {
  base = path.join(TEST_ROOT, `store-${randomBytes(4).toString('hex')}`);
  await mkdir(base, { recursive: true });
  s3 = await startS3Server();
});

after(async () => {
  await s3?.stop();
  await rm(base, { recursive: true, force: true });
});

/** What pause stages: snapshot.json, checkpoint/ (the mapped root's, private), a sparse disk. */
async function stage(id: string): Promise<{ dir: string; record: unknown; chunks: Buffer[] }> {
  const dir = path.join(base, `.${id}.partial-${randomBytes(4).toString('hex')}`);
  await mkdir(path.join(dir, 'checkpoint'), { recursive: true });
  const record = { sandbox: { sandboxId: id, template: 'base' }, memory: true, pausedAt: new Date().toISOString() };
  await writeFile(path.join(dir, 'snapshot.json'), JSON.stringify(record));
  for (const name of ['pages-1.img', 'core-1.img', 'stats-dump']) {
    const f = path.join(dir, 'checkpoint', name);
    await writeFile(f, randomBytes(name.startsWith('pages') ? IMAGE_BYTES : 300));
    await chown(f, UID, UID);
    await chmod(f, 0o600);
  }
  await chown(path.join(dir, 'checkpoint'), UID, UID);
  await chmod(path.join(dir, 'checkpoint'), 0o711);
  const f = await open(path.join(dir, 'disk.img'), 'w', 0o600);
  const chunks: Buffer[] = [];
  try {
    await f.truncate(DISK_BYTES);
    for (const at of DATA) {
      const b = randomBytes(CHUNK);
      chunks.push(b);
      await f.write(b, 0, b.length, at);
    }
  } finally {
    await f.close();
  }
  return { dir, record, chunks };
}

async function readAt(file: string, at: number, length: number): Promise<Buffer> {
  const f = await open(file, 'r');
  try {
    const b = Buffer.alloc(length);
    await f.read(b, 0, length, at);
    return b;
  } finally {
    await f.close();
  }
}

const incompleteIds = async (store: SnapshotStore) => (await store.listIncomplete()).map((s) => s.id);

interface Impl {
  name: string;
  make: () => SnapshotStore;
  /** Removes the manifest the way a pause cut short before it would leave things. */
  dropManifest: (store: SnapshotStore, id: string) => Promise<void>;
  /** Replaces one stored object's bytes. */
  corrupt: (store: SnapshotStore, id: string) => Promise<void>;
  /** Bytes stored for a snapshot (what an upload sent). */
  storedBytes: (store: SnapshotStore, id: string) => Promise<number>;
}

const impls: Impl[] = [
  {
    name: 'directory store',
    make: () => new DirectorySnapshotStore(path.join(base, `dir-${randomBytes(3).toString('hex')}`)),
    dropManifest: (store, id) => rm(path.join((store as DirectorySnapshotStore).dir(id), MANIFEST)),
    // The directory store lists its files' sizes (no content digest: see listing-digest.ts): a
    // disk image cut short, as a copy that lost its end would be.
    corrupt: async (store, id) => {
      const disk = path.join((store as DirectorySnapshotStore).dir(id), 'disk.img');
      await truncate(disk, (await stat(disk)).size - 4096);
    },
    storedBytes: async (store, id) => {
      const dir = (store as DirectorySnapshotStore).dir(id);
      const du = async (p: string): Promise<number> => {
        const st = await stat(p);
        if (!st.isDirectory()) return st.blocks * 512;
        let n = 0;
        for (const e of await readdir(p)) n += await du(path.join(p, e));
        return n;
      };
      return du(dir);
    },
  },
  {
    name: 'S3 store',
    make: () => new S3SnapshotStore(s3.storeConfig(`contract-${randomBytes(3).toString('hex')}`, 'snapshots/')),
    dropManifest: async (store, id) => {
      const s = store as S3SnapshotStore;
      await s.client.send(new DeleteObjectCommand({ Bucket: s.cfg.bucket, Key: `${s.cfg.prefix}${id}/${MANIFEST}` }));
    },
    corrupt: async (store, id) => {
      const s = store as S3SnapshotStore;
      const Key = `${s.cfg.prefix}${id}/checkpoint`;
      await s.client.send(new DeleteObjectCommand({ Bucket: s.cfg.bucket, Key }));
      await s.client.send(new PutObjectCommand({ Bucket: s.cfg.bucket, Key, Body: randomBytes(4096) }));
    },
    storedBytes: async (store, id) => {
      const s = store as S3SnapshotStore;
      const page = await s.client.send(new ListObjectsV2Command({ Bucket: s.cfg.bucket, Prefix: `${s.cfg.prefix}${id}/` }));
      return (page.Contents ?? []).reduce((n, o) => n + (o.Size ?? 0), 0);
    },
  },
];

for (const impl of impls) {
  describe(`snapshot store contract: ${impl.name}`, () => {
    let store: SnapshotStore;
    before(async () => {
      store = impl.make();
      await store.prepare();
    });

    test('put then get: a 4 GiB sparse disk and the images come back whole; the store holds little', async () => {
      const id = newSandboxId();
      const { dir, record, chunks } = await stage(id);
      const want = await hashObject(dir, 'disk');
      let t = Date.now();
      await store.put(id, dir);
      const putMs = Date.now() - t;
      await assert.rejects(stat(dir), 'the staging directory is consumed');
      assert.ok(await store.exists(id));
      assert.deepEqual(await store.list(), [id]);
      assert.deepEqual(await incompleteIds(store), []);
      assert.deepEqual(await store.meta(id), record);
      const stored = await impl.storedBytes(store, id);
      assert.ok(stored < IMAGE_BYTES + 2 * 1024 ** 2, `20 MiB of images and a 4 GiB sparse disk with 768 KiB of data store ${stored} bytes`);

      const into = path.join(base, `got-${id}`);
      t = Date.now();
      await store.get(id, into);
      const getMs = Date.now() - t;
      const disk = path.join(into, 'disk.img');
      const st = await stat(disk);
      assert.equal(st.size, DISK_BYTES);
      assert.ok(st.blocks * 512 < 16 * 1024 ** 2, `the disk comes back sparse (${st.blocks * 512} bytes allocated)`);
      for (const [i, at] of DATA.entries()) assert.ok((await readAt(disk, at, CHUNK)).equals(chunks[i]!), `data at ${at}`);
      assert.ok((await readAt(disk, 2 * 1024 ** 3, 4096)).equals(Buffer.alloc(4096)), 'a hole reads as zeros');
      assert.equal((await hashObject(into, 'disk')).sha256, want.sha256);
      const images = path.join(into, 'checkpoint');
      assert.deepEqual((await readdir(images)).sort(), ['core-1.img', 'pages-1.img', 'stats-dump']);
      const img = await stat(path.join(images, 'pages-1.img'));
      assert.equal(img.uid, UID, 'the images stay the mapped root\'s');
      assert.equal(img.mode & 0o777, 0o600, 'and private');
      assert.equal((await stat(images)).mode & 0o777, 0o711);
      assert.deepEqual(JSON.parse(await readFile(path.join(into, 'snapshot.json'), 'utf8')), record);
      process.stdout.write(`# ${impl.name}: put ${putMs} ms, get ${getMs} ms, stored ${(stored / 1024 ** 2).toFixed(2)} MiB for a 4 GiB sparse disk (768 KiB of data) + 20 MiB of images\n`);
      await store.delete(id);
      await rm(into, { recursive: true, force: true });
    });

    test('a snapshot without its manifest is not complete, and is listed as incomplete', async () => {
      const id = newSandboxId();
      await store.put(id, (await stage(id)).dir);
      await impl.dropManifest(store, id);
      assert.equal(await store.exists(id), false);
      assert.ok(!(await store.list()).includes(id));
      assert.ok((await incompleteIds(store)).includes(id));
      assert.equal(await store.meta(id), null);
      const into = path.join(base, `got-${id}`);
      await assert.rejects(store.get(id, into));
      await assert.rejects(stat(into), 'nothing is left where it would have gone');
      await store.delete(id);
      assert.ok(!(await incompleteIds(store)).includes(id), 'delete collects it');
    });

    test('a corrupted object fails its checksum and nothing is unpacked', async () => {
      const id = newSandboxId();
      await store.put(id, (await stage(id)).dir);
      await impl.corrupt(store, id);
      const into = path.join(base, `got-${id}`);
      await assert.rejects(store.get(id, into), (e: unknown) => e instanceof ChecksumError && /checksum/.test((e as Error).message));
      await assert.rejects(stat(into));
      assert.ok(!(await readdir(base)).some((n) => n.includes(`got-${id}`)), 'no temporary download is left');
      await store.delete(id);
    });

    test('delete removes the snapshot whole; list names complete snapshots only', async () => {
      const [a, b, c] = [newSandboxId(), newSandboxId(), newSandboxId()];
      for (const id of [a, b, c]) await store.put(id, (await stage(id)).dir);
      await impl.dropManifest(store, c);
      assert.deepEqual((await store.list()).sort(), [a, b].sort());
      assert.deepEqual(await incompleteIds(store), [c]);
      const [inc] = await store.listIncomplete();
      assert.ok(Math.abs(inc!.modifiedAt.getTime() - Date.now()) < 60_000, `written just now (${inc!.modifiedAt.toISOString()})`);
      assert.deepEqual(await collectIncomplete(store, 60_000), [], 'too young to collect');
      assert.equal((await collectIncomplete(store, 60_000, Date.now() + 120_000)).length, 1, 'collected once old enough');
      assert.deepEqual(await incompleteIds(store), []);
      await store.delete(a);
      assert.equal(await store.exists(a), false);
      assert.equal(await store.meta(a), null);
      assert.equal(await impl.storedBytes(store, a).catch(() => 0), 0, 'no object of it is left');
      assert.deepEqual(await store.list(), [b]);
      await store.delete(a); // idempotent
      await store.delete(b);
      assert.deepEqual(await store.list(), []);
      assert.deepEqual(await incompleteIds(store), []);
    });
  });
}

describe('S3 store', () => {
  test('an upload that fails once is sent again from the staging; a store that stays away fails the put and keeps it', async () => {
    const store = new S3SnapshotStore(s3.storeConfig(`retry-${randomBytes(3).toString('hex')}`));
    await store.prepare();
    const send = store.client.send.bind(store.client);
    let failures = 1;
    (store.client as { send: unknown }).send = (cmd: { constructor: { name: string }; input?: { Key?: string } }, ...rest: unknown[]) => {
      if (cmd.constructor.name === 'PutObjectCommand' && cmd.input?.Key?.endsWith('/snapshot.json') && failures-- > 0) {
        return Promise.reject(new Error('injected: connection reset'));
      }
      return (send as (...a: unknown[]) => Promise<unknown>)(cmd, ...rest);
    };
    const id = newSandboxId();
    const { record } = await stage(id).then(async (st) => {
      await store.put(id, st.dir);
      return st;
    });
    assert.deepEqual(await store.meta(id), record, 'stored whole after one failure');
    failures = 100;
    const id2 = newSandboxId();
    const st2 = await stage(id2);
    await assert.rejects(store.put(id2, st2.dir), /injected/);
    assert.equal(await store.exists(id2), false);
    assert.ok((await readdir(st2.dir)).includes('disk.img'), 'the staging stays for a later attempt');
    failures = 0;
    await store.put(id2, st2.dir);
    assert.ok(await store.exists(id2));
    for (const x of [id, id2]) await store.delete(x);
  });

  test("a store that fails to answer is an error, not a missing snapshot; a manifest that is not one makes no snapshot", async () => {
    const store = new S3SnapshotStore(s3.storeConfig(`meta-${randomBytes(3).toString('hex')}`));
    await store.prepare();
    const id = newSandboxId();
    const { record } = await stage(id).then(async (st) => {
      await store.put(id, st.dir);
      return st;
    });
    assert.deepEqual(await store.meta(id), record);
    const send = store.client.send.bind(store.client);
    (store.client as { send: unknown }).send = () => Promise.reject(Object.assign(new Error('injected: the store is unavailable'), { $metadata: { httpStatusCode: 503 } }));
    await assert.rejects(store.meta(id), /unavailable/);
    // The node answers a resume of it "try again" (503, retryable), not "no snapshot" (404).
    const inventory = new NodeInventory({} as RuntimeConfig, {} as Runc, store, new KeyedMutex());
    await assert.rejects(inventory.snapshot(id), (e: unknown) => e instanceof NestboxError && e.code === 'unavailable' && e.retryable === true);
    (store.client as { send: unknown }).send = send;
    await store.client.send(new PutObjectCommand({ Bucket: store.cfg.bucket, Key: `${id}/${MANIFEST}`, Body: 'not a manifest' }));
    assert.equal(await store.meta(id), null);
    await store.delete(id);
  });
});

describe('snapshot store configuration', () => {
  test('NESTBOX_S3_* choose the S3 store; nothing set keeps the directory store', () => {
    assert.equal(s3ConfigFromEnv({}), undefined);
    assert.ok(createSnapshotStore({ snapshotDir: '/x', s3: s3ConfigFromEnv({}) }) instanceof DirectorySnapshotStore);
    const cfg = s3ConfigFromEnv({
      NESTBOX_S3_ENDPOINT: 'http://127.0.0.1:9000', NESTBOX_S3_BUCKET: 'snaps', NESTBOX_S3_REGION: 'eu-west-1',
      NESTBOX_S3_ACCESS_KEY_ID: 'ak', NESTBOX_S3_SECRET_ACCESS_KEY: 'sk', NESTBOX_S3_PREFIX: 'node-snapshots',
    });
    assert.deepEqual(cfg, {
      endpoint: 'http://127.0.0.1:9000', bucket: 'snaps', region: 'eu-west-1', accessKeyId: 'ak', secretAccessKey: 'sk',
      prefix: 'node-snapshots/', forcePathStyle: true,
    });
    assert.ok(createSnapshotStore({ snapshotDir: '/x', s3: cfg }) instanceof S3SnapshotStore);
    assert.deepEqual(s3ConfigFromEnv({ NESTBOX_S3_BUCKET: 'b' }), {
      endpoint: undefined, bucket: 'b', region: 'us-east-1', accessKeyId: undefined, secretAccessKey: undefined, prefix: '', forcePathStyle: false,
    });
    assert.throws(() => s3ConfigFromEnv({ NESTBOX_S3_ENDPOINT: 'http://x' }), /NESTBOX_S3_BUCKET/);
  });
});

describe('S3 store: the local directory at restart', () => {
  test('downloads and abandoned staging go; anything else (a directory store\'s snapshots) stays', async () => {
    const store = new S3SnapshotStore(s3.storeConfig(`local-${randomBytes(3).toString('hex')}`));
    await store.prepare();
    const local = path.join(base, `local-${randomBytes(3).toString('hex')}`);
    await mkdir(local, { recursive: true });
    const [downloaded, dirStore, attempt, fresh, old, live] = Array.from({ length: 6 }, () => newSandboxId());
    await store.put(downloaded!, (await stage(downloaded!)).dir);
    await store.get(downloaded!, path.join(local, downloaded!));
    await mkdir(path.join(local, dirStore!));
    await writeFile(path.join(local, dirStore!, 'snapshot.json'), '{}');
    await mkdir(path.join(local, `.${attempt}.download-0badf00d`));
    for (const id of [fresh, old, live]) await mkdir(path.join(local, `.${id}.partial-0badf00d`));
    const hourAgo = new Date(Date.now() - 3600_000);
    for (const id of [old, live]) await utimes(path.join(local, `.${id}.partial-0badf00d`), hourAgo, hourAgo);
    const notes = await store.cleanLocal(local, async (id) => id === live);
    assert.deepEqual((await readdir(local)).sort(), [dirStore!, `.${fresh}.partial-0badf00d`, `.${live}.partial-0badf00d`].sort(), notes.join('\n'));
    assert.equal(notes.length, 3);
    assert.ok(await store.exists(downloaded!), 'the stored snapshot is untouched');
    await store.delete(downloaded!);
  });
});

describe('checkpoint hash', () => {
  test("the disk's entry, hashed where tar runs (spawner or not), is the hash of the very stream uploaded", async () => {
    const dir = path.join(base, `disk-hash-${randomBytes(4).toString('hex')}`);
    await mkdir(dir, { recursive: true });
    const disk = path.join(dir, 'disk.img');
    await writeFile(disk, '');
    await truncate(disk, 64 * 1024 ** 2);
    const f = await open(disk, 'r+');
    await f.write(randomBytes(300_000), 0, 300_000, 5 * 1024 ** 2);
    await f.close();
    try {
      const { stream, done } = objectStream(dir, 'disk');
      const h = hashing();
      await pipeline(stream, h, async function* (source) {
        for await (const _ of source) yield* [];
      });
      await done;
      const want = { name: 'disk', ...h.digest() };
      assert.deepEqual(await hashObject(dir, 'disk'), want);
      const saved = process.env.NESTBOX_SPAWNER;
      process.env.NESTBOX_SPAWNER = '0';
      try {
        assert.deepEqual(await hashObject(dir, 'disk'), want);
      } finally {
        if (saved === undefined) delete process.env.NESTBOX_SPAWNER;
        else process.env.NESTBOX_SPAWNER = saved;
      }
      await rm(disk);
      await assert.rejects(hashObject(dir, 'disk'), /tar of disk\.img failed/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('property: the manifest entry hashed without tar is the hash of the very stream tar makes (the bytes uploaded and checked)', async () => {
    const fc = (await import('fast-check')).default;
    await fc.assert(
      fc.asyncProperty(
        fc.uniqueArray(fc.stringMatching(/^[a-z0-9][a-z0-9._-]{0,40}$/), { minLength: 0, maxLength: 6 }),
        fc.array(fc.oneof(fc.constantFrom(0, 1, 511, 512, 513, 10239, 10240, 10241), fc.integer({ min: 0, max: 3 << 20 })), { minLength: 6, maxLength: 6 }),
        fc.constantFrom(0o600, 0o644, 0o400),
        fc.constantFrom(0, UID, UID + 65535),
        async (names, sizes, mode, owner) => {
          const dir = path.join(base, `hash-${randomBytes(4).toString('hex')}`);
          const images = path.join(dir, 'checkpoint');
          await mkdir(images, { recursive: true, mode: 0o700 });
          for (const [i, name] of names.entries()) {
            const file = path.join(images, name);
            await writeFile(file, randomBytes(sizes[i]!));
            await chmod(file, mode);
            await chown(file, owner, owner);
          }
          await chown(images, owner, owner);
          try {
            const direct = await hashObject(dir, 'checkpoint');
            const { stream, done } = objectStream(dir, 'checkpoint');
            const h = hashing();
            await pipeline(stream, h, async function* (source) {
              for await (const _ of source) yield* [];
            });
            await done;
            assert.deepEqual(direct, { name: 'checkpoint', ...h.digest() });
          } finally {
            await rm(dir, { recursive: true, force: true });
          }
        },
      ),
      { numRuns: 25 },
    );
  });

  /** Asserts that `digest` of `imagesDir` (now `before`) changes with core-1.img's mode, then its owner, then an image added; the last digest. */
  async function changesWithModeOwnerAndAnImageAdded(imagesDir: string, digest: () => Promise<string>, before: string): Promise<string> {
    await chmod(path.join(imagesDir, 'core-1.img'), 0o600);
    const moded = await digest();
    assert.notEqual(moded, before, "an image's mode");
    await chown(path.join(imagesDir, 'core-1.img'), UID, UID);
    const owned = await digest();
    assert.notEqual(owned, moded, "an image's owner");
    await writeFile(path.join(imagesDir, 'extra.img'), '');
    const added = await digest();
    assert.notEqual(added, owned, 'an image added');
    return added;
  }

  test('property: a follow of a dump (followDump) sees every byte it writes, whatever the writes, and ends once the dump is over', async () => {
    const fc = (await import('fast-check')).default;
    await fc.assert(
      fc.asyncProperty(
        // Per memory image: the pieces the "dump" appends, in order (CRIU writes front to back).
        fc.array(fc.array(fc.integer({ min: 0, max: 3 << 20 }), { minLength: 0, maxLength: 8 }), { minLength: 1, maxLength: 3 }),
        async (images) => {
          const dir = path.join(base, `follow-${randomBytes(4).toString('hex')}`);
          const imagesDir = path.join(dir, 'checkpoint');
          await mkdir(imagesDir, { recursive: true, mode: 0o700 });
          try {
            const follow = followCheckpointDump(imagesDir);
            await writeFile(path.join(imagesDir, 'inventory.img'), randomBytes(100));
            for (const [i, pieces] of images.entries()) {
              const f = await open(path.join(imagesDir, `pages-${i + 1}.img`), 'a');
              for (const n of pieces) {
                await f.write(randomBytes(n));
                await new Promise((r) => setImmediate(r));
              }
              await f.close();
            }
            const followed = await follow.finish();
            assert.ok(followed, 'the follow answered');
            for (const [i, pieces] of images.entries()) {
              const name = `pages-${i + 1}.img`;
              assert.equal(followed[name]?.size, pieces.reduce((a, b) => a + b, 0), 'it saw (and synced) every byte written');
              assert.equal(followed[name]?.ino, (await stat(path.join(imagesDir, name))).ino, 'of the very file');
            }
            assert.equal(followed['inventory.img'], undefined, 'memory images only');
          } finally {
            await rm(dir, { recursive: true, force: true });
          }
        },
      ),
      { numRuns: 15 },
    );
  });

  test("the images' listing (digest \"sizes\") changes with an image's size, mode or owner, with an image added or removed, and with the disk's size", async () => {
    const dir = path.join(base, `sizes-digest-${randomBytes(4).toString('hex')}`);
    const imagesDir = path.join(dir, 'checkpoint');
    await mkdir(imagesDir, { recursive: true, mode: 0o700 });
    try {
      await writeFile(path.join(imagesDir, 'pages-1.img'), randomBytes(5000));
      await writeFile(path.join(imagesDir, 'core-1.img'), randomBytes(300));
      const digest = async () => (await hashObject(dir, 'checkpoint', { digest: 'sizes' })).sha256;
      const first = await digest();
      assert.equal(await digest(), first, 'the same images, the same digest');
      const entry = await hashObject(dir, 'checkpoint', { digest: 'sizes' });
      assert.deepEqual({ digest: entry.digest, size: entry.size }, { digest: 'sizes', size: 5300 });
      await writeFile(path.join(imagesDir, 'pages-1.img'), randomBytes(4999));
      const shorter = await digest();
      assert.notEqual(shorter, first, 'an image cut short');
      const added = await changesWithModeOwnerAndAnImageAdded(imagesDir, digest, shorter);
      await rm(path.join(imagesDir, 'core-1.img'));
      assert.notEqual(await digest(), added, 'an image removed');
      await symlink('/etc/passwd', path.join(imagesDir, 'link.img'));
      await assert.rejects(digest(), /not a plain file/, 'a link is refused, never followed');
      await writeFile(path.join(dir, 'disk.img'), '');
      await truncate(path.join(dir, 'disk.img'), 1 << 30);
      const disk = await hashObject(dir, 'disk', { digest: 'sizes' });
      assert.equal(disk.size, 1 << 30);
      await truncate(path.join(dir, 'disk.img'), (1 << 30) - 4096);
      assert.notEqual((await hashObject(dir, 'disk', { digest: 'sizes' })).sha256, disk.sha256, "the disk's size");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("the images' listed digest changes with any image's bytes, mode or owner, and with an image added; an abandoned follow ends", async () => {
    const dir = path.join(base, `files-digest-${randomBytes(4).toString('hex')}`);
    const imagesDir = path.join(dir, 'checkpoint');
    await mkdir(imagesDir, { recursive: true, mode: 0o700 });
    try {
      const abandoned = followCheckpointDump(imagesDir);
      abandoned.abandon();
      await writeFile(path.join(imagesDir, 'pages-1.img'), randomBytes(5000));
      await writeFile(path.join(imagesDir, 'core-1.img'), randomBytes(300));
      const digest = async () => (await hashObject(dir, 'checkpoint', { digest: 'files' })).sha256;
      const first = await digest();
      assert.equal(await digest(), first, 'the same images, the same digest');
      const f = await open(path.join(imagesDir, 'pages-1.img'), 'r+');
      const byte = Buffer.alloc(1);
      await f.read(byte, 0, 1, 4000);
      await f.write(Buffer.from([byte[0]! ^ 1]), 0, 1, 4000);
      await f.close();
      const flipped = await digest();
      assert.notEqual(flipped, first, 'one bit of an image');
      await changesWithModeOwnerAndAnImageAdded(imagesDir, digest, flipped);
      // What the follow would have read had it not been abandoned: nothing is left running.
      assert.equal(await abandoned.finish(), (await abandoned.finish()));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('the directory store lists a pause\'s checkpoint and disk (digest "sizes"), checks them at every resume, and still checks older manifests\' digests', async () => {
    const root = path.join(base, `dir-digests-${randomBytes(4).toString('hex')}`);
    const store = new DirectorySnapshotStore(root);
    await store.prepare();
    const id = newSandboxId();
    const staging = path.join(root, `.${id}.partial-test`);
    await mkdir(path.join(staging, 'checkpoint'), { recursive: true, mode: 0o700 });
    try {
      const follow = store.followDump(staging);
      await writeFile(path.join(staging, 'checkpoint', 'pages-1.img'), randomBytes(3 << 20));
      await writeFile(path.join(staging, 'checkpoint', 'core-1.img'), randomBytes(200));
      await writeFile(path.join(staging, 'snapshot.json'), '{}');
      await writeFile(path.join(staging, 'disk.img'), randomBytes(4096));
      store.prestage(staging, 'checkpoint');
      store.prestage(staging, 'disk');
      void follow;
      await store.put(id, staging);
      const manifest = (await store.manifest(id))!;
      for (const name of ['checkpoint', 'disk'] as const) {
        const entry = manifest.objects.find((o) => o.name === name)!;
        assert.equal(entry.digest, 'sizes', name);
        assert.deepEqual(entry, await hashObject(store.dir(id), name, { digest: 'sizes' }));
      }
      await store.open(id, store.dir(id)); // as a resume does
      await store.get(id, path.join(base, `copy-${id}`));
      await rm(path.join(base, `copy-${id}`), { recursive: true, force: true });
      // An image cut short (a shared file system that lost a write, say): a resume refuses it.
      await truncate(path.join(store.dir(id), 'checkpoint', 'pages-1.img'), 1 << 20);
      await assert.rejects(store.open(id, store.dir(id)), (e: unknown) => e instanceof ChecksumError && /checkpoint fails its checksum/.test((e as Error).message));
      await assert.rejects(store.get(id, path.join(base, `copy2-${id}`)), ChecksumError);
      // An older manifest (the images' sha256 listed, or the tar stream's digest) is still checked
      // as such by a copy out; a resume does not hash 100 MiB for it.
      for (const digest of ['files', undefined] as const) {
        const entry = await hashObject(store.dir(id), 'checkpoint', digest ? { digest } : {});
        assert.equal(entry.digest, digest);
        const disk = await hashObject(store.dir(id), 'disk');
        const older = { ...manifest, objects: manifest.objects.map((o) => (o.name === 'checkpoint' ? entry : o.name === 'disk' ? disk : o)) };
        await writeFile(path.join(store.dir(id), MANIFEST), JSON.stringify(older));
        await store.open(id, store.dir(id));
        await store.get(id, path.join(base, `copy3-${id}`));
        await rm(path.join(base, `copy3-${id}`), { recursive: true, force: true });
        const f = await open(path.join(store.dir(id), 'checkpoint', 'core-1.img'), 'r+');
        const byte = Buffer.alloc(1);
        await f.read(byte, 0, 1, 100);
        await f.write(Buffer.from([byte[0]! ^ 1]), 0, 1, 100);
        await f.close();
        await assert.rejects(store.get(id, path.join(base, `copy4-${id}`)), ChecksumError, `${digest ?? 'stream'}: one bit of an image`);
      }
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
