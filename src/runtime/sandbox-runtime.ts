import { chmod, chown, copyFile, mkdir, readdir, readFile, rm, stat, symlink, writeFile, rename } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { NestboxError, notFound, conflict, invalid } from '../core/errors.ts';
import { isSandboxId, isSnapshotKey, NAMED_SNAPSHOT_ID_PATTERN, newSandboxId, TEMPLATE_NAME_PATTERN } from '../core/ids.ts';
import { DEFAULT_DISK_MB, type SandboxResources } from '../core/runtime-state.ts';
import { run } from './command.ts';
import type { RuntimeConfig } from './config.ts';
import { handOverImages } from './criu-images.ts';
import { createDisk, diskUsage, mountDisk, unmountDisk } from './disk.ts';
import { exists, isMountPoint, moveTree, removeTree, unmount } from './fs-util.ts';
import { InitClient } from './init/client.ts';
import { NodeJournal } from './journal.ts';
import { KeyedMutex } from './keyed-mutex.ts';
import { sandboxPaths, snapshotFiles, snapshotPaths, templateRootfs, type SandboxPaths, type SnapshotFiles } from './layout.ts';
import { NetworkManager } from './network.ts';
import { buildOciSpec } from './oci-spec.ts';
import { createSnapshotStore, type SnapshotStore } from './snapshot-store.ts';
import { Runc, type ContainerStats } from './runc.ts';
import { startAndAwaitReady, templateStart, type TemplateStart } from './template-start.ts';
import { WarmCaptures } from './warm-templates.ts';
import { createTemplateDistribution, SharedDirectoryTemplates, type TemplateDistribution } from './template-distribution.ts';
import { hostResolvConf, sandboxFileContents, writeSandboxFiles, type SandboxFileHashes } from './sandbox-files.ts';

export interface CreateSandboxRequest {
  sandboxId: string;
  template: string;
  resources: SandboxResources;
  envVars: Record<string, string>;
  metadata: Record<string, string>;
  allowInternetAccess: boolean;
}

/** What the node keeps about a sandbox it runs (sandbox.json) or has paused (snapshot.json). */
export interface SandboxRecord extends CreateSandboxRequest {
  address: string;
  createdAt: string;
  /** When its container last started (create or restore) on this node. */
  startedAt?: string;
  /** What the node last wrote into /etc/hosts, hostname, resolv.conf (a file the sandbox changed is kept). */
  fileHashes?: SandboxFileHashes;
}

export interface SandboxMetrics extends ContainerStats {
  diskUsedBytes: number;
  diskTotalBytes: number;
}

export interface SnapshotRecord {
  sandbox: SandboxRecord;
  memory: boolean; // CRIU images present; otherwise files only
  pausedAt: string;
  /** When the dump froze the sandbox (it stopped computing): where its billing ends. */
  stoppedAt?: string;
  sizeBytes?: number;
}

export interface InventoryEntry {
  sandboxId: string;
  /** stopped: the container exists but its init is dead (a zombie counts as dead); broken: no container. */
  state: 'running' | 'stopped' | 'creating' | 'broken';
  /** An operation on it is in progress on this node. */
  busy: boolean;
  startedAt: string | null;
  pid: number | null;
  address: string | null;
  template: string | null;
  metadata: Record<string, string>;
  createdAt: string | null;
}

const INIT_READY_TIMEOUT_MS = 10_000;
/** A warm capture's limits while it starts (a sandbox restored from it gets its own). */
const CAPTURE_RESOURCES: SandboxResources = { cpuCount: 2, memoryMB: 2048, pidsLimit: 1024 };

/**
 * The container runtime of one node: create, pause (CRIU checkpoint + upper layer), resume,
 * kill, inventory and metrics. Operations on one sandbox are serialised; different sandboxes
 * proceed in parallel.
 */
export class SandboxRuntime {
  readonly network: NetworkManager;
  private readonly runc: Runc;
  private readonly locks = new KeyedMutex();
  /** One warm capture per template at a time. */
  private readonly captureLocks = new KeyedMutex();
  private readonly warm: WarmCaptures;
  private readonly clients = new Map<string, InitClient>();
  readonly journal: NodeJournal;
  /** Where snapshots are kept; `cfg.snapshotDir` is where pause stages and resume restores from. */
  readonly store: SnapshotStore;
  /** How templates reach the nodes that lack them (the object store, or a shared directory). */
  readonly templates: TemplateDistribution;

  constructor(readonly cfg: RuntimeConfig) {
    this.store = createSnapshotStore(cfg);
    this.warm = new WarmCaptures(cfg);
    this.templates = createTemplateDistribution(cfg, this.store);
    this.network = new NetworkManager({ subnetPrefix: cfg.subnetPrefix, egressAllow: cfg.egressAllow, egressDeny: cfg.egressDeny });
    this.journal = new NodeJournal(path.join(cfg.dataDir, 'journal.jsonl'));
    this.runc = new Runc(path.join(cfg.dataDir, 'runc'), cfg.criuBinDir);
  }

  async start(): Promise<void> {
    // The sandbox's mapped root must be able to traverse to its rootfs, bind sources and (at
    // restore) its images: these directories are 0711, their contents private.
    for (const dir of [this.cfg.dataDir, path.join(this.cfg.dataDir, 'sandboxes'), this.cfg.snapshotDir]) {
      await mkdir(dir, { recursive: true, mode: 0o711 });
      await chmod(dir, 0o711);
    }
    await mkdir(path.join(this.cfg.dataDir, 'runc'), { recursive: true, mode: 0o700 });
    await this.store.prepare();
    await this.network.setupHost();
  }

