// The lifecycle service against a real database (PGlite and Postgres) and an in-memory node.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { isTerminal } from '../src/core/states.ts';
import { LifecycleService } from '../src/control-plane/lifecycle.ts';
import { ManualClock } from './helpers/manual-clock.ts';
import { NodePool } from '../src/control-plane/scheduler.ts';
import { Evictor } from '../src/control-plane/loops/evictor.ts';
import { KillSweeper } from '../src/control-plane/loops/kill-sweeper.ts';
import type { Database } from '../src/store/database.ts';
import { createTeam } from '../src/store/teams.ts';
import { upsertNode } from '../src/store/nodes.ts';
import { getSandbox, writeTransition } from '../src/store/sandboxes.ts';
import type { CreateSandboxParams } from '../src/control-plane/lifecycle-types.ts';
import { FakeNode } from './helpers/fake-node.ts';
import { forEachDatabase } from './helpers/databases.ts';
import { assertLedger, assertLegalHistory, assertNodeMatches } from './helpers/lifecycle-asserts.ts';


interface World {
  db: Database;
  node: FakeNode;
  clock: ManualClock;
  svc: LifecycleService;
  teamId: string;
  params: (extra?: Partial<CreateSandboxParams>) => CreateSandboxParams;
}

async function world(db: Database, opts: { maxRunning?: number; node?: FakeNode; clock?: ManualClock; teamId?: string } = {}): Promise<World> {
  const node = opts.node ?? new FakeNode();
  await upsertNode(db, { id: node.nodeId, url: 'memory:', token: 'none' });
  const nodes = new NodePool();
  nodes.add(node);
  const clock = opts.clock ?? new ManualClock();
  const svc = new LifecycleService({ db, nodes, clock, waitTimeoutMs: 10_000 });
  const teamId = opts.teamId ?? (await createTeam(db, { name: 'test', maxRunning: opts.maxRunning ?? 1000 })).id;
  const params = (extra: Partial<CreateSandboxParams> = {}): CreateSandboxParams => ({
    teamId, templateId: 'base', timeoutMs: 60_000, metadata: {}, envVars: {}, autoPause: false, autoPauseMemory: true,
    autoResume: false, allowInternetAccess: true, secure: true, ...extra,
  });
  return { db, node, clock, svc, teamId, params };
}

const codeOf = (e: unknown) => (e as { code?: string }).code ?? 'throw';

