import { chmod, mkdir, readFile, rm, writeFile, rename } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
import { availableParallelism } from 'node:os';
import path from 'node:path';
import { NestboxError, notFound, conflict, invalid } from '../core/errors.ts';
import { isSandboxId, isSnapshotKey, NAMED_SNAPSHOT_ID_PATTERN, newSandboxId, TEMPLATE_NAME_PATTERN } from '../core/ids.ts';
import {
  DEFAULT_CPU_COUNT, DEFAULT_DISK_MB, DEFAULT_MEMORY_MB, DEFAULT_PIDS_LIMIT, type SandboxResources,
} from '../core/runtime-state.ts';
import { CleanupStack } from './cleanup-stack.ts';
import { RequestAdmission } from './request-admission.ts';
import { CommandDeadlines } from './command-deadlines.ts';
import { run } from './command.ts';
import { prepareCgroupYard } from './cgroup-yard.ts';
import { withCriuLog } from './criu-log.ts';
import { prepareMaskSource } from './mask-source.ts';
import { ensureCriuKernelCache } from './criu-kernel-cache.ts';
import type { RuntimeConfig, RuntimeFaults } from './config.ts';
import { handOverImages } from './criu-images.ts';
import { createDisk, DiskPool, loopDeviceOf, mountDisk, unmountDisk, waitForLoopDetach } from './disk.ts';
import { assertNormalPriority, resetPriority, RootPool, type PooledContainer, type PooledContainerShape } from './root-pool.ts';
import { setCreatedContainerHostname, setSandboxHostname } from './sandbox-hostname.ts';
import { initLetGoOfHostSockets } from './init-sockets.ts';
import { discardTree, exists, isMountPoint, moveTree, removeTree } from './fs-util.ts';
import { InitClient } from './init/client.ts';
import { NodeJournal } from './journal.ts';
import { KeyedMutex } from './keyed-mutex.ts';
import { sandboxPaths, snapshotFiles, snapshotPaths, templateRootfs, type SnapshotFiles } from './layout.ts';
import { NetworkManager } from './network.ts';
import { createSnapshotStore, type SnapshotStore } from './snapshot-store.ts';
import { retried } from './retry.ts';
import { isSameProcess, Runc } from './runc.ts';
import { mountRootfs, prepareDirs, prepareDisk, unmountSandbox, writeBundle, writeEtcFiles, type BundleHost } from './sandbox-directories.ts';
import { NodeInventory, type InventoryEntry, type NodeReport, type SandboxMetrics } from './sandbox-inventory.ts';
import type { CreateSandboxRequest, SandboxRecord, SnapshotRecord } from './sandbox-records.ts';
import { SandboxRecovery } from './sandbox-recovery.ts';
import { Slots } from './slots.ts';
import { StepTimes } from './step-times.ts';
import { startAndAwaitReady, templateStart, type TemplateStart } from './template-start.ts';
import { WarmCaptures } from './warm-templates.ts';
import { createTemplateDistribution, LocalTemplates, type TemplateDistribution } from './template-distribution.ts';

const INIT_READY_TIMEOUT_MS = 10_000;
/**
 * CRIU's failure to stop a task before a dump ("Unseizable non-zombie <pid> found, state D"): a
 * process that vfork()ed (dash does, for every command it runs) waits in state D until its child
 * execs, and a freeze that caught the child in between leaves both so until the thaw (seen in the
 * suite, with a shell loop running `sleep`). The freeze for a dump avoids that moment
 * (freezeForDump); where it could not, or the kernel shows no wait channels, the dump is tried
 * once more: thawed, the child execs. (`injected fault: seize`: the tests' stand-in.)
 */
const UNSEIZABLE = /Unseizable non-zombie|injected fault: seize/;
/** A snapshot whose put failed is put again (its staging is whole): a store away for a few seconds. */
const STORE_RETRY_DELAYS_MS = [2000, 4000];
/** The template whose sandbox directories are laid out ahead: E2B's default, most creates'. */
const POOLED_TEMPLATE = 'base';
/**
 * The shape of the pool's first containers: a create through the control plane that names no
 * resources (E2B's default has internet access). The pool follows the creates' shape after.
 */
const POOLED_SHAPE: PooledContainerShape = {
  resources: { cpuCount: DEFAULT_CPU_COUNT, memoryMB: DEFAULT_MEMORY_MB, pidsLimit: DEFAULT_PIDS_LIMIT }, allowInternet: true,
};
/** A warm capture's limits while it starts (a sandbox restored from it gets its own). */
const CAPTURE_RESOURCES: SandboxResources = { cpuCount: 2, memoryMB: 2048, pidsLimit: 1024 };

/**
 * The container runtime of one node: create, pause (CRIU checkpoint + the sandbox's disk),
 * resume, kill, live snapshots and warm captures here; the inventory and metrics
 * (sandbox-inventory.ts), recovery after an agent crash (sandbox-recovery.ts) and the
 * directories a container starts from (sandbox-directories.ts) beside it. Operations on one
 * sandbox are serialised; different sandboxes proceed in parallel.
 */
