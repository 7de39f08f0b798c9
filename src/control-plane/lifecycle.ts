import { randomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { conflict, invalid, NestboxError, notFound } from '../core/errors.ts';
import { newSandboxId } from '../core/ids.ts';
import { canTransition, isTerminal, isTransitional, type EventReason, type SandboxState } from '../core/states.ts';
import type { Database, Sql } from '../store/database.ts';
import {
  countRunning, getSandbox, insertSandbox, listSandboxes, lockTeamQuota, writeEndAt, writeTransition, type SandboxRow, type TransitionPatch,
} from '../store/sandboxes.ts';
import { getTeam } from '../store/teams.ts';
import type {
  CreateSandboxParams, LifecycleApi, ListSandboxesParams, SandboxMetrics, SandboxView,
} from './lifecycle-types.ts';
import { NodeCallError, type NodeClient } from './node-client.ts';
import type { NodePool } from './scheduler.ts';

export interface Clock {
  now(): Date;
}
export const systemClock: Clock = { now: () => new Date() };

export interface LifecycleOptions {
  db: Database;
  nodes: NodePool;
  clock?: Clock;
  /** How long a request waits for another transition of the same sandbox to finish. */
  waitTimeoutMs?: number;
  /** Resources of a sandbox (per template in a later version). */
  defaultCpuCount?: number;
  defaultMemoryMB?: number;
  defaultDiskMB?: number;
  log?: (msg: string, extra?: Record<string, unknown>) => void;
}

/** Another writer moved the sandbox between our read and our write. */
export class StaleWrite extends Error {}

const POLL_MS = 20;
const ALIVE: SandboxState[] = ['starting', 'running', 'pausing', 'paused', 'resuming', 'killing'];

/**
 * The lifecycle service: every state change of every sandbox goes through transition(), which
 * writes the row (fenced on its generation) and its event in one transaction. Requests for a
 * sandbox whose transition is in flight wait for it and are then decided against the state it
 * produced; a request for the same target joins it and gets its result.
 */
export class LifecycleService implements LifecycleApi {
  private readonly db: Database;
  private readonly nodes: NodePool;
  readonly clock: Clock;
  private readonly waitTimeoutMs: number;
  private readonly changes = new EventEmitter();
  private readonly inFlight = new Set<Promise<unknown>>();
  private readonly cpuSamples = new Map<string, { at: number; cpuNs: number }>();

  constructor(private readonly opts: LifecycleOptions) {
    this.db = opts.db;
    this.nodes = opts.nodes;
    this.clock = opts.clock ?? systemClock;
    this.waitTimeoutMs = opts.waitTimeoutMs ?? 120_000;
    this.changes.setMaxListeners(0);
  }

  // --- the chokepoint -------------------------------------------------------------------------

  private async transition(
    row: SandboxRow, to: SandboxState, reason: EventReason, patch?: TransitionPatch, startedAt?: Date | null, stoppedAt?: Date | null,
  ): Promise<SandboxRow> {
    if (!canTransition(row.state, to)) throw new Error(`illegal transition ${row.state} -> ${to} of ${row.sandboxId}`);
    const at = this.clock.now();
    // Billing follows the node's clock: an interval opens when the node started the container
    // (never before the row's previous state change) and closes when the node stopped it (the
    // dump froze it, the container died: `stoppedAt`); while a pause or kill is in flight the
    // sandbox still runs, so a failed pause leaves one unbroken stretch.
    let runningSince: Date | undefined;
    if (to === 'running' && startedAt) {
      runningSince = new Date(Math.min(at.getTime(), Math.max(row.stateChangedAt.getTime(), startedAt.getTime())));
    }
    // One statement: the row, its event and the ledger entry commit together or not at all.
    const write = (db: Sql) => writeTransition(db, {
      sandboxId: row.sandboxId, from: row.state, to, generation: row.generation, reason, at, patch, runningSince,
      stoppedAt: stoppedAt ?? undefined,
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
  private track<T>(p: Promise<T>): Promise<T> {
    this.inFlight.add(p);
    void p.finally(() => this.inFlight.delete(p)).catch(() => undefined);
    return p;
  }

  /** Waits for every transition this process has started. */
  async drain(): Promise<void> {
    while (this.inFlight.size) await Promise.allSettled([...this.inFlight]);
  }

  // --- reading and waiting --------------------------------------------------------------------

  private async load(teamId: string, id: string): Promise<SandboxRow> {
    const row = await getSandbox(this.db, id);
    if (!row || row.teamId !== teamId) throw notFound(`sandbox ${id} not found`);
    return row;
  }

  /**
   * The sandbox once no transition is in flight (bounded by the wait deadline). `seen` is told
   * every transitional state observed on the way, so a request can tell it joined one.
   */
  private async settled(teamId: string, id: string, deadline: number, seen?: (s: SandboxState) => void): Promise<SandboxRow> {
    for (;;) {
      const row = await this.load(teamId, id);
      if (!isTransitional(row.state)) return row;
      seen?.(row.state);
      if (Date.now() > deadline) throw conflict(`sandbox ${id} is busy (${row.state}); try again`);
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          this.changes.off(id, done);
          resolve();
        };
        const timer = setTimeout(done, POLL_MS);
        this.changes.on(id, done);
      });
    }
  }

  private deadline() {
    return Date.now() + this.waitTimeoutMs;
  }

  private view(row: SandboxRow): SandboxView {
    const { envVars: _e, timeoutMs: _t, remainingMs: _r, stateChangedAt: _s, lastReason: _l, createdAt: _c, ...v } = row;
    return v;
  }

  // --- create ---------------------------------------------------------------------------------

  async create(p: CreateSandboxParams): Promise<SandboxView> {
    const team = await getTeam(this.db, p.teamId);
    if (!team) throw notFound('team not found');
    if (p.timeoutMs > team.maxTimeoutS * 1000) throw invalid(`timeout exceeds the team maximum of ${team.maxTimeoutS} s`);
    const sandboxId = newSandboxId();
    const refused = new Set<string>();
    // A sandbox from a snapshot has the resources the snapshot was taken with.
    const cpuCount = p.fromSnapshot?.cpuCount ?? this.opts.defaultCpuCount ?? 2;
    const memoryMB = p.fromSnapshot?.memoryMB ?? this.opts.defaultMemoryMB ?? 512;
    const diskSizeMB = p.fromSnapshot?.diskSizeMB ?? this.opts.defaultDiskMB ?? 2048;
    const want = { template: p.templateId, cpuCount, memoryMB };
    let node = this.nodes.pick(refused, want);
    const inserted = await this.db.transaction(async (tx) => {
      await assertRoom(tx, p.teamId);
      return insertSandbox(tx, {
        sandboxId, teamId: p.teamId, templateId: p.templateId, nodeId: node.nodeId, cpuCount, memoryMB,
        diskSizeMB, metadata: p.metadata, envVars: p.envVars,
        envdAccessToken: randomBytes(32).toString('hex'), allowInternetAccess: p.allowInternetAccess, secure: p.secure,
        autoPause: p.autoPause, autoPauseMemory: p.autoPauseMemory, autoResume: p.autoResume, timeoutMs: p.timeoutMs,
      }, this.clock.now());
    }).catch((e: unknown) => {
      this.nodes.done(node.nodeId); // the start never reached the node
      throw e;
    });
    this.changes.emit(sandboxId);
    let row = inserted.row;
    let created: { startedAt: string | null } = { startedAt: null };
    return this.track((async () => {
      for (;;) {
        try {
          created = await node.create({
            sandboxId, template: p.templateId, cpuCount: row.cpuCount, memoryMB: row.memoryMB, diskMB: row.diskSizeMB, envVars: p.envVars,
            metadata: p.metadata, allowInternetAccess: p.allowInternetAccess,
            ...(p.fromSnapshot ? { fromSnapshot: p.fromSnapshot.snapshotId } : {}),
          }).finally(() => this.nodes.done(node.nodeId));
          break;
        } catch (e) {
          // A draining node refuses before doing anything: place the start elsewhere.
          if (e instanceof NodeCallError && e.retryable && !e.uncertain) {
            refused.add(node.nodeId);
            try {
              node = this.nodes.pick(refused, want);
              continue;
            } catch (noNode) {
              await this.transition(row, 'failed', 'create_failed', { nodeId: null });
              throw noNode;
            }
          }
          if (e instanceof NodeCallError && e.uncertain) {
            // The container may exist: persist the kill intent, then try to remove it.
            row = await this.transition(row, 'killing', 'create_failed');
            await this.finishKill(row, 'create_failed').catch(() => undefined);
          } else {
            await this.transition(row, 'failed', 'create_failed');
          }
          throw e;
        }
      }
      const now = this.clock.now();
      try {
        row = await this.transition(row, 'running', 'created', {
          nodeId: node.nodeId, endAt: new Date(now.getTime() + p.timeoutMs), remainingMs: null,
        }, nodeInstant(created.startedAt));
      } catch (e) {
        // This create took so long that the reconciler settled it meanwhile: if it found the
        // container running, the create succeeded all the same.
        const settled = e instanceof StaleWrite ? await getSandbox(this.db, sandboxId) : null;
        if (settled?.state === 'running') return this.view(settled);
        throw e;
      }
      return this.view(row);
    })());
  }

  // --- reads ----------------------------------------------------------------------------------

  async get(teamId: string, id: string): Promise<SandboxView> {
    const row = await this.load(teamId, id);
    if (isTerminal(row.state)) throw notFound(`sandbox ${id} not found`);
    return this.view(row);
  }

  async list(teamId: string, p: ListSandboxesParams) {
    let after: { startedAt: Date; id: string } | undefined;
    if (p.nextToken) after = decodeToken(p.nextToken);
    const states = p.states?.length ? p.states : ALIVE;
    const rows = await listSandboxes(this.db, {
      teamId, states, metadata: p.metadata, limit: p.limit, after, order: p.order, startedAfter: p.startedAfter,
      templateId: p.template,
    });
    const page = rows.slice(0, p.limit);
    const nextToken = rows.length > p.limit ? encodeToken(page[page.length - 1]!) : null;
    const totalRunning = await countRunning(this.db, teamId);
    return { sandboxes: page.map((r) => this.view(r)), nextToken, totalRunning };
  }

  // --- kill -----------------------------------------------------------------------------------

  async kill(teamId: string, id: string): Promise<void> {
    const deadline = this.deadline();
    let joined = false;
    for (;;) {
      const row = await this.settled(teamId, id, deadline, (s) => (joined ||= s === 'killing'));
      if (isTerminal(row.state)) {
        if (joined) return;
        throw notFound(`sandbox ${id} not found`);
      }
      try {
        await this.killFrom(row, 'requested');
        return;
      } catch (e) {
        if (!(e instanceof StaleWrite)) throw e;
      }
    }
  }

  /** running|paused -> killing -> killed. The intent is persisted before the node is called. */
  async killFrom(row: SandboxRow, reason: EventReason): Promise<void> {
    const killing = await this.transition(row, 'killing', reason, { endAt: null });
    await this.track(this.finishKill(killing, reason, row.state === 'paused'));
  }

  /**
   * Completes a kill whose intent is stored. If the node cannot be reached the row stays in
   * `killing` and the sweeper calls again until the node confirms.
   */
  async finishKill(row: SandboxRow, reason: EventReason, paused = false): Promise<void> {
    // A lost sandbox's node may be down for good: another node deletes its snapshot (the store
    // is shared) and confirms; should the lost node come back, the reconciler destroys what it
    // still runs. (Asking only the lost node left such rows in `killing` while it was down.)
    const node = reason === 'lost' ? this.nodes.forLost(row.nodeId) : paused ? this.nodes.any(row.nodeId) : this.nodes.get(row.nodeId);
    const { stoppedAt } = await node.kill(row.sandboxId, { deleteSnapshot: true });
    await this.transition(row, 'killed', reason, { endAt: null, remainingMs: null }, undefined, nodeInstant(stoppedAt));
  }

  // --- pause ----------------------------------------------------------------------------------

  async pause(teamId: string, id: string, opts: { memory: boolean }): Promise<void> {
    const deadline = this.deadline();
    let joined = false;
    for (;;) {
      const row = await this.settled(teamId, id, deadline, (s) => (joined ||= s === 'pausing'));
      if (joined && row.state === 'paused') return;
      if (isTerminal(row.state)) throw notFound(`sandbox ${id} not found`);
      if (row.state !== 'running') throw conflict(`sandbox ${id} is ${row.state}, not running`);
      try {
        await this.pauseFrom(row, 'requested', opts.memory);
        return;
      } catch (e) {
        if (!(e instanceof StaleWrite)) throw e;
      }
    }
  }

  /**
   * running -> pausing -> paused. A failed pause returns to running when the container is
   * intact and otherwise kills the sandbox (reason pause_failed): a sandbox is never advertised
   * running while it is frozen or half torn down.
   */
  async pauseFrom(row: SandboxRow, reason: EventReason, memory: boolean): Promise<void> {
    const now = this.clock.now().getTime();
    const remainingMs = Math.max(0, (row.endAt?.getTime() ?? now) - now);
    const pausing = await this.transition(row, 'pausing', reason, { endAt: null, remainingMs });
    await this.track((async () => {
      const node = this.nodes.get(pausing.nodeId);
      let stoppedAt: string | null;
      try {
        ({ stoppedAt } = await node.pause(pausing.sandboxId, memory));
      } catch (e) {
        // The pause may have happened: guessing either way could lose the sandbox or leave it
        // frozen. It stays pausing and the reconciler settles it on what the node shows.
        if (e instanceof NodeCallError && e.uncertain) throw unsettled(pausing, e);
        let intact: boolean;
        try {
          intact = await node.containerRunning(pausing.sandboxId);
        } catch (checkError) {
          throw unsettled(pausing, checkError);
        }
        if (intact) {
          await this.transition(pausing, 'running', 'pause_failed', {
            endAt: new Date(this.clock.now().getTime() + remainingMs), remainingMs: null,
          });
        } else {
          const killing = await this.transition(pausing, 'killing', 'pause_failed');
          await this.finishKill(killing, 'pause_failed', true).catch(() => undefined);
        }
        throw new NestboxError('internal', `pause failed: ${(e as Error).message}`);
      }
      await this.transition(pausing, 'paused', reason, undefined, undefined, nodeInstant(stoppedAt));
    })());
  }

  // --- resume / connect -----------------------------------------------------------------------

  async connect(teamId: string, id: string, timeoutMs: number) {
    return this.resumeOrExtend(teamId, id, timeoutMs, false);
  }

  async resume(teamId: string, id: string, timeoutMs: number, autoPause?: boolean): Promise<SandboxView> {
    return (await this.resumeOrExtend(teamId, id, timeoutMs, true, autoPause)).sandbox;
  }

  private async resumeOrExtend(teamId: string, id: string, timeoutMs: number, legacy: boolean, autoPause?: boolean) {
    await this.checkTimeout(teamId, timeoutMs); // the team's own maximum, as on create
    const deadline = this.deadline();
    let joined = false;
    let killed = false;
    for (;;) {
      const row = await this.settled(teamId, id, deadline, (s) => {
        joined ||= s === 'resuming';
        killed ||= s === 'killing';
      });
      if (killed) throw conflict(`sandbox ${id} is being killed`);
      if (isTerminal(row.state)) throw notFound(`sandbox ${id} not found`);
      try {
        if (row.state === 'running') {
          if (legacy && !joined) throw conflict(`sandbox ${id} is already running`);
          const extended = await this.extend(row, timeoutMs);
          return { sandbox: this.view(extended), resumed: joined };
        }
        if (row.state !== 'paused') throw conflict(`sandbox ${id} is ${row.state}`);
        const resumed = await this.resumeFrom(row, 'requested', timeoutMs, autoPause);
        return { sandbox: this.view(resumed), resumed: true };
      } catch (e) {
        if (!(e instanceof StaleWrite)) throw e;
      }
    }
  }

  /** paused -> resuming -> running on any node; a failed resume returns to paused, snapshot kept. */
  async resumeFrom(row: SandboxRow, reason: EventReason, timeoutMs: number, autoPause?: boolean): Promise<SandboxRow> {
    const resuming = await this.transition(row, 'resuming', reason);
    return this.track((async () => {
      const refused = new Set<string>();
      for (;;) {
        const node = this.nodes.pick(refused, { template: resuming.templateId, cpuCount: resuming.cpuCount, memoryMB: resuming.memoryMB });
        try {
          const { startedAt } = await node.resume(resuming.sandboxId).finally(() => this.nodes.done(node.nodeId));
          const endAt = new Date(this.clock.now().getTime() + Math.max(resuming.remainingMs ?? 0, timeoutMs));
          return await this.transition(resuming, 'running', 'resumed', {
            nodeId: node.nodeId, endAt, remainingMs: null, ...(autoPause === undefined ? {} : { autoPause }),
          }, nodeInstant(startedAt));
        } catch (e) {
          if (e instanceof NodeCallError && e.retryable && !e.uncertain) {
            refused.add(node.nodeId);
            if (refused.size < this.nodes.size) continue;
          }
          if (e instanceof StaleWrite) throw e;
          // The container may be running and the snapshot consumed: the reconciler settles it.
          if (e instanceof NodeCallError && e.uncertain) throw unsettled(resuming, e);
          await this.transition(resuming, 'paused', 'resume_failed');
          throw e instanceof NestboxError ? e : new NestboxError('internal', `resume failed: ${(e as Error).message}`);
        }
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
    const stoppedAt = lastConfirmedAt ?? (row.state === 'running' || row.state === 'pausing' ? await this.lastStopOnNode(row) : null);
    const killing = await this.transition(row, 'killing', 'lost', { endAt: null }, undefined, stoppedAt);
    await this.track(this.finishKill(killing, 'lost', true)).catch(() => undefined); // the sweeper retries
  }

  /**
   * Settles a transition nobody is finishing (its control plane died, its node call timed out)
   * on the outcome the nodes show. `startedAt`: when the node started the container.
   */
  async settle(row: SandboxRow, to: 'running' | 'paused' | 'failed', nodeId?: string, startedAt?: Date | null): Promise<SandboxRow> {
    const now = this.clock.now().getTime();
    if (to === 'failed') return this.transition(row, 'failed', 'create_failed', { endAt: null });
    if (to === 'paused') {
      // A pause whose answer was lost: billing ends when the dump froze it, as the node's journal says.
      const stoppedAt = row.state === 'pausing' ? await this.lastStopOnNode(row) : null;
      return this.transition(row, 'paused', row.state === 'resuming' ? 'resume_failed' : 'recovered', undefined, undefined, stoppedAt);
    }
    // running: the time left is what the row kept (pausing, resuming) or its whole timeout (starting).
    const base = row.state === 'starting' ? (startedAt ?? new Date(now)).getTime() : now;
    const left = row.state === 'starting' ? row.timeoutMs : (row.remainingMs ?? row.timeoutMs);
    return this.transition(row, 'running', row.state === 'pausing' ? 'pause_failed' : 'recovered', {
      nodeId: nodeId ?? row.nodeId, endAt: new Date(base + left), remainingMs: null,
    }, startedAt);
  }

  private async lastStopOnNode(row: SandboxRow): Promise<Date | null> {
    try {
      return nodeInstant((await this.nodes.get(row.nodeId).lastStop(row.sandboxId)).stoppedAt);
    } catch {
      return null; // the node cannot say: the settling moment stands
    }
  }

  // --- timeouts -------------------------------------------------------------------------------

  private async extend(row: SandboxRow, timeoutMs: number): Promise<SandboxRow> {
    const wanted = this.clock.now().getTime() + timeoutMs;
    if (row.endAt && row.endAt.getTime() >= wanted) return row;
    if (!(await writeEndAt(this.db, row.sandboxId, row.state, row.generation, new Date(wanted), null))) throw new StaleWrite();
    this.changes.emit(row.sandboxId);
    return { ...row, endAt: new Date(wanted), generation: row.generation + 1 };
  }

  async setTimeout(teamId: string, id: string, timeoutMs: number): Promise<void> {
    await this.checkTimeout(teamId, timeoutMs);
    await this.adjustTimeout(teamId, id, timeoutMs, true);
  }

  async refresh(teamId: string, id: string, durationMs: number): Promise<void> {
    await this.adjustTimeout(teamId, id, durationMs, false);
  }

  private async checkTimeout(teamId: string, timeoutMs: number) {
    const team = await getTeam(this.db, teamId);
    if (team && timeoutMs > team.maxTimeoutS * 1000) throw invalid(`timeout exceeds the team maximum of ${team.maxTimeoutS} s`);
  }

  private async adjustTimeout(teamId: string, id: string, ms: number, mayShorten: boolean) {
    const deadline = this.deadline();
    for (;;) {
      const row = await this.settled(teamId, id, deadline);
      if (isTerminal(row.state)) throw notFound(`sandbox ${id} not found`);
      let ok: boolean;
      if (row.state === 'running') {
        const wanted = this.clock.now().getTime() + ms;
        if (!mayShorten && row.endAt && row.endAt.getTime() >= wanted) return;
        ok = await writeEndAt(this.db, id, 'running', row.generation, new Date(wanted), null, mayShorten ? ms : undefined);
      } else if (row.state === 'paused') {
        // Only a running sandbox has an end to set. SDKs before 2.6 rely on this error: their
        // `Sandbox.connect` is `POST /timeout` and, only when that fails, `POST /resume`; a
        // success here would hand them a sandbox that stays paused.
        if (mayShorten) throw conflict(`sandbox ${id} is paused`);
        // A refresh extends the time left; paused time does not count, it applies from the resume.
        if ((row.remainingMs ?? 0) >= ms) return;
        ok = await writeEndAt(this.db, id, 'paused', row.generation, null, ms);
      } else {
        throw conflict(`sandbox ${id} is ${row.state}`);
      }
      if (ok) {
        this.changes.emit(id);
        return;
      }
    }
  }

  // --- metrics --------------------------------------------------------------------------------

  async metrics(teamId: string, id: string): Promise<SandboxMetrics[]> {
    const row = await this.load(teamId, id);
    if (isTerminal(row.state)) throw notFound(`sandbox ${id} not found`);
    if (row.state !== 'running') return [];
    const stats = await this.nodes.get(row.nodeId).metrics(id);
    const now = Date.now();
    const prev = this.cpuSamples.get(id);
    this.cpuSamples.set(id, { at: now, cpuNs: stats.cpuNs });
    const cpuUsedPct = prev && now > prev.at
      ? Math.min(100, ((stats.cpuNs - prev.cpuNs) / 1e6 / (now - prev.at) / row.cpuCount) * 100)
      : 0;
    return [{
      timestamp: new Date(now), cpuCount: row.cpuCount, cpuUsedPct: Math.max(0, Math.round(cpuUsedPct * 100) / 100),
      memUsed: stats.memoryBytes, memTotal: stats.memoryLimitBytes || row.memoryMB * 1024 * 1024,
      diskUsed: 0, diskTotal: row.diskSizeMB * 1024 * 1024,
    }];
  }
}

/** A transition whose outcome is unknown: the row keeps its transitional state for the reconciler. */
function unsettled(row: SandboxRow, cause: unknown): NestboxError {
  return new NestboxError(
    'unavailable',
    `sandbox ${row.sandboxId}: the node did not confirm (${(cause as Error).message}); it stays ${row.state} until reconciled`,
    true,
  );
}

/** Refuses (429) when the team has no room for one more sandbox counting toward max_running. Inside a transaction. */
async function assertRoom(tx: Sql, teamId: string): Promise<void> {
  const quota = await lockTeamQuota(tx, teamId);
  if (!quota) throw notFound('team not found');
  if (quota.active >= quota.maxRunning) {
    throw new NestboxError('limit', `team has reached its limit of ${quota.maxRunning} concurrent sandboxes`);
  }
}

function encodeToken(row: SandboxRow): string {
  return Buffer.from(JSON.stringify([row.startedAt.toISOString(), row.sandboxId])).toString('base64url');
}

function decodeToken(token: string): { startedAt: Date; id: string } {
  try {
    const [at, id] = JSON.parse(Buffer.from(token, 'base64url').toString('utf8')) as [string, string];
    const startedAt = new Date(at);
    if (typeof id !== 'string' || Number.isNaN(startedAt.getTime())) throw new Error();
    return { startedAt, id };
  } catch {
    throw invalid('invalid nextToken');
  }
}

export type { NodeClient };

/** A node's instant from its answer (ISO time), or null when it gave none or a bad one. */
function nodeInstant(iso: string | null | undefined): Date | null {
  if (!iso) return null;
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? null : d;
}
