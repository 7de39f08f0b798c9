// Sandboxes laid out, and their containers created, ahead of the creates that take them.
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, rename, rmdir, stat } from 'node:fs/promises';
import { setPriority } from 'node:os';
import path from 'node:path';
import type { SandboxResources } from '../core/runtime-state.ts';
import type { RuntimeConfig } from './config.ts';
import { createDisk, mountDisk, type DiskPool } from './disk.ts';
import { removeTree } from './fs-util.ts';
import { sandboxPathsAt, templateRootfs } from './layout.ts';
import type { NetworkManager } from './network.ts';
import { isSameProcess, procStat, type Runc } from './runc.ts';
import {
  mountRootfs, prepareDirs, prepareDisk, unmountSandbox, writeBundleAt, writeEtcFiles, type BundleHost,
} from './sandbox-directories.ts';
import type { SandboxRecord } from './sandbox-records.ts';
import { StepTimes } from './step-times.ts';

/** The resources and network of a container made ahead: a create takes it only in the same shape. */
export interface PooledContainerShape {
  resources: SandboxResources;
  allowInternet: boolean;
}

/** A container made ahead in an entry (`runc create` in the pool's own runc root), not started. */
export interface PooledContainer {
  /** Its id in the pool's runc root, and the name of its entry's directory and address claim. */
  id: string;
  /** runc's init, waiting to run the sandbox's, and its start time (as runc records it). */
  pid: number;
  initStart: string;
  address: string;
  /** Where it was made (the entry's directory before a create renamed it). */
  madeIn: string;
  shape: PooledContainerShape;
}

/** What the pool needs of the node to make containers ahead. */
export interface PoolContainers {
  runc: Runc;
  network: NetworkManager;
  bundleHost: BundleHost;
  /** The shape of the first containers (until a create of another shape comes). */
  shape: PooledContainerShape;
}

/**
 * A few sandboxes of one template and the default disk size, made ahead (in the background):
 * the disk made, mounted and laid out as a new sandbox's (upper and work directories, socket
 * directory, init binary, a boot id of its own), the overlay mounted over the template, and
 * the container created (`runc create`: namespaces, mounts, cgroups, its link) with the default
 * resources and internet access, its init waiting to be started. A create of that template,
 * size and shape takes one: the directory is renamed to the sandbox's (mounts move with the
 * directory that holds them), and the container is adopted under the sandbox's id (runc's
 * state moved and rewritten, its cgroups and address claim renamed, its host name set), then
 * started. What differs between sandboxes (address claim, files of /etc, record) is written by
 * the create as ever; the files of /etc in place, as the container has them bound.
 *
 * An entry is exactly what a create lays out, made earlier; no sandbox ever ran on it. The pool
 * is a directory of the node's data directory (the same file system as the sandboxes'), with a
 * runc root of its own (the node's inventory never lists its containers), emptied (containers
 * removed, unmounted, removed) when the agent starts and when it stops: an entry half made by an
 * agent that died is never handed out. An entry made over a template's earlier version (the
 * template was replaced since) is discarded, never taken.
 */
export class RootPool {
  private readonly ready: Array<{ dir: string; templateVersion: string; container: PooledContainer | null }> = [];
  private readonly making = new Set<Promise<void>>();
  /** A refill waiting for its moment (refill()). */
  private deferred: Deferred | null = null;
  /** Containers of entries taken by creates of another shape, being removed. */
  private readonly removing = new Set<Promise<void>>();
  private started = false;
  /** The shape new containers are made in: the last create's (a node's creates tend to be alike). */
  private shape: PooledContainerShape | null;

  constructor(
    private readonly cfg: RuntimeConfig,
    private readonly dir: string,
    private readonly disks: DiskPool,
    readonly template: string,
    readonly sizeMB: number,
    /** Null: entries are directories only. */
    private readonly containers: PoolContainers | null,
    private readonly size = 2,
  ) {
    this.shape = containers?.shape ?? null;
  }

  /** Entries ready to be taken. */
  get readyCount(): number {
    return this.ready.length;
  }

