import type { Sql } from './database.ts';

/** A named snapshot as stored: the team's handle on a snapshot in the snapshot store. */
export interface SnapshotRow {
  snapshotId: string;
  teamId: string;
  name: string | null;
  sandboxId: string;
  templateId: string;
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
  kind: 'named' | 'fork';
  ready: boolean;
  createdAt: Date;
}

interface DbRow {
  id: string; team_id: string; name: string | null; sandbox_id: string; template_id: string;
  cpu_count: number; memory_mb: number; disk_size_mb: number; kind: 'named' | 'fork'; ready: boolean; created_at: Date; seq: number;
}

function fromDb(r: DbRow): SnapshotRow {
  return {
    snapshotId: r.id, teamId: r.team_id, name: r.name, sandboxId: r.sandbox_id, templateId: r.template_id,
    cpuCount: r.cpu_count, memoryMB: r.memory_mb, diskSizeMB: r.disk_size_mb, kind: r.kind, ready: r.ready,
    createdAt: new Date(r.created_at),
  };
}

/**
 * Records a snapshot about to be taken (not ready); null when the team has one of that name
 * already. Written before the node dumps, so that no stored snapshot is ever without its row.
 */
export async function insertSnapshot(db: Sql, s: Omit<SnapshotRow, 'createdAt' | 'ready'>): Promise<SnapshotRow | null> {
  const rows = await db.query<DbRow>(
    `INSERT INTO snapshots (id, team_id, name, sandbox_id, template_id, cpu_count, memory_mb, disk_size_mb, kind)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING RETURNING *`,
    [s.snapshotId, s.teamId, s.name, s.sandboxId, s.templateId, s.cpuCount, s.memoryMB, s.diskSizeMB, s.kind],
  );
  return rows[0] ? fromDb(rows[0]) : null;
}

/** The node stored it complete: it can be listed and created from. */
export async function markSnapshotReady(db: Sql, snapshotId: string): Promise<void> {
  await db.query('UPDATE snapshots SET ready = true WHERE id = $1', [snapshotId]);
}

/** Rows of snapshots that never became ready, or forks' sources, older than `before`: abandoned. */
export async function abandonedSnapshots(db: Sql, before: Date): Promise<string[]> {
  const rows = await db.query<{ id: string }>(
    "SELECT id FROM snapshots WHERE (NOT ready OR kind = 'fork') AND created_at < $1", [before]);
  return rows.map((r) => r.id);
}

/** A team's ready named snapshot by id or by name. */
export async function findSnapshot(db: Sql, teamId: string, idOrName: string): Promise<SnapshotRow | null> {
  const rows = await db.query<DbRow>(
    `SELECT * FROM snapshots WHERE team_id = $1 AND (id = $2 OR name = $2) AND ready AND kind = 'named'
     ORDER BY (id = $2) DESC LIMIT 1`,
    [teamId, idOrName],
  );
  return rows[0] ? fromDb(rows[0]) : null;
}

/** A page of a team's snapshots, newest first; `afterSeq` continues after the last one seen. */
export async function listSnapshots(
  db: Sql, teamId: string, f: { sandboxId?: string; name?: string; limit: number; beforeSeq?: number },
): Promise<{ rows: SnapshotRow[]; lastSeq: number | null; more: boolean }> {
  const where = ["team_id = $1", "ready", "kind = 'named'"];
  const args: unknown[] = [teamId];
  if (f.sandboxId) where.push(`sandbox_id = $${args.push(f.sandboxId)}`);
  if (f.name) where.push(`name = $${args.push(f.name)}`);
  if (f.beforeSeq !== undefined) where.push(`seq < $${args.push(f.beforeSeq)}`);
  const rows = await db.query<DbRow>(
    `SELECT * FROM snapshots WHERE ${where.join(' AND ')} ORDER BY seq DESC LIMIT $${args.push(f.limit + 1)}`,
    args,
  );
  const page = rows.slice(0, f.limit);
  return { rows: page.map(fromDb), lastSeq: page.length ? Number(page[page.length - 1]!.seq) : null, more: rows.length > f.limit };
}

/** The named snapshots (any team's) whose files lie on `template`: it cannot go while they exist. */
export async function snapshotsUsingTemplate(db: Sql, template: string, limit = 20): Promise<string[]> {
  const rows = await db.query<{ id: string }>('SELECT id FROM snapshots WHERE template_id = $1 ORDER BY seq LIMIT $2', [template, limit]);
  return rows.map((r) => r.id);
}

/** Forgets a snapshot (its files are deleted from the store first). */
export async function deleteSnapshotRow(db: Sql, snapshotId: string): Promise<void> {
  await db.query('DELETE FROM snapshots WHERE id = $1', [snapshotId]);
}

/** Every named snapshot id any team holds (the reconciler keeps these in the store). */
export async function allSnapshotIds(db: Sql): Promise<Set<string>> {
  const rows = await db.query<{ id: string }>('SELECT id FROM snapshots');
  return new Set(rows.map((r) => r.id));
}
