import { randomUUID } from 'node:crypto';
import type { EventReason, LifecycleEvent, SandboxState } from '../core/states.ts';
import type { Sql } from './database.ts';

/** A sandbox row as stored. */
export interface SandboxRow {
  sandboxId: string;
  teamId: string;
  templateId: string;
  state: SandboxState;
  nodeId: string | null;
  envdAccessToken: string;
  metadata: Record<string, string>;
  envVars: Record<string, string>;
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
  startedAt: Date;
  endAt: Date | null; // null while paused (the remaining time is kept)
  /** Paused: the time left of its timeout, to run again on resume. */
  remainingMs: number | null;
  timeoutMs: number;
  autoPause: boolean;
  autoPauseMemory: boolean;
  autoResume: boolean;
  allowInternetAccess: boolean;
  secure: boolean;
  /** Fences stale writers: every transition bumps it. */
  generation: number;
  stateChangedAt: Date;
  lastReason: string;
  createdAt: Date;
}

interface DbRow {
  id: string; team_id: string; template_id: string; node_id: string | null; state: SandboxState;
  generation: number; cpu_count: number; memory_mb: number; disk_mb: number;
  metadata: Record<string, string>; env_vars: Record<string, string>; envd_access_token: string;
  allow_internet: boolean; secure: boolean; auto_pause: boolean; auto_pause_memory: boolean;
  auto_resume: boolean; timeout_ms: number; end_at: Date | null; remaining_ms: number | null;
  started_at: Date; state_changed_at: Date; last_reason: string; created_at: Date;
}

function fromDb(r: DbRow): SandboxRow {
  return {
    sandboxId: r.id, teamId: r.team_id, templateId: r.template_id, nodeId: r.node_id, state: r.state,
    generation: Number(r.generation), cpuCount: r.cpu_count, memoryMB: r.memory_mb, diskSizeMB: r.disk_mb,
    metadata: r.metadata, envVars: r.env_vars, envdAccessToken: r.envd_access_token,
    allowInternetAccess: r.allow_internet, secure: r.secure, autoPause: r.auto_pause,
    autoPauseMemory: r.auto_pause_memory, autoResume: r.auto_resume, timeoutMs: Number(r.timeout_ms),
    endAt: r.end_at, remainingMs: r.remaining_ms === null ? null : Number(r.remaining_ms),
    startedAt: r.started_at, stateChangedAt: r.state_changed_at, lastReason: r.last_reason, createdAt: r.created_at,
  };
}

export async function getSandbox(db: Sql, id: string, opts: { forUpdate?: boolean } = {}): Promise<SandboxRow | null> {
  const rows = await db.query<DbRow>(`SELECT * FROM sandboxes WHERE id = $1${opts.forUpdate ? ' FOR UPDATE' : ''}`, [id]);
  return rows[0] ? fromDb(rows[0]) : null;
}

export interface NewSandbox {
  sandboxId: string; teamId: string; templateId: string; nodeId: string | null;
  cpuCount: number; memoryMB: number; diskSizeMB: number; metadata: Record<string, string>;
  envVars: Record<string, string>; envdAccessToken: string; allowInternetAccess: boolean; secure: boolean;
  autoPause: boolean; autoPauseMemory: boolean; autoResume: boolean; timeoutMs: number;
}

async function appendEvent(db: Sql, e: Omit<LifecycleEvent, 'id' | 'seq'>): Promise<LifecycleEvent> {
  const id = randomUUID();
  const rows = await db.query<{ seq: number }>(
    `INSERT INTO lifecycle_events (id, sandbox_id, team_id, from_state, to_state, reason, generation, at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING seq`,
    [id, e.sandboxId, e.teamId, e.from, e.to, e.reason, e.generation, e.at],
  );
  return { ...e, id, seq: Number(rows[0]!.seq) };
}