export class SandboxRuntime {
  readonly network: NetworkManager;
  private readonly runc: Runc;
  private readonly locks = new KeyedMutex();
  /** One warm capture per template at a time. */
  private readonly captureLocks = new KeyedMutex();
  private readonly warm: WarmCaptures;
  private readonly clients = new Map<string, InitClient>();
  /** Requests in progress on each sandbox; a pause takes no new ones (the agent's envd and port routes ask). */
  readonly admission = new RequestAdmission();
  /** Killed (the caller has its answer) while their directories are still being removed: gone to everyone. */
  private readonly killedNotRemoved = new Set<string>();
  /** Commands' timeouts, which go with the sandbox through pause and resume. */
  readonly commandDeadlines = new CommandDeadlines((id, pid, argv0) => this.killCommand(id, pid, argv0));
  private readonly nodeInventory: NodeInventory;
  private readonly recovery: SandboxRecovery;
  readonly journal: NodeJournal;
  /** Where snapshots are kept; `cfg.snapshotDir` is where pause stages and resume restores from. */
  readonly store: SnapshotStore;
  /** How templates reach the nodes that lack them: through the snapshot store (its object store or directory). */
  readonly templates: TemplateDistribution;
  /** New disks of the default size, made ahead of the creates that take them. */
  private readonly disks: DiskPool;
  /** Directories of new sandboxes of the default template, laid out and mounted ahead. */
  private readonly roots: RootPool;
  /** Creates that lay out and start a container from nothing: as many at once as the node has CPUs. */
  private readonly freshStarts = new Slots(Math.max(2, availableParallelism()));
  /** What bundles name of the node: the network hook; CRIU's cgroup yard and mask source once start() made them. */
  private readonly bundleHost: BundleHost;

  constructor(readonly cfg: RuntimeConfig) {
    this.store = createSnapshotStore(cfg);
    this.warm = new WarmCaptures(cfg);
    this.templates = createTemplateDistribution(cfg, this.store);
    this.network = new NetworkManager({
      subnetPrefix: cfg.subnetPrefix, hookBinary: cfg.networkHook, egressAllow: cfg.egressAllow, egressDeny: cfg.egressDeny,
    });
    this.bundleHost = { network: this.network, cgroupYard: null, maskSource: null };
    this.journal = new NodeJournal(path.join(cfg.dataDir, 'journal.jsonl'));
    this.runc = new Runc(path.join(cfg.dataDir, 'runc'), cfg.criuBinDir);
    this.disks = new DiskPool(path.join(cfg.dataDir, 'disk-pool'), DEFAULT_DISK_MB);
    this.roots = new RootPool(cfg, path.join(cfg.dataDir, 'root-pool'), this.disks, POOLED_TEMPLATE, DEFAULT_DISK_MB, {
      runc: new Runc(path.join(cfg.dataDir, 'runc-pool'), cfg.criuBinDir), network: this.network, bundleHost: this.bundleHost, shape: POOLED_SHAPE,
    });
    this.nodeInventory = new NodeInventory(cfg, this.runc, this.store, this.locks);
    this.recovery = new SandboxRecovery({
      cfg, runc: this.runc, store: this.store, journal: this.journal, locks: this.locks, warm: this.warm, inventory: this.nodeInventory,
      teardown: (id) => this.teardown(id), releaseDisk: (id) => this.releaseDisk(id), dropSnapshot: (id) => this.dropSnapshot(id),
    });
  }

  async start(): Promise<void> {
    // The sandbox's mapped root must be able to traverse to its rootfs, bind sources and (at
    // restore) its images: these directories are 0711, their contents private.
    for (const dir of [this.cfg.dataDir, path.join(this.cfg.dataDir, 'sandboxes'), this.cfg.snapshotDir]) {
      await mkdir(dir, { recursive: true, mode: 0o711 });
      await chmod(dir, 0o711);
    }
    await mkdir(path.join(this.cfg.dataDir, 'runc'), { recursive: true, mode: 0o700 });
    await ensureCriuKernelCache(this.cfg.criuBinDir, this.cfg.dataDir);
    this.bundleHost.cgroupYard = await prepareCgroupYard(path.join(this.cfg.dataDir, 'cgroup-yard'));
    this.bundleHost.maskSource = await prepareMaskSource();
    await this.store.prepare();
    await this.network.setupHost();
    await this.network.sweepClaimLeftovers();
    await this.disks.start();
    await this.roots.start();
  }

  /** The template's files on this node, fetched from the store when the node lacks them. */
  private async ensureTemplate(name: string): Promise<void> {
    if (await exists(templateRootfs(this.cfg, name))) return;
    const fetched = await this.templates.fetch(name).catch((e) => {
      throw new NestboxError('unavailable', `template "${name}" could not be fetched from ${this.templates.description}: ${msg(e)}`, { retryable: true });
    });
    if (!fetched) throw notFound(`template "${name}" is not on this node${this.templates instanceof LocalTemplates ? '' : ' nor in the store'}`);
  }

  /** The init client of a running sandbox; callers must not cache it across pause/resume. */
  initClient(sandboxId: string): InitClient {
    let client = this.clients.get(sandboxId);
    if (!client) {
      client = new InitClient(sandboxPaths(this.cfg, sandboxId).socket, { socketOwner: this.cfg.uidShift });
      this.clients.set(sandboxId, client);
    }
    return client;
  }