  /** The template's files on this node, fetched from the store when the node lacks them. */
  private async ensureTemplate(name: string): Promise<void> {
    if (await exists(templateRootfs(this.cfg, name))) return;
    const fetched = await this.templates.fetch(name).catch((e) => {
      throw new NestboxError('unavailable', `template "${name}" could not be fetched from ${this.templates.description}: ${msg(e)}`, true);
    });
    if (!fetched) throw notFound(`template "${name}" is not on this node${this.templates instanceof SharedDirectoryTemplates ? '' : ' nor in the store'}`);
  }

  /** The init client of a running sandbox; callers must not cache it across pause/resume. */
  init(sandboxId: string): InitClient {
    let client = this.clients.get(sandboxId);
    if (!client) {
      client = new InitClient(sandboxPaths(this.cfg, sandboxId).socket, { socketOwner: this.cfg.uidShift });
      this.clients.set(sandboxId, client);
    }
    return client;
  }

  async record(sandboxId: string): Promise<SandboxRecord> {
    assertId(sandboxId);
    try {
      return JSON.parse(await readFile(sandboxPaths(this.cfg, sandboxId).record, 'utf8')) as SandboxRecord;
    } catch {
      throw notFound(`sandbox ${sandboxId} is not on this node`);
    }
  }

  async create(req: CreateSandboxRequest): Promise<SandboxRecord> {
    assertId(req.sandboxId);
    if (!TEMPLATE_NAME_PATTERN.test(req.template)) throw invalid(`invalid template name "${req.template}"`);
    await this.ensureTemplate(req.template);
    const start = await templateStart(this.cfg, req.template);
    // A template with a start command is restored warm, its process already started.
    if (start && this.cfg.warmTemplates !== false) {
      const capture = await this.warmCapture(req.template, start);
      return this.locks.run(req.sandboxId, async () => {
        if (await this.store.exists(req.sandboxId)) throw conflict(`sandbox ${req.sandboxId} has a snapshot`);
        return this.restoreAsNew(req, capture);
      });
    }
    return this.locks.run(req.sandboxId, () => this.createFresh(req, start));
  }

  /** A new container from the template's files; with `start`, its start command runs and is ready. */
  private async createFresh(req: CreateSandboxRequest, start: TemplateStart | null): Promise<SandboxRecord> {
    const lower = templateRootfs(this.cfg, req.template);
    {
      const p = sandboxPaths(this.cfg, req.sandboxId);
      if (await exists(p.dir)) throw conflict(`sandbox ${req.sandboxId} already exists on this node`);
      if (await this.store.exists(req.sandboxId)) throw conflict(`sandbox ${req.sandboxId} has a snapshot`);
      try {
        await this.prepareDirs(p, lower);
        await createDisk(p.diskImage, req.resources.diskMB ?? DEFAULT_DISK_MB);
        await mountDisk(p.diskImage, p.disk);
        await this.prepareDisk(p, { fresh: true, freshBoot: true });
        const net = await this.network.prepare(req.sandboxId, req.allowInternetAccess);
        const record: SandboxRecord = { ...req, address: net.address, createdAt: new Date().toISOString() };
        record.fileHashes = await this.writeSandboxFiles(p, record);
        await this.mountAndConfigure(record);
        await this.runc.runDetached(req.sandboxId, p.dir, p.runcLog);
        await this.waitForInit(req.sandboxId, false);
        if (start) await startAndAwaitReady(this.init(req.sandboxId), start);
        return await this.started(record, 'create');
      } catch (e) {
        await this.teardown(req.sandboxId);
        throw wrap(e, 'create');
      }
    }
  }

  /**
   * The warm capture of a template's current version on this node, made now if there is none:
   * a sandbox of the template is created, its start command started and awaited, and it is
   * dumped (then removed). One capture per template at a time; creates wait for it.
   */
  private async warmCapture(template: string, start: TemplateStart): Promise<SnapshotFiles> {
    return this.captureLocks.run(template, async () => {
      const found = await this.warm.find(template, start.version);
      if (found) return found;
      const id = newSandboxId();
      const staged = await this.warm.stage(template, start.version);
      return this.locks.run(id, async () => {
        try {
          await this.createFresh({ sandboxId: id, template, resources: CAPTURE_RESOURCES, envVars: {}, metadata: {}, allowInternetAccess: false }, start);
          await this.dumpLive(id, staged);
          return await this.warm.commit(template, start.version, staged);
        } catch (e) {
          await rm(staged.dir, { recursive: true, force: true });
          throw e instanceof NestboxError ? e : new NestboxError('internal', `capturing template ${template} warm failed: ${msg(e)}`);
        } finally {
          if (await exists(sandboxPaths(this.cfg, id).dir)) {
            await this.stopped(id, 'capture', new Date());
            await this.teardown(id);
          }
        }
      });
    });
  }