/** Inserts a new sandbox in `starting` with its first event. Call inside a transaction. */
export async function insertSandbox(db: Sql, s: NewSandbox, at: Date): Promise<{ row: SandboxRow; event: LifecycleEvent }> {
  const rows = await db.query<DbRow>(
    `INSERT INTO sandboxes (id, team_id, template_id, node_id, state, generation, cpu_count, memory_mb, disk_mb,
       metadata, env_vars, envd_access_token, allow_internet, secure, auto_pause, auto_pause_memory, auto_resume,
       timeout_ms, end_at, remaining_ms, started_at, state_changed_at, last_reason, created_at)
     VALUES ($1, $2, $3, $4, 'starting', 1, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, NULL, NULL, $17, $17, 'requested', $17)
     RETURNING *`,
    [s.sandboxId, s.teamId, s.templateId, s.nodeId, s.cpuCount, s.memoryMB, s.diskSizeMB, JSON.stringify(s.metadata),
      JSON.stringify(s.envVars), s.envdAccessToken, s.allowInternetAccess, s.secure, s.autoPause, s.autoPauseMemory,
      s.autoResume, s.timeoutMs, at],
  );
  const row = fromDb(rows[0]!);
  const event = await appendEvent(db, { sandboxId: s.sandboxId, teamId: s.teamId, from: null, to: 'starting', reason: 'requested', generation: 1, at });
  return { row, event };
}

/** Fields a transition may set together with the state. */
export interface TransitionPatch {
  nodeId?: string | null;
  endAt?: Date | null;
  remainingMs?: number | null;
  timeoutMs?: number;
  autoPause?: boolean;
}

export interface TransitionWrite {
  sandboxId: string;
  from: SandboxState;
  to: SandboxState;
  generation: number; // the generation the caller read; the write is fenced on it
  reason: EventReason;
  at: Date;
  patch?: TransitionPatch;
  /**
   * Entering running: when the sandbox really started running, if before `at` (a failed pause
   * never stopped it; a stuck resume's container started earlier). Defaults to `at`.
   */
  runningSince?: Date;
  /**
   * Leaving the billed stretch (entering paused, killed or failed): when the node stopped the
   * sandbox (the dump froze it, the container died), by the node's own clock; defaults to `at`.
   * Never later than `at`, never before the interval opened.
   */
  stoppedAt?: Date;
}

/**
 * Writes one state change, its event and its ledger entry in ONE statement (so one
 * transaction and one round trip), with a compare-and-set on (state, generation). Returns null
 * when another writer got there first. The lifecycle service's transition() is its only caller.
 */
export async function writeTransition(db: Sql, t: TransitionWrite): Promise<{ row: SandboxRow; event: LifecycleEvent } | null> {
  const p = t.patch ?? {};
  const eventId = randomUUID();
  const rows = await db.query<DbRow & { event_seq: number }>(
    `WITH upd AS (
       UPDATE sandboxes SET state = $4, generation = generation + 1, state_changed_at = $5, last_reason = $6,
         node_id = CASE WHEN $7::boolean THEN $8 ELSE node_id END,
         end_at = CASE WHEN $9::boolean THEN $10::timestamptz ELSE end_at END,
         remaining_ms = CASE WHEN $11::boolean THEN $12::bigint ELSE remaining_ms END,
         timeout_ms = COALESCE($13::bigint, timeout_ms),
         auto_pause = COALESCE($14::boolean, auto_pause)
       WHERE id = $1 AND state = $2 AND generation = $3
       RETURNING *
     ), ev AS (
       INSERT INTO lifecycle_events (id, sandbox_id, team_id, from_state, to_state, reason, generation, at)
       SELECT $15::uuid, id, team_id, $2, $4, $6, generation, $5 FROM upd
       RETURNING seq
     ), opened AS (
       -- the usage ledger: an interval opens when a sandbox enters running ...
       INSERT INTO usage_intervals (sandbox_id, team_id, opened_event_id, opened_at, cpu_count, memory_mb)
       SELECT id, team_id, $15::uuid, COALESCE($16::timestamptz, $5), cpu_count, memory_mb FROM upd WHERE $4::text = 'running'
       ON CONFLICT DO NOTHING
     ), closed AS (
       -- ... stays open while a pause or kill is in flight (the sandbox runs until the node
       -- stops it), and closes when it is stopped: at the node's instant when it is known
       UPDATE usage_intervals SET closed_event_id = $15::uuid,
         closed_at = GREATEST(LEAST(COALESCE($17::timestamptz, $5::timestamptz), $5::timestamptz), opened_at)
       -- (a lost sandbox stops billing when it is found lost: nobody will say when it stopped)
       WHERE sandbox_id = $1 AND closed_at IS NULL AND EXISTS (SELECT 1 FROM upd)
         AND ($4::text IN ('paused', 'killed', 'failed') OR ($4::text = 'killing' AND $6::text = 'lost'))
     )
     SELECT upd.*, ev.seq AS event_seq FROM upd, ev`,
    [t.sandboxId, t.from, t.generation, t.to, t.at, t.reason,
      'nodeId' in p, p.nodeId ?? null, 'endAt' in p, p.endAt ?? null, 'remainingMs' in p, p.remainingMs ?? null,
      p.timeoutMs ?? null, p.autoPause ?? null, eventId, t.runningSince ?? null, t.stoppedAt ?? null],
  );
  if (!rows[0]) return null;
  const row = fromDb(rows[0]);
  const event: LifecycleEvent = {
    id: eventId, seq: Number(rows[0].event_seq), sandboxId: t.sandboxId, teamId: row.teamId, from: t.from, to: t.to,
    reason: t.reason, generation: row.generation, at: t.at,
  };
  return { row, event };
}