  /** Resolves once the entries being made are done (benchmarks: a create that finds the pool full). */
  async filled(): Promise<void> {
    while (this.deferred || this.making.size > 0) {
      await this.deferred?.done;
      await Promise.all(this.making);
    }
  }

  /** Empties the pool directory (what an earlier agent left) and starts filling it. */
  async start(): Promise<void> {
    // Traversable (not listable) by the sandboxes' mapped root, as the sandboxes' directory is:
    // runc creates the pool's containers here.
    await mkdir(this.dir, { recursive: true, mode: 0o711 });
    await chmod(this.dir, 0o711);
    if (this.containers) {
      await mkdir(this.containers.runc.root, { recursive: true, mode: 0o700 });
      for (const id of await readdir(this.containers.runc.root)) await this.removeContainer(id);
    }
    for (const name of await readdir(this.dir)) await this.discard(path.join(this.dir, name), poolIdOf(name));
    this.ready.length = 0;
    this.started = true;
    this.refill();
  }

  /** Stops filling and empties the pool: nothing of it stays mounted, no container of it stays. */
  async stop(): Promise<void> {
    this.started = false;
    this.deferred?.cancel();
    this.deferred = null;
    await Promise.all(this.making);
    await Promise.all(this.removing);
    for (const entry of this.ready.splice(0)) await this.discard(entry.dir, entry.container?.id ?? null);
  }

  /**
   * Renames a ready entry of `template` and `sizeMB` to `dir` (which must not exist); null if
   * none is ready, and the create lays out its own. The entry's container comes with it when it
   * was made in the create's shape (then the caller adopts it, or gives it back to abandon());
   * one of another shape is removed (in the background), the create makes its own over the
   * entry's layout, and the pool makes its next containers in the create's shape (one whose
   * init is gone is removed the same way). The caller refills the pool when it is done.
   */
  async take(template: string, sizeMB: number, dir: string, shape: PooledContainerShape): Promise<{ container: PooledContainer | null } | null> {
    if (!this.started || template !== this.template || sizeMB !== this.sizeMB) return null;
    const version = await templateVersion(this.cfg, template);
    let entry = this.ready.shift();
    while (entry && entry.templateVersion !== version) {
      await this.discard(entry.dir, entry.container?.id ?? null);
      entry = this.ready.shift();
    }
    if (!entry) return null;
    let container = entry.container;
    const fits = container && sameShape(container.shape, shape);
    // A container whose init died meanwhile (killed from outside) is never started.
    if (container && (!fits || !(await isSameProcess(container.pid, container.initStart)))) {
      const id = container.id;
      container = null;
      if (!fits) this.shape = shapeOf(shape);
      const removed: Promise<void> = this.removeContainer(id)
        .catch((e: unknown) => {
          process.stderr.write(`nestbox: a pooled container could not be removed: ${msg(e)}\n`);
        })
        .finally(() => this.removing.delete(removed));
      this.removing.add(removed);
    }
    try {
      await mkdir(path.dirname(dir), { recursive: true });
      await rename(entry.dir, dir);
      return { container };
    } catch (e) {
      process.stderr.write(`nestbox: a pooled sandbox directory could not be taken: ${msg(e)}\n`);
      await this.discard(entry.dir, container?.id ?? null).catch(() => undefined);
      return null;
    }
  }

  /** The pool's runc root (where a taken container is until it is adopted). */
  containerRunc(): Runc {
    if (!this.containers) throw new Error('this pool makes no containers');
    return this.containers.runc;
  }

  /** A taken container that was not adopted: removed with its address claim (its directory is the create's). */
  async abandon(container: PooledContainer): Promise<void> {
    await this.removeContainer(container.id);
  }

