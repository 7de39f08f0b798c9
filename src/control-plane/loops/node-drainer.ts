import type { Database } from '../../store/database.ts';
import { getNode, setNodeState } from '../../store/nodes.ts';
import { getSandbox } from '../../store/sandboxes.ts';
import { StaleWrite, type LifecycleService } from '../lifecycle.ts';
import type { NodePool } from '../scheduler.ts';

export interface DrainTickReport {
  draining: string[];
  paused: string[];
  killed: string[];
  failed: Array<{ sandboxId: string; error: string }>;
}

/**
 * Watches the nodes' own word on draining (design section 2, "Drain"). A draining node gets
 * no new placements; its running sandboxes are paused through the lifecycle service (events
 * with reason `drain`, memory kept, resumable on any node) when its policy says so, and at its
 * deadline whatever still runs is killed (reason `drain`). A node that stops draining (it was
 * restarted) takes sandboxes again.
 */
export class NodeDrainer {
  constructor(
    private readonly db: Database,
    private readonly lifecycle: LifecycleService,
    private readonly nodes: NodePool,
    private readonly concurrency = 2,
  ) {}

  async tick(): Promise<DrainTickReport> {
    const report: DrainTickReport = { draining: [], paused: [], killed: [], failed: [] };
    for (const node of this.nodes.all()) {
      let status;
      try {
        status = await node.status();
      } catch {
        continue; // silent: the reconciler deals with nodes that are gone
      }
      const recorded = (await getNode(this.db, node.nodeId))?.state;
      if (!status.draining) {
        this.nodes.setDraining(node.nodeId, false);
        if (recorded === 'draining' || recorded === 'down') await setNodeState(this.db, node.nodeId, 'ready');
        continue;
      }
      this.nodes.setDraining(node.nodeId, true);
      if (recorded !== 'draining') await setNodeState(this.db, node.nodeId, 'draining');
      report.draining.push(node.nodeId);
      if (!status.drain) continue; // still letting admitted starts finish
      const rows = await this.db.query<{ id: string }>(
        "SELECT id FROM sandboxes WHERE node_id = $1 AND state = 'running' ORDER BY state_changed_at", [node.nodeId]);
      const pastDeadline = this.lifecycle.clock.now().getTime() >= Date.parse(status.drain.deadline);
      await pool(rows.map((r) => r.id), this.concurrency, async (id) => {
        const row = await getSandbox(this.db, id);
        if (row?.state !== 'running' || row.nodeId !== node.nodeId) return;
        try {
          if (pastDeadline) {
            await this.lifecycle.killFrom(row, 'drain');
            report.killed.push(id);
          } else if (status.drain!.policy === 'pause') {
            await this.lifecycle.pauseFrom(row, 'drain', true);
            report.paused.push(id);
          }
        } catch (e) {
          if (e instanceof StaleWrite) return; // another replica or request acted first
          report.failed.push({ sandboxId: id, error: (e as Error).message });
        }
      });
    }
    return report;
  }
}

async function pool<T>(items: T[], n: number, fn: (item: T) => Promise<void>) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}