  /**
   * Pause: with memory, a CRIU checkpoint of the whole container; always, the upper layer.
   * Everything is staged under a temporary name and renamed into place at the end, so a failed
   * pause never leaves a half snapshot that resume could pick up.
   */
  async pause(sandboxId: string, memory: boolean): Promise<SnapshotRecord> {
    assertId(sandboxId);
    return this.locks.run(sandboxId, async () => {
      const record = await this.record(sandboxId);
      const p = sandboxPaths(this.cfg, sandboxId);
      const state = await this.runc.state(sandboxId);
      if (!state || state.status !== 'running') throw conflict(`sandbox ${sandboxId} is not running`);
      // The sandbox stops computing when the dump freezes it, right after this.
      const stoppedAt = new Date();
      const staging = snapshotPaths(this.cfg, sandboxId, `.${sandboxId}.partial-${randomBytes(4).toString('hex')}`);
      await mkdir(staging.dir, { mode: 0o711 });
      // Journaled before the dump: an agent that dies during it leaves the stop on record, and
      // a dump that fails with the sandbox intact cancels it (a start at the same instant).
      await this.stopped(sandboxId, 'pause', stoppedAt);
      try {
        // CRIU refuses sockets connected to the outside: drop the agent's connections first.
        this.clients.get(sandboxId)?.closeAll();
        this.inject('checkpoint');
        if (memory) {
          await mkdir(staging.images, { mode: 0o700 });
          await mkdir(p.criuWork, { recursive: true, mode: 0o700 });
          await this.runc.checkpoint(sandboxId, staging.images, p.criuWork, p.runcLog);
          await handOverImages(staging.images, this.cfg.uidShift);
        }
      } catch (e) {
        await this.keepLog(sandboxId, 'dump');
        await rm(staging.dir, { recursive: true, force: true });
        // CRIU resumes the tasks when a dump fails; only a running container may stay.
        const after = await this.runc.state(sandboxId);
        if (after?.status === 'running') {
          await this.journal.append({ sandboxId, event: 'start', at: stoppedAt.toISOString(), cause: 'pause_failed' });
          throw new NestboxError('internal', `pause failed, sandbox still running: ${msg(e)}`);
        }
        await this.teardown(sandboxId);
        throw new NestboxError('internal', `pause failed and the sandbox was lost: ${msg(e)}`);
      }
      // From here the container's processes are gone (checkpoint) or are stopped (files only).
      await this.releaseDisk(sandboxId);
      await moveTree(p.diskImage, staging.diskImage);
      const snapshot: SnapshotRecord = { sandbox: record, memory, pausedAt: new Date().toISOString(), stoppedAt: stoppedAt.toISOString() };
      await writeFile(staging.meta, JSON.stringify(snapshot));
      await this.store.put(sandboxId, staging.dir); // complete and durable, manifest last
      await this.teardown(sandboxId);
      return snapshot;
    });
  }

  /**
   * Copies the whole file system of a running sandbox (the overlay's merged view, from the host
   * side of its mount) into `into`, an empty directory the caller made, for a template build:
   * links are copied as links, never followed, and ownership (the mapped range) is kept. The
   * sandbox's processes are frozen meanwhile, so nothing changes under the copy, then thawed.
   */
  async copyFileSystem(sandboxId: string, into: string): Promise<void> {
    assertId(sandboxId);
    return this.locks.run(sandboxId, async () => {
      const state = await this.runc.state(sandboxId);
      if (!state || state.status !== 'running') throw conflict(`sandbox ${sandboxId} is not running`);
      const p = sandboxPaths(this.cfg, sandboxId);
      if (!(await isMountPoint(p.rootfs))) throw new NestboxError('internal', `the root file system of ${sandboxId} is not mounted`);
      await this.runc.freeze(sandboxId);
      try {
        await run(['cp', '-a', '--no-dereference', '--reflink=auto', '--', `${p.rootfs}/.`, into]);
      } finally {
        await this.runc.thaw(sandboxId);
      }
    });
  }

  async snapshot(sandboxId: string): Promise<SnapshotRecord> {
    assertId(sandboxId);
    const snap = (await this.store.meta(sandboxId)) as SnapshotRecord | null;
    if (!snap) throw notFound(`no snapshot of sandbox ${sandboxId}`);
    return snap;
  }

  /**
   * A named snapshot (or a fork's source) of a running sandbox, which keeps running: its
   * processes are frozen while CRIU dumps them and the disk is copied, so memory and files
   * are of one instant; then they go on. Stored under `key` (complete and durable, manifest
   * last) before this resolves. The agent's connections to the init are closed for the dump
   * (CRIU refuses sockets that lead outside): streams open on the sandbox end.
   */
  async snapshotLive(sandboxId: string, key: string): Promise<SnapshotRecord> {
    assertId(sandboxId);
    if (!NAMED_SNAPSHOT_ID_PATTERN.test(key)) throw invalid(`invalid snapshot id "${key}"`);
    return this.locks.run(sandboxId, async () => {
      if (await this.store.exists(key)) throw conflict(`snapshot ${key} exists already`);
      const staging = snapshotPaths(this.cfg, key, `.${sandboxId}.live-${randomBytes(4).toString('hex')}`);
      await mkdir(staging.dir, { mode: 0o711 });
      try {
        const snapshot = await this.dumpLive(sandboxId, staging);
        await this.store.put(key, staging.dir);
        return snapshot;
      } catch (e) {
        await rm(staging.dir, { recursive: true, force: true });
        throw wrap(e, 'snapshot');
      }
    });
  }