  /**
   * Makes entries until the pool is full again. A create calls it once it is done. While an
   * entry is still ready, the making waits REFILL_DELAY_MS: a sandbox's first command comes
   * right after its create, and on a node of few CPUs a refill beside it (mounts, `runc create`)
   * slowed it (`true` through the SDK: 45-51 ms beside a refill, 27-31 ms without, on 2 CPUs).
   * An empty pool is refilled at once (the next create would make its own meanwhile).
   */
  refill() {
    if (!this.started) return;
    if (this.ready.length > 0) {
      this.deferred ??= deferred(REFILL_DELAY_MS, () => {
        this.deferred = null;
        this.makeMissing();
      });
      return;
    }
    this.deferred?.cancel();
    this.deferred = null;
    this.makeMissing();
  }

  private makeMissing() {
    while (this.started && this.ready.length + this.making.size < this.size) {
      const made: Promise<void> = this.makeOne().finally(() => this.making.delete(made));
      this.making.add(made);
    }
  }

  private async makeOne() {
    const id = `${POOL_ID_PREFIX}${randomBytes(6).toString('hex')}`;
    const partial = path.join(this.dir, `${id}.partial`);
    const ready = path.join(this.dir, id);
    let entryDir = partial;
    const t = new StepTimes('pool', id);
    try {
      const version = await templateVersion(this.cfg, this.template);
      if (version === null) return; // not on this node (yet): a create fetches it, then fills the pool
      const p = sandboxPathsAt(partial);
      await prepareDirs(p, templateRootfs(this.cfg, this.template));
      t.step('dirs');
      if (!(await this.disks.take(p.diskImage, this.sizeMB))) {
        await createDisk(p.diskImage, this.sizeMB, { lowPriority: true });
        t.step('mkfs');
      }
      await mountDisk(p.diskImage, p.disk);
      t.step('mountDisk');
      await prepareDisk(this.cfg, p, { fresh: true, freshBoot: true, bootId: 'new' });
      t.step('prepareDisk');
      await mountRootfs(p);
      t.step('overlay');
      if (!this.started) throw new Error('the pool stopped');
      await rename(partial, ready);
      entryDir = ready;
      const container = this.containers && this.shape ? await this.makeContainer(id, ready, this.shape, t) : null;
      if (!this.started) throw new Error('the pool stopped');
      this.ready.push({ dir: ready, templateVersion: version, container });
      t.end();
    } catch (e) {
      if (this.started) process.stderr.write(`nestbox: a pooled sandbox could not be made: ${msg(e)}\n`);
      await this.discard(entryDir, this.containers ? id : null).catch(() => undefined);
    }
  }

  /** The entry's container, created in the pool's runc root with the pool's shape and an address of its own. */
  private async makeContainer(id: string, dir: string, shape: PooledContainerShape, t: StepTimes): Promise<PooledContainer> {
    const { runc, network, bundleHost } = this.containers!;
    const p = sandboxPathsAt(dir);
    const net = await network.prepare(id, { allowInternet: shape.allowInternet, newSandbox: true });
    t.step('network');
    const record: SandboxRecord = {
      sandboxId: id, template: this.template, resources: { ...shape.resources, diskMB: this.sizeMB }, envVars: {}, metadata: {},
      allowInternetAccess: shape.allowInternet, address: net.address, createdAt: new Date().toISOString(),
    };
    await writeEtcFiles(this.cfg, p, record);
    await writeBundleAt(this.cfg, bundleHost, p, record);
    t.step('etcBundle');
    // Beside the creates running now: at a low priority, which the create that takes the
    // container resets before it starts (the sandbox runs at the node's normal priority).
    await runc.create(id, dir, p.runcLog, { niceness: POOL_NICENESS });
    t.step('runcCreate');
    const st = await runc.status(id);
    if (st?.status !== 'created' || !st.startTime) throw new Error(`container ${id} is ${st?.status ?? 'gone'} after runc create`);
    return { id, pid: st.pid, initStart: st.startTime, address: net.address, madeIn: dir, shape };
  }

  /** A container of the pool's runc root and its address claim; nothing when they are gone. */
  private async removeContainer(id: string) {
    if (!this.containers) return;
    try {
      await this.containers.runc.destroy(id);
      await removeEmptyCgroups(id);
    } finally {
      await this.containers.network.release(id);
    }
  }

