import type { EventReason, LifecycleEvent, SandboxState } from '../core/states.ts';
import type { Sql } from './database.ts';

interface EventRow {
  seq: number; id: string; sandbox_id: string; team_id: string; from_state: SandboxState | null;
  to_state: SandboxState; reason: EventReason; generation: number; at: Date;
}

const toEvent = (r: EventRow): LifecycleEvent => ({
  id: r.id, seq: Number(r.seq), sandboxId: r.sandbox_id, teamId: r.team_id, from: r.from_state, to: r.to_state,
  reason: r.reason, generation: Number(r.generation), at: r.at,
});

export async function lastEventSeq(db: Sql): Promise<number> {
  const rows = await db.query<{ seq: number | null }>('SELECT max(seq) AS seq FROM lifecycle_events');
  return Number(rows[0]?.seq ?? 0);
}

/**
 * Reads the outbox in order after `cursor`. Sequence numbers are taken when a transaction
 * writes, not when it commits, so a reader can see seq 11 before seq 10 commits. A consumer that
 * moved its cursor past 10 would lose it: so the reader stops at the first hole and only skips
 * a hole once it is older than `holeGraceMs` (a rolled-back write leaves a hole for ever).
 */
export class OutboxReader {
  private holeSince: number | null = null;

  constructor(
    private readonly db: Sql,
    public cursor: number,
    private readonly holeGraceMs = 2_000,
    private readonly now: () => number = Date.now,
  ) {}

  /** The next events in order (of every team; filter after), advancing the cursor. */
  async next(limit = 500): Promise<LifecycleEvent[]> {
    const rows = await this.db.query<EventRow>(
      'SELECT * FROM lifecycle_events WHERE seq > $1 ORDER BY seq LIMIT $2', [this.cursor, limit]);
    const out: LifecycleEvent[] = [];
    for (const r of rows) {
      const seq = Number(r.seq);
      if (seq !== this.cursor + 1) {
        this.holeSince ??= this.now();
        if (this.now() - this.holeSince < this.holeGraceMs) break;
      }
      this.holeSince = null;
      this.cursor = seq;
      out.push(toEvent(r));
    }
    return out;
  }
}
