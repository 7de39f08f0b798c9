// Named snapshots and forks of running sandboxes. A snapshot is taken live (the sandbox keeps
// running), kept in the shared snapshot store under its own id, and new sandboxes are created
// from it on any node, as from a template. A fork is a snapshot that lives only until its
// children have started from it.
import { conflict, invalid, notFound, NestboxError } from '../core/errors.ts';
import { newNamedSnapshotId } from '../core/ids.ts';
import type { Database } from '../store/database.ts';
import { getSandbox } from '../store/sandboxes.ts';
import {
  deleteSnapshotRow, findSnapshot, insertSnapshot, listSnapshots, markSnapshotReady, type SnapshotRow,
} from '../store/snapshots.ts';
import type { CreateSandboxParams, LifecycleApi, SandboxView } from './lifecycle-types.ts';
import type { NodePool } from './scheduler.ts';

export const MAX_FORK_COUNT = 20;

export interface SnapshotsOptions {
  db: Database;
  nodes: NodePool;
  lifecycle: LifecycleApi;
}

export type ForkResult = { sandbox: SandboxView; error?: undefined } | { sandbox?: undefined; error: NestboxError };

export class SnapshotService {
  constructor(private readonly opts: SnapshotsOptions) {}

  /** A running sandbox of the team, with what a sandbox from its snapshot inherits. */
  private async runningSandbox(teamId: string, sandboxId: string) {
    const row = await getSandbox(this.opts.db, sandboxId);
    if (!row || row.teamId !== teamId || row.state === 'killed' || row.state === 'failed') throw notFound(`sandbox ${sandboxId} not found`);
    if (row.state !== 'running' || !row.nodeId) throw conflict(`sandbox ${sandboxId} is ${row.state}, not running: only a running sandbox can be snapshotted`);
    return row;
  }

  /**
   * Takes a snapshot of a running sandbox, which keeps running. The row is written first (not
   * ready), the node dumps into the store, then the row is ready; a failure removes both.
   */
  async create(teamId: string, sandboxId: string, opts: { name?: string; kind?: 'named' | 'fork' } = {}): Promise<SnapshotRow> {
    const row = await this.runningSandbox(teamId, sandboxId);
    const snapshotId = newNamedSnapshotId();
    const inserted = await insertSnapshot(this.opts.db, {
      snapshotId, teamId, name: opts.name ?? null, sandboxId, templateId: row.templateId,
      cpuCount: row.cpuCount, memoryMB: row.memoryMB, diskSizeMB: row.diskSizeMB, kind: opts.kind ?? 'named',
    });
    if (!inserted) throw conflict(`a snapshot named "${opts.name}" exists already; delete it or choose another name`);
    try {
      await this.opts.nodes.get(row.nodeId).snapshot(sandboxId, snapshotId);
    } catch (e) {
      await this.remove(snapshotId).catch(() => undefined); // the reconciler finishes it otherwise
      if (e instanceof NestboxError) throw e;
      throw new NestboxError('internal', `snapshot of ${sandboxId} failed: ${(e as Error).message}`);
    }
    await markSnapshotReady(this.opts.db, snapshotId);
    return { ...inserted, ready: true };
  }

  async list(teamId: string, f: { sandboxId?: string; name?: string; limit: number; nextToken?: string }) {
    let beforeSeq: number | undefined;
    if (f.nextToken !== undefined) {
      beforeSeq = Number(f.nextToken);
      if (!Number.isSafeInteger(beforeSeq) || beforeSeq <= 0) throw invalid('invalid nextToken');
    }
    const page = await listSnapshots(this.opts.db, teamId, { sandboxId: f.sandboxId, name: f.name, limit: f.limit, beforeSeq });
    return { snapshots: page.rows, nextToken: page.more && page.lastSeq !== null ? String(page.lastSeq) : null };
  }

  /** The team's snapshot by id or name, or null. */
  find(teamId: string, idOrName: string): Promise<SnapshotRow | null> {
    return findSnapshot(this.opts.db, teamId, idOrName);
  }

  /** Deletes a team's snapshot (files first, then the row); false when there is none. */
  async delete(teamId: string, idOrName: string): Promise<boolean> {
    const snap = await this.find(teamId, idOrName);
    if (!snap) return false;
    await this.remove(snap.snapshotId);
    return true;
  }

  /** Removes a snapshot: its files from the store first, then its row (no stored snapshot is left without one). */
  async remove(snapshotId: string): Promise<void> {
    await this.opts.nodes.any(null).deleteSnapshot(snapshotId);
    await deleteSnapshotRow(this.opts.db, snapshotId);
  }

  /** The create parameters of a sandbox started from a snapshot. */
  fromSnapshot(p: CreateSandboxParams, snap: SnapshotRow): CreateSandboxParams {
    return {
      ...p, templateId: snap.templateId,
      fromSnapshot: { snapshotId: snap.snapshotId, cpuCount: snap.cpuCount, memoryMB: snap.memoryMB, diskSizeMB: snap.diskSizeMB },
    };
  }

  /**
   * Forks a running sandbox: `count` new sandboxes continuing from its current memory and
   * files, each on its own (own id, timeout, billing). The parent keeps running. Each child's
   * outcome is reported on its own; the fork's snapshot is removed once they have started.
   */
  async fork(teamId: string, sandboxId: string, count: number, timeoutMs: number): Promise<ForkResult[]> {
    if (!Number.isInteger(count) || count < 1 || count > MAX_FORK_COUNT) throw invalid(`count must be between 1 and ${MAX_FORK_COUNT}`);
    const parent = await this.runningSandbox(teamId, sandboxId);
    const snap = await this.create(teamId, sandboxId, { kind: 'fork' });
    try {
      const base: CreateSandboxParams = {
        teamId, templateId: parent.templateId, timeoutMs, metadata: parent.metadata, envVars: parent.envVars,
        autoPause: parent.autoPause, autoPauseMemory: parent.autoPauseMemory, autoResume: parent.autoResume,
        allowInternetAccess: parent.allowInternetAccess, secure: parent.secure,
      };
      const settled = await Promise.allSettled(Array.from({ length: count }, () => this.opts.lifecycle.create(this.fromSnapshot(base, snap))));
      return settled.map((s) => (s.status === 'fulfilled'
        ? { sandbox: s.value }
        : { error: s.reason instanceof NestboxError ? s.reason : new NestboxError('internal', `fork failed: ${(s.reason as Error)?.message ?? s.reason}`) }));
    } finally {
      await this.remove(snap.snapshotId).catch(() => undefined); // else the reconciler does
    }
  }
}
