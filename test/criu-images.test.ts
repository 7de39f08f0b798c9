import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { lstat, mkdir, mkdtemp, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { handOverImages } from '../src/runtime/criu-images.ts';

const UID = 123456;

async function imagesDir() {
  const root = await mkdtemp(path.join(tmpdir(), 'images-'));
  const dir = path.join(root, 'images');
  await mkdir(dir, { mode: 0o700 });
  await writeFile(path.join(dir, 'pages-1.img'), 'memory');
  await writeFile(path.join(dir, 'timens-0.img'), 'offsets');
  const outside = path.join(root, 'host-file');
  await writeFile(outside, 'host', { mode: 0o600 });
  return { root, dir, outside };
}

test('handOverImages gives the images to the mapped root, private but for the time namespace image', async () => {
  const { root, dir } = await imagesDir();
  try {
    await handOverImages(dir, UID);
    const d = await stat(dir);
    assert.equal(d.uid, UID);
    assert.equal(d.mode & 0o777, 0o711);
    const pages = await stat(path.join(dir, 'pages-1.img'));
    assert.deepEqual([pages.uid, pages.gid, pages.mode & 0o777], [UID, UID, 0o600]);
    const timens = await stat(path.join(dir, 'timens-0.img'));
    assert.deepEqual([timens.uid, timens.mode & 0o777], [UID, 0o644]);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('handOverImages refuses a link or a fifo among the images and never changes what a link names', async () => {
  for (const make of ['link', 'fifo', 'dir-link'] as const) {
    const { root, dir, outside } = await imagesDir();
    try {
      let target = dir;
      if (make === 'link') await symlink(outside, path.join(dir, 'core-1.img'));
      if (make === 'fifo') execFileSync('mkfifo', [path.join(dir, 'core-1.img')]);
      if (make === 'dir-link') {
        target = path.join(root, 'images-link');
        await symlink(dir, target);
      }
      await assert.rejects(handOverImages(target, UID), `${make} is refused`);
      const host = await lstat(outside);
      assert.deepEqual([host.uid, host.mode & 0o777], [0, 0o600], `${make}: the host file is untouched`);
      if (make === 'dir-link') assert.equal((await stat(dir)).uid, 0, 'the directory behind the link is untouched');
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  }
});
