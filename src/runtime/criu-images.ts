import { constants } from 'node:fs';
import { chmod, chown, lstat, open, readdir } from 'node:fs/promises';
import path from 'node:path';

/**
 * Restore opens the images as the sandbox's mapped root, so they are handed over to it and
 * kept private (0600: they hold the sandbox's memory). One exception: CRIU reads the time
 * namespace image from a child that may not have its uid mapping yet (seen failing about one
 * restore in thirty with EACCES), so that image - clock offsets only - is world-readable and
 * the directory traversable, not listable.
 *
 * CRIU writes the images itself, but they describe what the sandbox did: every entry is
 * changed through a descriptor opened without following links, and anything that is not a
 * plain file is refused rather than handed over.
 */
export async function handOverImages(dir: string, uid: number): Promise<void> {
  const st = await lstat(dir);
  if (!st.isDirectory()) throw new Error(`checkpoint images: ${dir} is not a directory`);
  await chown(dir, uid, uid);
  await chmod(dir, 0o711);
  // The files side by side (a dump makes tens of them; a pause waits for this).
  const results = await Promise.allSettled((await readdir(dir)).map(async (name) => {
    const f = await open(path.join(dir, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    try {
      if (!(await f.stat()).isFile()) throw new Error(`checkpoint images: ${name} is not a plain file`);
      await f.chown(uid, uid);
      await f.chmod(name.startsWith('timens-') ? 0o644 : 0o600);
    } finally {
      await f.close();
    }
  }));
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}
