// End to end: sandboxes paused into an S3 store (a real S3 server, radosgw) and resumed by
// another agent; what a crash leaves is repaired; pause and resume timed beside the directory
// store. Real containers, real CRIU.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../src/runtime/command.ts';
import { sandboxPaths, snapshotPaths } from '../src/runtime/layout.ts';
import { S3SnapshotStore } from '../src/runtime/s3-snapshot-store.ts';
import { MANIFEST } from '../src/runtime/snapshot-store.ts';
import { DeleteObjectCommand } from '@aws-sdk/client-s3';
import { newSandboxId } from '../src/core/ids.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { exists } from '../src/runtime/fs-util.ts';
import { templateDir } from '../src/runtime/templates.ts';
import { COUNTER, createSandbox, eventually, exec, readCount, startTestAgent, TEST_ROOT, type TestAgent } from './helpers/agent-harness.ts';
import { dockerSaveArchive } from './helpers/image-archive.ts';
import { RUNNABLE_CONFIG, runnableLayers } from './helpers/runnable-image.ts';
import { startS3Server, type TestS3Server } from './helpers/s3-server.ts';

let s3: TestS3Server;
let a: TestAgent;
let b: TestAgent;
const bucket = `nestbox-e2e-${randomBytes(3).toString('hex')}`;

before(async () => {
  const t0 = performance.now();
  s3 = await startS3Server();
  process.stdout.write(`# the S3 server (swift) answered after ${(performance.now() - t0).toFixed(0)} ms\n`);
  // Two nodes: each its own data directory and local snapshot directory, one bucket.
  a = await startTestAgent({ config: { s3: s3.storeConfig(bucket, 'snapshots/') } });
  b = await startTestAgent({ config: { s3: s3.storeConfig(bucket, 'snapshots/') } });
});
after(async () => {
  await a?.stop();
  await b?.stop();
  await s3?.stop();
});


const localNames = async (t: TestAgent, id: string) => (await readdir(t.snapshotDir).catch(() => [] as string[])).filter((n) => n.includes(id));

