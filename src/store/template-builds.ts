// Template builds (E2B's Template builder) and their log lines. A build is asked for
// (`waiting`: its files may be uploaded), started with its steps (`building`), and ends `ready`
// or `error`. The runner beats a heartbeat while building: a build whose heartbeat stopped (its
// control plane stopped or crashed) is failed by the next reader, never left building.
import { randomUUID } from 'node:crypto';
import { conflict } from '../core/errors.ts';
import type { Sql } from './database.ts';

export type TemplateBuildStatus = 'waiting' | 'building' | 'ready' | 'error';
export type BuildLogLevel = 'debug' | 'info' | 'warn' | 'error';

export interface TemplateBuild {
  id: string;
  teamId: string;
  templateName: string;
  status: TemplateBuildStatus;
  cpuCount: number | null;
  memoryMB: number | null;
  spec: unknown;
  sandboxId: string | null;
  reason: string | null;
  reasonStep: string | null;
  createdAt: Date;
  finishedAt: Date | null;
}

export interface BuildLogLine {
  n: number;
  at: Date;
  level: BuildLogLevel;
  step: string | null;
  message: string;
}

interface Row {
  id: string;
  team_id: string;
  template_name: string;
  status: TemplateBuildStatus;
  cpu_count: number | null;
  memory_mb: number | null;
  spec: unknown;
  sandbox_id: string | null;
  reason: string | null;
  reason_step: string | null;
  created_at: Date;
  finished_at: Date | null;
}

const COLUMNS = 'id, team_id, template_name, status, cpu_count, memory_mb, spec, sandbox_id, reason, reason_step, created_at, finished_at';

const toBuild = (r: Row): TemplateBuild => ({
  id: r.id, teamId: r.team_id, templateName: r.template_name, status: r.status, cpuCount: r.cpu_count, memoryMB: r.memory_mb,
  spec: r.spec, sandboxId: r.sandbox_id, reason: r.reason, reasonStep: r.reason_step, createdAt: r.created_at, finishedAt: r.finished_at,
});

/** A building build whose runner has not beaten for this long is taken for dead. */
export const BUILD_HEARTBEAT_STALE_S = 30;
/** A build asked for but never started (no POST of its steps) is given up after this long. */
export const BUILD_WAITING_TTL_S = 3600;

export const STOPPED_RUNNER_REASON =
  'the build was interrupted: the control plane running it stopped (restart or crash) before it finished; start the build again';
const NEVER_STARTED_REASON = 'the build was never started (its steps were not sent within an hour)';

/**
 * A new build of template `name` for the team, waiting for its steps. A waiting build of the
 * same template by the same team (a client that gave up before starting it) is superseded; a
 * building one, or any unfinished build of the name by another team, refuses it.
 */
export async function createTemplateBuild(
  db: Sql,
  p: { teamId: string; templateName: string; cpuCount: number | null; memoryMB: number | null },
): Promise<TemplateBuild> {
  await failStaleBuilds(db);
  await db.query(
    `UPDATE template_builds SET status = 'error', reason = 'superseded by a newer build of the template', updated_at = now(), finished_at = now()
     WHERE template_name = $1 AND team_id = $2 AND status = 'waiting'`,
    [p.templateName, p.teamId],
  );
  const rows = await db.query<Row>(
    `INSERT INTO template_builds (id, team_id, template_name, status, cpu_count, memory_mb)
     VALUES ($1, $2, $3, 'waiting', $4, $5)
     ON CONFLICT (template_name) WHERE status IN ('waiting', 'building') DO NOTHING
     RETURNING ${COLUMNS}`,
    [randomUUID(), p.teamId, p.templateName, p.cpuCount, p.memoryMB],
  );
  if (!rows[0]) throw conflict(`template "${p.templateName}" is being built already; wait for that build to finish`);
  return toBuild(rows[0]);
}

/** The team's build, or null (another team's build is null too). */
export async function getTemplateBuild(db: Sql, teamId: string, buildId: string): Promise<TemplateBuild | null> {
  if (!/^[0-9a-f-]{36}$/.test(buildId)) return null;
  await failStaleBuilds(db);
  const rows = await db.query<Row>(`SELECT ${COLUMNS} FROM template_builds WHERE id = $1 AND team_id = $2`, [buildId, teamId]);
  return rows[0] ? toBuild(rows[0]) : null;
}