  /** Dumps a running sandbox into `into` (images, disk.img, snapshot.json); it keeps running. */
  private async dumpLive(sandboxId: string, into: SnapshotFiles): Promise<SnapshotRecord> {
    const record = await this.record(sandboxId);
    const p = sandboxPaths(this.cfg, sandboxId);
    const state = await this.runc.state(sandboxId);
    if (!state || state.status !== 'running') throw conflict(`sandbox ${sandboxId} is not running`);
    this.clients.get(sandboxId)?.closeAll();
    await this.runc.freeze(sandboxId);
    const frozenAt = new Date();
    try {
      this.inject('checkpoint');
      await mkdir(into.images, { mode: 0o700 });
      await mkdir(p.criuWork, { recursive: true, mode: 0o700 });
      // CRIU finds the cgroup frozen and leaves it so: nothing writes until the disk is copied.
      await this.runc.checkpoint(sandboxId, into.images, p.criuWork, p.runcLog, { leaveRunning: true }).catch(async (e) => {
        await this.keepLog(sandboxId, 'dump');
        throw e;
      });
      await handOverImages(into.images, this.cfg.uidShift);
      // What the sandbox wrote is in the disk image once its file system is synced.
      await run(['sync', '-f', p.disk]);
      await run(['cp', '--sparse=always', '--', p.diskImage, into.diskImage]);
    } finally {
      await this.runc.thaw(sandboxId);
    }
    const snapshot: SnapshotRecord = { sandbox: record, memory: true, pausedAt: new Date().toISOString(), stoppedAt: frozenAt.toISOString() };
    await writeFile(into.meta, JSON.stringify(snapshot));
    return snapshot;
  }

  /**
   * A new sandbox continuing from a snapshot's memory and files (a named snapshot, a fork's
   * source): the snapshot is read, never consumed. The new sandbox has its own id, address,
   * disk (a copy), limits and env; its processes are those of the snapshot.
   */
  async createFromSnapshot(req: CreateSandboxRequest, key: string): Promise<SandboxRecord> {
    assertId(req.sandboxId);
    if (!NAMED_SNAPSHOT_ID_PATTERN.test(key)) throw invalid(`invalid snapshot id "${key}"`);
    return this.locks.run(req.sandboxId, async () => {
      const local = this.store.localPath?.(key) ?? null;
      if (local) {
        if (!(await this.store.exists(key))) throw notFound(`snapshot ${key} does not exist`);
        return this.restoreAsNew(req, snapshotFiles(local));
      }
      // Downloaded for this create, removed after it.
      const copy = snapshotPaths(this.cfg, key, `.${req.sandboxId}.from-${key}`);
      await rm(copy.dir, { recursive: true, force: true });
      try {
        await this.store.get(key, copy.dir).catch((e) => Promise.reject(this.store.exists(key).then((ok) => (ok ? wrap(e, 'create') : notFound(`snapshot ${key} does not exist`)))));
        return await this.restoreAsNew(req, copy);
      } finally {
        await rm(copy.dir, { recursive: true, force: true });
      }
    });
  }

  /** Restores the images and a copy of the disk of `from` as the new sandbox `req.sandboxId`. */
  private async restoreAsNew(req: CreateSandboxRequest, from: SnapshotFiles): Promise<SandboxRecord> {
    const snap = JSON.parse(await readFile(from.meta, 'utf8')) as SnapshotRecord;
    if (!snap.memory) throw invalid('the snapshot holds no memory');
    const template = snap.sandbox.template;
    const lower = templateRootfs(this.cfg, template);
    await this.ensureTemplate(template);
    const p = sandboxPaths(this.cfg, req.sandboxId);
    if (await exists(p.dir)) throw conflict(`sandbox ${req.sandboxId} already exists on this node`);
    try {
      await this.prepareDirs(p, lower);
      await run(['cp', '--sparse=always', '--', from.diskImage, p.diskImage]);
      await mountDisk(p.diskImage, p.disk);
      await this.prepareDisk(p, { fresh: false, freshBoot: false });
      const net = await this.network.prepare(req.sandboxId, req.allowInternetAccess);
      const record: SandboxRecord = { ...req, template, address: net.address, createdAt: new Date().toISOString() };
      record.fileHashes = await this.writeSandboxFiles(p, record, snap.sandbox.fileHashes);
      await this.mountAndConfigure(record);
      this.inject('restore');
      await mkdir(p.criuWork, { recursive: true, mode: 0o700 });
      await this.runc.restore(req.sandboxId, p.dir, from.images, p.criuWork, p.runcLog);
      await this.waitForInit(req.sandboxId, true);
      return await this.started(record, 'create');
    } catch (e) {
      await this.keepLog(req.sandboxId, 'restore');
      await this.teardown(req.sandboxId);
      throw wrap(e, 'create');
    }
  }

  /**
   * Resume from the snapshot store, on this node whatever node paused it. On failure the
   * snapshot is put back as it was: a failed resume loses nothing.
   */
  async resume(sandboxId: string): Promise<SandboxRecord> {
    assertId(sandboxId);
    return this.locks.run(sandboxId, async () => {
      const snap = await this.snapshot(sandboxId);
      const s = snapshotPaths(this.cfg, sandboxId);
      const p = sandboxPaths(this.cfg, sandboxId);
      if (await exists(p.dir)) throw conflict(`sandbox ${sandboxId} is already on this node`);
      const lower = templateRootfs(this.cfg, snap.sandbox.template);
      await this.ensureTemplate(snap.sandbox.template);
      await this.store.open(sandboxId, s.dir).catch((e) => Promise.reject(wrap(e, 'resume')));
      if (!(await exists(s.diskImage))) await this.convertLegacySnapshot(sandboxId, snap);
      let diskMoved = false;
      try {
        await this.prepareDirs(p, lower);
        await moveTree(s.diskImage, p.diskImage);
        diskMoved = true;
        await mountDisk(p.diskImage, p.disk);
        // A restored init must find the very binary it was dumped from; a fresh boot gets today's.
        await this.prepareDisk(p, { fresh: false, freshBoot: !snap.memory });
        const net = await this.network.prepare(sandboxId, snap.sandbox.allowInternetAccess, snap.sandbox.address);
        const record: SandboxRecord = { ...snap.sandbox, address: net.address };
        record.fileHashes = await this.writeSandboxFiles(p, record, snap.sandbox.fileHashes);
        await this.mountAndConfigure(record);
        this.inject('restore');
        if (snap.memory) {
          await mkdir(p.criuWork, { recursive: true, mode: 0o700 });
          await this.runc.restore(sandboxId, p.dir, s.images, p.criuWork, p.runcLog);
        } else {
          await this.runc.runDetached(sandboxId, p.dir, p.runcLog);
        }
        await this.waitForInit(sandboxId, snap.memory);
        // The sandbox runs: a snapshot that cannot be deleted now is left to the reconciler.
        await this.dropSnapshot(sandboxId).catch((e) => process.stderr.write(`nestbox: ${sandboxId} resumed, its snapshot stays: ${msg(e)}\n`));
        return await this.started(record, 'resume');
      } catch (e) {
        await this.keepLog(sandboxId, 'restore');
        if (diskMoved) {
          await this.releaseDisk(sandboxId);
          await moveTree(p.diskImage, s.diskImage);
        }
        await this.store.close(sandboxId, s.dir);
        await this.teardown(sandboxId);
        throw wrap(e, 'resume');
      }
    });
  }