/**
 * Timeout changes are not state changes: no event. They are fenced on state and generation and
 * bump the generation, so an evictor that read the old end cannot act on it.
 */
export async function writeEndAt(db: Sql, id: string, state: SandboxState, generation: number, endAt: Date | null, remainingMs: number | null, timeoutMs?: number): Promise<boolean> {
  const rows = await db.query(
    `UPDATE sandboxes SET end_at = $4, remaining_ms = $5, timeout_ms = COALESCE($6::bigint, timeout_ms), generation = generation + 1
     WHERE id = $1 AND state = $2 AND generation = $3 RETURNING id`,
    [id, state, generation, endAt, remainingMs, timeoutMs ?? null],
  );
  return rows.length === 1;
}

/** The states that count toward a team's max_running. */
export const QUOTA_STATES: readonly SandboxState[] = ['starting', 'running', 'resuming', 'pausing'];

/**
 * Locks the team's row (serialising the quota checks of one team across control-plane
 * replicas: call inside a transaction) and returns its max_running and what counts toward it
 * now; null for an unknown team.
 */
export async function lockTeamQuota(tx: Sql, teamId: string): Promise<{ maxRunning: number; active: number } | null> {
  const locked = await tx.query<{ max_running: number }>('SELECT max_running FROM teams WHERE id = $1 FOR UPDATE', [teamId]);
  if (!locked[0]) return null;
  return { maxRunning: locked[0].max_running, active: await countActive(tx, teamId) };
}

