// Applying an image's layers onto a new root filesystem. The layers are hostile: every entry's
// name is checked (no absolute path, no `..`), its parent is resolved one component at a time
// with lstat inside the new root (a symbolic link on the way is refused, never followed), and
// the entry itself is created with O_EXCL|O_NOFOLLOW after whatever was there is removed (a
// whiteout or an opaque marker removes links, never what they point at). So no write ever lands
// outside the new root, whatever links earlier entries or layers made. A symbolic link whose
// relative target climbs above the root is refused (see climbsAboveRoot).
import fs, { constants, createReadStream } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { invalid, NestboxError } from '../core/errors.ts';

export interface LayerApplyOptions {
  /** Host uid/gid of id 0 inside sandboxes, and how many ids are mapped. */
  uidShift: number;
  uidRange: number;
  /** Called with the layer's (compressed) bytes read so far. */
  onBytes?: (bytes: number) => void;
  /**
   * What the whole image may still write (shared by its layers, decremented here): file bytes
   * and entries. A decompression bomb ends here instead of filling the templates' disk.
   */
  budget?: { bytes: number; entries: number };
}

export interface LayerStats {
  entries: number;
  bytesWritten: number;
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE = '.wh..wh..opq';

/** A layer entry's name as path components; refused when absolute or when it climbs. */
export function entryComponents(name: string, what = 'entry'): string[] {
  if (name.includes('\0')) throw invalid(`${what} ${JSON.stringify(name)}: NUL in its name`);
  if (name.startsWith('/')) throw invalid(`${what} ${JSON.stringify(name)}: absolute path`);
  const out: string[] = [];
  for (const part of name.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') throw invalid(`${what} ${JSON.stringify(name)}: ".." in its path`);
    out.push(part);
  }
  return out;
}

/**
 * Whether a link's target, resolved lexically from the link's own directory (`depth`
 * components below the root), climbs above the root: `a/b -> ../../etc` does, `a/b -> ../etc`
 * does not. Only relative targets can: an absolute one (`/usr/bin/python3 -> /usr/bin/python3.11`,
 * `/etc/localtime -> /usr/share/zoneinfo/UTC`, in every real image) is how an image names its own
 * files, and the sandbox resolves it in its own root, so it stays. A relative one that climbs has
 * no meaning inside the image (the kernel stops ".." at the root): only a crafted archive makes
 * one, aimed at whatever on the host follows links in the template's files.
 */
export function climbsAboveRoot(depth: number, target: string): boolean {
  if (target.startsWith('/')) return false;
  let level = depth;
  for (const part of target.split('/')) {
    if (part === '' || part === '.') continue;
    level += part === '..' ? -1 : 1;
    if (level < 0) return true;
  }
  return false;
}

/** The first bytes of a file: gzip (1f 8b), zstd (28 b5 2f fd), or plain tar. */
async function sniff(file: string): Promise<'gzip' | 'zstd' | 'tar'> {
  const fh = await open(file, 'r');
  try {
    const buf = Buffer.alloc(4);
    const { bytesRead } = await fh.read(buf, 0, 4, 0);
    if (bytesRead >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) return 'gzip';
    if (bytesRead >= 4 && buf.readUInt32LE(0) === 0xfd2fb528) return 'zstd';
    return 'tar';
  } finally {
    await fh.close();
  }
}

/**
 * Applies one layer (a tar, possibly gzip-compressed) onto `root`, an existing directory of
 * ours. `label` names the layer in errors.
 */
export async function applyLayer(root: string, file: string, label: string, opts: LayerApplyOptions): Promise<LayerStats> {
  const kind = await sniff(file);
  if (kind === 'zstd') throw invalid(`${label} is zstd-compressed, which is not supported (use gzip or an uncompressed layer)`);
  const applier = new LayerApplier(root, label, opts);
  const source = createReadStream(file, { highWaterMark: 256 * 1024 });
  let read = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      read += chunk.length;
      opts.onBytes?.(read);
      done(null, chunk);
    },
  });
  const extract = tar.extract();
  const feeding = kind === 'gzip' ? pipeline(source, counter, createGunzip(), extract) : pipeline(source, counter, extract);
  feeding.catch(() => undefined); // reported through the iterator below
  let current = '';
  try {
    for await (const entry of extract) {
      current = entry.header.name;
      await applier.apply(entry.header, entry as unknown as Readable);
      current = '';
    }
    await feeding;
  } catch (e) {
    if (e instanceof NestboxError) throw e;
    const m = e instanceof Error ? e.message : String(e);
    const what = kind === 'gzip' ? 'gzip-compressed tar' : 'tar';
    // A file-system error while writing an entry names the entry; anything else is the stream.
    if (current && (e as NodeJS.ErrnoException)?.syscall) throw invalid(`${label}, entry ${JSON.stringify(current)}: ${m}`);
    throw invalid(`${label} is not a valid ${what} (${m})${current ? `, in entry ${JSON.stringify(current)}` : ''}`);
  }
  return { entries: applier.entries, bytesWritten: applier.bytesWritten };
}

