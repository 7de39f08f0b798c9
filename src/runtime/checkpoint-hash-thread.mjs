// The checkpoint hashing thread (started by checkpoint-hasher.ts). Plain JavaScript: a worker
// thread does not inherit the TypeScript loader the agent runs under, and registering it there
// costs more than the hash it would save. One request at a time, answered by id.
import { createHash } from 'node:crypto';
import { closeSync, constants, fstatSync, lstatSync, openSync, readdirSync, readSync } from 'node:fs';
import path from 'node:path';
import { parentPort } from 'node:worker_threads';

const TAR_BLOCK = 512;
const TAR_RECORD = 20 * TAR_BLOCK;
// Largest size, uid and gid a header's octal fields hold (GNU tar switches to base-256 beyond).
const TAR_MAX_SIZE = 0o77777777777;
const TAR_MAX_ID = 0o7777777;
const PIECE = 1 << 20;

parentPort.on('message', ({ id, dir }) => {
  let answer;
  try {
    answer = { id, entry: hashCheckpointImages(dir) };
  } catch (e) {
    answer = { id, error: e instanceof Error ? e.message : String(e) };
  }
  parentPort.postMessage(answer);
});

/**
 * The checkpoint object's manifest entry without tar: the very bytes `objectStream` makes for a
 * checkpoint directory of plain files (GNU format: the directory's header, then each file's
 * header and contents in name order, mtimes 0, numeric owners, two zero blocks, padded to a
 * 10 KiB record), hashed as the files are read in large pieces. Several times cheaper than tar
 * through a pipe. Anything this does not write the way tar does (a long or non-ASCII name, a
 * link or anything but a plain file, sizes or ids beyond the octal fields) gets null: tar's own
 * stream is hashed then. Files are opened without following links.
 */
function hashCheckpointImages(dir) {
  const root = path.join(dir, 'checkpoint');
  const st = lstatSync(root);
  if (!st.isDirectory() || st.uid > TAR_MAX_ID || st.gid > TAR_MAX_ID) return null;
  const names = readdirSync(root).sort((a, b) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  if (names.some((n) => !/^[\x21-\x7e]+$/.test(n) || `checkpoint/${n}`.length >= 100)) return null;
  const h = createHash('sha256');
  let size = 0;
  const put = (b) => {
    h.update(b);
    size += b.length;
  };
  put(tarHeader('checkpoint/', st.mode, st.uid, st.gid, 0, '5'));
  const buf = Buffer.allocUnsafe(PIECE);
  for (const name of names) {
    const fd = openSync(path.join(root, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
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