export async function countActive(db: Sql, teamId: string): Promise<number> {
  const rows = await db.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM sandboxes WHERE team_id = $1 AND state = ANY($2::text[])`,
    [teamId, QUOTA_STATES],
  );
  return Number(rows[0]!.n);
}

/** How many of the team's sandboxes are `running` now. */
export async function countRunning(db: Sql, teamId: string): Promise<number> {
  const rows = await db.query<{ n: number }>(
    "SELECT count(*)::int AS n FROM sandboxes WHERE team_id = $1 AND state = 'running'", [teamId]);
  return Number(rows[0]!.n);
}

export interface ListQuery {
  teamId: string;
  states: SandboxState[];
  metadata?: Record<string, string>;
  limit: number;
  /** By start time, ties broken by id; default desc. */
  order?: 'asc' | 'desc';
  startedAfter?: Date;
  /** A template id (templates have no separate aliases: the id is the alias). */
  templateId?: string;
  /** Keyset cursor: the last row of the previous page. */
  after?: { startedAt: Date; id: string };
}

/** Keyset pagination on (started_at, id), in the requested direction. */
export async function listSandboxes(db: Sql, q: ListQuery): Promise<SandboxRow[]> {
  const params: unknown[] = [q.teamId, q.states, q.limit + 1];
  const dir = q.order === 'asc' ? 'ASC' : 'DESC';
  let where = 'team_id = $1 AND state = ANY($2::text[])';
  if (q.metadata && Object.keys(q.metadata).length) {
    params.push(JSON.stringify(q.metadata));
    where += ` AND metadata @> $${params.length}::jsonb`;
  }
  if (q.startedAfter) {
    params.push(q.startedAfter);
    where += ` AND started_at >= $${params.length}::timestamptz`;
  }
  if (q.templateId !== undefined) {
    params.push(q.templateId);
    where += ` AND template_id = $${params.length}`;
  }
  if (q.after) {
    params.push(q.after.startedAt, q.after.id);
    where += ` AND (started_at, id) ${dir === 'ASC' ? '>' : '<'} ($${params.length - 1}::timestamptz, $${params.length})`;
  }
  const rows = await db.query<DbRow>(
    `SELECT * FROM sandboxes WHERE ${where} ORDER BY started_at ${dir}, id ${dir} LIMIT $3`, params,
  );
  return rows.map(fromDb);
}

/** Running sandboxes whose end has passed, oldest first. */
export async function listExpired(db: Sql, now: Date, limit: number): Promise<SandboxRow[]> {
  const rows = await db.query<DbRow>(
    `SELECT * FROM sandboxes WHERE state = 'running' AND end_at <= $1 ORDER BY end_at LIMIT $2`,
    [now, limit],
  );
  return rows.map(fromDb);
}

/** Sandboxes left in `killing` since `before` or earlier, oldest first: the kill sweeper's batch. */
export async function listStuckKilling(db: Sql, before: Date, limit: number): Promise<string[]> {
  const rows = await db.query<{ id: string }>(
    "SELECT id FROM sandboxes WHERE state = 'killing' AND state_changed_at <= $1 ORDER BY state_changed_at LIMIT $2",
    [before, limit],
  );
  return rows.map((r) => r.id);
}

/** The sandboxes running on a node, longest running first: what a drain moves away. */
export async function listRunningOnNode(db: Sql, nodeId: string): Promise<string[]> {
  const rows = await db.query<{ id: string }>(
    "SELECT id FROM sandboxes WHERE node_id = $1 AND state = 'running' ORDER BY state_changed_at", [nodeId]);
  return rows.map((r) => r.id);
}

/** Sandboxes a drain paused (still paused): each waits to be resumed on another node. Oldest first. */
export async function listPausedByDrain(db: Sql, limit: number): Promise<Array<{ sandboxId: string; nodeId: string | null }>> {
  const rows = await db.query<{ id: string; node_id: string | null }>(
    "SELECT id, node_id FROM sandboxes WHERE state = 'paused' AND last_reason = 'drain' ORDER BY state_changed_at LIMIT $1", [limit]);
  return rows.map((r) => ({ sandboxId: r.id, nodeId: r.node_id }));
}

/** What the reconciler compares with the nodes: a sandbox's state, where and since when. */
export interface SandboxPlacement {
  sandboxId: string;
  state: SandboxState;
  nodeId: string | null;
  stateChangedAt: Date;
}

/** Every sandbox not yet terminal, and those of `alsoIds` (what nodes still hold) whatever their state. */
export async function listPlacements(db: Sql, alsoIds: string[]): Promise<SandboxPlacement[]> {
  const rows = await db.query<{ id: string; state: SandboxState; node_id: string | null; state_changed_at: Date }>(
    `SELECT id, state, node_id, state_changed_at FROM sandboxes
     WHERE state NOT IN ('killed', 'failed') OR id = ANY($1::text[])`,
    [alsoIds],
  );
  return rows.map((r) => ({ sandboxId: r.id, state: r.state, nodeId: r.node_id, stateChangedAt: new Date(r.state_changed_at) }));
}

export async function eventsOf(db: Sql, sandboxId: string): Promise<LifecycleEvent[]> {
  const rows = await db.query<{ id: string; seq: number; sandbox_id: string; team_id: string; from_state: SandboxState | null; to_state: SandboxState; reason: EventReason; generation: number; at: Date }>(
    'SELECT * FROM lifecycle_events WHERE sandbox_id = $1 ORDER BY seq', [sandboxId],
  );
  return rows.map((r) => ({
    id: r.id, seq: Number(r.seq), sandboxId: r.sandbox_id, teamId: r.team_id, from: r.from_state, to: r.to_state,
    reason: r.reason, generation: Number(r.generation), at: r.at,
  }));
}