  /**
   * Snapshots made before sandboxes had their own disk hold the upper layer as a directory: it
   * is copied onto a new disk inside the snapshot (the disk appears whole, by rename, before the
   * directory goes), so a resume cut short finds one or the other, never neither.
   */
  private async convertLegacySnapshot(sandboxId: string, snap: SnapshotRecord) {
    const s = snapshotPaths(this.cfg, sandboxId);
    if (!(await exists(s.legacyUpper))) throw new NestboxError('internal', `the snapshot of ${sandboxId} has no disk`);
    const staging = `${s.diskImage}.partial`;
    const mountPoint = path.join(s.dir, 'disk.partial');
    await rm(staging, { force: true });
    await unmountDisk(mountPoint);
    await createDisk(staging, snap.sandbox.resources.diskMB ?? DEFAULT_DISK_MB);
    await mkdir(mountPoint, { recursive: true, mode: 0o700 });
    await mountDisk(staging, mountPoint);
    try {
      // cp -a copies links as links and never follows one; the target is a fresh file system.
      await run(['cp', '-a', '--', s.legacyUpper, path.join(mountPoint, 'upper')]);
    } finally {
      await unmountDisk(mountPoint);
    }
    await rm(mountPoint, { recursive: true, force: true });
    await rename(staging, s.diskImage);
    await removeTree(s.legacyUpper);
  }

  /**
   * Kill is idempotent: it removes whatever is left of the sandbox (and its snapshot if asked),
   * and answers when the container stopped, as journaled (null: the journal knows no stop).
   */
  async kill(sandboxId: string, opts: { deleteSnapshot?: boolean } = {}): Promise<{ stoppedAt: string | null }> {
    assertId(sandboxId);
    return this.locks.run(sandboxId, async () => {
      await this.repairSnapshot(sandboxId); // never delete the only copy of a layer with the remains
      const state = await this.containerState(sandboxId);
      // Nothing running: an earlier call stopped it (its answer may have been lost; its stop is
      // journaled already), or it died unseen (journaled now, when it was found).
      const journaled = await this.journal.lastStop(sandboxId);
      let stoppedAt: Date | null = null;
      if (state?.status === 'running') {
        stoppedAt = new Date();
        await this.stopped(sandboxId, 'kill', stoppedAt);
      } else if (state && journaled === null) {
        stoppedAt = new Date();
        await this.stopped(sandboxId, 'found_dead', stoppedAt);
      }
      await this.teardown(sandboxId);
      if (opts.deleteSnapshot) await this.dropSnapshot(sandboxId);
      return { stoppedAt: stoppedAt?.toISOString() ?? journaled };
    });
  }

  /** Deletes a snapshot by its store key: a paused sandbox's id or a named snapshot's. */
  async deleteSnapshot(key: string): Promise<void> {
    if (!isSnapshotKey(key)) throw invalid(`invalid snapshot id "${key}"`);
    await this.locks.run(key, () => this.dropSnapshot(key));
  }

  /** Deletes a snapshot from the store, and whatever copy of it is in the local directory. */
  private async dropSnapshot(sandboxId: string) {
    await this.store.delete(sandboxId);
    await rm(snapshotPaths(this.cfg, sandboxId).dir, { recursive: true, force: true });
  }

  async inventory(): Promise<InventoryEntry[]> {
    const containers = new Map((await this.runc.list()).map((c) => [c.id, c]));
    const out: InventoryEntry[] = [];
    const dirs = await readdir(path.join(this.cfg.dataDir, 'sandboxes')).catch(() => [] as string[]);
    for (const id of dirs) {
      if (!isSandboxId(id)) continue;
      const c = containers.get(id);
      containers.delete(id);
      const rec = await this.record(id).catch(() => null);
      const busy = this.locks.isBusy(id);
      out.push({
        sandboxId: id,
        state: busy && !c ? 'creating' : c && isAlive(c) ? 'running' : c ? 'stopped' : 'broken',
        busy,
        startedAt: rec?.startedAt ?? null,
        pid: c?.pid || null,
        address: rec?.address ?? null,
        template: rec?.template ?? null,
        metadata: rec?.metadata ?? {},
        createdAt: rec?.createdAt ?? null,
      });
    }
    // Containers in our runc root without a sandbox directory: report them so they get reaped.
    for (const c of containers.values()) {
      out.push({
        sandboxId: c.id, state: isAlive(c) ? 'running' : 'stopped', busy: this.locks.isBusy(c.id), startedAt: null,
        pid: c.pid || null, address: null, template: null, metadata: {}, createdAt: null,
      });
    }
    return out;
  }