type Header = tar.Header;

// The file-system calls of an import are many and tiny (a few per entry): made synchronously
// they cost microseconds each, where the thread pool's round trip costs far more. Each stays
// one short call, so the agent's other requests still run between entries.
const lstat = async (p: string) => fs.lstatSync(p);
const mkdir = async (p: string, o: { mode: number }) => void fs.mkdirSync(p, o);
const lchown = async (p: string, uid: number, gid: number) => fs.lchownSync(p, uid, gid);
const chmod = async (p: string, mode: number) => fs.chmodSync(p, mode);
const rm = async (p: string, o: { recursive?: boolean; force: boolean }) => fs.rmSync(p, o);
const readdir = async (p: string) => fs.readdirSync(p);
const symlink = async (target: string, p: string) => fs.symlinkSync(target, p);
const lutimes = async (p: string, a: Date, m: Date) => fs.lutimesSync(p, a, m);
const link = async (from: string, to: string) => fs.linkSync(from, to);

class LayerApplier {
  entries = 0;
  bytesWritten = 0;
  /** Paths (relative, "/"-joined) that this layer put in place: an opaque marker spares them. */
  private readonly created = new Set<string>();
  /** Directories already checked to be real directories (reset whenever one is removed). */
  private readonly knownDirs = new Set<string>();

  constructor(
    private readonly root: string,
    private readonly label: string,
    private readonly opts: LayerApplyOptions,
  ) {}

  private fail(name: string, why: string): never {
    throw invalid(`${this.label}, entry ${JSON.stringify(name)}: ${why}`);
  }

  private owner(h: Header): { uid: number; gid: number } {
    const uid = h.uid ?? 0;
    const gid = h.gid ?? 0;
    for (const [kind, id] of [['uid', uid], ['gid', gid]] as const) {
      if (!Number.isInteger(id) || id < 0 || id >= this.opts.uidRange) {
        this.fail(h.name, `owner ${kind} ${id} is outside the ids a sandbox has (0-${this.opts.uidRange - 1})`);
      }
    }
    return { uid: uid + this.opts.uidShift, gid: gid + this.opts.uidShift };
  }

  /**
   * The host path of the directory holding `parts`' last component, every component on the way
   * checked with lstat to be a real directory; missing ones are made (root-owned in the sandbox,
   * 0755) when `create`, else refused.
   */
  private async parentDir(name: string, parts: string[], create: boolean): Promise<string> {
    let dir = this.root;
    let rel = '';
    for (const part of parts.slice(0, -1)) {
      rel = rel ? `${rel}/${part}` : part;
      dir = path.join(dir, part);
      if (this.knownDirs.has(rel)) continue;
      const st = await lstat(dir).catch((e: NodeJS.ErrnoException) => {
        if (e.code === 'ENOENT') return null;
        throw e;
      });
      if (!st) {
        if (!create) this.fail(name, `"${rel}" does not exist`);
        await mkdir(dir, { mode: 0o755 });
        await lchown(dir, this.opts.uidShift, this.opts.uidShift);
        await chmod(dir, 0o755);
        this.created.add(rel);
      } else if (st.isSymbolicLink()) {
        this.fail(name, `"${rel}" is a symbolic link: nothing is written through a link`);
      } else if (!st.isDirectory()) {
        this.fail(name, `"${rel}" is not a directory`);
      }
      this.knownDirs.add(rel);
    }
    return dir;
  }

  /** Removes whatever is at `full` (never following a link); true when something was there. */
  private async clear(full: string, rel: string): Promise<boolean> {
    const st = await lstat(full).catch(() => null);
    if (!st) return false;
    if (st.isDirectory()) {
      await rm(full, { recursive: true, force: true });
      this.forgetDirs(rel);
    } else {
      await rm(full, { force: true });
    }
    return true;
  }

  private forgetDirs(rel: string) {
    for (const d of this.knownDirs) if (d === rel || d.startsWith(rel + '/')) this.knownDirs.delete(d);
  }

  async apply(h: Header, body: Readable): Promise<void> {
    this.entries++;
    const budget = this.opts.budget;
    if (budget && --budget.entries < 0) this.fail(h.name, 'the image has more entries than the import limit allows');
    try {
      await this.applyEntry(h, body);
    } finally {
      body.resume(); // whatever was not read is skipped
    }
  }

