import { chmod, readdir } from 'node:fs/promises';
import path from 'node:path';
import { chownTree } from './fs-util.ts';

/**
 * Restore opens the images as the sandbox's mapped root, so they are handed over to it and
 * kept private (0600: they hold the sandbox's memory). One exception: CRIU reads the time
 * namespace image from a child that may not have its uid mapping yet (seen failing about one
 * restore in thirty with EACCES), so that image - clock offsets only - is world-readable and
 * the directory traversable, not listable.
 */
export async function handOverImages(dir: string, uid: number): Promise<void> {
  await chownTree(dir, uid, uid);
  await chmod(dir, 0o711);
  for (const name of await readdir(dir)) {
    await chmod(path.join(dir, name), name.startsWith('timens-') ? 0o644 : 0o600);
  }
}