  /**
   * Repairs what an agent killed mid-operation left behind; run at start, before any operation
   * (the host is the record: runc state, sandbox directories, the snapshot store). Nothing
   * live is removed here: containers and their rows are the reconciler's business, decided
   * with the control plane. Returns one line per repair.
   */
  async recover(): Promise<string[]> {
    const notes: string[] = [];
    const dirs = await readdir(path.join(this.cfg.dataDir, 'sandboxes')).catch(() => [] as string[]);
    for (const id of dirs.filter(isSandboxId)) {
      const note = await this.locks.run(id, () => this.repairSnapshot(id));
      if (note) notes.push(note);
    }
    // A restore cut short leaves its rootfs mounted in runc's state directory.
    for (const id of (await readdir(path.join(this.cfg.dataDir, 'runc')).catch(() => [] as string[])).filter(isSandboxId)) {
      if (!dirs.includes(id) && !(await this.runc.state(id))) {
        await this.runc.destroy(id);
        notes.push(`${id}: runc state of a sandbox that is gone was removed`);
      }
    }
    for (const name of await readdir(this.cfg.snapshotDir).catch(() => [] as string[])) {
      const m = /^\.([a-z0-9]{20})\.partial-[0-9a-f]+$/.exec(name);
      if (!m || !(await exists(sandboxPaths(this.cfg, m[1]!).dir))) continue; // another node's pause
      const note = await this.locks.run(m[1]!, () => this.finishCutPause(m[1]!, name));
      notes.push(note);
    }
    // A live snapshot or fork cut short: its staging goes, its sandbox runs on (thawed below).
    for (const name of await readdir(this.cfg.snapshotDir).catch(() => [] as string[])) {
      const m = /^\.([a-z0-9]{20})\.(live|from)-[a-z0-9-]+$/.exec(name);
      if (!m) continue;
      await rm(path.join(this.cfg.snapshotDir, name), { recursive: true, force: true });
      notes.push(`${m[1]}: a snapshot or create from a snapshot was cut short; its staging was removed`);
    }
    // The agent freezes a sandbox only for a dump: one still frozen was left so by a crash.
    for (const c of await this.runc.list()) {
      if (c.status !== 'paused' || !isSandboxId(c.id)) continue;
      await this.runc.thaw(c.id);
      notes.push(`${c.id}: left frozen by a dump cut short; thawed`);
    }
    for (const name of await this.warm.removeStaging()) notes.push(`warm capture ${name} was cut short; its staging was removed`);
    notes.push(...(await this.store.cleanLocal(this.cfg.snapshotDir, (id) => exists(sandboxPaths(this.cfg, id).dir))));
    return notes;
  }

  /**
   * A resume cut short moved the snapshot's disk into the sandbox directory. If the container
   * never came up, the disk goes back and the snapshot is whole again; if it came up, the
   * snapshot was consumed and is removed.
   */
  private async repairSnapshot(sandboxId: string): Promise<string | null> {
    const s = snapshotPaths(this.cfg, sandboxId);
    const p = sandboxPaths(this.cfg, sandboxId);
    if (!(await exists(s.meta)) || (await exists(s.diskImage)) || (await exists(s.legacyUpper)) || !(await exists(p.diskImage))) return null;
    const state = await this.containerState(sandboxId);
    if (state?.status === 'running') {
      await this.dropSnapshot(sandboxId);
      // Its start was not journaled: the record, written just before the restore, dates it.
      const startedAt = (await stat(p.record).catch(() => null))?.mtime ?? new Date();
      await this.journal.append({ sandboxId, event: 'start', at: startedAt.toISOString(), cause: 'resume' });
      return `${sandboxId}: resume had completed; its consumed snapshot was removed`;
    }
    await this.releaseDisk(sandboxId);
    await moveTree(p.diskImage, s.diskImage);
    await this.store.close(sandboxId, s.dir);
    return `${sandboxId}: resume was cut short; its disk went back to the snapshot`;
  }

  /**
   * A pause cut short left its staging directory. If CRIU finished the dump (the container is
   * gone and the images are complete) the snapshot is completed, so nothing is lost; otherwise
   * the staging is removed and the container, if any, stays as it is.
   */
  private async finishCutPause(sandboxId: string, stagingName: string): Promise<string> {
    const staging = snapshotPaths(this.cfg, sandboxId, stagingName);
    const p = sandboxPaths(this.cfg, sandboxId);
    const state = await this.containerState(sandboxId);
    // Cut short while storing it: the staging is whole (snapshot.json is written last).
    if (state?.status !== 'running' && (await exists(staging.meta)) && (await exists(staging.diskImage)) && !(await this.store.exists(sandboxId))) {
      await this.store.put(sandboxId, staging.dir);
      await this.teardown(sandboxId);
      return `${sandboxId}: pause was cut short while its snapshot was stored; the snapshot was completed`;
    }
    const dumped = await exists(path.join(staging.images, 'stats-dump'));
    const record = await this.record(sandboxId).catch(() => null);
    if (state?.status === 'paused' && !dumped) await this.runc.thaw(sandboxId); // abandoned mid-dump
    const now = await this.containerState(sandboxId);
    if (now?.status === 'running' || !dumped || !record || (await this.store.exists(sandboxId)) || !(await exists(p.diskImage))) {
      await rm(staging.dir, { recursive: true, force: true });
      if (now?.status === 'running') await this.cancelStop(sandboxId);
      return `${sandboxId}: pause was cut short before its dump completed; the partial snapshot was removed`;
    }
    await this.releaseDisk(sandboxId);
    await moveTree(p.diskImage, staging.diskImage);
    await writeFile(staging.meta, JSON.stringify({ sandbox: record, memory: true, pausedAt: new Date().toISOString() } satisfies SnapshotRecord));
    await this.store.put(sandboxId, staging.dir);
    await this.teardown(sandboxId);
    return `${sandboxId}: pause was cut short after its dump; the snapshot was completed`;
  }

