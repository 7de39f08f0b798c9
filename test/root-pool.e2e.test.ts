// The pool of sandbox directories laid out ahead (src/runtime/root-pool.ts), on real mounts:
// what a create takes is a fresh sandbox's layout over the template's current files; an entry
// made over a replaced template is never taken; an agent that starts after a crash empties what
// the dead one left mounted; a stop leaves nothing mounted.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { runtimeConfigFromEnv, type RuntimeConfig } from '../src/runtime/config.ts';
import { DiskPool } from '../src/runtime/disk.ts';
import { unmount } from '../src/runtime/fs-util.ts';
import { sandboxPathsAt } from '../src/runtime/layout.ts';
import { RootPool } from '../src/runtime/root-pool.ts';
import { eventually, TEST_ROOT } from './helpers/agent-harness.ts';

let base: string;
let cfg: RuntimeConfig;
const SIZE_MB = 64;
/** The shape a create asks for (this pool makes directories only: any shape takes them). */
const SHAPE = { resources: { cpuCount: 2, memoryMB: 512, pidsLimit: 512 }, allowInternet: true };
const TAKEN = { container: null };

async function mountsUnder(dir: string): Promise<string[]> {
  const table = await readFile('/proc/self/mountinfo', 'utf8');
  return table.split('\n').map((l) => l.split(' ')[4] ?? '').filter((t) => t.startsWith(dir + '/'));
}

async function writeTemplate(marker: string) {
  const staged = path.join(cfg.templatesDir, 'tiny', `rootfs.${marker}`);
  await mkdir(path.join(staged, 'etc'), { recursive: true });
  await writeFile(path.join(staged, 'etc', 'which'), marker);
  await rename(staged, path.join(cfg.templatesDir, 'tiny', 'rootfs')); // into place, as templates are
}

/** What a create would do with a taken entry at its end: its mounts go, then the directory. */
async function removeTaken(dir: string) {
  const p = sandboxPathsAt(dir);
  for (const m of [p.rootfs, p.disk]) await unmount(m);
  await rm(dir, { recursive: true, force: true });
}

function pool(dir = path.join(base, 'root-pool'), size = 1) {
  const disks = new DiskPool(path.join(base, 'disk-pool'), SIZE_MB, 0);
  return new RootPool(cfg, dir, disks, 'tiny', SIZE_MB, null, size);
}

before(async () => {
  await mkdir(TEST_ROOT, { recursive: true });
  base = await mkdtemp(path.join(TEST_ROOT, 'root-pool-'));
  cfg = { ...runtimeConfigFromEnv(), dataDir: base, templatesDir: path.join(base, 'templates') };
  await mkdir(path.join(cfg.templatesDir, 'tiny'), { recursive: true });
  await writeTemplate('one');
});

after(async () => {
  assert.deepEqual(await mountsUnder(base), [], 'nothing left mounted');
  await rm(base, { recursive: true, force: true });
});

test('a taken entry is a new sandbox\'s layout over the template: disk and overlay mounted, upper empty, its own boot id', async () => {
  const p1 = pool();
  await p1.start();
  try {
    await eventually(async () => p1.readyCount, (n) => n === 1, 'a ready entry');
    const dir = path.join(base, 'sandboxes', 'aaaaaaaaaaaaaaaaaaa1');
    assert.deepEqual(await p1.take('tiny', SIZE_MB, dir, SHAPE), TAKEN);
    const p = sandboxPathsAt(dir);
    assert.deepEqual((await mountsUnder(dir)).sort(), [p.disk, p.rootfs].sort(), 'mounted where the sandbox is now');
    assert.equal(await readFile(path.join(p.rootfs, 'etc', 'which'), 'utf8'), 'one');
    assert.equal((await stat(p.upper)).uid, cfg.uidShift, "the upper layer is the sandbox root's");
    assert.equal((await stat(p.socketDir)).uid, cfg.uidShift);
    assert.equal((await stat(p.initBinary)).mode & 0o777, 0o555);
    const bootId = await readFile(path.join(p.etcDir, 'boot_id'), 'utf8');
    assert.match(bootId, /^[0-9a-f-]{36}\n?$/);
    assert.equal(await p1.take('other', SIZE_MB, path.join(base, 'x'), SHAPE), null, 'another template is never taken');
    assert.equal(await p1.take('tiny', SIZE_MB * 2, path.join(base, 'x'), SHAPE), null, 'another size is never taken');
    // The next entry has a boot id of its own.
    p1.refill();
    await eventually(async () => p1.readyCount, (n) => n === 1, 'a second ready entry');
    const dir2 = path.join(base, 'sandboxes', 'aaaaaaaaaaaaaaaaaaa2');
    assert.deepEqual(await p1.take('tiny', SIZE_MB, dir2, SHAPE), TAKEN);
    assert.notEqual(await readFile(path.join(sandboxPathsAt(dir2).etcDir, 'boot_id'), 'utf8'), bootId);
    for (const d of [dir, dir2]) await removeTaken(d);
  } finally {
    await p1.stop();
  }
});