  private async applyEntry(h: Header, body: Readable): Promise<void> {
    const name = h.name;
    let parts: string[];
    try {
      parts = entryComponents(name);
    } catch {
      this.fail(name, name.startsWith('/') ? 'absolute path' : name.includes('\0') ? 'NUL in its name' : '".." in its path');
    }
    if (parts.length === 0) return; // the root itself: ours stays as it is
    const base = parts[parts.length - 1]!;
    const rel = parts.join('/');

    if (base === OPAQUE) {
      const dirParts = parts.slice(0, -1);
      // Every directory on the way, the marked one included, is checked (and made if missing).
      const dir = dirParts.length ? await this.parentDir(name, parts, true) : this.root;
      const dirRel = dirParts.join('/');
      for (const child of await readdir(dir)) {
        const childRel = dirRel ? `${dirRel}/${child}` : child;
        if (!this.created.has(childRel)) await this.clear(path.join(dir, child), childRel);
      }
      return;
    }
    if (base.startsWith(WHITEOUT_PREFIX)) {
      const hidden = base.slice(WHITEOUT_PREFIX.length);
      if (hidden === '' || hidden === '.' || hidden === '..') this.fail(name, 'malformed whiteout');
      const target = [...parts.slice(0, -1), hidden];
      // A whiteout under a directory that does not exist hides nothing.
      const parentOk = await this.parentDir(name, target, false).then(
        (d) => d,
        (e) => {
          if (e instanceof NestboxError && / does not exist$/.test(e.message)) return null;
          throw e;
        },
      );
      if (parentOk) await this.clear(path.join(parentOk, hidden), target.join('/'));
      return;
    }

    const type = h.type ?? 'file';
    if (type === 'character-device' || type === 'block-device') this.fail(name, `device nodes are not allowed (${type})`);
    if (type === 'fifo') this.fail(name, 'FIFOs are not allowed');
    if (!['file', 'contiguous-file', 'directory', 'symlink', 'link'].includes(type)) this.fail(name, `unsupported entry type ${type}`);
    const { uid, gid } = this.owner(h);
    const mode = (h.mode ?? (type === 'directory' ? 0o755 : 0o644)) & 0o7777;
    const dir = await this.parentDir(name, parts, true);
    const full = path.join(dir, base);
    const mtime = h.mtime ?? new Date(0);

    if (type === 'directory') {
      const st = await lstat(full).catch(() => null);
      if (st && !st.isDirectory()) await this.clear(full, rel);
      if (!st || !st.isDirectory()) await mkdir(full, { mode: 0o700 });
      await lchown(full, uid, gid);
      await chmod(full, mode); // after chown, which may clear setgid
      this.knownDirs.add(rel);
      this.created.add(rel);
      return;
    }

    await this.clear(full, rel);
    this.created.add(rel);
    if (type === 'symlink') {
      const target = h.linkname ?? '';
      if (!target || target.includes('\0')) this.fail(name, 'symbolic link without a valid target');
      if (climbsAboveRoot(parts.length - 1, target)) {
        this.fail(name, `symbolic link to ${JSON.stringify(target)} points out of the image (its ".." climb above the root)`);
      }
      await symlink(target, full);
      await lchown(full, uid, gid);
      await lutimes(full, mtime, mtime).catch(() => undefined);
      return;
    }
    if (type === 'link') {
      const targetName = h.linkname ?? '';
      let targetParts: string[];
      try {
        targetParts = entryComponents(targetName, 'hard link target');
      } catch {
        this.fail(name, `hard link to ${JSON.stringify(targetName)}, outside the image`);
      }
      if (targetParts.length === 0) this.fail(name, 'hard link to the root directory');
      const tdir = await this.parentDir(name, targetParts, false).catch((e: unknown) => {
        if (e instanceof NestboxError && / does not exist$/.test(e.message)) {
          this.fail(name, `hard link to ${JSON.stringify(targetName)}, which is not in the image (yet)`);
        }
        throw e;
      });
      const target = path.join(tdir, targetParts[targetParts.length - 1]!);
      const st = await lstat(target).catch(() => null);
      if (!st) this.fail(name, `hard link to ${JSON.stringify(targetName)}, which is not in the image (yet)`);
      if (st.isDirectory()) this.fail(name, `hard link to the directory ${JSON.stringify(targetName)}`);
      await link(target, full);
      return;
    }
    // A regular file: created new, never through a link (O_EXCL|O_NOFOLLOW), owner and mode
    // set on the descriptor after the content (chown clears setuid; chmod comes last).
    const fd = fs.openSync(full, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        let off = 0;
        const budget = this.opts.budget;
        if (budget && (budget.bytes -= chunk.length) < 0) this.fail(name, 'the image is larger than the import limit allows');
        while (off < chunk.length) off += fs.writeSync(fd, chunk, off, chunk.length - off);
        this.bytesWritten += chunk.length;
      }
      fs.fchownSync(fd, uid, gid);
      fs.fchmodSync(fd, mode);
      fs.futimesSync(fd, mtime, mtime);
    } finally {
      fs.closeSync(fd);
    }
  }
}
