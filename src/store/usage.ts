// Usage reports from the ledger (`usage_intervals`): the time each sandbox of a team spent
// `running`, clipped to a window, weighted by its CPU count and memory size. Intervals are
// opened and closed by lifecycle events only (see sandboxes.ts); an interval still open counts
// up to `now`, which the caller passes (an injected clock in tests).
import { invalid } from '../core/errors.ts';
import type { Sql } from './database.ts';

export interface UsageFigures {
  /** Seconds in `running`. */
  runningSeconds: number;
  /** Running seconds × CPU count. */
  cpuSeconds: number;
  /** Running seconds × memory in GiB (memory_mb / 1024). */
  memoryGiBSeconds: number;
}

export interface SandboxUsage extends UsageFigures {
  sandboxId: string;
  /** The sandbox is running now and still accruing within the window (its interval is open and the window reaches now). */
  open: boolean;
}

export interface UsageReport {
  teamId: string;
  /** Start of the window; null: since the first interval. */
  from: Date | null;
  /** End of the window: the `to` asked for, or `now`. */
  to: Date;
  totals: UsageFigures;
  /** Sandboxes with usage in the window, in order of their first running time in it. */
  sandboxes: SandboxUsage[];
}

export interface UsageQuery {
  teamId: string;
  from?: Date;
  to?: Date;
  now: Date;
}

/** Figures are rounded to the millisecond (and to 1/1000 of a unit for the weighted ones). */
const round3 = (n: number) => Math.round(n * 1000) / 1000;

function checkDate(what: string, d: Date | undefined) {
  if (d !== undefined && !Number.isFinite(d.getTime())) throw invalid(`${what} is not a valid date`);
}

interface Row {
  sandbox_id: string;
  running_s: number;
  cpu_s: number;
  mem_gib_s: number;
  open: boolean;
}

export async function usageReport(db: Sql, q: UsageQuery): Promise<UsageReport> {
  checkDate('from', q.from);
  checkDate('to', q.to);
  checkDate('now', q.now);
  const to = q.to ?? q.now;
  const from = q.from ?? null;
  if (from && from.getTime() > to.getTime()) throw invalid('from must not be after to');

  // Each interval, clipped: [max(opened_at, from), min(closed_at or now, to)]. Intervals that do
  // not overlap the window (or that an injected clock places after now) contribute nothing.
  const rows = await db.query<Row>(
    `WITH clipped AS (
       SELECT sandbox_id, cpu_count, memory_mb, opened_at,
              GREATEST(opened_at, COALESCE($2::timestamptz, opened_at)) AS s,
              LEAST(COALESCE(closed_at, $4::timestamptz), $3::timestamptz) AS e,
              closed_at IS NULL AND $4::timestamptz <= $3::timestamptz AS accruing
       FROM usage_intervals
       WHERE team_id = $1
         AND opened_at < $3::timestamptz
         AND ($2::timestamptz IS NULL OR COALESCE(closed_at, $4::timestamptz) > $2::timestamptz)
     ), secs AS (
       SELECT sandbox_id, cpu_count, memory_mb, opened_at, accruing,
              EXTRACT(EPOCH FROM (e - s)) AS seconds
       FROM clipped WHERE e > s
     )
     SELECT sandbox_id,
            SUM(seconds) AS running_s,
            SUM(seconds * cpu_count) AS cpu_s,
            SUM(seconds * memory_mb / 1024.0) AS mem_gib_s,
            BOOL_OR(accruing) AS open
     FROM secs
     GROUP BY sandbox_id
     ORDER BY MIN(opened_at), sandbox_id`,
    [q.teamId, from, to, q.now],
  );

  const totals: UsageFigures = { runningSeconds: 0, cpuSeconds: 0, memoryGiBSeconds: 0 };
  const sandboxes: SandboxUsage[] = rows.map((r) => {
    const running = Number(r.running_s);
    const cpu = Number(r.cpu_s);
    const mem = Number(r.mem_gib_s);
    totals.runningSeconds += running;
    totals.cpuSeconds += cpu;
    totals.memoryGiBSeconds += mem;
    return {
      sandboxId: r.sandbox_id,
      runningSeconds: round3(running),
      cpuSeconds: round3(cpu),
      memoryGiBSeconds: round3(mem),
      open: r.open,
    };
  });
  return {
    teamId: q.teamId,
    from,
    to,
    totals: {
      runningSeconds: round3(totals.runningSeconds),
      cpuSeconds: round3(totals.cpuSeconds),
      memoryGiBSeconds: round3(totals.memoryGiBSeconds),
    },
    sandboxes,
  };
}
