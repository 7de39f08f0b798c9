// Reconciliation as a pure decision: what the database says about one sandbox, what the nodes
// report about it, and what to do so that both agree. No I/O here; the reconciler loop
// (src/control-plane/loops/reconciler.ts) gathers the facts and carries the actions out.
import { isTerminal, type SandboxState } from './states.ts';

/** A container as a node reports it. `dead` covers stopped containers, zombies and remains. */
export interface ContainerFact {
  nodeId: string;
  status: 'running' | 'dead' | 'creating';
  /** When the node last started it (create or restore), if it knows. */
  startedAt: Date | null;
}

export interface SandboxFacts {
  /** The row, or null when the database has never heard of the sandbox. */
  row: { state: SandboxState; nodeId: string | null; stateChangedAt: Date } | null;
  containers: ContainerFact[];
  /** A snapshot of it exists in the (shared) snapshot store. */
  snapshot: boolean;
  /** Some node is working on it right now (a create, pause, resume or kill in progress). */
  busy: boolean;
  /** Every node answered this round; otherwise absence from the inventories proves nothing. */
  allNodesAnswered: boolean;
  /** Nodes that answered this round. */
  answered: ReadonlySet<string>;
}

export type ReconcileAction =
  /** Remove a container (and nothing else) from a node. */
  | { kind: 'destroy'; nodeId: string }
  /** Remove a snapshot nobody can resume. */
  | { kind: 'delete_snapshot' }
  /** The sandbox is gone: mark it killed with reason `lost` (so billing stops). */
  | { kind: 'lost' }
  /** A stuck transition whose outcome the nodes show: conclude the row on it. */
  | { kind: 'conclude'; to: 'running'; nodeId: string; startedAt: Date | null }
  | { kind: 'conclude'; to: 'paused' }
  /** A create whose container never came up. */
  | { kind: 'conclude'; to: 'failed' };

export interface ReconcilePolicy {
  /**
   * Rows whose state changed more recently than this are left alone: a create, pause or resume
   * may be between its database write and its node call.
   */
  graceMs: number;
}

/**
 * What to do about one sandbox. The rules (README, "When things fail"):
 * - live row, no container (nor snapshot, for paused): `lost`;
 * - container without a live row that expects it there: destroyed;
 * - a transitional row nobody is working on any more (its control plane died or its node call
 *   timed out): concluded on what the nodes show;
 * - nothing is decided while a node is busy with the sandbox, or within the grace period, or
 *   on the word of a node that did not answer.
 */
export function planReconcile(f: SandboxFacts, now: Date, policy: ReconcilePolicy): ReconcileAction[] {
  if (f.busy) return [];
  const row = f.row;
  const inStateFor = row ? now.getTime() - row.stateChangedAt.getTime() : Infinity;
  const fresh = inStateFor < policy.graceMs;
  const running = f.containers.filter((c) => c.status === 'running');
  const dead = f.containers.filter((c) => c.status === 'dead');
  const creating = f.containers.some((c) => c.status === 'creating');
  if (creating) return [];

  // Dead remains are never useful: remove them (the row's fate is decided below).
  const actions: ReconcileAction[] = dead.map((c) => ({ kind: 'destroy', nodeId: c.nodeId }));
  const destroyAll = (except?: string) =>
    running.filter((c) => c.nodeId !== except).forEach((c) => actions.push({ kind: 'destroy', nodeId: c.nodeId }));

  if (!row || isTerminal(row.state)) {
    if (fresh) return [];
    destroyAll();
    if (f.snapshot) actions.push({ kind: 'delete_snapshot' });
    return actions;
  }
  if (fresh || row.state === 'killing') return actions; // killing: the kill sweeper finishes it

  const home = row.nodeId;
  const onHome = running.find((c) => c.nodeId === home);
  const homeAnswered = home !== null && f.answered.has(home);
  switch (row.state) {
    case 'running':
      if (!homeAnswered) return actions;
      destroyAll(home!);
      if (!onHome) actions.push({ kind: 'lost' });
      return actions;
    case 'starting':
      if (!homeAnswered) return actions;
      destroyAll(home!);
      // The node started it but nobody recorded that: it is running (and billed from its start).
      if (onHome) actions.push({ kind: 'conclude', to: 'running', nodeId: home!, startedAt: onHome.startedAt });
      else actions.push({ kind: 'conclude', to: 'failed' });
      return actions;
    case 'pausing':
      if (!homeAnswered) return actions;
      destroyAll(home!);
      if (onHome) actions.push({ kind: 'conclude', to: 'running', nodeId: home!, startedAt: null });
      else if (f.snapshot) actions.push({ kind: 'conclude', to: 'paused' });
      else actions.push({ kind: 'lost' });
      return actions;
    case 'resuming': {
      // A resume may have landed on any node.
      if (!f.allNodesAnswered) return actions;
      const [keep, ...extra] = running;
      extra.forEach((c) => actions.push({ kind: 'destroy', nodeId: c.nodeId }));
      if (keep) actions.push({ kind: 'conclude', to: 'running', nodeId: keep.nodeId, startedAt: keep.startedAt });
      else if (f.snapshot) actions.push({ kind: 'conclude', to: 'paused' });
      else actions.push({ kind: 'lost' });
      return actions;
    }
    case 'paused':
      if (!f.allNodesAnswered) return actions;
      destroyAll();
      if (!f.snapshot) actions.push({ kind: 'lost' });
      return actions;
  }
  return actions;
}
