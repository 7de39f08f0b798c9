import { EventEmitter } from 'node:events';
import { NestboxError, notFound } from '../core/errors.ts';
import { canTransition, type EventReason, type SandboxState } from '../core/states.ts';
import type { Database, Sql } from '../store/database.ts';
import { lockTeamQuota, writeTransition, type SandboxRow, type TransitionPatch } from '../store/sandboxes.ts';
import { systemClock, type Clock } from './clock.ts';
import { NodeCallError, type NodeClient } from './node-client.ts';
import type { NodePool, Placement } from './scheduler.ts';

/**
 * How long a pause whose answer was lost waits for a node to say when the sandbox stopped before
 * it is concluded without that instant (billed up to the moment of concluding).
 */
const STOP_INSTANT_WAIT_MS = 60_000;

/** Another writer moved the sandbox between our read and our write. */
export class StaleWrite extends Error {}

/** A start's node failure, with the node it came from (the one to clean up when uncertain). */
export class PlacedCallError extends NodeCallError {
  constructor(readonly nodeId: string, code: NodeCallError['code'], message: string, opts: { uncertain: boolean; retryable?: boolean }) {
    super(code, message, opts);
    this.name = 'PlacedCallError';
  }

  static of(f: { nodeId: string; error: NodeCallError }): PlacedCallError {
    const e = f.error;
    return new PlacedCallError(f.nodeId, e.code, e.message, { uncertain: e.uncertain, retryable: e.retryable });
  }
}

/** Every node that could take a start refused it before doing anything (all draining). */
export class NoNodeLeft extends NestboxError {
  constructor(message: string) {
    super('unavailable', message, { retryable: true });
    this.name = 'NoNodeLeft';
  }
}

export interface TransitionsOptions {
  db: Database;
  nodes: NodePool;
  clock?: Clock;
}

/** When the node started or stopped the container, by its own clock: billing follows them. */
export interface NodeInstants {
  startedAt?: Date | null;
  stoppedAt?: Date | null;
}

/**
 * The transition chokepoint and the row-level verbs built on it. Every state change of every
 * sandbox goes through transition(), which writes the row (fenced on its generation), its
 * event and its usage entry in one statement. The verbs (kill, pause, resume from a row;
 * marking a sandbox lost; concluding a transition nobody finishes) persist their intent before
 * they call a node; the request handling (lifecycle.ts) and the loops use them.
 */
export class SandboxTransitions {
  protected readonly db: Database;
  protected readonly nodes: NodePool;
  readonly clock: Clock;
  /** Emits a sandbox's id whenever its row changed in this process. */
  protected readonly changes = new EventEmitter();
  private readonly inFlight = new Set<Promise<unknown>>();

  constructor(opts: TransitionsOptions) {
    this.db = opts.db;
    this.nodes = opts.nodes;
    this.clock = opts.clock ?? systemClock;
    this.changes.setMaxListeners(0);
  }

  // --- the chokepoint -------------------------------------------------------------------------

  protected async transition(
    row: SandboxRow, to: SandboxState, reason: EventReason, patch?: TransitionPatch, instants: NodeInstants = {},
  ): Promise<SandboxRow> {
    if (!canTransition(row.state, to)) throw new Error(`illegal transition ${row.state} -> ${to} of ${row.sandboxId}`);
    const at = this.clock.now();
    // Billing follows the node's clock: an interval opens when the node started the container
    // (never before the row's previous state change) and closes when the node stopped it (the
    // dump froze it, the container died: `stoppedAt`); while a pause or kill is in flight the
    // sandbox still runs, so a failed pause leaves one unbroken stretch.
    let runningSince: Date | undefined;
    if (to === 'running' && instants.startedAt) {
      runningSince = new Date(Math.min(at.getTime(), Math.max(row.stateChangedAt.getTime(), instants.startedAt.getTime())));
    }
    // One statement: the row, its event and the ledger entry commit together or not at all.
    const write = (db: Sql) => writeTransition(db, {
      sandboxId: row.sandboxId, from: row.state, to, generation: row.generation, reason, at, patch, runningSince,
      stoppedAt: instants.stoppedAt ?? undefined,
    });
    // Leaving paused makes the sandbox count toward max_running again: checked under the team
    // row lock, as a create is, so that concurrent resumes and creates cannot overshoot it.
    const written = row.state === 'paused' && to === 'resuming'
      ? await this.db.transaction(async (tx) => {
        await assertRoom(tx, row.teamId);
        return write(tx);
      })
      : await write(this.db);
    if (!written) throw new StaleWrite(`${row.sandboxId} changed under ${row.state} -> ${to}`);
    this.changes.emit(row.sandboxId);
    return written.row;
  }

