import type { Database } from '../../store/database.ts';
import { getNode, setNodeState } from '../../store/nodes.ts';
import { getSandbox, listRunningOnNode, listPausedByDrain } from '../../store/sandboxes.ts';
import { StaleWrite, type SandboxTransitions } from '../transitions.ts';
import type { NodeStatus } from '../../node-api/wire.ts';
import type { NodePool } from '../scheduler.ts';

export interface DrainTickReport {
  draining: string[];
  paused: string[];
  /** Paused on the draining node and resumed on another, memory and all. */
  moved: string[];
  killed: string[];
  failed: Array<{ sandboxId: string; error: string }>;
}

/**
 * Drains nodes (README, "When things fail", "Drain"): those whose agent says it is draining (SIGTERM) and
 * those the operator drained (`nestbox nodes drain`: no deadline). A draining node gets no new
 * placements; its running sandboxes are paused through the lifecycle service (reason `drain`,
 * memory kept) when its policy says so and, when another node can take them, resumed there at
 * once (reason `drain` again): their users see a short pause, not a stop. At an agent's
 * deadline whatever still runs is killed (reason `drain`). A node that stops draining (it was
 * restarted, or undrained) takes sandboxes again.
 */
export class NodeDrainer {
  constructor(
    private readonly db: Database,
    private readonly lifecycle: SandboxTransitions,
    private readonly nodes: NodePool,
    private readonly concurrency = 2,
  ) {}

  async tick(): Promise<DrainTickReport> {
    const report: DrainTickReport = { draining: [], paused: [], moved: [], killed: [], failed: [] };
    for (const node of this.nodes.all()) {
      const recorded = await getNode(this.db, node.nodeId);
      const cordoned = recorded?.cordoned ?? false;
      let status: NodeStatus | null = null;
      try {
        status = await node.status();
      } catch {
        if (!cordoned) continue; // silent: the reconciler deals with nodes that are gone
      }
      const agentDraining = status?.draining ?? false;
      if (!agentDraining && !cordoned) {
        this.nodes.setDraining(node.nodeId, false);
        if (recorded?.state === 'draining' || recorded?.state === 'down') await setNodeState(this.db, node.nodeId, 'ready');
        continue;
      }
      this.nodes.setDraining(node.nodeId, true);
      if (agentDraining && recorded?.state !== 'draining') await setNodeState(this.db, node.nodeId, 'draining');
      report.draining.push(node.nodeId);
      // The agent's plan once its admitted starts are done; the operator's drain moves everything, no deadline.
      const plan = agentDraining ? status!.drain : { policy: 'pause' as const, deadline: null };
      if (!plan) continue; // still letting admitted starts finish
      const running = await listRunningOnNode(this.db, node.nodeId);
      const pastDeadline = plan.deadline !== null && this.lifecycle.clock.now().getTime() >= Date.parse(plan.deadline);
      await pool(running, this.concurrency, async (id) => {
        const row = await getSandbox(this.db, id);
        if (row?.state !== 'running' || row.nodeId !== node.nodeId) return;
        try {
          if (pastDeadline) {
            await this.lifecycle.killFrom(row, 'drain');
            report.killed.push(id);
          } else if (plan.policy === 'pause') {
            // Its clients' requests already on the node finish first (new ones wait at the proxy).
            await this.lifecycle.pauseFrom(row, 'drain', { memory: true, quiesceMs: DRAIN_QUIESCE_MS });
            report.paused.push(id);
            await this.moveAway(id, node.nodeId, report);
          }
        } catch (e) {
          if (e instanceof StaleWrite) return; // another replica or request acted first
          report.failed.push({ sandboxId: id, error: (e as Error).message });
        }
      });
    }
    // Paused by a drain when no other node could take them (or their resume failed): moved now
    // if a node can, on this tick or a later one, whatever became of the drained node.
    for (const w of await listPausedByDrain(this.db, WAITING_BATCH)) {
      try {
        await this.moveAway(w.sandboxId, w.nodeId ?? '', report);
      } catch (e) {
        if (e instanceof StaleWrite) continue;
        report.failed.push({ sandboxId: w.sandboxId, error: (e as Error).message });
      }
    }
    return report;
  }

  /** Resumes a sandbox the drain paused on another node, if any can take it now. */
  private async moveAway(id: string, from: string, report: DrainTickReport) {
    const paused = await getSandbox(this.db, id);
    if (paused?.state !== 'paused') return;
    const want = { template: paused.templateId, cpuCount: paused.cpuCount, memoryMB: paused.memoryMB };
    // Anywhere but a node still draining (the drained node itself, once undrained or back, will do).
    if (this.nodes.eligible(want, new Set([from])).length === 0 && (this.nodes.isDraining(from) || this.nodes.eligible(want).length === 0)) {
      return; // it waits, paused, for a node
    }
    await this.lifecycle.resumeFrom(paused, 'drain', 0);
    report.moved.push(id);
  }
}

/** How long a drain's pause waits for the requests in progress on the sandbox to end. */
export const DRAIN_QUIESCE_MS = 3_000;

/** How many drain-paused sandboxes one tick tries to move. */
const WAITING_BATCH = 32;

async function pool<T>(items: T[], n: number, fn: (item: T) => Promise<void>) {
  let next = 0;
  await Promise.all(Array.from({ length: Math.min(n, items.length) }, async () => {
    while (next < items.length) await fn(items[next++]!);
  }));
}
