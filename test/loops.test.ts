// The reliability loops: the pure reconcile decision, the reconciler and the node drainer
// against a real database (PGlite and Postgres), an in-memory node and an injected clock.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import { planReconcile, type SandboxFacts } from '../src/core/reconcile.ts';
import { canTransition, isTerminal, SANDBOX_STATES, type SandboxState } from '../src/core/states.ts';
import { LifecycleService } from '../src/control-plane/lifecycle.ts';
import { ManualClock } from './helpers/manual-clock.ts';
import { NodePool } from '../src/control-plane/scheduler.ts';
import { KillSweeper } from '../src/control-plane/loops/kill-sweeper.ts';
import { Reconciler } from '../src/control-plane/loops/reconciler.ts';
import { NodeDrainer } from '../src/control-plane/loops/node-drainer.ts';
import type { Database } from '../src/store/database.ts';
import { createTeam } from '../src/store/teams.ts';
import { getNode, upsertNode } from '../src/store/nodes.ts';
import { eventsOf, getSandbox, insertSandbox, writeTransition } from '../src/store/sandboxes.ts';
import { newSandboxId } from '../src/core/ids.ts';
import type { CreateSandboxParams } from '../src/control-plane/lifecycle-types.ts';
import { FakeNode } from './helpers/fake-node.ts';
import { NodeCallError } from '../src/control-plane/node-client.ts';
import { assertLedger, assertLegalHistory, assertNodeMatches } from './helpers/lifecycle-asserts.ts';
import { forEachDatabase } from './helpers/databases.ts';

const GRACE = 15_000;
const NOW = new Date('2026-03-01T12:00:00Z');
const ago = (ms: number) => new Date(NOW.getTime() - ms);

function facts(extra: Partial<SandboxFacts>): SandboxFacts {
  return {
    row: null, containers: [], snapshot: false, busy: false, allNodesAnswered: true, answered: new Set(['n1', 'n2']), ...extra,
  };
}
const plan = (f: Partial<SandboxFacts>) => planReconcile(facts(f), NOW, { graceMs: GRACE });
const running = (nodeId = 'n1') => ({ nodeId, status: 'running' as const, startedAt: ago(60_000) });

test('plan: a live row without its container is lost; with it, nothing happens', () => {
  const row = { state: 'running' as const, nodeId: 'n1', stateChangedAt: ago(60_000) };
  assert.deepEqual(plan({ row }), [{ kind: 'lost' }]);
  assert.deepEqual(plan({ row, containers: [running()] }), []);
  // a container of it elsewhere is a stray: destroyed; the one at home stays
  assert.deepEqual(plan({ row, containers: [running(), running('n2')] }), [{ kind: 'destroy', nodeId: 'n2' }]);
  // a zombie counts as dead: its remains go and the row is lost
  assert.deepEqual(plan({ row, containers: [{ nodeId: 'n1', status: 'dead', startedAt: null }] }), [
    { kind: 'destroy', nodeId: 'n1' }, { kind: 'lost' },
  ]);
  const paused = { state: 'paused' as const, nodeId: 'n1', stateChangedAt: ago(60_000) };
  assert.deepEqual(plan({ row: paused, snapshot: true }), []);
  assert.deepEqual(plan({ row: paused }), [{ kind: 'lost' }]);
});

test('plan: containers and snapshots nobody owns are removed', () => {
  assert.deepEqual(plan({ containers: [running()] }), [{ kind: 'destroy', nodeId: 'n1' }]);
  const killed = { state: 'killed' as const, nodeId: 'n1', stateChangedAt: ago(60_000) };
  assert.deepEqual(plan({ row: killed, containers: [running()], snapshot: true }), [
    { kind: 'destroy', nodeId: 'n1' }, { kind: 'delete_snapshot' },
  ]);
});

