// The templates of a node: root filesystems under <templatesDir>/<name>/rootfs, and, for imported
// images, their defaults in <templatesDir>/<name>/template.json. An import is built in a staging
// directory beside them and renamed into place only when complete; a failed one leaves nothing.
import { randomBytes } from 'node:crypto';
import os from 'node:os';
import { chmod, chown, lstat, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { conflict, invalid, NestboxError, notFound } from '../core/errors.ts';
import { TEMPLATE_NAME_PATTERN } from '../core/ids.ts';
import type { RuntimeConfig } from './config.ts';
import { run } from './command.ts';
import { exists, removeTree } from './fs-util.ts';
import { SpooledArchive, type ImageConfigDefaults } from './image-archive.ts';
import { applyLayer } from './image-layers.ts';
import { hasFileInRoot, imageStartCommand } from './image-start.ts';
import { STAGING_OWNER_FILE } from './template-archive.ts';
import { LocalTemplates, type TemplateDistribution } from './template-distribution.ts';

export const BUILTIN_TEMPLATE = 'base';

/** template.json: what an import learnt of the image, or what a build made. */
export interface TemplateMeta extends ImageConfigDefaults {
  name: string;
  /** docker, oci: an imported image archive; build: a template build (E2B's Template builder). */
  source: 'docker' | 'oci' | 'build';
  importedAt: string;
  layers: number;
  /** Uncompressed bytes of the files written. */
  sizeBytes: number;
  configDigest: string | null;
  repoTags: string[];
  /** The team that imported it (control plane's notion; the node only keeps it). */
  owner: string | null;
  /**
   * The start command (bash), run when a sandbox of the template starts: a build's setStartCmd,
   * or an import's entrypoint + cmd when asked for (`start`); null or absent: none (an import's
   * entrypoint and cmd are then only recorded).
   */
  startCmd?: string | null;
  /** The ready check (bash): the start command is up once it exits 0; null: none. */
  readyCmd?: string | null;
  /** A build's base template, and the build that made it. */
  fromTemplate?: string;
  buildId?: string;
}

/** What a build says of the template it captures (template.json's fields). */
export interface CapturedTemplate {
  owner: string;
  env: Record<string, string>;
  workdir: string | null;
  user: string | null;
  startCmd: string | null;
  readyCmd: string | null;
  fromTemplate: string;
  buildId: string;
}

export interface TemplateInfo {
  name: string;
  builtin: boolean;
  meta: TemplateMeta | null;
}

export type ImportEvent =
  | { type: 'receiving'; bytes: number }
  | { type: 'received'; bytes: number; layers: number; format: 'docker' | 'oci' }
  | { type: 'layer'; layer: number; layers: number; name: string; bytes: number; bytesDone: number }
  | { type: 'layer_done'; layer: number; layers: number; entries: number };

/** The defaults processes of a template's sandboxes get: env, working directory, user. */
export interface ProcessDefaults {
  env: Record<string, string>;
  cwd: string | undefined;
  user: string | undefined;
}

const NO_DEFAULTS: ProcessDefaults = { env: {}, cwd: undefined, user: undefined };

export function templateDir(cfg: Pick<RuntimeConfig, 'templatesDir'>, name: string) {
  return path.join(cfg.templatesDir, name);
}
export function templateMetaPath(cfg: Pick<RuntimeConfig, 'templatesDir'>, name: string) {
  return path.join(cfg.templatesDir, name, 'template.json');
}

function assertName(name: string) {
  if (!TEMPLATE_NAME_PATTERN.test(name)) throw invalid(`invalid template name "${name}" (lower-case letters, digits, ".", "_", "-"; at most 63)`);
}

/**
 * The image's user as the sandbox init takes it: a name or a uid ("1000:1000" and "app:staff"
 * keep their user part; the init resolves it in the sandbox's /etc/passwd).
 */
export function imageUser(user: string | null): string | undefined {
  if (!user) return 'root';
  const u = user.split(':')[0]!.trim();
  return u || 'root';
}

const defaultsCache = new Map<string, { mtimeMs: number; defaults: ProcessDefaults }>();

/**
 * The process defaults of a template (none for `base` or any template without template.json).
 * Read from template.json, cached on its mtime.
 */
export async function templateProcessDefaults(cfg: Pick<RuntimeConfig, 'templatesDir'>, name: string | null | undefined): Promise<ProcessDefaults> {
  if (!name || !TEMPLATE_NAME_PATTERN.test(name)) return NO_DEFAULTS;
  const file = templateMetaPath(cfg, name);
  const st = await stat(file).catch(() => null);
  if (!st) return NO_DEFAULTS;
  const hit = defaultsCache.get(file);
  if (hit && hit.mtimeMs === st.mtimeMs) return hit.defaults;
  let defaults = NO_DEFAULTS;
  try {
    const meta = JSON.parse(await readFile(file, 'utf8')) as TemplateMeta;
    defaults = { env: meta.env ?? {}, cwd: meta.workdir ?? undefined, user: imageUser(meta.user) };
  } catch {
    /* unreadable: no defaults */
  }
  defaultsCache.set(file, { mtimeMs: st.mtimeMs, defaults });
  return defaults;
}

/** Written into staging and trash directories: who works on them (see removeAbandoned). */
const OWNER_FILE = STAGING_OWNER_FILE;

/** What one import may write: the archive, and the files of the image (uncompressed). */
/** What an import is asked for besides the archive. */
export interface ImportOptions {
  /** The team that imports it. */
  owner?: string | null;
  onEvent?: (e: ImportEvent) => void;
  /**
   * Make the image's entrypoint + cmd the template's start command (run, in the image's workdir,
   * as its user, with its env, when a sandbox starts; captured warm like a built template's),
   * with this ready check (bash; null: none). Absent: entrypoint and cmd are only recorded.
   */
  start?: { readyCmd: string | null };
}

export interface ImportLimits {
  archiveBytes: number;
  imageBytes: number;
  entries: number;
}

/** NESTBOX_TEMPLATE_MAX_MB (default 32768) bounds both the archive and the unpacked image. */
export function importLimitsFromEnv(env: NodeJS.ProcessEnv = process.env): ImportLimits {
  const mb = Number(env.NESTBOX_TEMPLATE_MAX_MB ?? 32768);
  const bytes = Number.isFinite(mb) && mb > 0 ? mb * 1024 * 1024 : 32768 * 1024 * 1024;
  return { archiveBytes: bytes, imageBytes: bytes, entries: 5_000_000 };
}

export class TemplateStore {
  private readonly busy = new Set<string>();

  constructor(
    private readonly cfg: RuntimeConfig,
    private readonly limits: ImportLimits = importLimitsFromEnv(),
    /** Where a new template is published for the other nodes (and a deleted one removed). */
    private readonly distribution: TemplateDistribution = new LocalTemplates(),
  ) {}

  /**
   * Publishes a template just put in place. One that cannot be published is taken back (a
   * template only this node has would fail on the others): the import or build fails.
   */
  private async publish(name: string): Promise<void> {
    try {
      await this.distribution.publish(name);
    } catch (e) {
      const trash = path.join(this.cfg.templatesDir, `.delete-${name}-${randomBytes(4).toString('hex')}`);
      await rename(templateDir(this.cfg, name), trash).then(() => removeTree(trash)).catch(() => undefined);
      throw new NestboxError('unavailable', `template "${name}" could not be stored in ${this.distribution.description}: ${e instanceof Error ? e.message : String(e)}`, { retryable: true });
    }
  }

  /**
   * Removes the staging and trash directories of imports, fetches from the store and deletes
   * whose process (on this host) is gone: an agent that died mid-import leaves nothing for good. Directories of live
   * processes, or of other hosts sharing the directory, are left alone. Returns their names.
   */
  async removeAbandoned(): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await readdir(this.cfg.templatesDir).catch(() => [] as string[])) {
      if (!/^\.(import|delete|fetch)-/.test(name)) continue;
      const dir = path.join(this.cfg.templatesDir, name);
      let owner: { host?: string; pid?: number } = {};
      try {
        owner = JSON.parse(await readFile(path.join(dir, OWNER_FILE), 'utf8'));
      } catch {
        // no owner file: an import just starting (it writes one at once), or one that finished its spool
        continue;
      }
      if (owner.host !== os.hostname() || typeof owner.pid !== 'number' || processAlive(owner.pid)) continue;
      await removeTree(dir);
      removed.push(name);
    }
    return removed;
  }

  async list(): Promise<TemplateInfo[]> {
    const out: TemplateInfo[] = [];
    for (const name of (await readdir(this.cfg.templatesDir).catch(() => [] as string[])).sort()) {
      if (!TEMPLATE_NAME_PATTERN.test(name)) continue; // staging directories start with "."
      if (!(await exists(path.join(this.cfg.templatesDir, name, 'rootfs')))) continue;
      out.push(await this.info(name));
    }
    return out;
  }

  /** A template of this node's, fetched from the store first if only the store has it (its owner is in it). */
  async get(name: string): Promise<TemplateInfo> {
    assertName(name);
    if (!(await exists(path.join(this.cfg.templatesDir, name, 'rootfs'))) && !(await this.distribution.fetch(name))) {
      throw notFound(`template "${name}" is not on this node`);
    }
    return this.info(name);
  }

  private async info(name: string): Promise<TemplateInfo> {
    let meta: TemplateMeta | null = null;
    try {
      meta = JSON.parse(await readFile(templateMetaPath(this.cfg, name), 'utf8')) as TemplateMeta;
    } catch {
      meta = null;
    }
    return { name, builtin: name === BUILTIN_TEMPLATE, meta };
  }

  /** Refused when the name is taken or an import of it is in progress (checked before the body is read). */
  async checkImportable(name: string): Promise<void> {
    assertName(name);
    if (name === BUILTIN_TEMPLATE) throw conflict(`template "${name}" is built in`);
    if (this.busy.has(name)) throw conflict(`template "${name}" is being imported or deleted`);
    if (await exists(templateDir(this.cfg, name))) throw conflict(`template "${name}" already exists`);
  }

  /**
   * Imports an image archive (docker save or OCI layout tarball, streamed) as template `name`.
   * Nothing is visible under the name until the whole image is in place.
   */
  async import(name: string, source: Readable, opts: ImportOptions = {}): Promise<TemplateInfo> {
    assertName(name);
    const readyCmd = opts.start?.readyCmd?.trim() ? opts.start.readyCmd : null;
    if (name === BUILTIN_TEMPLATE) throw conflict(`template "${name}" is built in`);
    if (this.busy.has(name)) throw conflict(`template "${name}" is being imported or deleted`);
    this.busy.add(name); // before any await: a second import of the name is refused at once
    const staging = path.join(this.cfg.templatesDir, `.import-${name}-${randomBytes(4).toString('hex')}`);
    const emit = opts.onEvent ?? (() => undefined);
    try {
      if (await exists(templateDir(this.cfg, name))) throw conflict(`template "${name}" already exists`);
      await mkdir(this.cfg.templatesDir, { recursive: true, mode: 0o755 });
      await mkdir(staging, { mode: 0o700 });
      await writeFile(path.join(staging, OWNER_FILE), JSON.stringify({ host: os.hostname(), pid: process.pid }));
      const spool = path.join(staging, 'archive');
      const rootfs = path.join(staging, 'rootfs');
      await mkdir(spool, { mode: 0o700 });
      await mkdir(rootfs, { mode: 0o755 });
      await chown(rootfs, this.cfg.uidShift, this.cfg.uidShift);
      await chmod(rootfs, 0o755);

      const archive = new SpooledArchive(spool);
      let lastTick = 0;
      let total = 0;
      await archive.receive(source, (bytes) => {
        total = bytes;
        const now = Date.now();
        if (now - lastTick >= 250) {
          lastTick = now;
          emit({ type: 'receiving', bytes });
        }
      }, this.limits.archiveBytes);
      const budget = { bytes: this.limits.imageBytes, entries: this.limits.entries };
      const image = await archive.describe();
      const startCmd = opts.start ? imageStartCommand(image.config) : null;
      if (opts.start && startCmd === null) {
        throw invalid('the image has neither an Entrypoint nor a Cmd, so there is nothing to start: import it without --start (start=true), or give the image a CMD');
      }
      emit({ type: 'received', bytes: total, layers: image.layers.length, format: image.format });

      let sizeBytes = 0;
      for (const [i, layer] of image.layers.entries()) {
        const label = `layer ${i + 1} of ${image.layers.length} (${layer.name})`;
        let tick = 0;
        emit({ type: 'layer', layer: i + 1, layers: image.layers.length, name: layer.name, bytes: layer.size, bytesDone: 0 });
        const stats = await applyLayer(rootfs, layer.file, label, {
          uidShift: this.cfg.uidShift,
          uidRange: this.cfg.uidRange,
          budget,
          onBytes: (done) => {
            const now = Date.now();
            if (now - tick >= 250) {
              tick = now;
              emit({ type: 'layer', layer: i + 1, layers: image.layers.length, name: layer.name, bytes: layer.size, bytesDone: done });
            }
          },
        });
        sizeBytes += stats.bytesWritten;
        emit({ type: 'layer_done', layer: i + 1, layers: image.layers.length, entries: stats.entries });
      }

      // Start commands run through the image's bash, as a built template's do.
      if (startCmd !== null && !(await hasFileInRoot(rootfs, '/bin/bash'))) {
        throw invalid(`the image has no /bin/bash, which runs a template's start command (${startCmd}): import it without --start (start=true), or use an image with bash`);
      }
      const meta: TemplateMeta = {
        name, source: image.format, importedAt: new Date().toISOString(), layers: image.layers.length, sizeBytes,
        configDigest: image.configDigest, repoTags: image.repoTags, owner: opts.owner ?? null, ...image.config,
        ...(opts.start ? { startCmd, readyCmd } : {}),
      };
      await removeTree(spool);
      await writeFile(path.join(staging, 'template.json'), JSON.stringify(meta, null, 2) + '\n', { mode: 0o644 });
      await chmod(staging, 0o755); // the sandboxes' mapped root must reach rootfs
      // Another agent sharing the directory may have taken the name meanwhile: rename refuses
      // to replace a directory that is not empty, and exists() covers an empty one.
      if (await exists(templateDir(this.cfg, name))) throw conflict(`template "${name}" already exists`);
      await rename(staging, templateDir(this.cfg, name)).catch((e: NodeJS.ErrnoException) => {
        throw e.code === 'ENOTEMPTY' || e.code === 'EEXIST' ? conflict(`template "${name}" already exists`) : e;
      });
      await rm(path.join(templateDir(this.cfg, name), OWNER_FILE), { force: true });
      await this.publish(name);
      return { name, builtin: false, meta };
    } catch (e) {
      await removeTree(staging).catch(() => undefined);
      if (e instanceof NestboxError) throw e;
      throw new NestboxError('internal', `import of template "${name}" failed: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      this.busy.delete(name);
    }
  }

  /**
   * A new template `name` whose root file system `fill` writes into the directory it is given
   * (made here, owned by the sandboxes' mapped root), with template.json from `meta`. Built in a
   * staging directory and renamed into place whole; a failure leaves nothing.
   */
  async capture(name: string, meta: CapturedTemplate, fill: (rootfs: string) => Promise<void>): Promise<TemplateInfo> {
    assertName(name);
    if (name === BUILTIN_TEMPLATE) throw conflict(`template "${name}" is built in`);
    if (this.busy.has(name)) throw conflict(`template "${name}" is being imported, built or deleted`);
    this.busy.add(name);
    const staging = path.join(this.cfg.templatesDir, `.import-${name}-${randomBytes(4).toString('hex')}`);
    try {
      if (await exists(templateDir(this.cfg, name))) throw conflict(`template "${name}" already exists`);
      await mkdir(this.cfg.templatesDir, { recursive: true, mode: 0o755 });
      await mkdir(staging, { mode: 0o700 });
      await writeFile(path.join(staging, OWNER_FILE), JSON.stringify({ host: os.hostname(), pid: process.pid }));
      const rootfs = path.join(staging, 'rootfs');
      await mkdir(rootfs, { mode: 0o755 });
      await chown(rootfs, this.cfg.uidShift, this.cfg.uidShift);
      await fill(rootfs);
      const full: TemplateMeta = {
        name, source: 'build', importedAt: new Date().toISOString(), layers: 0, sizeBytes: await treeBytes(rootfs),
        configDigest: null, repoTags: [], entrypoint: null, cmd: null, ...meta,
      };
      await writeFile(path.join(staging, 'template.json'), JSON.stringify(full, null, 2) + '\n', { mode: 0o644 });
      await chmod(staging, 0o755);
      if (await exists(templateDir(this.cfg, name))) throw conflict(`template "${name}" already exists`);
      await rename(staging, templateDir(this.cfg, name)).catch((e: NodeJS.ErrnoException) => {
        throw e.code === 'ENOTEMPTY' || e.code === 'EEXIST' ? conflict(`template "${name}" already exists`) : e;
      });
      await rm(path.join(templateDir(this.cfg, name), OWNER_FILE), { force: true });
      await this.publish(name);
      return { name, builtin: false, meta: full };
    } catch (e) {
      await removeTree(staging).catch(() => undefined);
      if (e instanceof NestboxError) throw e;
      throw new NestboxError('internal', `capture of template "${name}" failed: ${e instanceof Error ? e.message : String(e)}`);
    } finally {
      this.busy.delete(name);
    }
  }

  /**
   * Deletes an imported template. `inUse` lists the sandboxes (running or paused) that use it:
   * any at all refuses the delete. The directory is renamed away first, so a create that races
   * with it finds either the whole template or none.
   */
  async delete(name: string, inUse: () => Promise<string[]>): Promise<void> {
    assertName(name);
    if (name === BUILTIN_TEMPLATE) throw conflict(`template "${name}" is built in and cannot be deleted`);
    if (this.busy.has(name)) throw conflict(`template "${name}" is being imported or deleted`);
    this.busy.add(name);
    const dir = templateDir(this.cfg, name);
    try {
      if (!(await lstat(dir).catch(() => null))) throw notFound(`template "${name}" is not on this node`);
      const users = await inUse();
      if (users.length) {
        throw conflict(`template "${name}" is in use by ${users.length} sandbox${users.length === 1 ? '' : 'es'} (${users.slice(0, 5).join(', ')}${users.length > 5 ? ', ...' : ''})`);
      }
      const trash = path.join(this.cfg.templatesDir, `.delete-${name}-${randomBytes(4).toString('hex')}`);
      await rename(dir, trash);
      await writeFile(path.join(trash, OWNER_FILE), JSON.stringify({ host: os.hostname(), pid: process.pid }));
      defaultsCache.delete(templateMetaPath(this.cfg, name));
      await removeTree(trash);
      await this.distribution.remove(name);
    } finally {
      this.busy.delete(name);
    }
  }
}

/** Bytes of file content under `dir` (du's apparent size; links are not followed). */
async function treeBytes(dir: string): Promise<number> {
  const r = await run(['du', '-s', '-b', '-P', '--', dir], { allowFailure: true });
  const n = Number(r.stdout.split(/\s/)[0]);
  return Number.isFinite(n) ? n : 0;
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