  async record(sandboxId: string): Promise<SandboxRecord> {
    assertId(sandboxId);
    if (this.killedNotRemoved.has(sandboxId)) throw notFound(`sandbox ${sandboxId} not found`);
    return this.nodeInventory.record(sandboxId);
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
    const p = sandboxPaths(this.cfg, req.sandboxId);
    if (await exists(p.dir)) throw conflict(`sandbox ${req.sandboxId} already exists on this node`);
    if (await this.store.exists(req.sandboxId)) throw conflict(`sandbox ${req.sandboxId} has a snapshot`);
    const t = new StepTimes('create', req.sandboxId);
    t.step('checks');
    let release: (() => void) | null = null;
    try {
      const sizeMB = req.resources.diskMB ?? DEFAULT_DISK_MB;
      const pooled = await this.roots.take(req.template, sizeMB, p.dir, { resources: req.resources, allowInternet: req.allowInternetAccess });
      if (!pooled?.container) {
        // Started from nothing: in turns with the node's other such starts (see Slots).
        release = await this.freshStarts.acquire();
        t.step('turn');
      }
      if (pooled?.container) {
        const out = await this.startPooled(req, pooled.container, start, t);
        t.end();
        return out;
      }
      if (!pooled) await prepareDirs(p, lower);
      t.step(pooled ? 'pooledDir' : 'dirs');
      const [net] = await settled(
        this.network.prepare(req.sandboxId, { allowInternet: req.allowInternetAccess, newSandbox: true }),
        (async () => {
          if (pooled) return; // its disk and overlay are mounted, laid out as below
          if (!(await this.disks.take(p.diskImage, sizeMB))) await createDisk(p.diskImage, sizeMB);
          await mountDisk(p.diskImage, p.disk);
          await prepareDisk(this.cfg, p, { fresh: true, freshBoot: true, bootId: 'new' });
          await mountRootfs(p);
        })(),
      );
      t.step('diskNetworkOverlay');
      const record: SandboxRecord = { ...req, address: net.address, createdAt: new Date().toISOString() };
      record.fileHashes = await writeEtcFiles(this.cfg, p, record);
      t.step('etc');
      await writeBundle(this.cfg, this.bundleHost, record);
      t.step('bundle');
      await this.runc.runDetached(req.sandboxId, p.dir, p.runcLog);
      t.step('runc');
      await this.waitForInit(req.sandboxId, false);
      t.step('init');
      release?.();
      if (start) await startAndAwaitReady(this.initClient(req.sandboxId), start);
      const out = await this.started(record, 'create');
      t.step('started');
      t.end();
      return out;
    } catch (e) {
      await this.teardown(req.sandboxId);
      throw wrap(e, 'create');
    } finally {
      release?.();
      this.roots.refill();
    }
  }

  /**
   * A create that took a container the pool made ahead (its directory is the sandbox's now):
   * its address claim, files of /etc and host name become the sandbox's, runc's record of it
   * moves to the node's root under the sandbox's id, and it starts. Until it is adopted, a
   * failure gives it back to the pool to remove; after, the create's teardown removes it.
   */
  private async startPooled(req: CreateSandboxRequest, container: PooledContainer, start: TemplateStart | null, t: StepTimes): Promise<SandboxRecord> {
    const p = sandboxPaths(this.cfg, req.sandboxId);
    const record: SandboxRecord = { ...req, address: container.address, createdAt: new Date().toISOString() };
    t.step('pooled');
    // The host name is set beside the rest: nothing of the sandbox's runs before the create
    // answers, and the init it starts is the same process (its start time is checked).
    const hostname = setCreatedContainerHostname(container.pid, req.sandboxId, () => isSameProcess(container.pid, container.initStart));
    hostname.catch(() => undefined); // awaited below
    try {
      await this.network.transfer(container.address, container.id, req.sandboxId);
      const [hashes] = await Promise.all([writeEtcFiles(this.cfg, p, record), writeBundle(this.cfg, this.bundleHost, record)]);
      record.fileHashes = hashes;
      t.step('etc');
      await this.runc.adopt(this.roots.containerRunc(), container.id, { id: req.sandboxId, fromDir: container.madeIn, toDir: p.dir, hostname: req.sandboxId });
    } catch (e) {
      await this.roots.abandon(container).catch(() => undefined);
      throw e;
    }
    t.step('adopted');
    await resetPriority(container);
    await this.runc.start(req.sandboxId);
    t.step('runcStart');
    await this.waitForInit(req.sandboxId, false);
    t.step('init');
    await hostname;
    await assertNormalPriority(container);
    t.step('hostname');
    if (start) await startAndAwaitReady(this.initClient(req.sandboxId), start);
    const out = await this.started(record, 'create');
    t.step('started');
    return out;
  }

  /**
   * Before a pause: the sandbox takes no new requests (the agent answers them "not here", and
   * the proxy sends them on to wherever the sandbox goes next), and those in progress (each
   * command stream, file call or watch) are waited for up to `ms`: what was asked before a
   * drain's pause is answered. A process that runs on (a server, a background command) keeps
   * its request open: the wait ends at `ms`, and its stream ends with the pause.
   */
  private async quiesce(sandboxId: string, ms: number): Promise<void> {
    this.admission.close(sandboxId);
    await this.admission.idle(sandboxId, ms);
  }

