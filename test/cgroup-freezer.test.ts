// The cgroup freezer the runtime writes directly (a pause freezes a sandbox before CRIU dumps it):
// on a real cgroup of this host, a process counting in a loop stops once freeze() resolves and
// goes on after thaw(); runc's state file is the only source of a freezer's place.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { freeze, freezerOf, isFrozen, thaw, type Freezer } from '../src/runtime/cgroup-freezer.ts';

const NAME = `nestbox-freezer-test-${process.pid}`;
// This host's layout: cgroup v1's freezer controller where it is mounted, else v2's unified tree.
const f: Freezer = existsSync('/sys/fs/cgroup/freezer/freezer.state') || existsSync('/sys/fs/cgroup/freezer/tasks')
  ? { version: 1, dir: path.join('/sys/fs/cgroup/freezer', NAME) }
  : { version: 2, dir: path.join('/sys/fs/cgroup', NAME) };
// In memory (tmpfs): a write to a disk file can wait on the host's journal behind other work's
// writeback, which is not what this test is about.
const counterFile = `/dev/shm/${NAME}.count`;
let child: ChildProcess;

before(async () => {
  await mkdir(f.dir);
  // A shell counting as fast as it can into a file: it changes unless it is frozen.
  child = spawn('sh', ['-c', `i=0; while :; do i=$((i+1)); echo $i > ${counterFile}; done`], { stdio: 'ignore' });
  await writeFile(path.join(f.dir, 'cgroup.procs'), String(child.pid));
});

after(async () => {
  await thaw(f).catch(() => undefined);
  child?.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 100));
  await rmdir(f.dir).catch(() => undefined);
  await rm(counterFile, { force: true });
});

const count = async () => Number((await readFile(counterFile, 'utf8').catch(() => '0')).trim() || 0);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('freeze resolves with every process stopped; thaw lets them go on; both again and again', async () => {
  for (let round = 0; round < 5; round++) {
    await sleep(20);
    await freeze(f);
    assert.equal(await isFrozen(f), true, 'the kernel reports the cgroup frozen');
    const frozenAt = await count();
    await sleep(100);
    assert.equal(await count(), frozenAt, `round ${round}: nothing counted while frozen`);
    await thaw(f);
    assert.equal(await isFrozen(f), false);
    const thawedAt = await count();
    // (a bound for a busy host, not a measure: it moves within ms when the host is quiet)
    let moved = false;
    for (let i = 0; i < 1000 && !moved; i++) {
      await sleep(10);
      moved = (await count()) !== thawedAt;
    }
    assert.ok(moved, `round ${round}: counting again after thaw`);
  }
});

test('thaw of a cgroup that is gone is not an error', async () => {
  await thaw({ version: f.version, dir: `${f.dir}-missing` });
});

test("a freezer's place comes only from runc's cgroup paths, under /sys/fs/cgroup, never through '..'", () => {
  assert.deepEqual(freezerOf({ freezer: '/sys/fs/cgroup/freezer/nestbox/x', memory: '/sys/fs/cgroup/memory/nestbox/x' }), { version: 1, dir: '/sys/fs/cgroup/freezer/nestbox/x' });
  assert.deepEqual(freezerOf({ '': '/sys/fs/cgroup/nestbox/x' }), { version: 2, dir: '/sys/fs/cgroup/nestbox/x' });
  assert.equal(freezerOf({ freezer: '/sys/fs/cgroup/freezer/../../../etc' }), null);
  assert.equal(freezerOf({ freezer: '/tmp/freezer' }), null);
  assert.equal(freezerOf({ freezer: 'sys/fs/cgroup/freezer/x' }), null);
  assert.equal(freezerOf({ freezer: 7 }), null);
  assert.equal(freezerOf(undefined), null);
});
