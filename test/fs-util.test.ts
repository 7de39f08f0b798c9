import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { run } from '../src/runtime/command.ts';
import { createDisk, loopDeviceOf, mountDisk, unmountDisk, waitForLoopDetach } from '../src/runtime/disk.ts';
import { discardTree, exists, removeDiscarded } from '../src/runtime/fs-util.ts';
import { waitUntil } from '../src/runtime/retry.ts';

test('discardTree frees the path at once and removes the tree in the background', async () => {
  const parent = await mkdtemp(path.join(tmpdir(), 'discard-'));
  try {
    const dir = path.join(parent, 'sandbox');
    await mkdir(path.join(dir, 'a', 'b'), { recursive: true });
    await writeFile(path.join(dir, 'a', 'b', 'file'), 'x');
    await discardTree(dir);
    assert.equal(await exists(dir), false, 'the path is free when it resolves');
    await mkdir(dir); // (and can be taken again at once)
    assert.ok(await waitUntil(async () => (await readdir(parent)).length === 1, { timeoutMs: 5000, maxDelayMs: 20 }), 'the tree went');
    await discardTree(path.join(parent, 'missing')); // nothing to do
  } finally {
    await rm(parent, { recursive: true, force: true });
  }
});

test('removeDiscarded takes what a removal cut short left, never deleting through a mount', async () => {
  const parent = await mkdtemp(path.join(tmpdir(), 'discard-'));
  const outside = await mkdtemp(path.join(tmpdir(), 'outside-'));
  try {
    await mkdir(path.join(parent, '.discarded-one-0000aaaa', 'x'), { recursive: true });
    await mkdir(path.join(parent, '.discarded-two-0000bbbb', 'bound'), { recursive: true });
    await mkdir(path.join(parent, 'kept'));
    await writeFile(path.join(outside, 'precious'), 'keep me');
    await run(['mount', '--bind', outside, path.join(parent, '.discarded-two-0000bbbb', 'bound')]);
    try {
      assert.deepEqual(await removeDiscarded(parent), ['.discarded-one-0000aaaa']);
      assert.equal(await readFile(path.join(outside, 'precious'), 'utf8'), 'keep me');
      assert.deepEqual((await readdir(parent)).sort(), ['.discarded-two-0000bbbb', 'kept']);
    } finally {
      await run(['umount', path.join(parent, '.discarded-two-0000bbbb', 'bound')]);
    }
    assert.deepEqual(await removeDiscarded(parent), ['.discarded-two-0000bbbb']);
    assert.deepEqual(await readdir(parent), ['kept']);
  } finally {
    await rm(parent, { recursive: true, force: true });
    await rm(outside, { recursive: true, force: true });
  }
});

test('waitForLoopDetach sees a loop device attached to an image (sysfs) until it is detached', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'loop-'));
  const image = path.join(dir, 'disk.img');
  await writeFile(image, Buffer.alloc(1 << 20));
  const device = (await run(['losetup', '--find', '--show', image])).stdout.trim();
  try {
    assert.equal(await waitForLoopDetach(image, { timeoutMs: 100 }), false, `${device} is attached`);
    assert.equal(await waitForLoopDetach(path.join(dir, 'other.img'), { timeoutMs: 100 }), true, 'another file has none');
  } finally {
    await run(['losetup', '-d', device]);
  }
  try {
    assert.equal(await waitForLoopDetach(image, { timeoutMs: 2000 }), true, 'detached');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('loopDeviceOf names the loop device a disk is mounted from, and nothing for a mount point of another image', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'loop-'));
  const image = path.join(dir, 'disk.img');
  const mountPoint = path.join(dir, 'mnt');
  await mkdir(mountPoint);
  await createDisk(image, 16);
  assert.equal(await loopDeviceOf(image, mountPoint), null, 'not mounted');
  await mountDisk(image, mountPoint);
  let device: string | null = null;
  try {
    device = await loopDeviceOf(image, mountPoint);
    const listed = (await run(['losetup', '--noheadings', '-O', 'NAME', '-j', image])).stdout.trim();
    assert.equal(`/dev/${device}`, listed);
    assert.equal(await loopDeviceOf(path.join(dir, 'other.img'), mountPoint), null, 'a mount of another image');
    assert.equal(await waitForLoopDetach(image, { timeoutMs: 100, device }), false, 'still mounted');
  } finally {
    await unmountDisk(mountPoint);
  }
  try {
    assert.equal(await waitForLoopDetach(image, { timeoutMs: 2000, device }), true, 'detached after the unmount');
    assert.equal(await loopDeviceOf(image, mountPoint), null, 'unmounted');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
