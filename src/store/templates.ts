import type { Sql } from './database.ts';

/**
 * The sandboxes (of any team) that still need a template: every one not killed or failed. A
 * paused sandbox counts, since its resume needs the template's files.
 */
export async function sandboxesUsingTemplate(db: Sql, template: string, limit = 20): Promise<string[]> {
  const rows = await db.query<{ id: string }>(
    `SELECT id FROM sandboxes WHERE template_id = $1 AND state NOT IN ('killed', 'failed') ORDER BY created_at LIMIT $2`,
    [template, limit],
  );
  return rows.map((r) => r.id);
}
