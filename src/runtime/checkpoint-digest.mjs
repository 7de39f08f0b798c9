// The digests of checkpoint images, and the follow that syncs a dump's images while CRIU writes
// them (the threads of checkpoint-hasher.ts run these; plain JavaScript, which a worker thread
// loads without the agent's TypeScript loader). No messages here, only files in, digests out.
import { createHash } from 'node:crypto';
import { closeSync, constants, fdatasync as fdatasyncCallback, fstatSync, lstatSync, openSync, readdirSync, readSync } from 'node:fs';
import { promisify } from 'node:util';
import path from 'node:path';

const TAR_BLOCK = 512;
const TAR_RECORD = 20 * TAR_BLOCK;
// Largest size, uid and gid a header's octal fields hold (GNU tar switches to base-256 beyond).
const TAR_MAX_SIZE = 0o77777777777;
const TAR_MAX_ID = 0o7777777;
const PIECE = 1 << 20;
/** While a dump runs, what it wrote is sent to the disk in steps of this much (see followDump). */
const SYNC_EVERY = 16 << 20;
/** CRIU's memory images: the bulk of a dump, written front to back while it runs. */
const PAGES_IMAGE = /^pages-[0-9]+\.img$/;
const OPEN_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
/** Printable ASCII without spaces: what CRIU names its images, and what both digests write as is. */
const PLAIN_NAME = /^[\x21-\x7e]+$/;
const fdatasync = promisify(fdatasyncCallback);

/**
 * The checkpoint object's manifest entry without tar: the very bytes `objectStream` makes for a
 * checkpoint directory of plain files (GNU format: the directory's header, then each file's
 * header and contents in name order, mtimes 0, numeric owners, two zero blocks, padded to a
 * 10 KiB record), hashed as the files are read in large pieces. Several times cheaper than tar
 * through a pipe. Anything this does not write the way tar does (a long or non-ASCII name, a
 * link or anything but a plain file, sizes or ids beyond the octal fields) gets null: tar's own
 * stream is hashed then. Files are opened without following links.
 */
export function checkpointTarDigest(dir) {
  const root = path.join(dir, 'checkpoint');
  const st = lstatSync(root);
  if (!st.isDirectory() || st.uid > TAR_MAX_ID || st.gid > TAR_MAX_ID) return null;
  const names = imageNames(root);
  if (names.some((n) => !PLAIN_NAME.test(n) || `checkpoint/${n}`.length >= 100)) return null;
  const h = createHash('sha256');
  let size = 0;
  const put = (b) => {
    h.update(b);
    size += b.length;
  };
  put(tarHeader('checkpoint/', st.mode, st.uid, st.gid, 0, '5'));
  const buf = Buffer.allocUnsafe(PIECE);
  for (const name of names) {
    const fd = openSync(path.join(root, name), OPEN_FLAGS);
    try {
      const fst = fstatSync(fd);
      if (!fst.isFile() || fst.nlink !== 1 || fst.size > TAR_MAX_SIZE || fst.uid > TAR_MAX_ID || fst.gid > TAR_MAX_ID) return null;
      put(tarHeader(`checkpoint/${name}`, fst.mode, fst.uid, fst.gid, fst.size, '0'));
      for (let left = fst.size; left > 0;) {
        const n = readSync(fd, buf, 0, Math.min(PIECE, left), null);
        if (n === 0) throw new Error(`checkpoint image ${name} shrank while it was hashed`);
        left -= n;
        put(buf.subarray(0, n));
      }
      if (fstatSync(fd).size !== fst.size) throw new Error(`checkpoint image ${name} changed while it was hashed`);
      const pad = (TAR_BLOCK - (fst.size % TAR_BLOCK)) % TAR_BLOCK;
      if (pad) put(Buffer.alloc(pad));
    } finally {
      closeSync(fd);
    }
  }
  put(Buffer.alloc(2 * TAR_BLOCK));
  const tail = (TAR_RECORD - (size % TAR_RECORD)) % TAR_RECORD;
  if (tail) put(Buffer.alloc(tail));
  return { name: 'checkpoint', sha256: h.digest('hex'), size };
}

