// Templates in the directory snapshot store, beside its snapshots, so that nodes sharing only the
// snapshot directory share their templates too: `<snapshot dir>/.templates/<name>/template.tar`
// and `manifest.json`, each written to a temporary file, synced and renamed into place, the
// manifest last (a template without one is not complete). The leading dot keeps the directory out
// of the snapshot store's own walks (their keys are sandbox and snapshot ids). Nothing in it is
// followed if it is a link: the directories are checked, the files opened without following.
// Two nodes publishing the same name at once are not expected (names are one space for the
// fleet); if they did, the tar would fail its checksum at fetch, never be taken for the template.
import { constants } from 'node:fs';
import { lstat, mkdir, open, readdir, rename, rm, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { TEMPLATE_NAME_PATTERN } from '../core/ids.ts';
import type { RuntimeConfig } from './config.ts';
import { exists } from './fs-util.ts';
import { KeyedMutex } from './keyed-mutex.ts';
import { assertTemplateName, packTemplate, parseTemplateManifest, unpackTemplate, type TemplateManifest } from './template-archive.ts';
import type { TemplateDistribution } from './template-distribution.ts';

/** The templates' directory in the snapshot directory (not a snapshot id: the store skips it). */
export const STORED_TEMPLATES_DIR = '.templates';
const TAR = 'template.tar';
const MANIFEST = 'manifest.json';
const READ_FLAGS = constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK;
const WRITE_FLAGS = constants.O_WRONLY | constants.O_CREAT | constants.O_TRUNC | constants.O_NOFOLLOW;

export class DirectoryTemplates implements TemplateDistribution {
  readonly description: string;
  /** `<snapshot dir>/.templates` */
  readonly root: string;
  private readonly snapshotRoot: string;
  private readonly locks = new KeyedMutex();

  constructor(
    private readonly cfg: Pick<RuntimeConfig, 'templatesDir'>,
    snapshotRoot: string,
  ) {
    this.snapshotRoot = snapshotRoot;
    this.root = path.join(snapshotRoot, STORED_TEMPLATES_DIR);
    this.description = `directory ${this.root}`;
  }

  private dir(name: string): string {
    assertTemplateName(name);
    return path.join(this.root, name);
  }

  async publish(name: string): Promise<void> {
    const dir = this.dir(name);
    await this.locks.run(name, async () => {
      const packed = await packTemplate(this.cfg.templatesDir, name);
      try {
        await mkdir(this.snapshotRoot, { recursive: true, mode: 0o711 }); // (the runtime makes it at start)
        await realDirectory(this.root, { create: true });
        await realDirectory(dir, { create: true });
        // The old manifest goes first: nothing vouches for a tar being replaced.
        await rm(path.join(dir, MANIFEST), { force: true });
        await writeDurably(dir, TAR, packed.body, packed.done);
        await writeDurably(dir, MANIFEST, JSON.stringify(packed.manifest()));
      } catch (e) {
        packed.body.destroy();
        throw e;
      }
    });
  }

  async fetch(name: string): Promise<boolean> {
    const dir = this.dir(name);
    return this.locks.run(name, async () => {
      if (await exists(path.join(this.cfg.templatesDir, name, 'rootfs'))) return true; // here already (fetched, or a shared templates directory)
      const manifest = await this.manifest(name);
      if (!manifest) return false;
      const tar = await openRegular(path.join(dir, TAR));
      if (!tar) return false; // removed since its manifest was read
      await unpackTemplate(this.cfg.templatesDir, name, manifest, tar.createReadStream());
      return true;
    });
  }

  async remove(name: string): Promise<void> {
    const dir = this.dir(name);
    await this.locks.run(name, async () => {
      if (!(await realDirectory(this.root, { create: false }))) return;
      // The manifest first (the template is no longer complete), then the rest. rm does not
      // follow links, so a link in the name's place is removed, not what it points to.
      if (await realDirectory(dir, { create: false })) {
        await rm(path.join(dir, MANIFEST), { force: true });
        await syncDirectory(dir);
      }
      await rm(dir, { recursive: true, force: true });
    });
  }

  async list(): Promise<string[]> {
    if (!(await realDirectory(this.root, { create: false }))) return [];
    const names: string[] = [];
    for (const name of (await readdir(this.root)).sort()) {
      if (!TEMPLATE_NAME_PATTERN.test(name)) continue; // temporary files and anything else start otherwise
      const st = await lstat(path.join(this.root, name, MANIFEST)).catch(() => null);
      if (st?.isFile() && (await lstat(path.join(this.root, name))).isDirectory()) names.push(name);
    }
    return names;
  }

  /** The manifest of a complete stored template, or null. */
  private async manifest(name: string): Promise<TemplateManifest | null> {
    if (!(await realDirectory(this.root, { create: false })) || !(await realDirectory(this.dir(name), { create: false }))) return null;
    const f = await openRegular(path.join(this.dir(name), MANIFEST));
    if (!f) return null;
    try {
      return parseTemplateManifest(await f.readFile('utf8'), name);
    } finally {
      await f.close();
    }
  }
}

/**
 * Whether `dir` is a directory (made when `create` and missing); an error when something else is
 * there, a link included: the store's files are never reached through a link.
 */
async function realDirectory(dir: string, o: { create: boolean }): Promise<boolean> {
  let st = await lstat(dir).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e;
  });
  if (!st && o.create) {
    await mkdir(dir, { mode: 0o700 }).catch((e: NodeJS.ErrnoException) => {
      if (e.code !== 'EEXIST') throw e; // made by a node sharing the directory meanwhile
    });
    await syncDirectory(path.dirname(dir));
    st = await lstat(dir);
  }
  if (!st) return false;
  if (!st.isDirectory()) {
    throw new Error(`${dir} is not a directory (${st.isSymbolicLink() ? 'a link' : 'a file'}): the store keeps templates there; remove it`);
  }
  return true;
}

/** A regular file opened without following a link, or null when there is none. */
async function openRegular(file: string): Promise<FileHandle | null> {
  const f = await open(file, READ_FLAGS).catch((e: NodeJS.ErrnoException) => {
    if (e.code === 'ENOENT') return null;
    throw e.code === 'ELOOP' ? new Error(`${file} is a link: the store's files are never followed; remove it`) : e;
  });
  if (!f) return null;
  if (!(await f.stat()).isFile()) {
    await f.close();
    throw new Error(`${file} is not a regular file; remove it`);
  }
  return f;
}

/**
 * Writes `dir/name` whole and durably: into `.name.partial` (opened without following a link),
 * synced, renamed over `name`, the directory synced. `done` (the producer's end) must resolve too.
 */
async function writeDurably(dir: string, name: string, body: Readable | string, done?: Promise<void>): Promise<void> {
  const tmp = path.join(dir, `.${name}.partial`);
  const f = await open(tmp, WRITE_FLAGS, 0o600);
  try {
    if (typeof body === 'string') await f.writeFile(body);
    else await Promise.all([writeAll(f, body), done]);
    await f.sync();
  } catch (e) {
    await f.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw e;
  }
  await f.close();
  await rename(tmp, path.join(dir, name));
  await syncDirectory(dir);
}

async function writeAll(f: FileHandle, body: Readable): Promise<void> {
  for await (const chunk of body as AsyncIterable<Buffer>) {
    for (let at = 0; at < chunk.length;) at += (await f.write(chunk, at, chunk.length - at)).bytesWritten;
  }
}

async function syncDirectory(dir: string): Promise<void> {
  const f = await open(dir, constants.O_RDONLY | constants.O_DIRECTORY);
  try {
    await f.sync();
  } finally {
    await f.close();
  }
}