describe('snapshots in an S3 store', () => {
  test('paused into S3 by one agent, resumed by another: memory, processes and files', async () => {
    const id = await createSandbox(a);
    await exec(a, id, COUNTER);
    await exec(a, id, 'echo kept > /home/user/note.txt; head -c 5000000 /dev/urandom > /home/user/blob; sha256sum /home/user/blob > /home/user/blob.sum');
    const before = await eventually(() => readCount(a, id), (n) => n > 0, 'the counter runs');
    const snap = await a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true });
    assert.equal(snap.memory, true);
    assert.deepEqual(await localNames(a, id), [], 'nothing of it stays on the first node');
    assert.ok((await a.agent.runtime.snapshotIds()).includes(id));
    assert.ok((await b.agent.runtime.snapshotIds()).includes(id), 'the other node sees it in the store');
    assert.equal((await b.json('GET', `/v1/snapshots/${id}`)).sandbox.sandboxId, id);

    await b.json('POST', `/v1/sandboxes/${id}/resume`);
    const resumed = await readCount(b, id);
    assert.ok(resumed >= before, `the counter went on from ${before} (now ${resumed})`);
    await eventually(() => readCount(b, id), (n) => n > resumed, 'the counter keeps counting');
    assert.equal((await exec(b, id, 'cat /home/user/note.txt')).stdout, 'kept\n');
    assert.equal((await exec(b, id, 'sha256sum -c /home/user/blob.sum >/dev/null && echo ok')).stdout, 'ok\n');
    assert.ok(!(await b.agent.runtime.snapshotIds()).includes(id), 'a resume consumes the snapshot');
    assert.deepEqual(await localNames(b, id), [], 'and leaves no download behind');
    await b.json('DELETE', `/v1/sandboxes/${id}`);
  });

  test('nodes starting together on a new bucket all prepare it (one creates it, the others find it theirs)', async () => {
    const fresh = `nestbox-e2e-${randomBytes(3).toString('hex')}`;
    await Promise.all(Array.from({ length: 4 }, () => new S3SnapshotStore(s3.storeConfig(fresh, 'snapshots/')).prepare()));
  });

  test('a snapshot whose manifest never got written is not resumable, and is listed as incomplete', async () => {
    const id = await createSandbox(a);
    await a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true });
    const store = a.agent.runtime.store as S3SnapshotStore;
    await store.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: `snapshots/${id}/${MANIFEST}` }));
    assert.ok(!(await b.agent.runtime.snapshotIds()).includes(id));
    assert.ok((await store.listIncomplete()).some((s) => s.id === id));
    assert.equal((await b.api('POST', `/v1/sandboxes/${id}/resume`)).status, 404);
    await a.agent.runtime.deleteSnapshot(id);
    assert.ok(!(await store.listIncomplete()).some((s) => s.id === id), 'deleting collects its objects');
  });

  test('a resume cut short by a crash is repaired: the download goes, the stored snapshot resumes', async () => {
    const id = await createSandbox(a);
    await exec(a, id, COUNTER);
    await exec(a, id, 'echo kept > /home/user/file');
    const before = await eventually(() => readCount(a, id), (n) => n > 0, 'the counter runs');
    await a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true });
    // What a resume on b leaves when b dies right after downloading the snapshot, moving its
    // disk into the sandbox directory and mounting it; and a download cut short.
    const cfg = b.agent.runtime.cfg;
    const p = sandboxPaths(cfg, id);
    const s = snapshotPaths(cfg, id);
    await b.agent.runtime.store.get(id, s.dir);
    await mkdir(p.disk, { recursive: true });
    await rename(s.diskImage, p.diskImage);
    await run(['mount', '-o', 'loop', p.diskImage, p.disk]);
    await mkdir(path.join(cfg.snapshotDir, `.${id}.download-0badf00d`));
    const notes = await b.agent.runtime.recover();
    assert.ok(notes.some((n) => n.startsWith(id) && /resume was cut short/.test(n)), notes.join('\n'));
    assert.deepEqual(await localNames(b, id), [], `no local copy is left (${notes.join('; ')})`);
    assert.ok((await b.agent.runtime.snapshotIds()).includes(id), 'the stored snapshot is untouched');
    await b.agent.runtime.kill(id); // what is left of the sandbox directory
    await b.json('POST', `/v1/sandboxes/${id}/resume`);
    assert.equal((await exec(b, id, 'cat /home/user/file')).stdout, 'kept\n');
    const now = await readCount(b, id);
    assert.ok(now >= before, `memory intact (${before} -> ${now})`);
    await b.agent.runtime.kill(id, { deleteSnapshot: true });
  });

  test('a pause cut short while uploading is completed from its staging at restart', async () => {
    const id = await createSandbox(a);
    await exec(a, id, 'echo staged > /home/user/file');
    const rt = a.agent.runtime;
    // Stop the store from completing: the pause fails after its dump, the staging stays whole.
    const store = rt.store;
    const put = store.put.bind(store);
    store.put = async () => {
      throw new Error('injected: the object store went away');
    };
    try {
      await assert.rejects(a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true }));
    } finally {
      store.put = put;
    }
    assert.ok(!(await rt.snapshotIds()).includes(id), 'nothing complete was stored');
    assert.ok((await localNames(a, id)).some((n) => n.includes('.partial-')), 'the staging is kept');
    const notes = await rt.recover();
    assert.ok(notes.some((n) => n.startsWith(id) && /snapshot was completed/.test(n)), notes.join('\n'));
    assert.deepEqual(await localNames(a, id), []);
    await b.json('POST', `/v1/sandboxes/${id}/resume`);
    assert.equal((await exec(b, id, 'cat /home/user/file')).stdout, 'staged\n');
    await b.json('DELETE', `/v1/sandboxes/${id}`);
  });

  test('pause and resume timed: directory store beside S3 store (printed, not asserted)', async () => {
    const dirAgent = await startTestAgent();
    const rounds = 3;
    const rows: string[] = [];
    try {
      for (const [name, t] of [['directory', dirAgent], ['s3', a]] as const) {
        const id = await createSandbox(t);
        // ~64 MiB of memory and ~32 MiB of files.
        await exec(t, id, `nohup python3 -c "x=bytearray(b'q'*64*1024*1024)
import time
while True: time.sleep(1)" >/dev/null 2>&1 & head -c 33554432 /dev/urandom > /home/user/data`);
        await new Promise((r) => setTimeout(r, 500));
        const pause: number[] = [];
        const resume: number[] = [];
        // The part of a pause spent storing the snapshot (hashing it; for S3, uploading it too).
        const store = t.agent.runtime.store;
        const put = store.put.bind(store);
        const stored: number[] = [];
        store.put = async (sid, staging) => {
          const t0 = performance.now();
          await put(sid, staging);
          stored.push(performance.now() - t0);
        };
        for (let i = 0; i < rounds; i++) {
          let t0 = performance.now();
          await t.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true });
          pause.push(performance.now() - t0);
          t0 = performance.now();
          await t.json('POST', `/v1/sandboxes/${id}/resume`);
          resume.push(performance.now() - t0);
        }
        store.put = put;
        await t.json('DELETE', `/v1/sandboxes/${id}`);
        const med = (xs: number[]) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)]!.toFixed(0);
        rows.push(`${name.padEnd(9)} pause ${pause.map((x) => x.toFixed(0)).join('/')} ms (median ${med(pause)}; of which storing ${stored.map((x) => x.toFixed(0)).join('/')}), resume ${resume.map((x) => x.toFixed(0)).join('/')} ms (median ${med(resume)})`);
      }
    } finally {
      await dirAgent.stop();
    }
    for (const r of rows) process.stdout.write(`# snapshot store timing (64 MiB process, 32 MiB of files, 2 GiB disk): ${r}\n`);
  });
});

