// Assertions on the lifecycle's records, shared by the suites that drive it.
import assert from 'node:assert/strict';
import { canTransition, type SandboxState } from '../../src/core/states.ts';
import type { Database } from '../../src/store/database.ts';
import { eventsOf, getSandbox } from '../../src/store/sandboxes.ts';
import type { FakeNode } from './fake-node.ts';

/** Every sandbox's event log is a legal walk through the state table. */
export async function assertLegalHistory(db: Database, id: string) {
  const events = await eventsOf(db, id);
  assert.ok(events.length >= 1);
  assert.equal(events[0]!.from, null);
  assert.equal(events[0]!.to, 'starting');
  for (let i = 1; i < events.length; i++) {
    const prev = events[i - 1]!;
    const e = events[i]!;
    assert.equal(e.from, prev.to, `event ${i} of ${id} starts where the last ended: ${events.map((x) => `${x.seq}:${x.from}->${x.to}(${x.reason},g${x.generation})`).join(' ')}`);
    assert.ok(canTransition(e.from!, e.to), `${e.from} -> ${e.to} is in the table`);
    assert.ok(e.generation > prev.generation, 'generations increase');
  }
  const ids = new Set(events.map((e) => e.id));
  assert.equal(ids.size, events.length, 'event ids are unique');
  const row = await getSandbox(db, id);
  assert.equal(row!.state, events.at(-1)!.to, 'the row is where the last event left it');
  return events;
}

/** Billing: an open interval while running (and pausing); none when paused or ended; intervals never overlap. */
export async function assertLedger(db: Database, id: string) {
  const row = await getSandbox(db, id);
  const intervals = await db.query<{ opened_at: Date; closed_at: Date | null }>(
    'SELECT opened_at, closed_at FROM usage_intervals WHERE sandbox_id = $1 ORDER BY opened_at, closed_at NULLS LAST', [id]);
  const open = intervals.filter((i) => i.closed_at === null);
  // Billed while it runs, and while a pause or kill of it is in flight (until the node stops it).
  if (row!.state === 'running' || row!.state === 'pausing') assert.equal(open.length, 1, `open intervals of a ${row!.state} sandbox`);
  else if (row!.state === 'killing') assert.ok(open.length <= 1, `open intervals of a killing sandbox: ${open.length}`);
  else assert.equal(open.length, 0, `open intervals of a ${row!.state} sandbox`);
  for (let i = 1; i < intervals.length; i++) assert.ok(intervals[i - 1]!.closed_at! <= intervals[i]!.opened_at);
}

/** The node holds exactly what the database says. */
export function assertNodeMatches(node: FakeNode, id: string, state: SandboxState) {
  assert.equal(node.containers.has(id), state === 'running', `container of a ${state} sandbox`);
  assert.equal(node.snapshots.has(id), state === 'paused', `snapshot of a ${state} sandbox`);
}