test('an entry made over a template that was replaced since is discarded, never taken', async () => {
  const p1 = pool();
  await p1.start();
  try {
    await eventually(async () => p1.readyCount, (n) => n === 1, 'a ready entry');
    await rm(path.join(cfg.templatesDir, 'tiny', 'rootfs'), { recursive: true });
    await writeTemplate('two');
    const dir = path.join(base, 'sandboxes', 'aaaaaaaaaaaaaaaaaaa3');
    assert.equal(await p1.take('tiny', SIZE_MB, dir, SHAPE), null);
    assert.deepEqual(await mountsUnder(path.join(base, 'root-pool')), [], 'the stale entry is unmounted and gone');
    p1.refill();
    await eventually(async () => p1.readyCount, (n) => n === 1, 'an entry over the new template');
    assert.deepEqual(await p1.take('tiny', SIZE_MB, dir, SHAPE), TAKEN);
    assert.equal(await readFile(path.join(sandboxPathsAt(dir).rootfs, 'etc', 'which'), 'utf8'), 'two');
    await removeTaken(dir);
  } finally {
    await p1.stop();
  }
});

test('a pool started over what a dead agent left mounted empties it first; stop() leaves nothing mounted', async () => {
  const dead = pool();
  await dead.start();
  await eventually(async () => dead.readyCount, (n) => n === 1, 'a ready entry');
  const left = await mountsUnder(path.join(base, 'root-pool'));
  assert.equal(left.length, 2, 'the dead agent\'s entry: disk and overlay');
  // (the dead pool is never stopped: its process died)
  const next = pool();
  await next.start();
  const now = await mountsUnder(path.join(base, 'root-pool'));
  assert.ok(left.every((m) => !now.includes(m)), `the dead agent's mounts are gone: ${now.join(', ')}`);
  await eventually(async () => next.readyCount, (n) => n === 1, 'a ready entry of its own');
  await next.stop();
  assert.deepEqual(await mountsUnder(path.join(base, 'root-pool')), []);
});

test('a refill waits while an entry is still ready and starts at once when none is; filled() waits for it; stop() cancels it', async () => {
  const p2 = pool(path.join(base, 'root-pool'), 2);
  await p2.start();
  const taken: string[] = [];
  const take = async () => {
    const dir = path.join(base, 'sandboxes', `bbbbbbbbbbbbbbbbbbb${taken.length}`);
    assert.deepEqual(await p2.take('tiny', SIZE_MB, dir, SHAPE), TAKEN);
    taken.push(dir);
  };
  try {
    await p2.filled();
    assert.equal(p2.readyCount, 2, 'full once started');
    await take();
    p2.refill(); // one still ready: this refill waits for its moment
    await p2.filled();
    assert.equal(p2.readyCount, 2, 'filled() waited for the waiting refill');
    await take();
    p2.refill();
    await take();
    p2.refill(); // none ready: the waiting refill makes way for one at once
    await p2.filled();
    assert.equal(p2.readyCount, 2, 'both entries made again');
    await take();
    p2.refill(); // waiting when the pool stops
  } finally {
    await p2.stop();
  }
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(p2.readyCount, 0, 'a stopped pool makes nothing');
  assert.deepEqual(await mountsUnder(path.join(base, 'root-pool')), [], 'the refill that was waiting never ran');
  for (const d of taken) await removeTaken(d);
});
