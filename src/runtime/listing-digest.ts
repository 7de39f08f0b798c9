// Digest "sizes" of a local snapshot's checkpoint or disk: the sha256 of a listing of its files
// (name, mode, owner and size; the checkpoint directory's mode and owner first), none of their
// contents. What the directory store writes for the snapshots it keeps: a snapshot there is
// restored in place, from the files a pause synced, so a content digest (sha256 of 100 MiB:
// ~95 ms of CPU per pause, and the pause of a busy 2-core host waited for it) would be computed
// and never read; the listing is checked at every resume instead (a missing, truncated or
// replaced image, or a disk of another size, is refused before CRIU sees it). Files are looked at
// without following links; anything but plain files with plain names is refused.
import { lstat, readdir } from 'node:fs/promises';
import path from 'node:path';
import { createHash } from 'node:crypto';

/** Printable ASCII without spaces: what CRIU names its images (the listing writes them as is). */
const PLAIN_NAME = /^[\x21-\x7e]+$/;

export async function sizesDigest(dir: string, name: 'checkpoint' | 'disk'): Promise<{ sha256: string; size: number }> {
  const listing = createHash('sha256');
  let size = 0;
  const line = (entry: string, st: { mode: number; uid: number; gid: number }, rest = '') =>
    listing.update(`${entry} ${(st.mode & 0o7777).toString(8)} ${st.uid} ${st.gid}${rest}\n`);
  // Looked at all at once (a resume waits for this), listed in order.
  const files = async (dir: string, names: string[]) => {
    const stats = await Promise.all(names.map((n) => lstat(path.join(dir, n))));
    stats.forEach((st, i) => {
      if (!st.isFile()) throw new Error(`${path.join(dir, names[i]!)} is not a plain file`);
      line(names[i]!, st, ` ${st.size}`);
      size += st.size;
    });
  };
  if (name === 'disk') {
    await files(dir, ['disk.img']);
  } else {
    const root = path.join(dir, 'checkpoint');
    const st = await lstat(root);
    if (!st.isDirectory()) throw new Error(`checkpoint images: ${root} is not a directory`);
    line('checkpoint/', st);
    // Byte order, as the other digests list them.
    const names = (await readdir(root)).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
    for (const n of names) if (!PLAIN_NAME.test(n)) throw new Error(`checkpoint image ${JSON.stringify(n)}: not a plain name`);
    await files(root, names);
  }
  return { sha256: listing.digest('hex'), size };
}