  /** An entry's container goes first (its mount namespace holds the overlay), then its mounts, then the entry. */
  private async discard(dir: string, containerId: string | null) {
    if (containerId) await this.removeContainer(containerId);
    await unmountSandbox(sandboxPathsAt(dir));
    await removeTree(dir);
  }
}

/**
 * The cgroups named for a pool id (`/nestbox/<id>` in each hierarchy, as its spec names them)
 * that runc's removal did not reach: a `runc create` cut short leaves them without runc's
 * record of them. Only empty ones go (rmdir refuses the others); the id is this pool's own.
 */
async function removeEmptyCgroups(id: string) {
  for (const hierarchy of await readdir(CGROUP_ROOT).catch(() => [] as string[])) {
    await rmdir(path.join(CGROUP_ROOT, hierarchy, 'nestbox', id)).catch(() => undefined);
  }
}
const CGROUP_ROOT = '/sys/fs/cgroup';

/** How long a refill waits after a create while the pool still has an entry ready (refill()). */
const REFILL_DELAY_MS = 150;

interface Deferred {
  /** Settles when the action has run or was cancelled. */
  done: Promise<void>;
  cancel(): void;
}

function deferred(ms: number, action: () => void): Deferred {
  let settle!: () => void;
  const done = new Promise<void>((resolve) => (settle = resolve));
  const timer = setTimeout(() => {
    try {
      action();
    } finally {
      settle();
    }
  }, ms);
  return {
    done,
    cancel() {
      clearTimeout(timer);
      settle();
    },
  };
}

/** The nice value the pool makes its containers at (their init keeps it until a create resets it). */
const POOL_NICENESS = 10;

/** Pool ids are never sandbox ids (these have no dash): the two cannot be taken for each other. */
const POOL_ID_PREFIX = 'pool-';

/** The pool id an entry's directory name holds (`pool-<hex>` or `pool-<hex>.partial`); null: none. */
function poolIdOf(name: string): string | null {
  const m = /^(pool-[0-9a-f]{12})(\.partial)?$/.exec(name);
  return m ? m[1]! : null;
}

function sameShape(a: PooledContainerShape, b: PooledContainerShape): boolean {
  return a.allowInternet === b.allowInternet && a.resources.cpuCount === b.resources.cpuCount
    && a.resources.memoryMB === b.resources.memoryMB && a.resources.pidsLimit === b.resources.pidsLimit;
}

/** A shape of its own (the create's request is not kept by reference). */
function shapeOf(s: PooledContainerShape): PooledContainerShape {
  return { allowInternet: s.allowInternet, resources: { cpuCount: s.resources.cpuCount, memoryMB: s.resources.memoryMB, pidsLimit: s.resources.pidsLimit } };
}

/** The identity of a template's current files: replaced, it is another (its root is renamed into place). */
async function templateVersion(cfg: RuntimeConfig, template: string): Promise<string | null> {
  const st = await stat(templateRootfs(cfg, template)).catch(() => null);
  return st ? `${st.dev}:${st.ino}` : null;
}

function msg(e: unknown) {
  return e instanceof Error ? e.message : String(e);
}

/**
 * The taken container's init back at the node's normal priority before it starts: the process
 * it runs (the sandbox's init, and every process of the sandbox after it) inherits its nice
 * value. runc's init execs on its main thread, whose id is the pid set here; the value is read
 * back, so a container that would run niced is refused.
 */
export async function resetPriority(container: PooledContainer): Promise<void> {
  if (!(await isSameProcess(container.pid, container.initStart))) throw new Error(`container ${container.id}'s init is gone`);
  setPriority(container.pid, 0);
  await assertNormalPriority(container);
}

/** The container's init (after the start: the sandbox's, which runc's init's thread exec'd) runs at nice 0, or the create fails. */
export async function assertNormalPriority(container: PooledContainer): Promise<void> {
  const nice = (await procStat(container.pid))?.nice ?? null;
  if (nice !== 0) throw new Error(`container ${container.id}'s init runs at nice ${nice}, not 0`);
}
