// Repairs what an agent killed mid-operation left on the node: resumes, pauses, live snapshots
// and warm captures cut short, and sandboxes left frozen.
import { readdir, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { isSandboxId } from '../core/ids.ts';
import type { RuntimeConfig } from './config.ts';
import { exists, moveTree, removeDiscarded } from './fs-util.ts';
import type { NodeJournal } from './journal.ts';
import type { KeyedMutex } from './keyed-mutex.ts';
import { sandboxPaths, snapshotPaths } from './layout.ts';
import type { Runc } from './runc.ts';
import type { NodeInventory } from './sandbox-inventory.ts';
import type { SnapshotRecord } from './sandbox-records.ts';
import type { SnapshotStore } from './snapshot-store.ts';
import type { WarmCaptures } from './warm-templates.ts';

/** What recovery uses of the runtime: its parts, and the steps that take a sandbox apart. */
export interface RecoveryDeps {
  cfg: RuntimeConfig;
  runc: Runc;
  store: SnapshotStore;
  journal: NodeJournal;
  locks: KeyedMutex;
  warm: WarmCaptures;
  inventory: NodeInventory;
  /** Removes the container, mounts, network and directory of a sandbox; idempotent. */
  teardown(sandboxId: string): Promise<void>;
  /** Destroys the container and unmounts its rootfs and disk, so that the disk can move. */
  releaseDisk(sandboxId: string): Promise<void>;
  /** Deletes a snapshot from the store and its local copy. */
  dropSnapshot(sandboxId: string): Promise<void>;
}

export class SandboxRecovery {
  constructor(private readonly d: RecoveryDeps) {}

  /**
   * Repairs what an agent killed mid-operation left behind; run at start, before any operation
   * (the host is the record: runc state, sandbox directories, the snapshot store). Nothing
   * live is removed here: containers and their rows are the reconciler's business, decided
   * with the control plane. Returns one line per repair.
   */
  async recover(): Promise<string[]> {
    const { cfg, runc, locks } = this.d;
    const notes: string[] = [];
    // Directories of sandboxes gone (paused) whose removal in the background was cut short.
    for (const name of await removeDiscarded(path.join(cfg.dataDir, 'sandboxes'))) notes.push(`${name}: a discarded sandbox directory was removed`);
    const dirs = await readdir(path.join(cfg.dataDir, 'sandboxes')).catch(() => [] as string[]);
    for (const id of dirs.filter(isSandboxId)) {
      const note = await locks.run(id, () => this.repairSnapshot(id));
      if (note) notes.push(note);
    }
    // A kill that answered, and whose agent died before the network and the directory went.
    for (const id of dirs.filter(isSandboxId)) {
      if (!(await exists(sandboxPaths(cfg, id).killedMarker))) continue;
      await locks.run(id, () => this.d.teardown(id));
      notes.push(`${id}: the remains of a kill (its directory) were removed`);
    }
    // A pause that stored its snapshot and answered, and whose agent died before the container's
    // directory went: no container, its disk in the snapshot, the snapshot complete.
    for (const id of dirs.filter(isSandboxId)) {
      const p = sandboxPaths(cfg, id);
      if (!(await exists(p.dir)) || (await exists(p.diskImage)) || (await runc.state(id)) || !(await this.d.store.exists(id))) continue;
      await locks.run(id, () => this.d.teardown(id));
      notes.push(`${id}: the remains of a pause (its directory) were removed; its snapshot is complete`);
    }
    // A restore cut short leaves its rootfs mounted in runc's state directory.
    for (const id of (await readdir(path.join(cfg.dataDir, 'runc')).catch(() => [] as string[])).filter(isSandboxId)) {
      if (!dirs.includes(id) && !(await runc.state(id))) {
        await runc.destroy(id);
        notes.push(`${id}: runc state of a sandbox that is gone was removed`);
      }
    }
    for (const name of await readdir(cfg.snapshotDir).catch(() => [] as string[])) {
      const m = /^\.([a-z0-9]{20})\.partial-[0-9a-f]+$/.exec(name);
      if (!m || !(await exists(sandboxPaths(cfg, m[1]!).dir))) continue; // another node's pause
      const note = await locks.run(m[1]!, () => this.finishCutPause(m[1]!, name));
      notes.push(note);
    }
    // A live snapshot or fork cut short: its staging goes, its sandbox runs on (thawed below).
    for (const name of await readdir(cfg.snapshotDir).catch(() => [] as string[])) {
      const m = /^\.([a-z0-9]{20})\.(live|from)-[a-z0-9-]+$/.exec(name);
      if (!m) continue;
      await rm(path.join(cfg.snapshotDir, name), { recursive: true, force: true });
      notes.push(`${m[1]}: a snapshot or create from a snapshot was cut short; its staging was removed`);
    }
    // The agent freezes a sandbox only for a dump: one still frozen was left so by a crash.
    for (const c of await runc.list()) {
      if (c.status !== 'paused' || !isSandboxId(c.id)) continue;
      await runc.thaw(c.id);
      notes.push(`${c.id}: left frozen by a dump cut short; thawed`);
    }
    for (const name of await this.d.warm.removeStaging()) notes.push(`warm capture ${name} was cut short; its staging was removed`);
    notes.push(...(await this.d.store.cleanLocal(cfg.snapshotDir, (id) => exists(sandboxPaths(cfg, id).dir))));
    // A kill journals its stop before the container goes: one cut short between the two left a
    // stop on record while the container ran on. The journal must say it ran (the chaos run's
    // "billed = ran on the node" audit read the false stop; the later kill journals the real one).
    for (const id of dirs.filter(isSandboxId)) {
      if ((await this.d.inventory.containerState(id))?.status !== 'running' || (await this.d.journal.lastStop(id)) === null) continue;
      await this.d.journal.cancelStop(id);
      notes.push(`${id}: a stop was journaled but the container ran on (an operation was cut short); the stop was cancelled`);
    }
    return notes;
  }

  /**
   * A resume cut short moved the snapshot's disk into the sandbox directory. If the container
   * never came up, the disk goes back and the snapshot is whole again; if it came up, the
   * snapshot was consumed and is removed. The caller holds the sandbox's lock.
   */
  async repairSnapshot(sandboxId: string): Promise<string | null> {
    const s = snapshotPaths(this.d.cfg, sandboxId);
    const p = sandboxPaths(this.d.cfg, sandboxId);
    if (!(await exists(s.meta)) || (await exists(s.diskImage)) || (await exists(s.legacyUpper)) || !(await exists(p.diskImage))) return null;
    const state = await this.d.inventory.containerState(sandboxId);
    if (state?.status === 'running') {
      await this.d.dropSnapshot(sandboxId);
      // Cut short after its start was journaled (the record was written with that very start
      // just before): only the snapshot was left to drop.
      const journaled = await this.d.journal.lastStart(sandboxId);
      if (journaled !== null && (await this.d.inventory.record(sandboxId).catch(() => null))?.startedAt === journaled) {
        return `${sandboxId}: resume had completed; its consumed snapshot was removed`;
      }
      // Its start was not journaled: the record, written just before the restore, dates it.
      const startedAt = (await stat(p.record).catch(() => null))?.mtime ?? new Date();
      // The record still carries the start of the run before the pause (it came from the
      // snapshot): it gets this start, as a completed resume would have written it. Otherwise
      // the inventory reports the old start and billing reopens at the resume's beginning,
      // before the container ran (the chaos run's "billed = ran" invariant).
      const record = await this.d.inventory.record(sandboxId).catch(() => null);
      if (record) await writeFile(p.record, JSON.stringify({ ...record, startedAt: startedAt.toISOString() }));
      await this.d.journal.append({ sandboxId, event: 'start', at: startedAt.toISOString(), cause: 'resume' });
      return `${sandboxId}: resume had completed; its consumed snapshot was removed`;
    }
    await this.d.releaseDisk(sandboxId);
    await moveTree(p.diskImage, s.diskImage);
    await this.d.store.close(sandboxId, s.dir);
    return `${sandboxId}: resume was cut short; its disk went back to the snapshot`;
  }

  /**
   * A pause cut short left its staging directory. If CRIU finished the dump (the container is
   * gone and the images are complete) the snapshot is completed, so nothing is lost; otherwise
   * the staging is removed and the container, if any, stays as it is.
   */
  private async finishCutPause(sandboxId: string, stagingName: string): Promise<string> {
    const { cfg, runc, store, inventory } = this.d;
    const staging = snapshotPaths(cfg, sandboxId, stagingName);
    const p = sandboxPaths(cfg, sandboxId);
    const state = await inventory.containerState(sandboxId);
    // Cut short while storing it: the staging is whole (snapshot.json is written last).
    if (state?.status !== 'running' && (await exists(staging.meta)) && (await exists(staging.diskImage)) && !(await store.exists(sandboxId))) {
      await store.put(sandboxId, staging.dir);
      await this.d.teardown(sandboxId);
      return `${sandboxId}: pause was cut short while its snapshot was stored; the snapshot was completed`;
    }
    const dumped = await exists(path.join(staging.images, 'stats-dump'));
    const record = await inventory.record(sandboxId).catch(() => null);
    if (state?.status === 'paused' && !dumped) await runc.thaw(sandboxId); // abandoned mid-dump
    const now = await inventory.containerState(sandboxId);
    if (now?.status === 'running' || !dumped || !record || (await store.exists(sandboxId)) || !(await exists(p.diskImage))) {
      await rm(staging.dir, { recursive: true, force: true });
      if (now?.status === 'running') await this.d.journal.cancelStop(sandboxId);
      return `${sandboxId}: pause was cut short before its dump completed; the partial snapshot was removed`;
    }
    await this.d.releaseDisk(sandboxId);
    await moveTree(p.diskImage, staging.diskImage);
    await writeFile(staging.meta, JSON.stringify({ sandbox: record, memory: true, pausedAt: new Date().toISOString() } satisfies SnapshotRecord));
    await store.put(sandboxId, staging.dir);
    await this.d.teardown(sandboxId);
    return `${sandboxId}: pause was cut short after its dump; the snapshot was completed`;
  }
}