forEachDatabase('lifecycle', (t) => {
  {
    let db: Database;
    test('open the database', async () => {
      db = await t.db();
    });

    test('create, pause, connect, kill: states, events, usage and node agree', async () => {
      const w = await world(db);
      const s = await w.svc.create(w.params());
      assert.equal(s.state, 'running');
      assert.equal(s.endAt!.getTime(), w.clock.t + 60_000);
      assertNodeMatches(w.node, s.sandboxId, 'running');
      await assertLedger(db, s.sandboxId);
      w.clock.advance(10_000);
      await w.svc.pause(w.teamId, s.sandboxId, { memory: true });
      assertNodeMatches(w.node, s.sandboxId, 'paused');
      await assertLedger(db, s.sandboxId);
      assert.equal((await getSandbox(db, s.sandboxId))!.remainingMs, 50_000);
      await assert.rejects(w.svc.pause(w.teamId, s.sandboxId, { memory: true }), (e) => codeOf(e) === 'conflict');
      await assert.rejects(w.svc.setTimeout(w.teamId, s.sandboxId, 5_000), (e) => codeOf(e) === 'conflict', 'a paused sandbox has no end to set');
      await w.svc.refresh(w.teamId, s.sandboxId, 5_000);
      assert.equal((await getSandbox(db, s.sandboxId))!.remainingMs, 50_000, 'a refresh never shortens the time left');
      w.clock.advance(3_600_000); // paused time does not count
      const c = await w.svc.connect(w.teamId, s.sandboxId, 5_000);
      assert.equal(c.resumed, true);
      assert.equal(c.sandbox.endAt!.getTime(), w.clock.t + 50_000, 'the remaining time survives the pause');
      const again = await w.svc.connect(w.teamId, s.sandboxId, 5_000);
      assert.equal(again.resumed, false);
      assert.equal(again.sandbox.endAt!.getTime(), w.clock.t + 50_000, 'connect never shortens');
      await w.svc.kill(w.teamId, s.sandboxId);
      assertNodeMatches(w.node, s.sandboxId, 'killed');
      await assert.rejects(w.svc.get(w.teamId, s.sandboxId), (e) => codeOf(e) === 'not_found');
      await assert.rejects(w.svc.kill(w.teamId, s.sandboxId), (e) => codeOf(e) === 'not_found');
      const events = await assertLegalHistory(db, s.sandboxId);
      assert.deepEqual(events.map((e) => e.to), ['starting', 'running', 'pausing', 'paused', 'resuming', 'running', 'killing', 'killed']);
      await assertLedger(db, s.sandboxId);
      const billed = await db.query<{ ms: number }>(
        'SELECT sum(extract(epoch FROM closed_at - opened_at) * 1000)::float8 AS ms FROM usage_intervals WHERE sandbox_id = $1', [s.sandboxId]);
      assert.equal(Math.round(billed[0]!.ms), 10_000, 'only running time is billed');
    });

    test('another team cannot see or touch a sandbox', async () => {
      const w = await world(db);
      const other = await world(db, { node: w.node });
      const s = await w.svc.create(w.params());
      for (const op of [
        () => other.svc.get(other.teamId, s.sandboxId),
        () => other.svc.kill(other.teamId, s.sandboxId),
        () => other.svc.pause(other.teamId, s.sandboxId, { memory: true }),
        () => other.svc.connect(other.teamId, s.sandboxId, 1000),
        () => other.svc.setTimeout(other.teamId, s.sandboxId, 1000),
      ]) await assert.rejects(op(), (e) => codeOf(e) === 'not_found');
      assert.equal((await w.svc.get(w.teamId, s.sandboxId)).state, 'running');
    });

    test('the concurrency limit holds under parallel creates', async () => {
      const w = await world(db, { maxRunning: 3 });
      const results = await Promise.allSettled(Array.from({ length: 10 }, () => w.svc.create(w.params())));
      const ok = results.filter((r) => r.status === 'fulfilled');
      assert.equal(ok.length, 3);
      for (const r of results) if (r.status === 'rejected') assert.equal(codeOf(r.reason), 'limit');
    });

    test('concurrent requests for the same target join one transition', async () => {
      const w = await world(db);
      w.node.faults.latencyMs = 30;
      const s = await w.svc.create(w.params());
      const pauses = await Promise.allSettled([1, 2, 3].map(() => w.svc.pause(w.teamId, s.sandboxId, { memory: true })));
      assert.deepEqual(pauses.map((r) => r.status), ['fulfilled', 'fulfilled', 'fulfilled']);
      assert.equal(w.node.calls.filter((c) => c === `pause ${s.sandboxId}`).length, 1, 'one checkpoint');
      const connects = await Promise.all([1, 2, 3].map(() => w.svc.connect(w.teamId, s.sandboxId, 1000)));
      assert.deepEqual(connects.map((c) => c.resumed), [true, true, true], 'joiners get the same answer');
      assert.equal(w.node.calls.filter((c) => c === `resume ${s.sandboxId}`).length, 1, 'one restore');
      const kills = await Promise.allSettled([1, 2].map(() => w.svc.kill(w.teamId, s.sandboxId)));
      assert.deepEqual(kills.map((r) => r.status), ['fulfilled', 'fulfilled']);
      // A kill racing a pause: whichever reaches the row first goes first. A kill that finds the
      // pause in flight waits for it and then kills from paused; a pause that finds the kill in
      // flight is then told the sandbox is gone. Nothing else is a legal outcome.
      const s2 = await w.svc.create(w.params());
      const [p, k] = await Promise.allSettled([w.svc.pause(w.teamId, s2.sandboxId, { memory: true }), w.svc.kill(w.teamId, s2.sandboxId)]);
      assert.equal(k.status, 'fulfilled');
      assertNodeMatches(w.node, s2.sandboxId, 'killed');
      const ev = (await assertLegalHistory(db, s2.sandboxId)).map((e) => e.to);
      if (p.status === 'fulfilled') assert.deepEqual(ev.slice(-4), ['pausing', 'paused', 'killing', 'killed']);
      else {
        assert.equal(codeOf(p.reason), 'not_found');
        assert.deepEqual(ev.slice(-3), ['running', 'killing', 'killed']);
      }
      // and a kill that arrives while the pause is already in flight always kills from paused
      const s3 = await w.svc.create(w.params());
      const pausing = w.svc.pause(w.teamId, s3.sandboxId, { memory: true });
      while ((await getSandbox(db, s3.sandboxId))!.state !== 'pausing') await new Promise((r) => setTimeout(r, 1));
      await w.svc.kill(w.teamId, s3.sandboxId);
      await pausing;
      assert.deepEqual((await assertLegalHistory(db, s3.sandboxId)).map((e) => e.to).slice(-4), ['pausing', 'paused', 'killing', 'killed']);
    });

    test('failed pause: back to running when intact, killed when the container is gone', async () => {
      const w = await world(db);
      const s = await w.svc.create(w.params());
      w.node.faults.failPause = 1;
      await assert.rejects(w.svc.pause(w.teamId, s.sandboxId, { memory: true }));
      const row = await getSandbox(db, s.sandboxId);
      assert.equal(row!.state, 'running');
      assert.equal(row!.lastReason, 'pause_failed');
      assert.ok(row!.endAt, 'a running sandbox has an end again');
      await assertLedger(db, s.sandboxId);
      // container lost under the pause: the sandbox is killed, not left advertised running
      w.node.faults.failPause = 0;
      const orig = w.node.pause.bind(w.node);
      w.node.pause = async (id, m) => {
        w.node.containers.delete(id);
        throw new Error('checkpoint crashed the container');
      };
      await assert.rejects(w.svc.pause(w.teamId, s.sandboxId, { memory: true }));
      w.node.pause = orig;
      const dead = await getSandbox(db, s.sandboxId);
      assert.equal(dead!.state, 'killed');
      assert.equal(dead!.lastReason, 'pause_failed');
      await assertLegalHistory(db, s.sandboxId);
      await assertLedger(db, s.sandboxId);
    });

    test('failed resume keeps the snapshot and returns to paused', async () => {
      const w = await world(db);
      const s = await w.svc.create(w.params());
      await w.svc.pause(w.teamId, s.sandboxId, { memory: true });
      w.node.faults.failResume = 1;
      await assert.rejects(w.svc.connect(w.teamId, s.sandboxId, 1000));
      assert.equal((await getSandbox(db, s.sandboxId))!.state, 'paused');
      assert.ok(w.node.snapshots.has(s.sandboxId));
      w.node.faults.failResume = 0;
      assert.equal((await w.svc.connect(w.teamId, s.sandboxId, 1000)).resumed, true);
      await assertLegalHistory(db, s.sandboxId);
    });

    test('create: a draining node is refused as retryable, an uncertain create never leaks', async () => {
      const w = await world(db);
      w.node.faults.draining = true;
      await assert.rejects(w.svc.create(w.params()), (e) => codeOf(e) === 'unavailable' && (e as any).retryable === true);
      assert.equal(w.node.containers.size, 0);
      w.node.faults.draining = false;
      w.node.faults.timeoutAfterEffect = 1;
      await assert.rejects(w.svc.create(w.params()));
      w.node.faults.timeoutAfterEffect = 0;
      const stuck = await db.query<{ id: string; state: string }>("SELECT id, state FROM sandboxes WHERE team_id = $1 AND state = 'killing'", [w.teamId]);
      // the kill may itself have failed: the sweeper finishes it
      w.clock.advance(10_000);
      await new KillSweeper(db, w.svc).tick();
      for (const r of stuck) assert.equal((await getSandbox(db, r.id))!.state, 'killed');
      assert.equal(w.node.containers.size, 0, 'no container outlives its failed create');
    });

    test('a stale writer is fenced by the generation', async () => {
      const w = await world(db);
      const s = await w.svc.create(w.params());
      const row = (await getSandbox(db, s.sandboxId))!;
      await w.svc.pause(w.teamId, s.sandboxId, { memory: true });
      const stale = await db.transaction((tx) => writeTransition(tx, {
        sandboxId: s.sandboxId, from: 'running', to: 'killing', generation: row.generation, reason: 'requested', at: new Date(),
      }));
      assert.equal(stale, null);
      assert.equal((await getSandbox(db, s.sandboxId))!.state, 'paused');
    });

    test('timeouts: setTimeout may shorten, refresh only extends, the evictor kills or pauses', async () => {
      const w = await world(db);
      const evictor = new Evictor(db, w.svc);
      const a = await w.svc.create(w.params({ timeoutMs: 10_000 }));
      const b = await w.svc.create(w.params({ timeoutMs: 10_000, autoPause: true }));
      await w.svc.refresh(w.teamId, a.sandboxId, 1_000);
      assert.equal((await w.svc.get(w.teamId, a.sandboxId)).endAt!.getTime(), w.clock.t + 10_000, 'refresh never shortens');
      await w.svc.setTimeout(w.teamId, a.sandboxId, 5_000);
      assert.equal((await w.svc.get(w.teamId, a.sandboxId)).endAt!.getTime(), w.clock.t + 5_000, 'setTimeout shortens');
      w.clock.advance(4_999);
      assert.equal(await evictor.tick(), 0);
      w.clock.advance(2);
      assert.equal(await evictor.tick(), 1);
      assert.equal((await getSandbox(db, a.sandboxId))!.state, 'killed');
      assert.equal((await getSandbox(db, a.sandboxId))!.lastReason, 'timeout');
      w.clock.advance(5_000);
      assert.equal(await evictor.tick(), 1);
      const paused = (await getSandbox(db, b.sandboxId))!;
      assert.equal(paused.state, 'paused');
      assert.equal(paused.lastReason, 'timeout');
      // auto-pause that fails falls back to kill
      const c = await w.svc.create(w.params({ timeoutMs: 1_000, autoPause: true }));
      w.node.faults.failPause = 1;
      w.clock.advance(1_001);
      await evictor.tick();
      w.node.faults.failPause = 0;
      const killed = (await getSandbox(db, c.sandboxId))!;
      assert.equal(killed.state, 'killed');
      assert.equal(killed.lastReason, 'pause_failed');
      for (const id of [a.sandboxId, b.sandboxId, c.sandboxId]) {
        await assertLegalHistory(db, id);
        await assertLedger(db, id);
      }
    });

    test('property: random concurrent operations agree with the state table, the node and the ledger', async () => {
      // Two service instances on two connections share one node: the second stands for another
      // control-plane replica (on PGlite both share the one embedded connection).
      const second = t.concurrentHandles ? await t.open() : db;
      try {
        const op = fc.oneof(
          fc.record({ kind: fc.constant('create' as const), autoPause: fc.boolean() }),
          fc.record({ kind: fc.constantFrom('pause' as const, 'connect' as const, 'kill' as const, 'resume' as const), target: fc.nat(4), via: fc.nat(1) }),
          fc.record({ kind: fc.constant('timeout' as const), target: fc.nat(4), seconds: fc.integer({ min: 1, max: 120 }), via: fc.nat(1) }),
          fc.record({ kind: fc.constant('time' as const), seconds: fc.integer({ min: 1, max: 90 }) }),
        );
        await fc.assert(
          fc.asyncProperty(fc.array(fc.array(op, { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 8 }), fc.double({ min: 0, max: 0.3, noNaN: true }), async (steps, failRate) => {
            const node = new FakeNode();
            const clock = new ManualClock();
            const w1 = await world(db, { node, clock });
            const w2 = await world(second, { node, clock, teamId: w1.teamId });
            const evictor = new Evictor(db, w1.svc);
            const ids: string[] = [];
            for (const group of steps) {
              node.faults.failPause = failRate;
              node.faults.failResume = failRate;
              const results = await Promise.allSettled(group.map(async (o) => {
                if (o.kind === 'create') {
                  const s = await w1.svc.create(w1.params({ autoPause: o.autoPause, timeoutMs: 60_000 }));
                  ids.push(s.sandboxId);
                  return 'ok';
                }
                if (o.kind === 'time') {
                  clock.advance(o.seconds * 1000);
                  await evictor.tick();
                  return 'ok';
                }
                const id = ids[o.target % Math.max(ids.length, 1)];
                if (!id) return 'skip';
                const svc = o.via ? w2.svc : w1.svc;
                if (o.kind === 'pause') await svc.pause(w1.teamId, id, { memory: true });
                else if (o.kind === 'connect') await svc.connect(w1.teamId, id, 30_000);
                else if (o.kind === 'resume') await svc.resume(w1.teamId, id, 30_000);
                else if (o.kind === 'kill') await svc.kill(w1.teamId, id);
                else if (o.kind === 'timeout') await svc.setTimeout(w1.teamId, id, o.seconds * 1000);
                return 'ok';
              }));
              for (const r of results) {
                if (r.status === 'rejected') {
                  // every refusal is a typed, expected answer: never a crash or a stale write leaking out
                  assert.ok(['not_found', 'conflict', 'internal', 'limit'].includes(codeOf(r.reason)), `unexpected ${String(r.reason)}`);
                  if (codeOf(r.reason) === 'internal') assert.match(String(r.reason), /pause failed|restore failed|resume failed/);
                }
              }
            }
            for (const id of ids) {
              const row = (await getSandbox(db, id))!;
              assert.ok(!['starting', 'pausing', 'resuming', 'killing'].includes(row.state), `${row.state} settled`);
              assertNodeMatches(w1.node, id, row.state);
              await assertLegalHistory(db, id);
              await assertLedger(db, id);
              if (row.state === 'running') assert.ok(row.endAt && row.endAt.getTime() > clock.t - 90_000);
              if (isTerminal(row.state) || row.state === 'paused') assert.equal(row.endAt, null);
            }
          }),
          {
            numRuns: Number(process.env.LIFECYCLE_RUNS ?? 25),
            // replay a failure: LIFECYCLE_SEED=<seed> LIFECYCLE_PATH=<path>
            ...(process.env.LIFECYCLE_SEED ? { seed: Number(process.env.LIFECYCLE_SEED), path: process.env.LIFECYCLE_PATH } : {}),
            includeErrorInReport: true,
          },
        );
      } finally {
        if (second !== db) await second.close();
      }
    });
  }
});
