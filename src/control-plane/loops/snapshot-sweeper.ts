import type { Database } from '../../store/database.ts';
import { abandonedSnapshots, allSnapshotIds } from '../../store/snapshots.ts';
import type { Clock } from '../clock.ts';
import type { NodePool } from '../scheduler.ts';
import type { SnapshotService } from '../snapshots.ts';

/**
 * Keeps the snapshot store and the snapshot rows in step. A row is written before its node
 * dumps, so a stored named snapshot with no row is an orphan (its row was removed, or its
 * delete was cut short): it goes. A row that never became ready, or a fork's source, older than
 * `abandonAfterMs`, was left by a control plane that stopped half-way: both go.
 */
export class SnapshotSweeper {
  constructor(
    private readonly db: Database,
    private readonly nodes: NodePool,
    private readonly snapshots: SnapshotService,
    private readonly clock: Clock,
    private readonly abandonAfterMs = 10 * 60_000,
  ) {}

  async tick(): Promise<{ orphans: string[]; abandoned: string[] }> {
    const out = { orphans: [] as string[], abandoned: [] as string[] };
    if (this.nodes.all().length === 0) return out;
    const node = this.nodes.any(null);
    // The store first, the rows second: a snapshot being taken has its row already.
    const stored = (await node.inventory()).namedSnapshots ?? [];
    const known = await allSnapshotIds(this.db);
    for (const id of stored) {
      if (known.has(id)) continue;
      await node.deleteSnapshot(id);
      out.orphans.push(id);
    }
    const before = new Date(this.clock.now().getTime() - this.abandonAfterMs);
    for (const id of await abandonedSnapshots(this.db, before)) {
      await this.snapshots.remove(id);
      out.abandoned.push(id);
    }
    return out;
  }
}
