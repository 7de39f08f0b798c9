// Sandbox directories laid out ahead of the creates that take them.
import { randomBytes } from 'node:crypto';
import { mkdir, readdir, rename, stat } from 'node:fs/promises';
import path from 'node:path';
import type { RuntimeConfig } from './config.ts';
import { createDisk, mountDisk, type DiskPool } from './disk.ts';
import { removeTree } from './fs-util.ts';
import { sandboxPathsAt, templateRootfs } from './layout.ts';
import { prepareDirs, prepareDisk, mountRootfs, unmountSandbox } from './sandbox-directories.ts';

/**
 * A few sandbox directories of one template and the default disk size, made ahead (in the
 * background): the disk made, mounted and laid out as a new sandbox's (upper and work
 * directories, socket directory, init binary, a boot id of its own), the overlay mounted over
 * the template. A create of that template and size takes one by renaming it to its own
 * directory (mounts move with the directory that holds them), and skips the disk's mount, its
 * layout and the overlay's mount on its way: what differs between sandboxes (address, files of
 * /etc, spec, record) is written by the create as ever.
 *
 * An entry is exactly what a create lays out, made earlier; no sandbox ever ran on it. The pool
 * is a directory of the node's data directory (the same file system as the sandboxes'), emptied
 * (unmounted, removed) when the agent starts and when it stops: an entry half made by an agent
 * that died is never handed out. An entry made over a template's earlier version (the template
 * was replaced since) is discarded, never taken.
 */
export class RootPool {
  private readonly ready: Array<{ dir: string; templateVersion: string }> = [];
  private readonly making = new Set<Promise<void>>();
  private started = false;

  constructor(
    private readonly cfg: RuntimeConfig,
    private readonly dir: string,
    private readonly disks: DiskPool,
    readonly template: string,
    readonly sizeMB: number,
    private readonly size = 2,
  ) {}

  /** Entries ready to be taken. */
  get readyCount(): number {
    return this.ready.length;
  }

  /** Empties the pool directory (what an earlier agent left) and starts filling it. */
  async start(): Promise<void> {
    await mkdir(this.dir, { recursive: true, mode: 0o700 });
    for (const name of await readdir(this.dir)) await discard(path.join(this.dir, name));
    this.ready.length = 0;
    this.started = true;
    this.refill();
  }

  /** Stops filling and empties the pool: nothing of it stays mounted. */
  async stop(): Promise<void> {
    this.started = false;
    await Promise.all(this.making);
    for (const entry of this.ready.splice(0)) await discard(entry.dir);
  }

  /**
   * Renames a ready entry of `template` and `sizeMB` to `dir` (which must not exist); false if
   * none is ready, and the create lays out its own. The caller refills the pool when it is done.
   */
  async take(template: string, sizeMB: number, dir: string): Promise<boolean> {
    if (!this.started || template !== this.template || sizeMB !== this.sizeMB) return false;
    const version = await templateVersion(this.cfg, template);
    let entry = this.ready.shift();
    while (entry && entry.templateVersion !== version) {
      await discard(entry.dir);
      entry = this.ready.shift();
    }
    if (!entry) return false;
    try {
      await mkdir(path.dirname(dir), { recursive: true });
      await rename(entry.dir, dir);
      return true;
    } catch (e) {
      process.stderr.write(`nestbox: a pooled sandbox directory could not be taken: ${msg(e)}\n`);
      await discard(entry.dir).catch(() => undefined);
      return false;
    }
  }

  /**
   * Makes entries until the pool is full again. A create calls it once it is done, so that the
   * refill does not compete with its own container's start (the host's CPUs are few).
   */
  refill() {
    while (this.started && this.ready.length + this.making.size < this.size) {
      const made: Promise<void> = this.makeOne().finally(() => this.making.delete(made));
      this.making.add(made);
    }
  }

  private async makeOne() {
    const name = randomBytes(6).toString('hex');
    const partial = path.join(this.dir, `${name}.partial`);
    try {
      const version = await templateVersion(this.cfg, this.template);
      if (version === null) return; // not on this node (yet): a create fetches it, then fills the pool
      const p = sandboxPathsAt(partial);
      await prepareDirs(p, templateRootfs(this.cfg, this.template));
      if (!(await this.disks.take(p.diskImage, this.sizeMB))) await createDisk(p.diskImage, this.sizeMB, { lowPriority: true });
      await mountDisk(p.diskImage, p.disk);
      await prepareDisk(this.cfg, p, { fresh: true, freshBoot: true, bootId: 'new' });
      await mountRootfs(p);
      if (!this.started) throw new Error('the pool stopped');
      const ready = path.join(this.dir, name);
      await rename(partial, ready);
      this.ready.push({ dir: ready, templateVersion: version });
    } catch (e) {
      if (this.started) process.stderr.write(`nestbox: a pooled sandbox directory could not be made: ${msg(e)}\n`);
      await discard(partial).catch(() => undefined);
    }
  }
}

/** The identity of a template's current files: replaced, it is another (its root is renamed into place). */
async function templateVersion(cfg: RuntimeConfig, template: string): Promise<string | null> {
  const st = await stat(templateRootfs(cfg, template)).catch(() => null);
  return st ? `${st.dev}:${st.ino}` : null;
}

/** An entry's mounts go, then the entry. */
async function discard(dir: string) {
  await unmountSandbox(sandboxPathsAt(dir));
  await removeTree(dir);
}

function msg(e: unknown) {
  return e instanceof Error ? e.message : String(e);
}