  /** Runs work that shutdown must let finish (transitions with a node call in the middle). */
  protected track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => undefined);
    return p;
  }

  /** Waits for every transition this process has started (at shutdown). */
  async waitForInFlight(): Promise<void> {
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight]);
  }

  /**
   * Runs `call` (a start: create or resume) on a node placed for `want`, or on `opts.first`,
   * placed already. The one placement-with-retry of create and resume:
   * - a node that refuses before doing anything (it is draining) is passed over and the call
   *   placed again; when no node is left, NoNodeLeft;
   * - a node that fails the call is passed over and the call placed on another node, once: a
   *   certain failure (the node says nothing happened) at once; an uncertain one (its answer
   *   was lost) only after `opts.undo` confirmed that node holds nothing of it, so a sandbox
   *   never has two containers. Without `undo`, or when it fails, or when no other node can
   *   take it, the failure is thrown as it is;
   * - a second failure ends it: PlacedCallError naming both causes.
   * Every NodeCallError thrown is a PlacedCallError naming the node it came from.
   */
  protected async onPlacedNode<T>(
    want: Placement, call: (node: NodeClient) => Promise<T>,
    opts: { first?: NodeClient; what: string; undo?: (node: NodeClient) => Promise<unknown> },
  ): Promise<{ node: NodeClient; result: T }> {
    const skip = new Set<string>();
    let failedOn: { nodeId: string; error: NodeCallError } | null = null;
    let node = opts.first ?? this.pickNode(skip, want);
    for (;;) {
      try {
        const result = await call(node).finally(() => this.nodes.done(node.nodeId));
        return { node, result };
      } catch (e) {
        if (!(e instanceof NodeCallError)) throw e;
        skip.add(node.nodeId);
        const refused = e.retryable && !e.uncertain;
        if (!refused) {
          const here = { nodeId: node.nodeId, error: e };
          if (failedOn) throw failedTwice(opts.what, failedOn, here);
          // "conflict": the node holds the sandbox already; a start elsewhere could duplicate it.
          if (e.code === 'conflict' || (e.uncertain && !opts.undo)) throw PlacedCallError.of(here);
          if (e.uncertain) {
            try {
              await opts.undo!(node);
            } catch {
              throw PlacedCallError.of(here); // not confirmed: the caller settles it as before
            }
          }
          failedOn = here;
        }
        try {
          node = this.nodes.pick(skip, want);
        } catch (noNode) {
          if (failedOn) throw PlacedCallError.of(failedOn);
          throw new NoNodeLeft((noNode as Error).message);
        }
      }
    }
  }

  private pickNode(refused: ReadonlySet<string>, want: Placement): NodeClient {
    try {
      return this.nodes.pick(refused, want);
    } catch (e) {
      throw new NoNodeLeft((e as Error).message);
    }
  }

  // --- kill -----------------------------------------------------------------------------------

  /** running|paused -> killing -> killed. The intent is persisted before the node is called. */
  async killFrom(row: SandboxRow, reason: EventReason): Promise<void> {
    const killing = await this.transition(row, 'killing', reason, { endAt: null });
    await this.track(this.finishKill(killing, reason, { anyNode: row.state === 'paused' }));
  }

  /**
   * Completes a kill whose intent is stored. If the node cannot be reached the row stays in
   * `killing` and the sweeper calls again until the node confirms. `anyNode`: the sandbox has
   * no container to stop (it was paused, or is lost), so any node can delete its snapshot.
   */
  async finishKill(row: SandboxRow, reason: EventReason, opts: { anyNode?: boolean } = {}): Promise<void> {
    // A lost sandbox's node may be down for good: another node deletes its snapshot (the store
    // is shared) and confirms; should the lost node come back, the reconciler destroys what it
    // still runs. (Asking only the lost node left such rows in `killing` while it was down.)
    const node = reason === 'lost' ? this.nodes.forLost(row.nodeId) : opts.anyNode ? this.nodes.any(row.nodeId) : this.nodes.get(row.nodeId);
    const { stoppedAt } = await node.kill(row.sandboxId, { deleteSnapshot: true });
    await this.transition(row, 'killed', reason, { endAt: null, remainingMs: null }, { stoppedAt: nodeInstant(stoppedAt) });
  }

  // --- pause ----------------------------------------------------------------------------------

  /**
   * running -> pausing -> paused. A failed pause returns to running when the container is
   * intact and otherwise kills the sandbox (reason pause_failed): a sandbox is never advertised
   * running while it is frozen or half torn down.
   */
  async pauseFrom(row: SandboxRow, reason: EventReason, opts: { memory: boolean; quiesceMs?: number }): Promise<void> {
    const now = this.clock.now().getTime();
    const remainingMs = Math.max(0, (row.endAt?.getTime() ?? now) - now);
    const pausing = await this.transition(row, 'pausing', reason, { endAt: null, remainingMs });
    await this.track((async () => {
      const node = this.nodes.get(pausing.nodeId);
      let stoppedAt: string | null;
      try {
        ({ stoppedAt } = await node.pause(pausing.sandboxId, { memory: opts.memory, quiesceMs: opts.quiesceMs }));
      } catch (e) {
        // The pause may have happened: guessing either way could lose the sandbox or leave it
        // frozen. It stays pausing and the reconciler concludes it on what the node shows.
        if (e instanceof NodeCallError && e.uncertain) throw outcomeUnknown(pausing, e);
        let intact: boolean;
        try {
          intact = await node.containerRunning(pausing.sandboxId);
        } catch (checkError) {
          throw outcomeUnknown(pausing, checkError);
        }
        if (intact) {
          await this.transition(pausing, 'running', 'pause_failed', {
            endAt: new Date(this.clock.now().getTime() + remainingMs), remainingMs: null,
          });
        } else {
          const killing = await this.transition(pausing, 'killing', 'pause_failed');
          await this.finishKill(killing, 'pause_failed', { anyNode: true }).catch(() => undefined);
        }
        // The node's own account of the failure reaches the client (never a bare "internal error").
        if (e instanceof NodeCallError) throw new NodeCallError(e.code, `pause failed: ${e.message}`, { uncertain: false });
        throw new NestboxError('internal', `pause failed: ${(e as Error).message}`);
      }
      await this.transition(pausing, 'paused', reason, undefined, { stoppedAt: nodeInstant(stoppedAt) });
    })());
  }

  // --- resume ---------------------------------------------------------------------------------

  /** paused -> resuming -> running on any node; a failed resume returns to paused, snapshot kept. */
  async resumeFrom(row: SandboxRow, reason: EventReason, timeoutMs: number, opts: { autoPause?: boolean } = {}): Promise<SandboxRow> {
    const resuming = await this.transition(row, 'resuming', reason);
    return this.track((async () => {
      try {
        const want = { template: resuming.templateId, cpuCount: resuming.cpuCount, memoryMB: resuming.memoryMB };
        const { node, result } = await this.onPlacedNode(want, (n) => n.resume(resuming.sandboxId), { what: 'resume' });
        const endAt = new Date(this.clock.now().getTime() + Math.max(resuming.remainingMs ?? 0, timeoutMs));
        return await this.transition(resuming, 'running', 'resumed', {
          nodeId: node.nodeId, endAt, remainingMs: null, ...(opts.autoPause === undefined ? {} : { autoPause: opts.autoPause }),
        }, { startedAt: nodeInstant(result.startedAt) });
      } catch (e) {
        if (e instanceof StaleWrite) throw e;
        // The container may be running and the snapshot consumed: the reconciler concludes it.
        if (e instanceof NodeCallError && e.uncertain) throw outcomeUnknown(resuming, e);
        await this.transition(resuming, 'paused', 'resume_failed');
        throw e instanceof NestboxError ? e : new NestboxError('internal', `resume failed: ${(e as Error).message}`);
      }
    })());
  }

  // --- reconciliation -------------------------------------------------------------------------

  /**
   * The sandbox is gone from its node (or its snapshot from the store): it ends `killed` with
   * reason `lost`, through `killing` so whatever is left is removed, and its billing stops at
   * the node's last confirmed moment (`lastConfirmedAt`, when known).
   */
  async markLost(row: SandboxRow, lastConfirmedAt?: Date | null): Promise<void> {
    // A node that answers may have journaled the stop (a pause that froze it, a death it saw).
    const stoppedAt = lastConfirmedAt ?? (row.state === 'running' || row.state === 'pausing' ? (await this.lastStopOnNode(row)) ?? null : null);
    const killing = await this.transition(row, 'killing', 'lost', { endAt: null }, { stoppedAt });
    await this.track(this.finishKill(killing, 'lost', { anyNode: true })).catch(() => undefined); // the sweeper retries
  }

  /**
   * Concludes a stuck transition (its control plane died, its node call's answer was lost) on
   * the outcome the nodes show. For `running`: the node it runs on and when it started there.
   */
  async concludeStuck(
    row: SandboxRow, outcome: 'running' | 'paused' | 'failed', on: { nodeId?: string; startedAt?: Date | null } = {},
  ): Promise<SandboxRow> {
    const now = this.clock.now().getTime();
    if (outcome === 'failed') return this.transition(row, 'failed', 'create_failed', { endAt: null });
    if (outcome === 'paused') {
      // A pause whose answer was lost: billing ends when the dump froze it, as the node's journal
      // says, or, when that node cannot answer (it went down after the pause), its snapshot.
      // While neither can be asked, the pause waits for a later pass: concluded now, it would be
      // billed up to now (seen in a chaos run: 3 s too much, both calls timed out). A pause stuck
      // for STOP_INSTANT_WAIT_MS is concluded all the same, at the moment of concluding.
      let stoppedAt: Date | null = null;
      if (row.state === 'pausing') {
        const said = (await this.lastStopOnNode(row)) ?? (await this.stopInSnapshot(row));
        if (said === undefined && now - row.stateChangedAt.getTime() < STOP_INSTANT_WAIT_MS) {
          throw new NestboxError('unavailable', `sandbox ${row.sandboxId} is paused, but no node can say yet when it stopped: concluded at a later pass`, { retryable: true });
        }
        stoppedAt = said ?? null;
      }
      return this.transition(row, 'paused', row.state === 'resuming' ? 'resume_failed' : 'recovered', undefined, { stoppedAt });
    }
    // running: the time left is what the row kept (pausing, resuming) or its whole timeout (starting).
    const base = row.state === 'starting' ? (on.startedAt ?? new Date(now)).getTime() : now;
    const left = row.state === 'starting' ? row.timeoutMs : (row.remainingMs ?? row.timeoutMs);
    return this.transition(row, 'running', row.state === 'pausing' ? 'pause_failed' : 'recovered', {
      nodeId: on.nodeId ?? row.nodeId, endAt: new Date(base + left), remainingMs: null,
    }, { startedAt: on.startedAt });
  }

  /**
   * When the sandbox stopped, as its snapshot in the shared store says (read through a node that
   * answers); null when it says none, undefined when no node could be asked.
   */
  private async stopInSnapshot(row: SandboxRow): Promise<Date | null | undefined> {
    try {
      return nodeInstant((await this.nodes.forLost(row.nodeId).snapshotStop(row.sandboxId)).stoppedAt);
    } catch {
      return undefined;
    }
  }

  /** When the sandbox stopped, as its node's journal says; null when it says none, undefined when the node could not be asked. */
  private async lastStopOnNode(row: SandboxRow): Promise<Date | null | undefined> {
    try {
      return nodeInstant((await this.nodes.get(row.nodeId).lastStop(row.sandboxId)).stoppedAt);
    } catch {
      return undefined;
    }
  }
}