test('plan: the grace period, a busy node and a silent node all hold decisions back', () => {
  const fresh = { state: 'running' as const, nodeId: 'n1', stateChangedAt: ago(GRACE - 1) };
  assert.deepEqual(plan({ row: fresh }), []);
  const old = { state: 'running' as const, nodeId: 'n1', stateChangedAt: ago(GRACE) };
  assert.deepEqual(plan({ row: old, busy: true }), []);
  assert.deepEqual(plan({ row: old, answered: new Set(['n2']), allNodesAnswered: false }), []);
  assert.deepEqual(plan({ row: old, containers: [{ nodeId: 'n1', status: 'creating', startedAt: null }] }), []);
  const killedJustNow = { state: 'killed' as const, nodeId: 'n1', stateChangedAt: ago(10) };
  assert.deepEqual(plan({ row: killedJustNow, containers: [running()] }), []);
});

test('plan: stuck transitions are concluded on what the nodes show', () => {
  const at = (state: SandboxState) => ({ state, nodeId: 'n1', stateChangedAt: ago(60_000) });
  const c = running();
  assert.deepEqual(plan({ row: at('starting'), containers: [c] }), [{ kind: 'conclude', to: 'running', nodeId: 'n1', startedAt: c.startedAt }]);
  assert.deepEqual(plan({ row: at('starting') }), [{ kind: 'conclude', to: 'failed' }]);
  assert.deepEqual(plan({ row: at('pausing'), containers: [c] }), [{ kind: 'conclude', to: 'running', nodeId: 'n1', startedAt: null }]);
  assert.deepEqual(plan({ row: at('pausing'), snapshot: true }), [{ kind: 'conclude', to: 'paused' }]);
  assert.deepEqual(plan({ row: at('pausing') }), [{ kind: 'lost' }]);
  // a resume may land on another node than the one the sandbox was paused on
  assert.deepEqual(plan({ row: at('resuming'), containers: [running('n2')] }), [{ kind: 'conclude', to: 'running', nodeId: 'n2', startedAt: c.startedAt }]);
  assert.deepEqual(plan({ row: at('resuming'), snapshot: true }), [{ kind: 'conclude', to: 'paused' }]);
  assert.deepEqual(plan({ row: at('resuming') }), [{ kind: 'lost' }]);
  assert.deepEqual(plan({ row: at('resuming'), containers: [running('n2')], allNodesAnswered: false }), []);
  // killing belongs to the kill sweeper
  assert.deepEqual(plan({ row: at('killing'), containers: [c] }), []);
});

test('plan property: never destroys the container a live row runs on, never acts while busy or fresh', () => {
  const arbFacts = fc.record({
    state: fc.option(fc.constantFrom(...SANDBOX_STATES), { nil: null }),
    home: fc.constantFrom('n1', 'n2'),
    ageMs: fc.integer({ min: 0, max: 3 * GRACE }),
    // a node holds at most one container of a sandbox
    containers: fc.uniqueArray(fc.record({
      nodeId: fc.constantFrom('n1', 'n2'), status: fc.constantFrom('running' as const, 'dead' as const, 'creating' as const),
    }), { maxLength: 2, selector: (c) => c.nodeId }),
    snapshot: fc.boolean(),
    busy: fc.boolean(),
    n1: fc.boolean(),
    n2: fc.boolean(),
  });
  fc.assert(fc.property(arbFacts, (a) => {
    const answered = new Set([...(a.n1 ? ['n1'] : []), ...(a.n2 ? ['n2'] : [])]);
    const f: SandboxFacts = {
      row: a.state ? { state: a.state, nodeId: a.home, stateChangedAt: ago(a.ageMs) } : null,
      containers: a.containers.map((c) => ({ ...c, startedAt: null })),
      snapshot: a.snapshot, busy: a.busy, answered, allNodesAnswered: answered.size === 2,
    };
    const actions = planReconcile(f, NOW, { graceMs: GRACE });
    if (a.busy || a.containers.some((c) => c.status === 'creating')) assert.deepEqual(actions, []);
    const live = a.state !== null && !isTerminal(a.state);
    if (live && a.ageMs < GRACE) assert.ok(actions.every((x) => x.kind === 'destroy'), 'only dead remains go while fresh');
    for (const x of actions) {
      if (x.kind === 'destroy') {
        const target = a.containers.filter((c) => c.nodeId === x.nodeId);
        const keepsRunning = target.some((c) => c.status === 'running');
        if (keepsRunning && (a.state === 'running' || a.state === 'starting' || a.state === 'pausing')) {
          assert.notEqual(x.nodeId, a.home, 'the home container of a live row is never destroyed');
        }
      }
      if (x.kind === 'lost' || x.kind === 'conclude') {
        assert.ok(live, 'only live rows are settled or lost');
        const to = x.kind === 'lost' ? 'killing' : x.to;
        assert.ok(canTransition(a.state!, to), `${a.state} -> ${to} is legal`);
        if (x.kind === 'lost' && (a.state === 'running' || a.state === 'starting' || a.state === 'pausing')) {
          assert.ok(!a.containers.some((c) => c.nodeId === a.home && c.status === 'running'), 'lost only without its container');
        }
      }
    }
  }), { numRuns: 2000 });
});