describe('templates through the S3 store', () => {
  test('a template imported on one node is fetched by a node that lacks it; a delete removes it from the store', async () => {
    // A node with its own templates directory holding only base.
    const own = path.join(TEST_ROOT, `templates-s3-${randomBytes(3).toString('hex')}`);
    await mkdir(own, { recursive: true });
    await symlink(templateDir(runtimeConfigFromEnv(), 'base'), path.join(own, 'base'));
    await mkdir(`${own}-a`, { recursive: true });
    await symlink(templateDir(runtimeConfigFromEnv(), 'base'), path.join(`${own}-a`, 'base'));
    const c = await startTestAgent({ config: { s3: s3.storeConfig(bucket, 'snapshots/'), templatesDir: own } });
    const importer = await startTestAgent({ config: { s3: s3.storeConfig(bucket, 'snapshots/'), templatesDir: `${own}-a` } });
    try {
      const archive = await dockerSaveArchive({ layers: await runnableLayers(), ...RUNNABLE_CONFIG });
      const res = await importer.api('POST', '/v1/templates?name=s3-dist', new Uint8Array(archive), { 'content-type': 'application/octet-stream' });
      const lines = (await res.text()).split('\n').filter(Boolean).map((l) => JSON.parse(l));
      assert.equal(lines.at(-1).type, 'done', JSON.stringify(lines.at(-1)));
      assert.deepEqual(await c.agent.runtime.templates.list(), ['s3-dist'], 'the store holds it once imported');
      assert.equal(await exists(templateDir(c.agent.runtime.cfg, 's3-dist')), false);

      // The other node starts a sandbox of it: fetched, whole, with its owners and defaults.
      const id = await createSandbox(c, { template: 's3-dist' });
      const r = await exec(c, id, 'id -un; cat /srv/data/hello', { user: 'app' });
      assert.equal(r.exitCode, 0, r.stderr);
      assert.equal(r.stdout, 'app\nhi');
      assert.deepEqual((await readdir(own)).filter((n) => n.startsWith('.')), [], 'no fetch staging left');
      await c.json('DELETE', `/v1/sandboxes/${id}`);

      // A template the store does not have is "not found", not a download error.
      const missing = await c.api('POST', '/v1/sandboxes', {
        sandboxId: newSandboxId(), template: 'nowhere-tpl', envVars: {}, metadata: {}, allowInternetAccess: false,
      });
      assert.equal(missing.status, 404, await missing.text());

      assert.equal((await importer.api('DELETE', '/v1/templates/s3-dist')).status, 204);
      assert.deepEqual(await importer.agent.runtime.templates.list(), [], 'a deleted template leaves the store');
    } finally {
      await c.stop();
      await importer.stop();
      await rm(own, { recursive: true, force: true });
      await rm(`${own}-a`, { recursive: true, force: true });
    }
  });
});
