// Templates distributed through the snapshot store, without containers: one node publishes a
// template from its own templates directory, another (its own templates directory, the same
// store) fetches it. Run against both forms: the directory store (a snapshot directory the
// nodes share) and the S3 store on a real S3 server (scripts/setup.sh installs it).
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, lchown, chown, lstat, mkdir, open, readdir, readFile, readlink, rename, rm, symlink, writeFile, utimes } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { DeleteObjectCommand, PutObjectCommand } from '@aws-sdk/client-s3';
import { newSandboxId } from '../src/core/ids.ts';
import { DirectorySnapshotStore } from '../src/runtime/directory-snapshot-store.ts';
import { DirectoryTemplates, STORED_TEMPLATES_DIR } from '../src/runtime/directory-templates.ts';
import { S3SnapshotStore } from '../src/runtime/s3-snapshot-store.ts';
import { collectIncomplete } from '../src/runtime/snapshot-store.ts';
import { createTemplateDistribution, S3Templates, type TemplateDistribution } from '../src/runtime/template-distribution.ts';
import { TEST_ROOT } from './helpers/agent-harness.ts';
import { startS3Server, type TestS3Server } from './helpers/s3-server.ts';

const SHIFT = 100000;
let base: string;
let s3: TestS3Server;

before(async () => {
  base = path.join(TEST_ROOT, `tpl-dist-${randomBytes(4).toString('hex')}`);
  await mkdir(base, { recursive: true });
  s3 = await startS3Server();
});
after(async () => {
  await s3?.stop();
  await rm(base, { recursive: true, force: true });
});

/** A node's own templates directory. */
async function templatesDir(): Promise<string> {
  const dir = path.join(base, `templates-${randomBytes(3).toString('hex')}`);
  await mkdir(dir, { recursive: true });
  return dir;
}

/**
 * A template as an import leaves it: a rootfs of the sandboxes' mapped owners with a setuid
 * binary, a private file of another user, a link, a sticky directory, a sparse file; template.json.
 */
async function makeTemplate(dir: string, name: string, extra = ''): Promise<void> {
  const t = path.join(dir, name);
  const root = path.join(t, 'rootfs');
  for (const d of ['etc', 'usr/bin', 'home/app', 'tmp', 'var']) await mkdir(path.join(root, d), { recursive: true });
  await writeFile(path.join(root, 'etc/hello'), `hello ${name}${extra}\n`);
  await writeFile(path.join(root, 'usr/bin/tool'), randomBytes(70_000));
  await chmod(path.join(root, 'usr/bin/tool'), 0o4755);
  await writeFile(path.join(root, 'home/app/secret'), 'only app');
  await chmod(path.join(root, 'home/app/secret'), 0o600);
  await chown(path.join(root, 'home/app'), SHIFT + 1000, SHIFT + 1000);
  await chown(path.join(root, 'home/app/secret'), SHIFT + 1000, SHIFT + 1000);
  await chmod(path.join(root, 'tmp'), 0o1777);
  await symlink('usr/bin', path.join(root, 'bin'));
  const big = await open(path.join(root, 'var/big'), 'w');
  await big.truncate(8 * 1024 * 1024);
  await big.write(randomBytes(4096), 0, 4096, 4 * 1024 * 1024);
  await big.close();
  for (const p of ['etc', 'etc/hello', 'usr', 'usr/bin', 'usr/bin/tool', 'home', 'tmp', 'var', 'var/big', '.']) {
    await chown(path.join(root, p), SHIFT, SHIFT);
  }
  await lchown(path.join(root, 'bin'), SHIFT, SHIFT);
  await utimes(path.join(root, 'etc/hello'), 1_600_000_000, 1_600_000_000);
  await chmod(root, 0o755);
  await writeFile(path.join(t, 'template.json'), JSON.stringify({ name, source: 'docker', env: { A: '1' } }));
  await chmod(t, 0o755);
}

/** Everything that makes a template what it is: each entry's type, mode, owner, size, mtime, bytes or target. */
async function tree(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string) => {
    for (const name of (await readdir(path.join(dir, rel))).sort()) {
      const p = path.join(rel, name);
      const st = await lstat(path.join(dir, p));
      const what = st.isSymbolicLink() ? `-> ${await readlink(path.join(dir, p))}`
        : st.isFile() ? createHash('sha256').update(await readFile(path.join(dir, p))).digest('hex') : '';
      out.push(`${p} ${st.mode.toString(8)} ${st.uid}:${st.gid} ${st.isDirectory() ? '' : st.size} ${Math.floor(st.mtimeMs / 1000)} ${what}`);
      if (st.isDirectory()) await walk(p);
    }
  };
  await walk('');
  return out;
}

interface Form {
  name: string;
  /** A node's distribution: its own templates directory, the store shared with the others. */
  node: (templatesDir: string) => TemplateDistribution;
  /** Replaces the stored tar's bytes. */
  corrupt: (name: string) => Promise<void>;
  /** Removes the manifest, as a publish cut short before it would leave things. */
  dropManifest: (name: string) => Promise<void>;
}