  /** Sandboxes with an operation queued or in progress on this node. */
  busy(): string[] {
    return this.locks.busyKeys();
  }

  /**
   * The whole inventory of the node for the reconciler: containers, complete snapshots, and
   * the sandboxes whose state may be in motion (an operation queued, running, or finished
   * while the lists were read: their entries may disagree with each other).
   */
  async report(): Promise<{ sandboxes: InventoryEntry[]; snapshots: string[]; namedSnapshots: string[]; busy: string[] }> {
    const mark = this.locks.mark();
    const busyBefore = this.locks.busyKeys();
    const sandboxes = await this.inventory();
    const keys = await this.store.list();
    const busy = new Set([...busyBefore, ...this.locks.busyKeys(), ...this.locks.changedSince(mark)]);
    return { sandboxes, snapshots: keys.filter(isSandboxId), namedSnapshots: keys.filter((k) => NAMED_SNAPSHOT_ID_PATTERN.test(k)), busy: [...busy] };
  }

  /** Ids of the paused sandboxes' complete snapshots in the snapshot store (staging directories are not). */
  async snapshotIds(): Promise<string[]> {
    return (await this.store.list()).filter(isSandboxId);
  }

  /** The paused sandboxes' snapshots (named snapshots are not). */
  async snapshots(): Promise<SnapshotRecord[]> {
    const out: SnapshotRecord[] = [];
    for (const name of await this.snapshotIds()) {
      const snap = await this.snapshot(name).catch(() => null);
      if (snap) out.push(snap);
    }
    return out;
  }

  async metrics(sandboxId: string): Promise<SandboxMetrics> {
    assertId(sandboxId);
    const stats = await this.runc.stats(sandboxId);
    if (!stats) throw notFound(`sandbox ${sandboxId} is not running on this node`);
    const disk = await diskUsage(sandboxPaths(this.cfg, sandboxId).disk).catch(() => ({ usedBytes: 0, totalBytes: 0 }));
    return { ...stats, diskUsedBytes: disk.usedBytes, diskTotalBytes: disk.totalBytes };
  }

  /** runc's view of the container, except that a zombie init counts as stopped. */
  async containerState(sandboxId: string) {
    const state = await this.runc.state(sandboxId);
    if (state && state.status === 'running' && !isAlive(state)) return { ...state, status: 'stopped' as const };
    return state;
  }

  // --- pieces -------------------------------------------------------------------------------

  /** Chaos testing: fails this step with the configured probability. */
  private inject(step: 'checkpoint' | 'restore') {
    const p = this.cfg.faults?.[step] ?? 0;
    if (p > 0 && Math.random() < p) {
      process.stderr.write(`nestbox: injected fault: ${step}\n`); // counted by the chaos run
      throw new Error(`injected fault: ${step} failed`);
    }
  }

  /** Records a start: in the sandbox's record (the inventory reports it) and the journal. */
  private async started(record: SandboxRecord, cause: 'create' | 'resume'): Promise<SandboxRecord> {
    const withStart = { ...record, startedAt: new Date().toISOString() };
    await writeFile(sandboxPaths(this.cfg, record.sandboxId).record, JSON.stringify(withStart));
    await this.journal.append({ sandboxId: record.sandboxId, event: 'start', at: withStart.startedAt, cause });
    return withStart;
  }

  /**
   * Before a sandbox's disk moves: its container is gone, no overlay uses the disk any more (its
   * rootfs, or CRIU's mount of it) and the disk itself is unmounted; otherwise the move is refused.
   */
  private async releaseDisk(sandboxId: string) {
    const p = sandboxPaths(this.cfg, sandboxId);
    await this.runc.destroy(sandboxId);
    await unmount(p.rootfs);
    if (await isMountPoint(p.rootfs)) throw new Error(`the root file system of ${sandboxId} is still mounted; its disk stays where it is`);
    await unmountDisk(p.disk);
  }

  /** The sandbox kept running after a stop was journaled: a start at the same instant cancels it. */
  private async cancelStop(sandboxId: string) {
    const last = (await this.journal.read()).filter((e) => e.sandboxId === sandboxId).at(-1);
    if (last?.event === 'stop') await this.journal.append({ sandboxId, event: 'start', at: last.at, cause: 'pause_failed' });
  }

  private async stopped(sandboxId: string, cause: string, at: Date) {
    await this.journal.append({ sandboxId, event: 'stop', at: at.toISOString(), cause });
  }

  /** The sandbox's directory (the bundle), its rootfs mount point, and the name of its lower layer. */
  private async prepareDirs(p: SandboxPaths, lower: string) {
    // The sandbox's root (host uid `shift`) must be able to reach its rootfs and bind sources.
    await mkdir(p.dir, { recursive: true, mode: 0o711 });
    await mkdir(p.rootfs, { mode: 0o755 });
    await mkdir(p.disk, { mode: 0o711 });
    // The overlay names its lower layer by this link, so mountinfo shows "lower", not a host path.
    await symlink(lower, p.lowerLink);
  }

