import assert from 'node:assert/strict';
import { mkdtemp, readdir, readlink, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { prepareCgroupYard, yardEntries } from '../src/runtime/cgroup-yard.ts';

const HYBRID_CGROUP = ['10:cpu,cpuacct:/', '9:name=systemd:/', '4:memory:/agent', '2:pids:/', '0::/', ''].join('\n');
const HYBRID_MOUNTS = [
  '31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755',
  '32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpuacct,cpu',
  '35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory,clone_children',
  '39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids',
  '40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd,release_agent=/x',
  '41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate',
  '50 23 0:32 /agent /mnt/memory\\040copy rw - cgroup cgroup rw,memory',
  '',
].join('\n');

test('cgroup yard: entries are named as CRIU looks them up, each at the mount of its hierarchy root', () => {
  assert.deepEqual(yardEntries(HYBRID_CGROUP, HYBRID_MOUNTS), [
    { name: 'cpu,cpuacct', mountPoint: '/sys/fs/cgroup/cpu,cpuacct' },
    { name: 'systemd', mountPoint: '/sys/fs/cgroup/systemd' },
    { name: 'memory', mountPoint: '/sys/fs/cgroup/memory' },
    { name: 'pids', mountPoint: '/sys/fs/cgroup/pids' },
    { name: 'unified', mountPoint: '/sys/fs/cgroup/unified' },
  ]);
});

test('cgroup yard: a cgroup v2 host has one entry, `unified`, at its cgroup2 mount', () => {
  assert.deepEqual(yardEntries('0::/system.slice/nestbox.service\n', '30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n'), [
    { name: 'unified', mountPoint: '/sys/fs/cgroup' },
  ]);
});

test('cgroup yard: none when a hierarchy has no mount of its root (CRIU then mounts its own)', () => {
  // Only a subtree of memory is mounted (an agent in a cgroup namespace, say).
  const mounts = HYBRID_MOUNTS.split('\n').filter((l) => !l.includes('/sys/fs/cgroup/memory')).join('\n');
  assert.equal(yardEntries(HYBRID_CGROUP, mounts), null);
  // A hierarchy missing altogether.
  assert.equal(yardEntries(`${HYBRID_CGROUP}7:blkio:/\n`, HYBRID_MOUNTS), null);
  assert.equal(yardEntries('', HYBRID_MOUNTS), null);
});

test('cgroup yard: made on this host, each entry a link to a mounted hierarchy, replaced whole at each start', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'yard-'));
  try {
    const yard = path.join(dir, 'cgroup-yard');
    assert.equal(await prepareCgroupYard(yard), yard);
    const names = await readdir(yard);
    assert.ok(names.length > 0);
    for (const name of names) {
      const target = await readlink(path.join(yard, name));
      assert.ok(target.startsWith('/sys/fs/cgroup'), `${name} -> ${target}`);
      assert.ok((await stat(path.join(yard, name))).isDirectory());
    }
    assert.equal(((await stat(yard)).mode & 0o777), 0o700);
    assert.equal(await prepareCgroupYard(yard), yard);
    assert.deepEqual((await readdir(yard)).sort(), names.sort());
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