// --- the loop against a real store ------------------------------------------------------------


interface World {
  db: Database;
  node: FakeNode;
  nodes: NodePool;
  clock: ManualClock;
  svc: LifecycleService;
  reconciler: Reconciler;
  sweeper: KillSweeper;
  teamId: string;
  params: (extra?: Partial<CreateSandboxParams>) => CreateSandboxParams;
}

async function world(db: Database, opts: { nodeDownAfterMs?: number } = {}): Promise<World> {
  const clock = new ManualClock();
  const node = new FakeNode(`node-${Math.random().toString(36).slice(2, 8)}`);
  node.now = () => clock.t;
  await upsertNode(db, { id: node.nodeId, url: 'memory:', token: 'none' });
  const nodes = new NodePool();
  nodes.add(node);
  // Requests meeting a stuck transition give up fast: the loops, not the requests, conclude it.
  const svc = new LifecycleService({ db, nodes, clock, waitTimeoutMs: 100 });
  const reconciler = new Reconciler(db, svc, nodes, { graceMs: GRACE, nodeDownAfterMs: opts.nodeDownAfterMs });
  const sweeper = new KillSweeper(db, svc, 5_000);
  const teamId = (await createTeam(db, { name: 'reconcile', maxRunning: 1000 })).id;
  const params = (extra: Partial<CreateSandboxParams> = {}): CreateSandboxParams => ({
    teamId, templateId: 'base', timeoutMs: 600_000, metadata: {}, envVars: {}, autoPause: false, autoPauseMemory: true,
    autoResume: false, allowInternetAccess: true, secure: true, ...extra,
  });
  return { db, node, nodes, clock, svc, reconciler, sweeper, teamId, params };
}

/** A control plane that died mid-transition: the row moved, the node maybe acted, nobody finished. */
async function abandonTransition(w: World, id: string, to: SandboxState) {
  const row = (await getSandbox(w.db, id))!;
  const written = await writeTransition(w.db, {
    sandboxId: id, from: row.state, to, generation: row.generation, reason: 'requested', at: w.clock.now(),
  });
  assert.ok(written);
}

async function intervals(db: Database, id: string) {
  return db.query<{ opened_at: Date; closed_at: Date | null }>(
    'SELECT opened_at, closed_at FROM usage_intervals WHERE sandbox_id = $1 ORDER BY opened_at', [id]);
}

async function assertSettled(w: World, id: string, state: SandboxState, reason?: string) {
  const row = (await getSandbox(w.db, id))!;
  assert.equal(row.state, state);
  if (reason) assert.equal(row.lastReason, reason);
  await assertLegalHistory(w.db, id);
  await assertLedger(w.db, id);
  assertNodeMatches(w.node, id, state);
}