const sharedSnapshotDir = () => path.join(base, 'shared-snapshots');
let s3Store: S3SnapshotStore;

const forms: Form[] = [
  {
    name: 'directory store',
    node: (dir) => createTemplateDistribution({ templatesDir: dir }, new DirectorySnapshotStore(sharedSnapshotDir())),
    corrupt: async (name) => {
      const f = await open(path.join(sharedSnapshotDir(), STORED_TEMPLATES_DIR, name, 'template.tar'), 'r+');
      await f.write(Buffer.from('corrupt'), 0, 7, 10_000);
      await f.close();
    },
    dropManifest: (name) => rm(path.join(sharedSnapshotDir(), STORED_TEMPLATES_DIR, name, 'manifest.json')),
  },
  {
    name: 'S3 store',
    node: (dir) => createTemplateDistribution({ templatesDir: dir }, s3Store),
    corrupt: async (name) => {
      const Key = `${s3Store.cfg.prefix}templates/${name}/template.tar`;
      await s3Store.client.send(new DeleteObjectCommand({ Bucket: s3Store.cfg.bucket, Key }));
      await s3Store.client.send(new PutObjectCommand({ Bucket: s3Store.cfg.bucket, Key, Body: randomBytes(20_000) }));
    },
    dropManifest: async (name) => {
      await s3Store.client.send(new DeleteObjectCommand({ Bucket: s3Store.cfg.bucket, Key: `${s3Store.cfg.prefix}templates/${name}/manifest.json` }));
    },
  },
];

for (const form of forms) {
  describe(`template distribution: ${form.name}`, () => {
    before(async () => {
      s3Store ??= new S3SnapshotStore(s3.storeConfig(`tpl-${randomBytes(3).toString('hex')}`, 'snapshots/'));
      await s3Store.prepare();
    });

    test('the store form matches the snapshot store', async () => {
      const d = form.node(await templatesDir());
      assert.ok(form.name === 'S3 store' ? d instanceof S3Templates : d instanceof DirectoryTemplates, d.constructor.name);
    });

    test('published by one node, fetched whole by another: the same bytes, owners, modes and links; nothing else left', async () => {
      const [dirA, dirB] = [await templatesDir(), await templatesDir()];
      const [a, b] = [form.node(dirA), form.node(dirB)];
      await makeTemplate(dirA, 'moved');
      await a.publish('moved');
      assert.ok((await b.list()).includes('moved'), 'the other node sees it in the store');
      assert.equal(await b.fetch('moved'), true);
      assert.deepEqual(await tree(path.join(dirB, 'moved')), await tree(path.join(dirA, 'moved')));
      assert.deepEqual(await readdir(dirB), ['moved'], 'no staging left');
      assert.equal(await b.fetch('moved'), true, 'a second fetch finds it in place');
      assert.equal(await b.fetch('nowhere'), false, 'a template the store lacks is not fetched');
      assert.deepEqual(await readdir(dirB), ['moved']);
      await assert.rejects(a.publish('absent'), /not on this node/);
      await assert.rejects(b.fetch('../moved'), /invalid template name/);
    });

    test('a published template replaces the earlier copy', async () => {
      const dirA = await templatesDir();
      const a = form.node(dirA);
      await makeTemplate(dirA, 'again');
      await a.publish('again');
      await rm(path.join(dirA, 'again'), { recursive: true });
      await makeTemplate(dirA, 'again', ' (second)');
      await a.publish('again');
      const dirC = await templatesDir();
      assert.equal(await form.node(dirC).fetch('again'), true);
      assert.equal(await readFile(path.join(dirC, 'again/rootfs/etc/hello'), 'utf8'), 'hello again (second)\n');
    });

    test('a corrupted tar is refused and nothing is left in the fetching node', async () => {
      const [dirA, dirB] = [await templatesDir(), await templatesDir()];
      await makeTemplate(dirA, 'broken');
      await form.node(dirA).publish('broken');
      await form.corrupt('broken');
      await assert.rejects(form.node(dirB).fetch('broken'), /fails its checksum/);
      assert.deepEqual(await readdir(dirB), []);
    });

    test('a template without its manifest is not in the store', async () => {
      const [dirA, dirB] = [await templatesDir(), await templatesDir()];
      await makeTemplate(dirA, 'unsealed');
      await form.node(dirA).publish('unsealed');
      await form.dropManifest('unsealed');
      assert.ok(!(await form.node(dirB).list()).includes('unsealed'));
      assert.equal(await form.node(dirB).fetch('unsealed'), false);
      assert.deepEqual(await readdir(dirB), []);
    });

    test('remove: gone from the list and from the store', async () => {
      const [dirA, dirB] = [await templatesDir(), await templatesDir()];
      const a = form.node(dirA);
      await makeTemplate(dirA, 'gone');
      await a.publish('gone');
      assert.ok((await a.list()).includes('gone'));
      await a.remove('gone');
      assert.ok(!(await a.list()).includes('gone'));
      assert.ok(!(await form.node(dirB).list()).includes('gone'));
      assert.equal(await form.node(dirB).fetch('gone'), false);
      await a.remove('gone'); // idempotent
    });

    test('nodes sharing the templates directory too: publishing is harmless, fetching finds it in place', async () => {
      const shared = await templatesDir();
      const [a, b] = [form.node(shared), form.node(shared)];
      await makeTemplate(shared, 'both');
      const before = await tree(path.join(shared, 'both'));
      await a.publish('both');
      assert.equal(await b.fetch('both'), true);
      assert.deepEqual(await tree(path.join(shared, 'both')), before, 'the template is untouched');
      assert.deepEqual(await readdir(shared), ['both']);
    });
  });
}

