import { planReconcile, type ContainerFact, type ReconcileAction } from '../../core/reconcile.ts';
import { isTerminal } from '../../core/states.ts';
import type { Database } from '../../store/database.ts';
import { setNodeState, touchNode } from '../../store/nodes.ts';
import { getSandbox, listPlacements, type SandboxPlacement } from '../../store/sandboxes.ts';
import { StaleWrite, type SandboxTransitions } from '../transitions.ts';
import type { NodeInventory } from '../../node-api/wire.ts';
import type { NodePool } from '../scheduler.ts';

export interface ReconcilerOptions {
  /** Rows that changed state more recently than this are left alone (operations in flight). */
  graceMs?: number;
  /** A node silent for this long is treated as holding nothing: its sandboxes are lost. */
  nodeDownAfterMs?: number;
  /** At most this many corrections per tick. */
  batch?: number;
  log?: (msg: string, extra?: Record<string, unknown>) => void;
}

export interface ReconcileReport {
  answered: string[];
  actions: Array<{ sandboxId: string; action: ReconcileAction['kind']; to?: string; nodeId?: string; ok: boolean; error?: string }>;
}

/**
 * The reconciler: compares what the nodes hold with what the database says and corrects both
 * ways (README, "When things fail"). One tick reads every node's inventory, then the rows,
 * decides each sandbox with the pure planReconcile() and carries the actions out through the
 * transition verbs (transitions.ts), each fenced on the row's generation. Idempotent: a tick that repeats finds nothing.
 */
export class Reconciler {
  private readonly graceMs: number;
  private readonly downAfterMs: number;
  private readonly batch: number;
  private readonly lastAnswer = new Map<string, number>();
  /** Nodes whose inventory this tick read (not those counted as holding nothing). */
  private answeredNow = new Set<string>();
  private readonly startedAt: number;

  constructor(
    private readonly db: Database,
    private readonly lifecycle: SandboxTransitions,
    private readonly nodes: NodePool,
    opts: ReconcilerOptions = {},
  ) {
    this.graceMs = opts.graceMs ?? 15_000;
    this.downAfterMs = opts.nodeDownAfterMs ?? 60_000;
    this.batch = opts.batch ?? 256;
    this.startedAt = lifecycle.clock.now().getTime();
  }

  async tick(): Promise<ReconcileReport> {
    const report: ReconcileReport = { answered: [], actions: [] };
    const now = this.lifecycle.clock.now();
    // Inventories first, rows second: a row that changed after its node was read is younger
    // than the grace period, so a stale inventory is never held against it.
    const inventories = new Map<string, NodeInventory>();
    const clients = this.nodes.all();
    await Promise.all(clients.map(async (node) => {
      try {
        inventories.set(node.nodeId, await node.inventory());
        this.lastAnswer.set(node.nodeId, now.getTime());
        await touchNode(this.db, node.nodeId).catch(() => undefined);
      } catch {
        /* silent this round */
      }
    }));
    const answered = new Set(inventories.keys());
    this.answeredNow = new Set(answered);
    for (const node of clients) {
      if (answered.has(node.nodeId)) continue;
      const last = this.lastAnswer.get(node.nodeId) ?? this.startedAt;
      if (now.getTime() - last >= this.downAfterMs) {
        // Down for good: it holds nothing we can count on.
        answered.add(node.nodeId);
        inventories.set(node.nodeId, { sandboxes: [], snapshots: [], busy: [] });
        await setNodeState(this.db, node.nodeId, 'down').catch(() => undefined);
      }
    }
    report.answered = [...answered];
    const allNodesAnswered = clients.every((n) => answered.has(n.nodeId));

    // Facts per sandbox.
    const containers = new Map<string, ContainerFact[]>();
    const snapshots = new Set<string>();
    const busy = new Set<string>();
    for (const [nodeId, inv] of inventories) {
      for (const e of inv.sandboxes) {
        const status = e.state === 'running' ? 'running' : e.state === 'creating' ? 'creating' : 'dead';
        const list = containers.get(e.sandboxId) ?? [];
        list.push({ nodeId, status, startedAt: e.startedAt ? new Date(e.startedAt) : null });
        containers.set(e.sandboxId, list);
      }
      inv.snapshots.forEach((id) => snapshots.add(id));
      inv.busy.forEach((id) => busy.add(id));
    }
    const seenOnNodes = [...new Set([...containers.keys(), ...snapshots])];
    const rows = await listPlacements(this.db, seenOnNodes);
    const byId = new Map(rows.map((r) => [r.sandboxId, r]));
    const ids = new Set([...byId.keys(), ...seenOnNodes]);

    const work: Array<{ id: string; row: SandboxPlacement | undefined; actions: ReconcileAction[] }> = [];
    for (const id of ids) {
      const row = byId.get(id);
      const actions = planReconcile({
        row: row ? { state: row.state, nodeId: row.nodeId, stateChangedAt: row.stateChangedAt } : null,
        containers: containers.get(id) ?? [],
        snapshot: snapshots.has(id),
        busy: busy.has(id),
        allNodesAnswered,
        answered,
      }, now, { graceMs: this.graceMs });
      if (actions.length) work.push({ id, row, actions });
      if (work.length >= this.batch) break;
    }
    for (const w of work) {
      for (const action of w.actions) {
        const entry: ReconcileReport['actions'][number] = {
          sandboxId: w.id, action: action.kind, ok: true,
          ...(action.kind === 'conclude' ? { to: action.to } : {}), ...('nodeId' in action ? { nodeId: action.nodeId } : {}),
        };
        try {
          const acted = await this.apply(w.id, w.row, action);
          if (!acted) continue;
        } catch (e) {
          entry.ok = false;
          entry.error = (e as Error).message;
        }
        report.actions.push(entry);
      }
    }
    return report;
  }

  /** Carries out one action if the row is still as planned; false when it moved on meanwhile. */
  private async apply(id: string, planned: SandboxPlacement | undefined, action: ReconcileAction): Promise<boolean> {
    const row = await getSandbox(this.db, id);
    const unchanged = planned
      ? row !== null && row.state === planned.state && row.stateChangedAt.getTime() === planned.stateChangedAt.getTime()
      : row === null || isTerminal(row.state);
    if (!unchanged) return false;
    try {
      switch (action.kind) {
        case 'destroy':
          await this.nodes.get(action.nodeId).kill(id);
          return true;
        case 'delete_snapshot':
          await this.nodes.any(null).deleteSnapshot(id);
          return true;
        case 'lost': {
          // A node gone silent (down) cannot say when its sandboxes stopped: billing stops at
          // its last answer. A node that answers without the sandbox lost it just now.
          const node = row!.nodeId;
          const silent = node !== null && !this.answeredNow.has(node);
          const confirmed = silent ? this.lastAnswer.get(node) : undefined;
          await this.lifecycle.markLost(row!, confirmed === undefined ? null : new Date(confirmed));
          return true;
        }
        case 'conclude':
          if (action.to === 'running') await this.lifecycle.concludeStuck(row!, 'running', { nodeId: action.nodeId, startedAt: action.startedAt });
          else await this.lifecycle.concludeStuck(row!, action.to);
          return true;
      }
    } catch (e) {
      if (e instanceof StaleWrite) return false;
      throw e;
    }
  }
}