/** A start failed on two nodes: both causes for its user; the second node's outcome decides the cleanup. */
function failedTwice(what: string, first: { nodeId: string; error: NodeCallError }, second: { nodeId: string; error: NodeCallError }): PlacedCallError {
  const e = second.error;
  return new PlacedCallError(
    second.nodeId, e.code,
    `${what} failed on node ${first.nodeId} (${first.error.message}) and again on node ${second.nodeId} (${e.message})`,
    { uncertain: e.uncertain, retryable: e.retryable },
  );
}

/** A transition whose outcome is unknown: the row keeps its transitional state for the reconciler. */
function outcomeUnknown(row: SandboxRow, cause: unknown): NestboxError {
  return new NestboxError(
    'unavailable',
    `sandbox ${row.sandboxId}: the node did not confirm (${(cause as Error).message}); it stays ${row.state} until reconciled`,
    { retryable: true },
  );
}

/** Refuses (429) when the team has no room for one more sandbox counting toward max_running. Inside a transaction. */
export async function assertRoom(tx: Sql, teamId: string): Promise<void> {
  const quota = await lockTeamQuota(tx, teamId);
  if (!quota) throw notFound('team not found');
  if (quota.active >= quota.maxRunning) {
    throw new NestboxError('limit', `team has reached its limit of ${quota.maxRunning} concurrent sandboxes`);
  }
}

/** A node's instant from its answer (ISO time), or null when it gave none or a bad one. */
export function nodeInstant(iso: string | null | undefined): Date | null {
  if (!iso) return null;
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}
