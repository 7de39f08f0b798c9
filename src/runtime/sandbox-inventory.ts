// What a node reports about its sandboxes: containers, snapshots, and what is in motion.
import { readFileSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { notFound, unavailable } from '../core/errors.ts';
import { isSandboxId, NAMED_SNAPSHOT_ID_PATTERN } from '../core/ids.ts';
import type { RuntimeConfig } from './config.ts';
import { diskUsage } from './disk.ts';
import { exists } from './fs-util.ts';
import type { KeyedMutex } from './keyed-mutex.ts';
import { sandboxPaths } from './layout.ts';
import type { ContainerStats, Runc } from './runc.ts';
import type { SandboxRecord, SnapshotRecord } from './sandbox-records.ts';
import type { SnapshotStore } from './snapshot-store.ts';

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

export interface SandboxMetrics extends ContainerStats {
  diskUsedBytes: number;
  diskTotalBytes: number;
}

export interface NodeReport {
  sandboxes: InventoryEntry[];
  snapshots: string[];
  namedSnapshots: string[];
  busy: string[];
}

/** Reads the node's state (runc, sandbox directories, the snapshot store); changes nothing. */
export class NodeInventory {
  constructor(
    private readonly cfg: RuntimeConfig,
    private readonly runc: Runc,
    private readonly store: SnapshotStore,
    /** The per-sandbox operation locks: a locked sandbox is busy. */
    private readonly locks: KeyedMutex,
  ) {}

  async record(sandboxId: string): Promise<SandboxRecord> {
    try {
      return JSON.parse(await readFile(sandboxPaths(this.cfg, sandboxId).record, 'utf8')) as SandboxRecord;
    } catch {
      throw notFound(`sandbox ${sandboxId} is not on this node`);
    }
  }

  async snapshot(sandboxId: string): Promise<SnapshotRecord> {
    // A store that does not answer says nothing about the snapshot: try again later (503).
    const snap = (await this.store.meta(sandboxId).catch((e: unknown) => {
      throw unavailable(`the snapshot store (${this.store.description}) did not answer for ${sandboxId}: ${e instanceof Error ? e.message : String(e)}; try again shortly`);
    })) as SnapshotRecord | null;
    if (!snap) throw notFound(`no snapshot of sandbox ${sandboxId}`);
    return snap;
  }

  async sandboxes(): Promise<InventoryEntry[]> {
    const containers = new Map((await this.runc.list()).map((c) => [c.id, c]));
    const out: InventoryEntry[] = [];
    const dirs = await readdir(path.join(this.cfg.dataDir, 'sandboxes')).catch(() => [] as string[]);
    for (const id of dirs) {
      if (!isSandboxId(id)) continue;
      // Killed, its remains being removed (its processes, mounts and network are gone; runc's
      // record of it may still be): not a sandbox any more, whoever asks.
      if (await exists(sandboxPaths(this.cfg, id).killedMarker)) {
        containers.delete(id);
        continue;
      }
      // Not listed: runc may have skipped it (its state unreadable for a moment): asked alone
      // before it is reported without a container, which the reconciler would remove.
      const c = containers.get(id) ?? (await this.runc.state(id)) ?? undefined;
      const rec = await this.record(id).catch(() => null);
      const busy = this.locks.isBusy(id);
      // Gone while this listing ran (a kill that ended meanwhile, its mark gone with the
      // directory): its container, if runc listed one, is asked again below.
      if (!(await exists(sandboxPaths(this.cfg, id).dir))) continue;
      containers.delete(id);
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
    // Containers in our runc root without a sandbox directory: report them so they get reaped,
    // unless gone since runc listed them (a kill that ended while this listing ran).
    for (const c of containers.values()) {
      if (!(await this.runc.status(c.id))) continue;
      out.push({
        sandboxId: c.id, state: isAlive(c) ? 'running' : 'stopped', busy: this.locks.isBusy(c.id), startedAt: null,
        pid: c.pid || null, address: null, template: null, metadata: {}, createdAt: null,
      });
    }
    return out;
  }

  /**
   * The whole inventory of the node for the reconciler: containers, complete snapshots, and
   * the sandboxes whose state may be in motion (an operation queued, running, or finished
   * while the lists were read: their entries may disagree with each other).
   */
  async report(): Promise<NodeReport> {
    const mark = this.locks.mark();
    const busyBefore = this.locks.busyKeys();
    const sandboxes = await this.sandboxes();
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