forEachDatabase('reconciler', (t) => {
  let db: Database;
  test('open the database', async () => {
    db = await t.db();
  });

  test('a running sandbox whose container vanished is killed as lost after the grace period, and billing stops', async () => {
    const w = await world(db);
    const s = await w.svc.create(w.params());
    w.node.containers.delete(s.sandboxId);
    w.clock.advance(GRACE - 1);
    assert.equal((await w.reconciler.tick()).actions.length, 0, 'spared within the grace period');
    assert.equal((await getSandbox(db, s.sandboxId))!.state, 'running');
    w.clock.advance(1);
    const report = await w.reconciler.tick();
    assert.deepEqual(report.actions.map((a) => a.action), ['lost']);
    await assertSettled(w, s.sandboxId, 'killed', 'lost');
    const [iv] = await intervals(db, s.sandboxId);
    assert.equal(iv!.closed_at!.getTime(), w.clock.t, 'the interval closed with the lost event');
    assert.equal((await w.reconciler.tick()).actions.length, 0, 'idempotent');
  });

  test('a zombie container counts as dead', async () => {
    const w = await world(db);
    const s = await w.svc.create(w.params());
    w.node.containers.get(s.sandboxId)!.dead = true;
    w.clock.advance(GRACE);
    await w.reconciler.tick();
    await assertSettled(w, s.sandboxId, 'killed', 'lost');
  });

  test('containers and snapshots without a live row are destroyed; a live one is left alone', async () => {
    const w = await world(db);
    const keep = await w.svc.create(w.params());
    const paused = await w.svc.create(w.params());
    await w.svc.pause(w.teamId, paused.sandboxId, { memory: true });
    const gone = await w.svc.create(w.params());
    await w.svc.kill(w.teamId, gone.sandboxId);
    // leftovers: a container of a killed sandbox, one nobody knows, a snapshot of a killed one
    w.node.containers.set(gone.sandboxId, { startedAt: w.clock.t });
    w.node.containers.set('iunknown0000000000000', { startedAt: w.clock.t });
    w.node.snapshots.add(gone.sandboxId);
    // and a stray container of a paused sandbox (the snapshot is the truth)
    w.node.containers.set(paused.sandboxId, { startedAt: w.clock.t });
    w.clock.advance(GRACE);
    await w.reconciler.tick();
    assert.ok(!w.node.containers.has(gone.sandboxId));
    assert.ok(!w.node.containers.has('iunknown0000000000000'));
    assert.ok(!w.node.snapshots.has(gone.sandboxId));
    await assertSettled(w, keep.sandboxId, 'running');
    await assertSettled(w, paused.sandboxId, 'paused');
    await assertSettled(w, gone.sandboxId, 'killed');
  });

  test('a create whose control plane died: running (billed from the node\'s start) or failed', async () => {
    const w = await world(db);
    // What a control plane that died mid-create leaves: the row in starting, and the container
    // started (a) or not (b).
    const rowOf = async (sandboxId: string) => db.transaction((tx) => insertSandbox(tx, {
      sandboxId, teamId: w.teamId, templateId: 'base', nodeId: w.node.nodeId, cpuCount: 1, memoryMB: 256, diskSizeMB: 1024,
      metadata: {}, envVars: {}, envdAccessToken: 'x', allowInternetAccess: true, secure: true, autoPause: false,
      autoPauseMemory: true, autoResume: false, timeoutMs: 600_000,
    }, w.clock.now()));
    const a = newSandboxId();
    const b = newSandboxId();
    await rowOf(a);
    await rowOf(b);
    const rowAt = w.clock.t;
    w.clock.advance(2_000);
    await w.node.create({ sandboxId: a, template: 'base', cpuCount: 1, memoryMB: 256, diskMB: 512, envVars: {}, metadata: {}, allowInternetAccess: true });
    const startedOnNode = w.clock.t;
    w.clock.advance(GRACE);
    const report = await w.reconciler.tick();
    assert.ok(report.actions.every((x) => x.ok), JSON.stringify(report.actions));
    await assertSettled(w, a, 'running', 'recovered');
    const [iv] = await intervals(db, a);
    assert.ok(startedOnNode > rowAt);
    assert.equal(iv!.opened_at.getTime(), startedOnNode, 'billed from when the node started it');
    assert.equal((await getSandbox(db, a))!.endAt!.getTime(), startedOnNode + 600_000, 'its timeout counts from its start');
    await assertSettled(w, b, 'failed', 'create_failed');
  });

  test('a create slower than the grace period that the reconciler settled first still succeeds', async () => {
    const w = await world(db);
    let release!: () => void;
    const create = w.node.create.bind(w.node);
    w.node.create = async (req) => {
      const started = await create(req); // the container is up ...
      await new Promise<void>((r) => (release = r)); // ... but the answer is slow to come back
      return started;
    };
    const pending = w.svc.create(w.params());
    while (!release) await new Promise((r) => setImmediate(r));
    w.clock.advance(GRACE);
    const report = await w.reconciler.tick();
    assert.deepEqual(report.actions.map((a) => `${a.action}:${a.to}`), ['conclude:running']);
    release();
    const view = await pending;
    assert.equal(view.state, 'running', 'the caller gets its running sandbox, not an error');
    const runningEvents = (await eventsOf(db, view.sandboxId)).filter((e) => e.to === 'running');
    assert.equal(runningEvents.length, 1);
    await assertSettled(w, view.sandboxId, 'running', 'recovered');
  });

  test('a pause whose outcome is unknown stays pausing, then settles on the node\'s truth', async () => {
    const w = await world(db);
    const done = await w.svc.create(w.params());
    const notDone = await w.svc.create(w.params());
    // the node paused it but the answer was lost
    w.node.faults.timeoutAfterEffect = 1;
    await assert.rejects(w.svc.pause(w.teamId, done.sandboxId, { memory: true }), /stays pausing/);
    w.node.faults.timeoutAfterEffect = 0;
    assert.equal((await getSandbox(db, done.sandboxId))!.state, 'pausing', 'not guessed');
    // the control plane died between the row and the node call
    const pausedAt = w.clock.t;
    await abandonTransition(w, notDone.sandboxId, 'pausing');
    w.clock.advance(GRACE);
    await w.reconciler.tick();
    await assertSettled(w, done.sandboxId, 'paused');
    await assertSettled(w, notDone.sandboxId, 'running', 'pause_failed');
    // it never stopped: billing is one unbroken stretch, never closed
    const ivs = await intervals(db, notDone.sandboxId);
    assert.equal(ivs.length, 1);
    assert.equal(ivs[0]!.closed_at, null);
    assert.ok(ivs[0]!.opened_at.getTime() <= pausedAt);
    const row = (await getSandbox(db, notDone.sandboxId))!;
    assert.ok(row.endAt && row.endAt.getTime() > w.clock.t, 'running again, with its time left');
  });

  test('a resume whose outcome is unknown stays resuming, then settles: running, paused or lost', async () => {
    const w = await world(db);
    const ids = [];
    for (let i = 0; i < 3; i++) {
      const s = await w.svc.create(w.params());
      await w.svc.pause(w.teamId, s.sandboxId, { memory: true });
      ids.push(s.sandboxId);
    }
    const [landed, neverCalled, lostSnap] = ids as [string, string, string];
    w.node.faults.timeoutAfterEffect = 1;
    await assert.rejects(w.svc.connect(w.teamId, landed, 60_000), /stays resuming/);
    w.node.faults.timeoutAfterEffect = 0;
    await abandonTransition(w, neverCalled, 'resuming');
    await abandonTransition(w, lostSnap, 'resuming');
    w.node.snapshots.delete(lostSnap);
    w.clock.advance(GRACE);
    await w.reconciler.tick();
    await assertSettled(w, landed, 'running', 'recovered');
    await assertSettled(w, neverCalled, 'paused', 'resume_failed');
    await assertSettled(w, lostSnap, 'killed', 'lost');
    // the settled one is usable: it pauses and resumes again
    await w.svc.pause(w.teamId, landed, { memory: true });
    assert.equal((await w.svc.connect(w.teamId, landed, 60_000)).resumed, true);
  });

  test('nothing is decided while the node is busy with a sandbox or does not answer; a node down for long loses its sandboxes', async () => {
    const w = await world(db, { nodeDownAfterMs: 60_000 });
    const s = await w.svc.create(w.params());
    w.node.containers.delete(s.sandboxId);
    w.node.busy.add(s.sandboxId);
    w.clock.advance(GRACE);
    await w.reconciler.tick();
    assert.equal((await getSandbox(db, s.sandboxId))!.state, 'running', 'busy: spared');
    w.node.busy.clear();
    w.node.faults.unreachable = true;
    await w.reconciler.tick();
    assert.equal((await getSandbox(db, s.sandboxId))!.state, 'running', 'silent node: no conclusion');
    w.clock.advance(60_000);
    const report = await w.reconciler.tick();
    assert.ok(!report.answered.includes(w.node.nodeId) || report.actions.some((a) => a.action === 'lost'));
    const row = (await getSandbox(db, s.sandboxId))!;
    assert.ok(row.state === 'killing' || row.state === 'killed', `down node: ${row.state}`);
    assert.equal(row.lastReason, 'lost');
    assert.equal((await getNode(db, w.node.nodeId))!.state, 'down');
    // billing stopped with the event even though the node cannot confirm the kill yet
    assert.equal((await intervals(db, s.sandboxId)).filter((i) => i.closed_at === null).length, 0);
    w.node.faults.unreachable = false;
    w.clock.advance(10_000);
    await w.sweeper.tick();
    assert.equal((await getSandbox(db, s.sandboxId))!.state, 'killed');
  });

  test('a pause whose answer was lost, on a node that then went down: billing ends when its snapshot says the sandbox stopped', async () => {
    const w = await world(db, { nodeDownAfterMs: 60_000 });
    const s = await w.svc.create(w.params());
    const other = new FakeNode(`other-${Math.random().toString(36).slice(2, 8)}`, Math.random, w.node.snapshots, w.node.snapshotStops);
    other.now = () => w.clock.t;
    await upsertNode(db, { id: other.nodeId, url: 'memory:', token: 'none' });
    w.nodes.add(other);
    w.clock.advance(5_000);
    const frozeAt = w.clock.t;
    w.node.faults.timeoutAfterEffect = 1;
    await assert.rejects(w.svc.pause(w.teamId, s.sandboxId, { memory: true }), /stays pausing/);
    w.node.faults.timeoutAfterEffect = 0;
    // The node goes down with its journal: only the snapshot in the shared store knows the instant.
    w.node.faults.unreachable = true;
    w.node.lastStop = async () => {
      throw new NodeCallError('unavailable', 'fake node: down', { uncertain: true, retryable: true });
    };
    w.clock.advance(60_000);
    await w.reconciler.tick();
    assert.equal((await getSandbox(db, s.sandboxId))!.state, 'paused');
    const ivs = await intervals(db, s.sandboxId);
    assert.equal(ivs.length, 1);
    assert.equal(ivs[0]!.closed_at?.getTime(), frozeAt, 'closed when the dump froze it, not a minute later when the reconciler decided');
    await assertLegalHistory(db, s.sandboxId);
    await assertLedger(db, s.sandboxId);
  });

  test('a pause whose answer was lost is not concluded while no node can say when it stopped: billed to the freeze once one can; after a minute, concluded all the same', async () => {
    const w = await world(db, { nodeDownAfterMs: 600_000 });
    const cannotSay = async (): Promise<never> => {
      throw new NodeCallError('unavailable', 'fake node: call timed out', { uncertain: true, retryable: true });
    };
    const { lastStop, snapshotStop } = { lastStop: w.node.lastStop.bind(w.node), snapshotStop: w.node.snapshotStop.bind(w.node) };
    const pausedLost = async () => {
      const s = await w.svc.create(w.params());
      w.clock.advance(5_000);
      const frozeAt = w.clock.t;
      w.node.faults.timeoutAfterEffect = 1;
      await assert.rejects(w.svc.pause(w.teamId, s.sandboxId, { memory: true }), /stays pausing/);
      w.node.faults.timeoutAfterEffect = 0;
      return { id: s.sandboxId, frozeAt };
    };
    const a = await pausedLost();
    w.node.lastStop = cannotSay;
    w.node.snapshotStop = cannotSay;
    w.clock.advance(GRACE);
    const report = await w.reconciler.tick();
    assert.equal((await getSandbox(db, a.id))!.state, 'pausing', 'not concluded while no node can say');
    assert.ok(report.actions.some((x) => x.sandboxId === a.id && !x.ok && /can say yet/.test(x.error ?? '')), JSON.stringify(report.actions));
    w.node.lastStop = lastStop;
    w.node.snapshotStop = snapshotStop;
    w.clock.advance(5_000);
    await w.reconciler.tick();
    assert.equal((await getSandbox(db, a.id))!.state, 'paused');
    assert.equal((await intervals(db, a.id))[0]!.closed_at?.getTime(), a.frozeAt, 'billed to the freeze, not to the later pass');
    // No node can say for a minute: concluded at the moment of concluding.
    const b = await pausedLost();
    w.node.lastStop = cannotSay;
    w.node.snapshotStop = cannotSay;
    w.clock.advance(GRACE);
    await w.reconciler.tick();
    assert.equal((await getSandbox(db, b.id))!.state, 'pausing');
    w.clock.advance(60_000);
    await w.reconciler.tick();
    assert.equal((await getSandbox(db, b.id))!.state, 'paused', 'concluded after a minute without an answer');
    assert.equal((await intervals(db, b.id))[0]!.closed_at?.getTime(), w.clock.t);
    for (const id of [a.id, b.id]) {
      await assertLegalHistory(db, id);
      await assertLedger(db, id);
    }
  });

  test('a node down for good: its lost sandboxes are killed through another node, which deletes their snapshots', async () => {
    const w = await world(db, { nodeDownAfterMs: 60_000 });
    const s = await w.svc.create(w.params());
    const other = new FakeNode(`other-${Math.random().toString(36).slice(2, 8)}`);
    other.now = () => w.clock.t;
    await upsertNode(db, { id: other.nodeId, url: 'memory:', token: 'none' });
    w.nodes.add(other);
    w.node.faults.unreachable = true;
    // (the fake answers kills while unreachable; a node that is down does not)
    w.node.kill = async () => {
      throw new NodeCallError('unavailable', 'fake node: down', { uncertain: true, retryable: true });
    };
    w.clock.advance(60_000);
    await w.reconciler.tick();
    const row = (await getSandbox(db, s.sandboxId))!;
    assert.equal(row.state, 'killed', 'not left in killing until the down node answers');
    assert.equal(row.lastReason, 'lost');
    await assertLegalHistory(db, s.sandboxId);
    await assertLedger(db, s.sandboxId);
    assert.ok(other.calls.some((c) => c.startsWith(`kill ${s.sandboxId}`)), `the other node was asked: ${other.calls}`);
  });

  test('property: crashes and lost answers at random moments converge in two ticks to a consistent world', async () => {
    const op = fc.record({
      kind: fc.constantFrom('create', 'pause', 'connect', 'kill', 'crash_pause', 'crash_resume', 'crash_kill', 'vanish'),
      target: fc.nat(5),
      uncertain: fc.boolean(),
    });
    await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 14 }), async (ops) => {
      const w = await world(db);
      const ids: string[] = [];
      for (const o of ops) {
        w.node.faults.timeoutAfterEffect = o.uncertain ? 0.5 : 0;
        const id = ids[o.target % Math.max(1, ids.length)];
        try {
          if (o.kind === 'create') ids.push((await w.svc.create(w.params())).sandboxId);
          else if (!id) continue;
          else if (o.kind === 'pause') await w.svc.pause(w.teamId, id, { memory: true });
          else if (o.kind === 'connect') await w.svc.connect(w.teamId, id, 60_000);
          else if (o.kind === 'kill') await w.svc.kill(w.teamId, id);
          else if (o.kind === 'vanish') w.node.containers.delete(id);
          else {
            const row = (await getSandbox(db, id))!;
            const to = o.kind === 'crash_pause' ? 'pausing' : o.kind === 'crash_resume' ? 'resuming' : 'killing';
            if (!canTransition(row.state, to)) continue;
            await abandonTransition(w, id, to);
            // half the time the node call went out before the crash
            if (o.uncertain && to === 'pausing' && w.node.containers.has(id)) await w.node.pause(id, { memory: true }).catch(() => undefined);
            if (o.uncertain && to === 'resuming' && w.node.snapshots.has(id)) await w.node.resume(id).catch(() => undefined);
          }
        } catch {
          /* refusals and unknown outcomes are expected here; convergence is what is checked */
        }
        w.clock.advance(1_000);
      }
      w.node.faults.timeoutAfterEffect = 0;
      // converge: the loops run twice after the grace period
      for (let i = 0; i < 2; i++) {
        w.clock.advance(GRACE);
        await w.reconciler.tick();
        await w.sweeper.tick();
      }
      for (const id of ids) {
        const row = (await getSandbox(db, id))!;
        assert.ok(['running', 'paused', 'killed', 'failed'].includes(row.state), `${id} settled, is ${row.state}`);
        await assertSettled(w, id, row.state);
      }
    }), { numRuns: Number(process.env.RECONCILE_RUNS ?? 30) });
  });
});