  /** A deleted template's warm captures go with it. */
  async forgetWarmCaptures(template: string): Promise<void> {
    await this.captureLocks.run(template, () => this.warm.forget(template));
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
            await this.journal.stopped(id, 'capture', new Date());
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
  async pause(sandboxId: string, { memory, quiesceMs = 0 }: { memory: boolean; quiesceMs?: number }): Promise<SnapshotRecord> {
    assertId(sandboxId);
    let answer: (snapshot: SnapshotRecord) => void = () => undefined;
    let wasAnswered = false;
    const answered = new Promise<SnapshotRecord>((resolve) => (answer = resolve));
    const done = this.locks.run(sandboxId, async () => {
      try {
        await this.pauseLocked(sandboxId, memory, quiesceMs, (snapshot) => {
          wasAnswered = true;
          answer(snapshot);
        });
      } catch (e) {
        // A pause that failed with the sandbox still running: it takes requests again.
        if (!wasAnswered && (await this.runc.state(sandboxId).catch(() => null))?.status === 'running') this.admission.open(sandboxId);
        throw e;
      }
    });
    done.catch((e) => {
      if (wasAnswered) process.stderr.write(`nestbox: ${sandboxId} was paused, but removing what was left of its container failed: ${msg(e)}\n`);
    });
    return Promise.race([answered, done.then(() => answered)]);
  }

  /**
   * `answer` is given the snapshot once it is stored; what is left of the container goes after,
   * under the lock still. A dump that CRIU could not begin because a task would not stop is
   * tried once more (see UNSEIZABLE).
   */
  private async pauseLocked(
    sandboxId: string, memory: boolean, quiesceMs: number, answer: (snapshot: SnapshotRecord) => void, attempt = 1,
  ): Promise<void> {
    const t = new StepTimes('pause', sandboxId);
    const record = await this.record(sandboxId);
    const p = sandboxPaths(this.cfg, sandboxId);
    const state = await this.runc.status(sandboxId);
    if (!state || state.status !== 'running') throw conflict(`sandbox ${sandboxId} is not running`);
    await this.quiesce(sandboxId, quiesceMs);
    // (the sandbox runs while the init lets go: before its stop instant)
    await this.dropAgentConnections(sandboxId, state.pid);
    t.step('checks');
    // A memory pause freezes the sandbox itself before CRIU does (CRIU waits for a freeze in
    // steps of 100 ms); it stops computing then. (A files-only pause kills it: a task frozen
    // by cgroup v1's freezer cannot die, so that one is not frozen.)
    if (memory) await this.runc.freeze(sandboxId, { forDump: true });
    const stoppedAt = new Date();
    t.step('freeze');
    // Its disk's loop device, for after the dump (looked up meanwhile: see detachDisk).
    const diskDevice = loopDeviceOf(p.diskImage, p.disk).catch(() => null);
    const staging = snapshotPaths(this.cfg, sandboxId, `.${sandboxId}.partial-${randomBytes(4).toString('hex')}`);
    await mkdir(staging.dir, { mode: 0o711 });
    // Journaled before the dump: an agent that dies during it leaves the stop on record, and
    // a dump that fails with the sandbox intact cancels it (a start at the same instant).
    await this.journal.stopped(sandboxId, 'pause', stoppedAt);
    t.step('journal');
    let follow: { abandon(): void } | undefined;
    let handedOver: Promise<void> = Promise.resolve();
    try {
      this.inject('checkpoint');
      if (memory && attempt === 1) this.inject('seize');
      if (memory) {
        await mkdir(staging.images, { mode: 0o700 });
        await mkdir(p.criuWork, { recursive: true, mode: 0o700 });
        follow = this.store.followDump?.(staging.dir);
        await this.runc.checkpoint(sandboxId, staging.images, p.criuWork, p.runcLog);
        t.step('dump');
        // The images are final: handed over, then synced (and hashed, as the store needs) by the store, beside the
        // steps below (awaited before the snapshot is stored).
        handedOver = handOverImages(staging.images, this.cfg.uidShift).then(
          () => this.store.prestage?.(staging.dir, 'checkpoint'),
          (e: unknown) => {
            follow?.abandon();
            throw e;
          },
        );
        handedOver.catch(() => undefined); // awaited below
      }
    } catch (caught) {
      const e = await this.withCriuLog(caught, sandboxId, 'dump');
      follow?.abandon();
      await rm(staging.dir, { recursive: true, force: true });
      // CRIU resumes the tasks when a dump fails, frozen as it found them; only a running
      // container may stay.
      await this.runc.thaw(sandboxId);
      const after = await this.runc.state(sandboxId);
      if (after?.status === 'running') {
        await this.journal.append({ sandboxId, event: 'start', at: stoppedAt.toISOString(), cause: 'pause_failed' });
        if (attempt === 1 && UNSEIZABLE.test(msg(e))) {
          process.stderr.write(`nestbox: pause of ${sandboxId}: CRIU could not stop one of its tasks; trying once more\n`);
          return this.pauseLocked(sandboxId, memory, 0, answer, attempt + 1);
        }
        throw new NestboxError('internal', `pause failed, sandbox still running: ${msg(e)}`);
      }
      await this.teardown(sandboxId);
      throw new NestboxError('internal', `pause failed and the sandbox was lost: ${msg(e)}`);
    }
    // From here the container's processes are gone (checkpoint) or are stopped (files only).
    let step = 'releasing its disk';
    // Its network goes meanwhile (a resume claims one again, preferring the same address).
    const networkReleased = this.network.release(sandboxId);
    networkReleased.catch(() => undefined); // awaited below
    // And runc's record of the container (cgroup, state): nothing before the answer needs it gone.
    let containerRemoved: Promise<void> = Promise.resolve();
    try {
      // Its processes end (a dump's runc ended them already; a files-only pause's are killed
      // here) beside the unmounts: the disk's loop device detaches only once no mount of the
      // disk is left anywhere, the container's own included, so detachDisk's wait covers both.
      const stopped = this.runc.stop(sandboxId);
      containerRemoved = stopped.then(() => this.runc.remove(sandboxId));
      containerRemoved.catch(() => undefined); // awaited below
      await settled(stopped, this.detachDisk(sandboxId, { device: await diskDevice, t }));
      step = 'moving its disk into the snapshot';
      await moveTree(p.diskImage, staging.diskImage);
      this.store.prestage?.(staging.dir, 'disk');
      const snapshot: SnapshotRecord = {
        sandbox: record, memory, pausedAt: new Date().toISOString(), stoppedAt: stoppedAt.toISOString(),
        ...(memory ? { commandDeadlines: this.commandDeadlines.remaining(sandboxId, stoppedAt) } : {}),
      };
      await writeFile(staging.meta, JSON.stringify(snapshot));
      t.step('move');
      step = 'handing its memory images over';
      await handedOver;
      step = `storing the snapshot in ${this.store.description}`;
      await retried(() => this.store.put(sandboxId, staging.dir), STORE_RETRY_DELAYS_MS); // complete and durable, manifest last
      t.step('put');
      this.forgetClients(sandboxId);
      answer(snapshot);
    } catch (e) {
      // The dump is whole in the staging directory: an agent restart completes it (recovery).
      process.stderr.write(`nestbox: pause of ${sandboxId} failed after the dump, ${step}: ${msg(e)}\n`);
      throw new NestboxError('internal', `pause of ${sandboxId}: the sandbox was dumped, but ${step} failed: ${msg(e)}`);
    }
    // The snapshot is stored and the caller has its answer. The container's processes are gone
    // and nothing is mounted any more (detachDisk): runc's record of the container, its network's
    // host side and its directory go, still under the lock (the sandbox's next operation here, a
    // resume say, waits for them; the inventory calls it busy meanwhile). An agent that dies
    // first removes them at its start (recovery).
    await networkReleased;
    await containerRemoved;
    t.step('runcRemoved');
    await discardTree(p.dir);
    t.step('removeDir');
    t.end();
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
    return this.nodeInventory.snapshot(sandboxId);
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
        const snapshot = await this.dumpLive(sandboxId, staging, { toStore: true });
        await retried(() => this.store.put(key, staging.dir), STORE_RETRY_DELAYS_MS);
        return snapshot;
      } catch (e) {
        this.store.discard?.(staging.dir);
        await rm(staging.dir, { recursive: true, force: true });
        throw wrap(e, 'snapshot');
      }
    });
  }

  /**
   * Dumps a running sandbox into `into` (images, disk.img, snapshot.json); it keeps running.
   * `toStore`: `into` is a staging the snapshot store will be given, which may follow the dump
   * and sync what it can meanwhile (see SnapshotStore.followDump and prestage).
   */
  private async dumpLive(sandboxId: string, into: SnapshotFiles, opts: { toStore?: boolean } = {}): Promise<SnapshotRecord> {
    const record = await this.record(sandboxId);
    const p = sandboxPaths(this.cfg, sandboxId);
    const state = await this.runc.state(sandboxId);
    if (!state || state.status !== 'running') throw conflict(`sandbox ${sandboxId} is not running`);
    await this.dropAgentConnections(sandboxId, state.pid); // (before the freeze: a frozen init closes nothing)
    await this.runc.freeze(sandboxId, { forDump: true });
    const frozenAt = new Date();
    let follow: { abandon(): void } | undefined;
    let handedOver = false;
    try {
      this.inject('checkpoint');
      await mkdir(into.images, { mode: 0o700 });
      await mkdir(p.criuWork, { recursive: true, mode: 0o700 });
      if (opts.toStore) follow = this.store.followDump?.(into.dir);
      // CRIU finds the cgroup frozen and leaves it so: nothing writes until the disk is copied.
      await this.runc.checkpoint(sandboxId, into.images, p.criuWork, p.runcLog, { leaveRunning: true }).catch(async (e: unknown) => {
        throw await this.withCriuLog(e, sandboxId, 'dump');
      });
      await handOverImages(into.images, this.cfg.uidShift);
      handedOver = true;
      if (opts.toStore) this.store.prestage?.(into.dir, 'checkpoint'); // (takes the follow)
      // What the sandbox wrote is in the disk image once its file system is synced.
      await run(['sync', '-f', p.disk]);
      await run(['cp', '--sparse=always', '--', p.diskImage, into.diskImage]);
    } catch (e) {
      if (!handedOver) follow?.abandon();
      throw e;
    } finally {
      await this.runc.thaw(sandboxId);
    }
    if (opts.toStore) this.store.prestage?.(into.dir, 'disk');
    const snapshot: SnapshotRecord = {
      sandbox: record, memory: true, pausedAt: new Date().toISOString(), stoppedAt: frozenAt.toISOString(),
      commandDeadlines: this.commandDeadlines.remaining(sandboxId, frozenAt),
    };
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
        try {
          await this.store.get(key, copy.dir);
        } catch (e) {
          throw (await this.store.exists(key)) ? wrap(e, 'create') : notFound(`snapshot ${key} does not exist`);
        }
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
      await prepareDirs(p, lower);
      const [net] = await settled(
        this.network.prepare(req.sandboxId, { allowInternet: req.allowInternetAccess, newSandbox: true }),
        (async () => {
          await run(['cp', '--sparse=always', '--', from.diskImage, p.diskImage]);
          await mountDisk(p.diskImage, p.disk);
          // A new sandbox, though its memory goes on from another's: a boot id of its own.
          await prepareDisk(this.cfg, p, { fresh: false, freshBoot: false, bootId: 'new' });
        })(),
      );
      const record: SandboxRecord = { ...req, template, address: net.address, createdAt: new Date().toISOString() };
      [record.fileHashes] = await settled(writeEtcFiles(this.cfg, p, record, snap.sandbox.fileHashes), mountRootfs(p));
      await writeBundle(this.cfg, this.bundleHost, record);
      this.inject('restore');
      await mkdir(p.criuWork, { recursive: true, mode: 0o700 });
      await this.runc.restore(req.sandboxId, p.dir, from.images, p.criuWork, p.runcLog);
      await this.waitForInit(req.sandboxId, true);
      // Its own host name, not the one its memory came with; before it takes any request.
      const initPid = (await this.runc.status(req.sandboxId))?.pid ?? 0;
      await setSandboxHostname(initPid, req.sandboxId);
      this.commandDeadlines.restore(req.sandboxId, snap.commandDeadlines);
      return await this.started(record, 'create');
    } catch (caught) {
      const e = await this.withCriuLog(caught, req.sandboxId, 'restore');
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
      const t = new StepTimes('resume', sandboxId);
      const snap = await this.snapshot(sandboxId);
      const s = snapshotPaths(this.cfg, sandboxId);
      const p = sandboxPaths(this.cfg, sandboxId);
      if (await exists(p.dir)) throw conflict(`sandbox ${sandboxId} is already on this node`);
      const lower = templateRootfs(this.cfg, snap.sandbox.template);
      await this.ensureTemplate(snap.sandbox.template);
      await this.store.open(sandboxId, s.dir).catch((e) => Promise.reject(wrap(e, 'resume')));
      if (!(await exists(s.diskImage))) await this.convertLegacySnapshot(sandboxId, snap);
      const undo = new CleanupStack();
      undo.push(() => this.teardown(sandboxId));
      undo.push(() => this.store.close(sandboxId, s.dir));
      t.step('open');
      try {
        await prepareDirs(p, lower);
        await moveTree(s.diskImage, p.diskImage);
        t.step('dirs');
        undo.push(async () => {
          await this.releaseDisk(sandboxId);
          await moveTree(p.diskImage, s.diskImage);
        });
        const [net] = await settled(
          this.network.prepare(sandboxId, { allowInternet: snap.sandbox.allowInternetAccess, preferredAddress: snap.sandbox.address }),
          (async () => {
            await mountDisk(p.diskImage, p.disk);
            // A restored init must find the very binary it was dumped from; a fresh boot gets today's.
            await prepareDisk(this.cfg, p, { fresh: false, freshBoot: !snap.memory, bootId: snap.memory ? 'keep' : 'new' });
          })(),
        );
        t.step('diskAndNetwork');
        const record: SandboxRecord = { ...snap.sandbox, address: net.address };
        // Its files and its overlay side by side (the overlay needs the disk, not the files).
        [record.fileHashes] = await settled(writeEtcFiles(this.cfg, p, record, snap.sandbox.fileHashes), mountRootfs(p));
        t.step('etcAndOverlay');
        await writeBundle(this.cfg, this.bundleHost, record);
        t.step('bundle');
        this.inject('restore');
        if (snap.memory) {
          await mkdir(p.criuWork, { recursive: true, mode: 0o700 });
          await this.runc.restore(sandboxId, p.dir, s.images, p.criuWork, p.runcLog);
        } else {
          await this.runc.runDetached(sandboxId, p.dir, p.runcLog);
        }
        t.step('restore');
        await this.waitForInit(sandboxId, snap.memory);
        t.step('init');
        if (snap.memory) this.commandDeadlines.restore(sandboxId, snap.commandDeadlines);
        // Its start is on record before its snapshot goes: an agent that dies in between finds
        // it running, and its snapshot consumed or still there (recovery drops it then), never
        // a container that runs unrecorded (billing follows the journal).
        const out = await this.started(record, 'resume');
        t.step('started');
        // The sandbox runs: a snapshot that cannot be deleted now is left to the reconciler.
        await this.dropSnapshot(sandboxId).catch((e) => process.stderr.write(`nestbox: ${sandboxId} resumed, its snapshot stays: ${msg(e)}\n`));
        t.step('dropSnapshot');
        t.end();
        return out;
      } catch (caught) {
        const e = await this.withCriuLog(caught, sandboxId, 'restore');
        await undo.unwind(); // the disk back into the snapshot before the sandbox directory goes
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
   * and answers when the container stopped, as journaled (null: the journal knows no stop),
   * once the container's processes and the node's mounts of it are gone (runc's record of the
   * container, its network and the directory follow under the sandbox's lock).
   */
  async kill(sandboxId: string, opts: { deleteSnapshot?: boolean } = {}): Promise<{ stoppedAt: string | null }> {
    assertId(sandboxId);
    let answer: (r: { stoppedAt: string | null }) => void = () => undefined;
    let wasAnswered = false;
    const answered = new Promise<{ stoppedAt: string | null }>((resolve) => (answer = resolve));
    const done = this.locks.run(sandboxId, async () => {
      const t = new StepTimes('kill', sandboxId);
      await this.recovery.repairSnapshot(sandboxId); // never delete the only copy of a layer with the remains
      t.step('repair');
      const state = await this.runc.status(sandboxId);
      t.step('state');
      // Nothing running: an earlier call stopped it (its answer may have been lost; its stop is
      // journaled already), or it died unseen (journaled now, when it was found).
      const journaled = await this.journal.lastStop(sandboxId);
      let stoppedAt: Date | null = null;
      if (state?.status === 'running') {
        stoppedAt = new Date();
        await this.journal.stopped(sandboxId, 'kill', stoppedAt);
      } else if (state && journaled === null) {
        stoppedAt = new Date();
        await this.journal.stopped(sandboxId, 'found_dead', stoppedAt);
      }
      t.step('journal');
      const result = { stoppedAt: stoppedAt?.toISOString() ?? journaled };
      // The container's processes go, then the caller has its answer (with its processes its
      // network namespace is dead: nothing in it sends or receives). The node's mounts of it
      // (begun beside the processes' end), runc's record of the container (its cgroup, its
      // state), the host's side of its network (the kernel deletes the link with the namespace,
      // see NetworkManager.release) and the directory (moved aside) go right after, still under
      // the lock: the next operation on the sandbox, a repeated kill among them, waits for it.
      // The directory is marked first: the inventory lists marked remains no more, and an agent
      // that dies before they went removes them at its start (recovery).
      const p = sandboxPaths(this.cfg, sandboxId);
      const { unmounted } = await this.stopProcesses(sandboxId, t);
      if (opts.deleteSnapshot) await this.dropSnapshot(sandboxId);
      if (await exists(p.dir)) await writeFile(p.killedMarker, '');
      wasAnswered = true;
      this.killedNotRemoved.add(sandboxId);
      answer(result);
      t.step('answered');
      // (should this fail, the marked remains stay gone to everyone; recovery removes them)
      await unmounted;
      await this.releaseContainer(sandboxId, t);
      // Renamed aside, then removed: removed in place, the directory lost its mark before the
      // rest, and a listing of the node then found a directory of nothing ("broken").
      await discardTree(p.dir);
      this.killedNotRemoved.delete(sandboxId);
      t.step('removed');
      t.end();
      return result;
    });
    done.catch((e) => {
      if (wasAnswered) process.stderr.write(`nestbox: ${sandboxId} was killed, but removing what was left of it failed: ${msg(e)}\n`);
    });
    return Promise.race([answered, done]);
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
    return this.nodeInventory.sandboxes();
  }

  /**
   * Resolves once no operation runs, the work that follows an answer included (a kill's or a
   * pause's remains); a graceful stop waits for it, up to `timeoutMs` (what is cut short, recovery repairs).
   */
  async idle(timeoutMs = 30_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.locks.idle(), new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs)))]);
    clearTimeout(timer);
  }

  /** Resolves once the pool of sandboxes made ahead is done refilling (for benchmarks). */
  poolFilled(): Promise<void> {
    return this.roots.filled();
  }

  /** A graceful stop: the work in progress ends (bounded, see idle), and the pooled directories go. */
  async close(): Promise<void> {
    await this.idle();
    await this.roots.stop();
  }

  /** Repairs what an agent killed mid-operation left behind (see sandbox-recovery.ts); run at start. */
  recover(): Promise<string[]> {
    return this.recovery.recover();
  }

  /** Sandboxes with an operation queued or in progress on this node. */
  busy(): string[] {
    return this.locks.busyKeys();
  }

  report(): Promise<NodeReport> {
    return this.nodeInventory.report();
  }

  snapshotIds(): Promise<string[]> {
    return this.nodeInventory.snapshotIds();
  }

  snapshots(): Promise<SnapshotRecord[]> {
    return this.nodeInventory.snapshots();
  }

  async metrics(sandboxId: string): Promise<SandboxMetrics> {
    assertId(sandboxId);
    return this.nodeInventory.metrics(sandboxId);
  }

  /** runc's view of the sandbox's container (null: none; a killed one whose remains are going has none). */
  async containerState(sandboxId: string) {
    if (this.killedNotRemoved.has(sandboxId)) return null;
    return this.nodeInventory.containerState(sandboxId);
  }

  // --- pieces -------------------------------------------------------------------------------

  /** Chaos testing: fails this step with the configured probability. */
  private inject(step: keyof RuntimeFaults) {
    const p = this.cfg.faults?.[step] ?? 0;
    if (p > 0 && Math.random() < p) {
      process.stderr.write(`nestbox: injected fault: ${step}\n`); // counted by the chaos run
      throw new Error(`injected fault: ${step} failed`);
    }
  }

  /** Records a start: in the sandbox's record (the inventory reports it) and the journal. */
  private async started(record: SandboxRecord, cause: 'create' | 'resume'): Promise<SandboxRecord> {
    const withStart = { ...record, startedAt: new Date().toISOString() };
    this.admission.open(record.sandboxId);
    await writeFile(sandboxPaths(this.cfg, record.sandboxId).record, JSON.stringify(withStart));
    await this.journal.append({ sandboxId: record.sandboxId, event: 'start', at: withStart.startedAt, cause });
    return withStart;
  }

  /**
   * Before a sandbox's disk moves: its container is gone, no overlay uses the disk any more (its
   * rootfs, or CRIU's mount of it), the disk itself is unmounted and its loop device detached;
   * otherwise the move is refused.
   */
  private async releaseDisk(sandboxId: string) {
    await this.runc.stop(sandboxId);
    // runc's record of the container (cgroup, state) goes beside the unmounts: neither needs the other.
    await settled(this.runc.remove(sandboxId), this.detachDisk(sandboxId));
  }

  /**
   * The node's mounts of the sandbox go, then the disk's loop device is waited for until it lets
   * go of the image (see waitForLoopDetach), which it does once the sandbox's processes have
   * ended too (their mounts of the disk go with them): the image is final after that.
   * `device`: the loop device (loopDeviceOf), when the caller looked it up already.
   */
  private async detachDisk(sandboxId: string, o: { device?: string | null; t?: StepTimes } = {}) {
    const { t } = o;
    const p = sandboxPaths(this.cfg, sandboxId);
    const device = o.device !== undefined ? o.device : await loopDeviceOf(p.diskImage, p.disk);
    await unmountSandbox(p);
    t?.step('unmounted');
    if (!(await waitForLoopDetach(p.diskImage, { device }))) {
      process.stderr.write(`nestbox: ${sandboxId}: the loop device of its disk is still attached after the unmount; moving it anyway\n`);
    }
    t?.step('loopDetach');
  }

  /** A failed dump's or restore's error, with what CRIU said and where its log is kept (criu-log.ts). */
  private withCriuLog(e: unknown, sandboxId: string, kind: 'dump' | 'restore'): Promise<unknown> {
    return withCriuLog(e, { dataDir: this.cfg.dataDir, criuWork: sandboxPaths(this.cfg, sandboxId).criuWork, sandboxId, kind });
  }

  private async waitForInit(sandboxId: string, restored: boolean) {
    const client = this.initClient(sandboxId);
    const started = Date.now();
    const deadline = started + INIT_READY_TIMEOUT_MS;
    let hupSent = false;
    let lastError: unknown;
    // An init answers a few ms after runc returns: polled every ms at first, then less often.
    for (let attempt = 0; Date.now() < deadline; attempt++) {
      const delay = attempt < 20 ? 1 : Math.min(attempt - 15, 50);
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

  /** A command whose timeout passed: killed if it still runs (the same program at that pid). */
  private async killCommand(sandboxId: string, pid: number, argv0: string): Promise<void> {
    if (this.admission.isClosed(sandboxId)) throw new Error(`sandbox ${sandboxId} is being paused`);
    const client = this.initClient(sandboxId);
    const still = (await client.list()).some((p) => p.pid === pid && p.argv[0] === argv0);
    if (still) await client.signal(pid, 9);
  }

  /** Removes the container, mounts, network and directory of a sandbox; idempotent. */
  private async teardown(sandboxId: string, t?: StepTimes) {
    await this.removeContainer(sandboxId, t);
    await removeTree(sandboxPaths(this.cfg, sandboxId).dir);
    t?.step('removeDir');
  }

  /**
   * The agent's hold on the sandbox, its container, the node's mounts of it and its network,
   * each of them tried. What is left is its directory, plain files.
   */
  private async removeContainer(sandboxId: string, t?: StepTimes) {
    await this.stopContainer(sandboxId, t);
    await this.releaseContainer(sandboxId, t);
  }

  /**
   * The agent's hold on the sandbox, then its processes and the node's mounts, at once (the
   * disk is not moved after this, so it need not wait for the container: a container still
   * dying keeps its own view of its mounts until it is gone): none of its processes runs after.
   */
  private async stopContainer(sandboxId: string, t?: StepTimes) {
    const { unmounted } = await this.stopProcesses(sandboxId, t);
    await unmounted;
  }

  /**
   * stopContainer() up to the end of the sandbox's processes: resolves once none runs, with
   * the removal of the node's mounts still going on (begun beside it; the caller awaits it).
   * Should the processes' end fail, that removal is waited for before the failure is thrown.
   */
  private async stopProcesses(sandboxId: string, t?: StepTimes): Promise<{ unmounted: Promise<void> }> {
    this.forgetClients(sandboxId);
    const unmounted = unmountSandbox(sandboxPaths(this.cfg, sandboxId)).then(() => t?.step('unmounted'));
    unmounted.catch(() => undefined); // awaited by the caller
    try {
      await this.runc.stop(sandboxId);
    } catch (e) {
      await unmounted.catch(() => undefined);
      throw e;
    }
    t?.step('runcStopped');
    return { unmounted };
  }

  /** What is left of a stopped container: runc's record of it (cgroup, state) and its network. */
  private async releaseContainer(sandboxId: string, t?: StepTimes) {
    await settled(
      this.runc.remove(sandboxId).then(() => t?.step('runcRemoved')),
      this.network.release(sandboxId).then(() => t?.step('networkReleased')),
    );
  }

  /**
   * Before a dump: CRIU refuses sockets connected to the outside, so the agent's connections to
   * the init go, and the init is given a moment to close its ends (see init-sockets.ts).
   */
  private async dropAgentConnections(sandboxId: string, initPid: number) {
    this.clients.get(sandboxId)?.closeAll();
    await initLetGoOfHostSockets(initPid);
  }

  /** The agent's connections to the sandbox's init, its admission state and its commands' deadlines go. */
  private forgetClients(sandboxId: string) {
    this.clients.get(sandboxId)?.closeAll();
    this.clients.delete(sandboxId);
    this.admission.forget(sandboxId);
    this.commandDeadlines.forget(sandboxId);
  }
}

/**
 * Independent steps run side by side: their results once all of them ended, or the first
 * failure (once all ended too, so that a cleanup after it never runs beside one of them).
 */
async function settled<A, B>(a: Promise<A>, b: Promise<B>): Promise<[A, B]> {
  const [ra, rb] = await Promise.allSettled([a, b]);
  if (ra.status === 'rejected') throw ra.reason;
  if (rb.status === 'rejected') throw rb.reason;
  return [ra.value, rb.value];
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