/** Whether the team has any build (finished or not) of the template: its name is the team's. */
export async function teamBuildsTemplate(db: Sql, teamId: string, templateName: string): Promise<boolean> {
  const rows = await db.query('SELECT 1 FROM template_builds WHERE team_id = $1 AND template_name = $2 LIMIT 1', [teamId, templateName]);
  return rows.length > 0;
}

/** waiting -> building with its spec; false when the build is not waiting (started already, failed). */
export async function startTemplateBuild(db: Sql, buildId: string, spec: unknown): Promise<boolean> {
  const rows = await db.query(
    `UPDATE template_builds SET status = 'building', spec = $2, heartbeat_at = now(), updated_at = now()
     WHERE id = $1 AND status = 'waiting' RETURNING id`,
    [buildId, JSON.stringify(spec)],
  );
  return rows.length > 0;
}

/** The runner is alive (and, when given, runs the steps in this sandbox). False: the build is no longer building. */
export async function beatTemplateBuild(db: Sql, buildId: string, sandboxId?: string): Promise<boolean> {
  const rows = await db.query(
    `UPDATE template_builds SET heartbeat_at = now(), sandbox_id = COALESCE($2, sandbox_id), updated_at = now()
     WHERE id = $1 AND status = 'building' RETURNING id`,
    [buildId, sandboxId ?? null],
  );
  return rows.length > 0;
}

/** building -> ready or error; false when it had ended already (failed as stale, say). */
export async function finishTemplateBuild(
  db: Sql,
  buildId: string,
  outcome: { status: 'ready' } | { status: 'error'; reason: string; step: string | null },
): Promise<boolean> {
  const rows = await db.query(
    `UPDATE template_builds SET status = $2, reason = $3, reason_step = $4, updated_at = now(), finished_at = now()
     WHERE id = $1 AND status = 'building' RETURNING id`,
    [buildId, outcome.status, outcome.status === 'error' ? outcome.reason : null, outcome.status === 'error' ? outcome.step : null],
  );
  return rows.length > 0;
}

/**
 * Fails the builds whose runner stopped beating (the control plane that ran them stopped) and
 * the waiting ones never started. Returns them: their sandboxes are the caller's to kill.
 */
export async function failStaleBuilds(db: Sql, staleAfterS = BUILD_HEARTBEAT_STALE_S): Promise<TemplateBuild[]> {
  const rows = await db.query<Row>(
    `UPDATE template_builds SET status = 'error', updated_at = now(), finished_at = now(),
       reason = CASE WHEN status = 'building' THEN $1 ELSE $2 END
     WHERE (status = 'building' AND heartbeat_at < now() - make_interval(secs => $3))
        OR (status = 'waiting' AND created_at < now() - make_interval(secs => $4))
     RETURNING ${COLUMNS}`,
    [STOPPED_RUNNER_REASON, NEVER_STARTED_REASON, staleAfterS, BUILD_WAITING_TTL_S],
  );
  return rows.map(toBuild);
}

/** Appends a log line (numbered in order: one writer per build, its runner). */
export async function appendBuildLog(db: Sql, buildId: string, line: { level: BuildLogLevel; step: string | null; message: string }): Promise<void> {
  await db.query(
    `INSERT INTO template_build_logs (build_id, n, level, step, message)
     SELECT $1, COALESCE(max(n) + 1, 0), $2, $3, $4 FROM template_build_logs WHERE build_id = $1`,
    [buildId, line.level, line.step, line.message],
  );
}

/** Log lines from `offset` on (at most `limit`), in order. */
export async function buildLogs(db: Sql, buildId: string, offset: number, limit: number): Promise<BuildLogLine[]> {
  const rows = await db.query<{ n: number; at: Date; level: BuildLogLevel; step: string | null; message: string }>(
    'SELECT n, at, level, step, message FROM template_build_logs WHERE build_id = $1 AND n >= $2 ORDER BY n LIMIT $3',
    [buildId, offset, limit],
  );
  return rows.map((r) => ({ n: r.n, at: r.at, level: r.level, step: r.step, message: r.message }));
}
