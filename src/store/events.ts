import type { EventReason, LifecycleEvent, SandboxState } from '../core/states.ts';
import type { Sql } from './database.ts';

interface EventRow {
  seq: number; id: string; sandbox_id: string; team_id: string; from_state: SandboxState | null;
  to_state: SandboxState; reason: EventReason; generation: number; at: Date;
}

const toEvent = (r: EventRow): OutboxEvent => ({
  id: r.id, seq: Number(r.seq), sandboxId: r.sandbox_id, teamId: r.team_id, from: r.from_state, to: r.to_state,
  reason: r.reason, generation: Number(r.generation), at: r.at,
});

export async function lastEventSeq(db: Sql): Promise<number> {
  const rows = await db.query<{ seq: number | null }>('SELECT max(seq) AS seq FROM lifecycle_events');
  return Number(rows[0]?.seq ?? 0);
}

/** An event read from the outbox: its sequence number is always known. */
export type OutboxEvent = LifecycleEvent & { seq: number };

/** Up to `limit` events after `cursor`, of every team, in seq order (holes not handled: see HoleGate). */
export async function readOutboxAfter(db: Sql, cursor: number, limit: number): Promise<OutboxEvent[]> {
  const rows = await db.query<EventRow>(
    'SELECT * FROM lifecycle_events WHERE seq > $1 ORDER BY seq LIMIT $2', [cursor, limit]);
  return rows.map(toEvent);
}

/**
 * Sequence numbers are taken when a transaction writes, not when it commits, so a reader can see
 * seq 11 before seq 10 commits. A consumer that moved its cursor past 10 would lose it: so the
 * gate stops at the first hole and only lets a consumer skip it once the hole is older than
 * `graceMs` (a rolled-back write leaves a hole for ever). One gate per cursor.
 */
export class HoleGate {
  // The cursor at which the current hole was first seen, and when.
  private holeAt: number | null = null;
  private since = 0;

  constructor(
    private readonly graceMs: number,
    private readonly now: () => number,
  ) {}

  /** The leading run of `events` (seq order, all after `cursor`) that may be consumed now. */
  admit<E extends { seq: number }>(cursor: number, events: E[]): E[] {
    const out: E[] = [];
    let c = cursor;
    for (const e of events) {
      if (e.seq !== c + 1) {
        if (this.holeAt !== c) {
          this.holeAt = c;
          this.since = this.now();
        }
        if (this.now() - this.since < this.graceMs) break;
      }
      this.holeAt = null;
      c = e.seq;
      out.push(e);
    }
    return out;
  }

  /** Whether a hole is being waited on (the gate then has state worth keeping). */
  get waiting(): boolean {
    return this.holeAt !== null;
  }
}

/** Reads the outbox in order after `cursor`, waiting at holes (see HoleGate). */
export class OutboxReader {
  private readonly gate: HoleGate;

  constructor(
    private readonly db: Sql,
    public cursor: number,
    holeGraceMs = 2_000,
    now: () => number = Date.now,
  ) {
    this.gate = new HoleGate(holeGraceMs, now);
  }

  /** The next events in order (of every team; filter after), advancing the cursor. */
  async next(limit = 500): Promise<OutboxEvent[]> {
    const out = this.gate.admit(this.cursor, await readOutboxAfter(this.db, this.cursor, limit));
    if (out.length > 0) this.cursor = out[out.length - 1]!.seq;
    return out;
  }
}
