import { randomBytes } from 'node:crypto';
import { conflict, invalid, notFound } from '../core/errors.ts';
import { newSandboxId } from '../core/ids.ts';
import { DEFAULT_CPU_COUNT, DEFAULT_DISK_MB, DEFAULT_MEMORY_MB } from '../core/runtime-state.ts';
import { isTerminal, isTransitional, type SandboxState } from '../core/states.ts';
import {
  countRunning, getSandbox, insertSandbox, listSandboxes, writeEndAt, type SandboxRow,
} from '../store/sandboxes.ts';
import { getTeam } from '../store/teams.ts';
import type {
  CreateSandboxParams, LifecycleApi, ListSandboxesParams, SandboxMetrics, SandboxView,
} from './lifecycle-types.ts';
import { NodeCallError } from './node-client.ts';
import {
  assertRoom, NoNodeLeft, nodeInstant, PlacedCallError, SandboxTransitions, StaleWrite, type TransitionsOptions,
} from './transitions.ts';

export interface LifecycleOptions extends TransitionsOptions {
  /** How long a request waits for another transition of the same sandbox to finish. */
  waitTimeoutMs?: number;
}

const POLL_MS = 20;
const ALIVE: SandboxState[] = ['starting', 'running', 'pausing', 'paused', 'resuming', 'killing'];

/**
 * The lifecycle service: the API's requests on sandboxes, decided on their rows and carried out
 * through the transition verbs (transitions.ts). Requests for a sandbox whose transition is in
 * flight wait for it and are then decided against the state it produced; a request for the
 * same target joins it and gets its result.
 */
export class LifecycleService extends SandboxTransitions implements LifecycleApi {
  private readonly waitTimeoutMs: number;
  private readonly cpuSamples = new Map<string, { at: number; cpuNs: number }>();

  constructor(opts: LifecycleOptions) {
    super(opts);
    this.waitTimeoutMs = opts.waitTimeoutMs ?? 120_000;
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
  private async waitUntilSteady(teamId: string, id: string, deadline: number, seen?: (s: SandboxState) => void): Promise<SandboxRow> {
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
    // A sandbox from a snapshot has the resources the snapshot was taken with.
    const cpuCount = p.fromSnapshot?.cpuCount ?? DEFAULT_CPU_COUNT;
    const memoryMB = p.fromSnapshot?.memoryMB ?? DEFAULT_MEMORY_MB;
    const diskSizeMB = p.fromSnapshot?.diskSizeMB ?? DEFAULT_DISK_MB;
    const want = { template: p.templateId, cpuCount, memoryMB };
    // Placed before the row is written: the row names its node from the start.
    const first = this.nodes.pick(new Set(), want);
    const inserted = await this.db.transaction(async (tx) => {
      await assertRoom(tx, p.teamId);
      return insertSandbox(tx, {
        sandboxId, teamId: p.teamId, templateId: p.templateId, nodeId: first.nodeId, cpuCount, memoryMB,
        diskSizeMB, metadata: p.metadata, envVars: p.envVars,
        envdAccessToken: randomBytes(32).toString('hex'), allowInternetAccess: p.allowInternetAccess, secure: p.secure,
        autoPause: p.autoPause, autoPauseMemory: p.autoPauseMemory, autoResume: p.autoResume, timeoutMs: p.timeoutMs,
      }, this.clock.now());
    }).catch((e: unknown) => {
      this.nodes.done(first.nodeId); // the start never reached the node
      throw e;
    });
    this.changes.emit(sandboxId);
    let row = inserted.row;
    return this.track((async () => {
      let placed;
      try {
        placed = await this.onPlacedNode(want, (node) => node.create({
          sandboxId, template: p.templateId, cpuCount: row.cpuCount, memoryMB: row.memoryMB, diskMB: row.diskSizeMB, envVars: p.envVars,
          metadata: p.metadata, allowInternetAccess: p.allowInternetAccess,
          ...(p.fromSnapshot ? { fromSnapshot: p.fromSnapshot.snapshotId } : {}),
        }), {
          first, what: 'create',
          // A create whose answer was lost is placed again only once its node confirmed the kill.
          undo: (node) => node.kill(sandboxId),
        });
      } catch (e) {
        // The row names the node the start failed on last (the one holding whatever is left).
        const on = e instanceof PlacedCallError ? { nodeId: e.nodeId } : undefined;
        if (e instanceof NodeCallError && e.uncertain) {
          // The container may exist: persist the kill intent, then try to remove it.
          row = await this.transition(row, 'killing', 'create_failed', on);
          await this.finishKill(row, 'create_failed').catch(() => undefined);
        } else {
          // Nothing was started: the node said so, or every node refused (then it never was on one).
          await this.transition(row, 'failed', 'create_failed', e instanceof NoNodeLeft ? { nodeId: null } : on);
        }
        throw e;
      }
      const now = this.clock.now();
      try {
        row = await this.transition(row, 'running', 'created', {
          nodeId: placed.node.nodeId, endAt: new Date(now.getTime() + p.timeoutMs), remainingMs: null,
        }, { startedAt: nodeInstant(placed.result.startedAt) });
      } catch (e) {
        // This create took so long that the reconciler concluded it meanwhile: if it found the
        // container running, the create succeeded all the same.
        const current = e instanceof StaleWrite ? await getSandbox(this.db, sandboxId) : null;
        if (current?.state === 'running') return this.view(current);
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
      const row = await this.waitUntilSteady(teamId, id, deadline, (s) => (joined ||= s === 'killing'));
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

  // --- pause ----------------------------------------------------------------------------------

  async pause(teamId: string, id: string, opts: { memory: boolean }): Promise<void> {
    const deadline = this.deadline();
    let joined = false;
    for (;;) {
      const row = await this.waitUntilSteady(teamId, id, deadline, (s) => (joined ||= s === 'pausing'));
      if (joined && row.state === 'paused') return;
      if (isTerminal(row.state)) throw notFound(`sandbox ${id} not found`);
      if (row.state !== 'running') throw conflict(`sandbox ${id} is ${row.state}, not running`);
      try {
        await this.pauseFrom(row, 'requested', { memory: opts.memory });
        return;
      } catch (e) {
        if (!(e instanceof StaleWrite)) throw e;
      }
    }
  }

  // --- resume / connect -----------------------------------------------------------------------

  async connect(teamId: string, id: string, timeoutMs: number) {
    return this.resumeOrExtend(teamId, id, timeoutMs, { legacy: false });
  }

  async resume(teamId: string, id: string, timeoutMs: number, opts: { autoPause?: boolean } = {}): Promise<SandboxView> {
    return (await this.resumeOrExtend(teamId, id, timeoutMs, { legacy: true, autoPause: opts.autoPause })).sandbox;
  }

  /** `legacy`: the resume of SDKs before 2.6 (conflict when already running); else connect. */
  private async resumeOrExtend(teamId: string, id: string, timeoutMs: number, opts: { legacy: boolean; autoPause?: boolean }) {
    const { legacy, autoPause } = opts;
    await this.checkTimeout(teamId, timeoutMs); // the team's own maximum, as on create
    const deadline = this.deadline();
    let joined = false;
    let killed = false;
    for (;;) {
      const row = await this.waitUntilSteady(teamId, id, deadline, (s) => {
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
        const resumed = await this.resumeFrom(row, 'requested', timeoutMs, { autoPause });
        return { sandbox: this.view(resumed), resumed: true };
      } catch (e) {
        if (!(e instanceof StaleWrite)) throw e;
      }
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
      const row = await this.waitUntilSteady(teamId, id, deadline);
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