/** The images' names in byte order (tar's --sort=name, and the listing's order). */
function imageNames(root) {
  return readdirSync(root).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

/** A GNU tar header as `tar --format=gnu --numeric-owner --mtime=@0` writes it. */
function tarHeader(name, mode, uid, gid, size, type) {
  const b = Buffer.alloc(TAR_BLOCK);
  const octal = (value, at, width) => b.write(value.toString(8).padStart(width - 1, '0') + '\0', at, 'latin1');
  b.write(name, 0, 'latin1');
  octal(mode & 0o7777, 100, 8);
  octal(uid, 108, 8);
  octal(gid, 116, 8);
  octal(size, 124, 12);
  octal(0, 136, 12);
  b.write(type, 156, 'latin1');
  b.write('ustar  \0', 257, 'latin1');
  b.fill(' ', 148, 156);
  let sum = 0;
  for (const byte of b) sum += byte;
  b.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return b;
}

/**
 * The checkpoint object's manifest entry of digest "files": the sha256 of a listing of the
 * directory (its mode and owner) and of every image in name order (name, mode, owner, size and
 * the sha256 of its bytes). What the directory store's pauses wrote until they took digest
 * "sizes" (see snapshot-store.ts); such snapshots are still checked with it. Files are opened
 * without following links; anything but plain files with plain names is refused.
 */
export function checkpointFilesDigest(dir) {
  const root = path.join(dir, 'checkpoint');
  const st = lstatSync(root);
  if (!st.isDirectory()) throw new Error(`checkpoint images: ${root} is not a directory`);
  const names = imageNames(root);
  const listing = createHash('sha256');
  listing.update(`checkpoint/ ${(st.mode & 0o7777).toString(8)} ${st.uid} ${st.gid}\n`);
  let size = 0;
  const buf = Buffer.allocUnsafe(PIECE);
  for (const name of names) {
    if (!PLAIN_NAME.test(name)) throw new Error(`checkpoint image ${JSON.stringify(name)}: not a plain name`);
    const fd = openSync(path.join(root, name), OPEN_FLAGS);
    try {
      const fst = fstatSync(fd);
      if (!fst.isFile()) throw new Error(`checkpoint image ${name} is not a plain file`);
      const sha256 = fileDigest(fd, fst.size, name, buf);
      listing.update(`${name} ${(fst.mode & 0o7777).toString(8)} ${fst.uid} ${fst.gid} ${fst.size} ${sha256}\n`);
      size += fst.size;
    } finally {
      closeSync(fd);
    }
  }
  return { name: 'checkpoint', sha256: listing.digest('hex'), size, digest: 'files' };
}

function fileDigest(fd, expected, name, buf) {
  const h = createHash('sha256');
  let at = 0;
  for (;;) {
    const n = readSync(fd, buf, 0, buf.length, at);
    if (n === 0) break;
    h.update(buf.subarray(0, n));
    at += n;
  }
  if (at !== expected || fstatSync(fd).size !== expected) throw new Error(`checkpoint image ${name} changed while it was hashed`);
  return h.digest('hex');
}

/**
 * Runs beside a dump until `flag[0]` is set (the dump is over, or abandoned): watches CRIU's
 * memory images in `imagesDir` grow and has what was written sent to the disk in steps, beside
 * the dump (so the pause's own sync finds little left). Nothing is read: a pause's snapshot is
 * durable once this and the pause's sync of the small images are done. CRIU writes a memory
 * image front to back and never goes back; once the flag is set, one more pass that finds
 * nothing new ends it. Resolves to what it synced, by name: { ino, size }.
 */
export async function followDump(imagesDir, flag) {
  const files = new Map();
  const syncs = [];
  try {
    for (;;) {
      const over = Atomics.load(flag, 0) !== 0;
      let grew = false;
      let names = [];
      try {
        names = readdirSync(imagesDir);
      } catch {
        // (removed: the dump was abandoned)
      }
      for (const name of names) {
        if (!PAGES_IMAGE.test(name) || files.has(name)) continue;
        let fd;
        try {
          fd = openSync(path.join(imagesDir, name), OPEN_FLAGS);
        } catch {
          continue;
        }
        const st = fstatSync(fd);
        if (!st.isFile()) {
          closeSync(fd);
          continue;
        }
        files.set(name, { fd, ino: st.ino, size: 0, synced: 0 });
      }
      for (const f of files.values()) {
        const size = fstatSync(f.fd).size;
        if (size <= f.size) continue;
        f.size = size;
        grew = true;
        if (f.size - f.synced >= SYNC_EVERY) {
          syncs.push(fdatasync(f.fd)); // (in the thread pool: the watching goes on meanwhile)
          f.synced = f.size;
        }
      }
      if (over && !grew) break;
      if (!grew) await Atomics.waitAsync(flag, 0, 0, 2).value;
    }
    for (const f of files.values()) if (f.synced < f.size) syncs.push(fdatasync(f.fd));
    await Promise.all(syncs);
    const out = {};
    for (const [name, f] of files) out[name] = { ino: f.ino, size: f.size };
    return out;
  } finally {
    await Promise.allSettled(syncs);
    for (const f of files.values()) closeSync(f.fd);
  }
}
