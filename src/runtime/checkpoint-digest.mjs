// The digests of a pause's checkpoint images (the hashing threads run these: see
// checkpoint-hasher.ts; plain JavaScript, which a worker thread loads without the agent's
// TypeScript loader). No messages here, only files in and digests out.
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
 * the sha256 of its bytes). Unlike the tar stream's digest, each image's part can be computed on
 * its own, so a pause hashes its memory images while CRIU still writes them (followDump) and
 * only the small rest once the dump is over. `followed`: what followDump found, by name; an
 * image is taken from it only if it is the very file (inode) at the very size. Files are
 * opened without following links; anything but plain files with plain names is refused.
 */
export function checkpointFilesDigest(dir, followed = {}) {
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
      const known = Object.hasOwn(followed, name) ? followed[name] : undefined;
      const sha256 = known && known.ino === fst.ino && known.size === fst.size ? known.sha256 : fileDigest(fd, fst.size, name, buf);
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
 * Runs beside a dump until `flag[0]` is set (the dump is over, or abandoned): reads CRIU's
 * memory images in `imagesDir` as they grow, hashing them, and has what was read sent to the
 * disk in steps, beside the reading (so the pause's own sync finds little left). CRIU writes a
 * memory image front to back and never goes back; once the flag is set, one more pass that finds
 * nothing new ends it. Resolves to what it read, by name: { ino, size, sha256 }, all of it on
 * the disk (checkpointFilesDigest uses it for the files that are still exactly these). Nothing
 * here decides what the snapshot holds: a file that changed after it was read has another size
 * or inode and is hashed again.
 */
export async function followDump(imagesDir, flag) {
  const files = new Map();
  const syncs = [];
  const buf = Buffer.allocUnsafe(4 * PIECE);
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
        files.set(name, { fd, ino: st.ino, at: 0, synced: 0, hash: createHash('sha256') });
      }
      for (const f of files.values()) {
        for (;;) {
          const n = readSync(f.fd, buf, 0, buf.length, f.at);
          if (n === 0) break;
          f.hash.update(buf.subarray(0, n));
          f.at += n;
          grew = true;
          if (f.at - f.synced >= SYNC_EVERY) {
            syncs.push(fdatasync(f.fd)); // (in the thread pool: the reading goes on meanwhile)
            f.synced = f.at;
          }
        }
      }
      if (over && !grew) break;
      if (!grew) await Atomics.waitAsync(flag, 0, 0, 2).value;
    }
    for (const f of files.values()) if (f.synced < f.at) syncs.push(fdatasync(f.fd));
    await Promise.all(syncs);
    const out = {};
    for (const [name, f] of files) out[name] = { ino: f.ino, size: f.at, sha256: f.hash.digest('hex') };
    return out;
  } finally {
    await Promise.allSettled(syncs);
    for (const f of files.values()) closeSync(f.fd);
  }
}