describe('templates in the directory store', () => {
  test("the snapshot store's walks skip .templates: not a snapshot, not incomplete, never collected", async () => {
    const root = path.join(base, `snapshots-${randomBytes(3).toString('hex')}`);
    const store = new DirectorySnapshotStore(root);
    await store.prepare();
    const dirA = await templatesDir();
    const a = createTemplateDistribution({ templatesDir: dirA }, store);
    await makeTemplate(dirA, 'kept');
    await a.publish('kept');
    // A publish cut short beside it (a tar being written, no manifest).
    await mkdir(path.join(root, STORED_TEMPLATES_DIR, 'halfway'));
    await writeFile(path.join(root, STORED_TEMPLATES_DIR, 'halfway', '.template.tar.partial'), 'x');
    const id = newSandboxId();
    const staging = path.join(root, `.${id}.partial-1`);
    await mkdir(staging);
    await writeFile(path.join(staging, 'snapshot.json'), JSON.stringify({ sandbox: { sandboxId: id } }));
    await store.put(id, staging);

    assert.deepEqual(await store.list(), [id]);
    assert.deepEqual(await store.listIncomplete(), []);
    assert.deepEqual(await collectIncomplete(store, 0, Date.now() + 86_400_000), []);
    await store.prepare(); // an agent's start
    assert.deepEqual((await readdir(root)).sort(), [STORED_TEMPLATES_DIR, id].sort());
    assert.deepEqual(await a.list(), ['kept'], 'complete ones only');
    const dirB = await templatesDir();
    assert.equal(await createTemplateDistribution({ templatesDir: dirB }, store).fetch('kept'), true);
    await store.delete(id);
    assert.deepEqual(await a.list(), ['kept']);
  });

  test('links in the store are not followed: not listed, not fetched, not written through', async () => {
    const root = path.join(base, `snapshots-${randomBytes(3).toString('hex')}`);
    const dirA = await templatesDir();
    const a = new DirectoryTemplates({ templatesDir: dirA }, root);
    await makeTemplate(dirA, 'real');
    await makeTemplate(dirA, 'other');
    await a.publish('real');
    // The name's directory replaced by a link to a complete template elsewhere.
    const elsewhere = path.join(base, `elsewhere-${randomBytes(3).toString('hex')}`);
    await rename(path.join(a.root, 'real'), elsewhere);
    await symlink(elsewhere, path.join(a.root, 'linked'));
    assert.deepEqual(await a.list(), []);
    const dirB = await templatesDir();
    const b = new DirectoryTemplates({ templatesDir: dirB }, root);
    await assert.rejects(b.fetch('linked'), /is not a directory \(a link\)/);
    assert.deepEqual(await readdir(dirB), []);
    // The manifest a link to a real one.
    await mkdir(path.join(a.root, 'filelink'));
    await symlink(path.join(elsewhere, 'manifest.json'), path.join(a.root, 'filelink', 'manifest.json'));
    assert.deepEqual(await a.list(), []);
    await assert.rejects(b.fetch('filelink'), /is a link/);
    // A publish does not write through a link in the name's place, nor through .templates as a link.
    await rename(path.join(a.root, 'linked'), path.join(base, `moved-${randomBytes(3).toString('hex')}`));
    await symlink(elsewhere, path.join(a.root, 'other'));
    await assert.rejects(a.publish('other'), /is not a directory \(a link\)/);
    assert.deepEqual((await readdir(elsewhere)).sort(), ['manifest.json', 'template.tar'], 'nothing written where the link points');
    const tarBefore = await readFile(path.join(elsewhere, 'template.tar'));
    await rm(a.root, { recursive: true });
    await symlink(elsewhere, a.root);
    await assert.rejects(a.publish('other'), /is not a directory \(a link\)/);
    assert.deepEqual(await readFile(path.join(elsewhere, 'template.tar')), tarBefore);
    await assert.rejects(a.remove('real'), /is not a directory \(a link\)/);
    assert.deepEqual((await readdir(elsewhere)).sort(), ['manifest.json', 'template.tar'], 'a remove does not reach through it');
  });
});