// --- the node drainer ---------------------------------------------------------------------------

forEachDatabase('node drainer', (t) => {
  let db: Database;
  test('open the database', async () => {
    db = await t.db();
  });

  async function drainWorld() {
    const w = await world(db);
    const nodes = w.svc['nodes'] as NodePool;
    return { ...w, nodes, drainer: new NodeDrainer(db, w.svc, nodes) };
  }

  test('policy pause: running sandboxes are paused with reason drain, new starts go nowhere, the node comes back', async () => {
    const w = await drainWorld();
    const a = await w.svc.create(w.params());
    const b = await w.svc.create(w.params());
    const paused = await w.svc.create(w.params());
    await w.svc.pause(w.teamId, paused.sandboxId, { memory: true });
    // Draining, but still finishing admitted starts: no plan yet, nothing is touched.
    w.node.faults.draining = true;
    let r = await w.drainer.tick();
    assert.deepEqual(r.draining, [w.node.nodeId]);
    assert.deepEqual(r.paused, []);
    assert.equal((await getNode(db, w.node.nodeId))!.state, 'draining');
    await assert.rejects(w.svc.create(w.params()), (e: any) => e.code === 'unavailable' && e.retryable === true);
    w.node.drainPlan = { policy: 'pause', deadline: new Date(w.clock.t + 60_000).toISOString() };
    r = await w.drainer.tick();
    assert.deepEqual(r.paused.sort(), [a.sandboxId, b.sandboxId].sort());
    for (const id of [a.sandboxId, b.sandboxId]) {
      await assertSettled(w, id, 'paused', 'drain');
      const last = (await eventsOf(db, id)).slice(-2).map((e) => `${e.to}:${e.reason}`);
      assert.deepEqual(last, ['pausing:drain', 'paused:drain']);
    }
    await assertSettled(w, paused.sandboxId, 'paused', 'requested');
    assert.equal((await w.drainer.tick()).paused.length, 0, 'idempotent');
    // Restarted: takes starts again, and the drain's sandboxes are resumed by the drainer (the
    // user's own paused one stays paused).
    w.node.faults.draining = false;
    r = await w.drainer.tick();
    assert.equal((await getNode(db, w.node.nodeId))!.state, 'ready');
    assert.deepEqual(r.moved.sort(), [a.sandboxId, b.sandboxId].sort());
    for (const id of [a.sandboxId, b.sandboxId]) await assertSettled(w, id, 'running');
    await assertSettled(w, paused.sandboxId, 'paused', 'requested');
    assert.equal((await w.svc.connect(w.teamId, a.sandboxId, 60_000)).resumed, false);
    await w.svc.create(w.params());
  });

  test('policy wait leaves sandboxes running until the deadline; then they are killed with reason drain', async () => {
    const w = await drainWorld();
    const a = await w.svc.create(w.params());
    w.node.faults.draining = true;
    w.node.drainPlan = { policy: 'wait', deadline: new Date(w.clock.t + 30_000).toISOString() };
    assert.deepEqual((await w.drainer.tick()).killed, []);
    await assertSettled(w, a.sandboxId, 'running');
    w.clock.advance(30_000);
    assert.deepEqual((await w.drainer.tick()).killed, [a.sandboxId]);
    await assertSettled(w, a.sandboxId, 'killed', 'drain');
  });

  test('a pause that fails during the drain is reported and retried; the deadline kills what is left', async () => {
    const w = await drainWorld();
    const a = await w.svc.create(w.params());
    w.node.faults.draining = true;
    w.node.faults.failPause = 1;
    w.node.drainPlan = { policy: 'pause', deadline: new Date(w.clock.t + 10_000).toISOString() };
    const r = await w.drainer.tick();
    assert.equal(r.failed.length, 1);
    assert.match(r.failed[0]!.error, /pause failed/);
    await assertSettled(w, a.sandboxId, 'running', 'pause_failed');
    w.clock.advance(10_000);
    assert.deepEqual((await w.drainer.tick()).killed, [a.sandboxId]);
    await assertSettled(w, a.sandboxId, 'killed', 'drain');
  });
});