  /**
   * Lays out a mounted disk. The directories that name sandbox-writable ones (the disk's root,
   * etc/, init/) are host root's, so nothing inside can replace what the agent opens; the socket
   * directory starts empty at every start (a restored init binds its socket again).
   */
  private async prepareDisk(p: SandboxPaths, o: { fresh: boolean; freshBoot: boolean }) {
    const shift = this.cfg.uidShift;
    await chmod(p.disk, 0o711);
    if (o.fresh) {
      await mkdir(p.upper, { mode: 0o755 });
      await chown(p.upper, shift, shift);
    }
    // A disk converted from an old snapshot holds only its upper layer.
    await mkdir(p.work, { recursive: true, mode: 0o700 });
    await removeTree(p.socketDir);
    await mkdir(p.socketDir, { mode: 0o700 });
    await chown(p.socketDir, shift, shift);
    await mkdir(p.initDir, { recursive: true, mode: 0o755 });
    if (o.freshBoot || !(await exists(p.initBinary))) {
      const staged = `${p.initBinary}.new`;
      await copyFile(this.cfg.initBinary, staged);
      await chmod(staged, 0o555);
      await rename(staged, p.initBinary);
    }
  }

  /** /etc/hosts, hostname and resolv.conf of the sandbox (see sandbox-files.ts). */
  private async writeSandboxFiles(p: SandboxPaths, record: SandboxRecord, previous?: SandboxFileHashes) {
    return writeSandboxFiles(p.etcDir, sandboxFileContents(record.address, await hostResolvConf()), this.cfg.uidShift, previous);
  }

  private async mountAndConfigure(record: SandboxRecord) {
    const p = sandboxPaths(this.cfg, record.sandboxId);
    // Relative names (from the bundle directory): the sandbox's mountinfo tells nothing of the host.
    const rel = (to: string) => path.relative(p.dir, to);
    await run(
      ['mount', '-t', 'overlay', 'overlay', '-o', `lowerdir=${rel(p.lowerLink)},upperdir=${rel(p.upper)},workdir=${rel(p.work)}`, rel(p.rootfs)],
      { cwd: p.dir },
    );
    const spec = buildOciSpec({
      sandboxId: record.sandboxId,
      rootfs: p.rootfs,
      initBinary: p.initBinary,
      socketDir: p.socketDir,
      etcDir: p.etcDir,
      networkHook: this.network.hook(record.sandboxId, record.address),
      resources: record.resources,
      uidShift: this.cfg.uidShift,
      uidRange: this.cfg.uidRange,
    });
    await writeFile(path.join(p.dir, 'config.json'), JSON.stringify(spec));
    await writeFile(p.record, JSON.stringify(record));
  }

  /** CRIU's log of a failed dump or restore outlives the sandbox directory, for the operator. */
  private async keepLog(sandboxId: string, kind: 'dump' | 'restore') {
    const from = path.join(sandboxPaths(this.cfg, sandboxId).criuWork, `${kind}.log`);
    const dir = path.join(this.cfg.dataDir, 'logs');
    await mkdir(dir, { recursive: true });
    await copyFile(from, path.join(dir, `${sandboxId}-${kind}-${Date.now()}.log`)).catch(() => undefined);
  }

  private async waitForInit(sandboxId: string, restored: boolean) {
    const client = this.init(sandboxId);
    const started = Date.now();
    const deadline = started + INIT_READY_TIMEOUT_MS;
    let hupSent = false;
    let lastError: unknown;
    for (let delay = 2; Date.now() < deadline; delay = Math.min(delay * 2, 50)) {
      try {
        await client.ping();
        return;
      } catch (e) {
        lastError = e;
      }
      // A restored init may hold a listening socket whose path did not come back: ask it to rebind.
      if (restored && !hupSent && Date.now() - started > 200) {
        const st = await this.runc.state(sandboxId);
        if (st?.pid) process.kill(st.pid, 'SIGHUP');
        hupSent = true;
      }
      await new Promise((r) => setTimeout(r, delay));
    }
    throw new Error(`sandbox init did not answer within ${INIT_READY_TIMEOUT_MS} ms: ${msg(lastError)}`);
  }

  /** Removes the container, mounts, network and directory of a sandbox; idempotent. */
  private async teardown(sandboxId: string) {
    const p = sandboxPaths(this.cfg, sandboxId);
    this.clients.get(sandboxId)?.closeAll();
    this.clients.delete(sandboxId);
    await this.releaseDisk(sandboxId);
    await this.network.release(sandboxId);
    await removeTree(p.dir);
  }
}

/** runc says `running` while the init is a zombie nobody reaped yet: that sandbox is dead. */
function isAlive(c: { status: string; pid: number }): boolean {
  if (c.status !== 'running') return false;
  try {
    const stat = readFileSync(`/proc/${c.pid}/stat`, 'utf8');
    const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return state !== 'Z' && state !== 'X';
  } catch {
    return false; // no such process
  }
}

function assertId(id: string) {
  if (!isSandboxId(id)) throw invalid(`invalid sandbox id "${id}"`);
}

function msg(e: unknown) {
  return e instanceof Error ? e.message : String(e);
}

function wrap(e: unknown, op: string): Error {
  if (e instanceof NestboxError) return e;
  return new NestboxError('internal', `${op} failed: ${msg(e)}`);
}
