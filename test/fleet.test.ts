// The fleet on the control plane's side: placement, the join protocol, the node registry and
// drains that move sandboxes, against real PGlite and Postgres with in-memory nodes.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import fc from 'fast-check';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { LifecycleService } from '../src/control-plane/lifecycle.ts';
import type { CreateSandboxParams } from '../src/control-plane/lifecycle-types.ts';
import { NodeDrainer } from '../src/control-plane/loops/node-drainer.ts';
import { NodeRegistry } from '../src/control-plane/loops/node-registry.ts';
import { DEFAULT_CPU_OVERCOMMIT, NodePool, type NodeInfo } from '../src/control-plane/scheduler.ts';
import { cpuOvercommitFromEnv, nodeTimingsFromEnv } from '../src/cli/server.ts';
import { DEFAULT_MAX_SANDBOXES, runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { createAdminKey } from '../src/store/admin-keys.ts';
import { authenticateKey } from '../src/store/credentials.ts';
import type { Database } from '../src/store/database.ts';
import { registerJoinedNode, setCordoned, upsertNode } from '../src/store/nodes.ts';
import { getSandbox } from '../src/store/sandboxes.ts';
import { KillSweeper } from '../src/control-plane/loops/kill-sweeper.ts';
import { NodeCallError } from '../src/control-plane/node-client.ts';
import { createTeam, createTeamWithKey } from '../src/store/teams.ts';
import { apiCaller, assertApiError } from './helpers/api-inject.ts';
import { forEachDatabase } from './helpers/databases.ts';
import { FakeNode } from './helpers/fake-node.ts';
import { assertLedger, assertLegalHistory } from './helpers/lifecycle-asserts.ts';
import { ManualClock } from './helpers/manual-clock.ts';

const info = (o: Partial<NodeInfo> & { memoryMB?: number; used?: number; sandboxes?: number; max?: number; cpus?: number; cpuUsed?: number } = {}): NodeInfo => ({
  condition: o.condition ?? 'ready',
  capacity: { cpuCount: o.cpus ?? 4, memoryMB: o.memoryMB ?? 4096, diskMB: 0, maxSandboxes: o.max ?? 0 },
  templates: o.templates ?? [],
  load: { sandboxes: o.sandboxes ?? 0, cpuCount: o.cpuUsed ?? 0, memoryMB: o.used ?? 0 },
});

describe('placement', () => {
  test('only ready nodes with the template and room get a start; draining and unhealthy ones never', () => {
    const pool = new NodePool(8);
    const nodes = ['full', 'draining', 'unhealthy', 'down', 'other-template', 'at-max', 'good'].map((id) => new FakeNode(id));
    const [full, draining, unhealthy, down, otherTemplate, atMax, good] = nodes;
    pool.add(full!, info({ memoryMB: 1024, used: 900 }));
    pool.add(draining!, info({ condition: 'draining' }));
    pool.add(unhealthy!, info({ condition: 'unhealthy' }));
    pool.add(down!, info({ condition: 'down' }));
    pool.add(otherTemplate!, info({ templates: ['python'] }));
    pool.add(atMax!, info({ max: 2, sandboxes: 2 }));
    pool.add(good!, info({ templates: ['base', 'python'], memoryMB: 65536 }));
    for (let i = 0; i < 20; i++) {
      const n = pool.pick(new Set(), { template: 'base', memoryMB: 512 });
      assert.equal(n.nodeId, 'good');
      pool.done(n.nodeId);
    }
    assert.throws(() => pool.pick(new Set(['good']), { template: 'base', memoryMB: 512 }), /no node can take a sandbox of template "base"/);
  });

  test('free CPU counts: a node with free memory but no vCPUs left (past its overcommit) is skipped; of two, the one with more CPU free wins', () => {
    const pool = new NodePool(8, Math.random, 4);
    // 2 CPUs x 4 = 8 vCPUs: 7 asked already, a 2-vCPU start does not fit; memory is plenty.
    pool.add(new FakeNode('cpu-full'), info({ cpus: 2, cpuUsed: 7, memoryMB: 1 << 20 }));
    pool.add(new FakeNode('roomy'), info({ cpus: 4, cpuUsed: 0, memoryMB: 4096, used: 2048 }));
    for (let i = 0; i < 5; i++) {
      const n = pool.pick(new Set(), { cpuCount: 2, memoryMB: 256 });
      assert.equal(n.nodeId, 'roomy');
      pool.done(n.nodeId);
    }
    assert.throws(() => pool.pick(new Set(['roomy']), { cpuCount: 2, memoryMB: 256 }), /no node can take a sandbox/);
    assert.equal(pool.pick(new Set(['roomy']), { cpuCount: 1, memoryMB: 256 }).nodeId, 'cpu-full', 'a 1-vCPU start still fits it');
    // Same free memory, different free CPU: both drawn, the CPU-freer one is chosen either way round.
    for (const draws of [[0, 0], [0.9, 0]]) {
      let k = 0;
      const two = new NodePool(8, () => draws[k++]!, 4);
      two.add(new FakeNode('busy-cpu'), info({ cpus: 4, cpuUsed: 12, used: 1024 }));
      two.add(new FakeNode('idle-cpu'), info({ cpus: 4, cpuUsed: 2, used: 1024 }));
      assert.equal(two.pick(new Set(), { cpuCount: 1, memoryMB: 256 }).nodeId, 'idle-cpu');
    }
    assert.throws(() => new NodePool(8, Math.random, 0), /CPU overcommit must be a positive number/);
  });

  test('a node with its start queue full is passed over while another is not, never refused outright', () => {
    const pool = new NodePool(2);
    pool.add(new FakeNode('a'), info({ memoryMB: 1 << 20 }));
    pool.add(new FakeNode('b'), info({ memoryMB: 1 << 20 }));
    const first = [pool.pick().nodeId, pool.pick().nodeId, pool.pick().nodeId, pool.pick().nodeId].sort();
    assert.deepEqual(first, ['a', 'a', 'b', 'b'], 'two each before either takes a third');
    assert.ok(['a', 'b'].includes(pool.pick().nodeId), 'all full: still placed');
    for (let i = 0; i < 3; i++) pool.done('a');
    assert.equal(pool.pick().nodeId, 'a', 'the node with room in its queue goes first');
  });

  test('the better of two: never an ineligible node, never past a node\'s memory, the freer one when two are drawn', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ memoryMB: fc.integer({ min: 512, max: 8192 }), used: fc.integer({ min: 0, max: 8192 }), ready: fc.boolean() }), { minLength: 1, maxLength: 6 }),
        fc.array(fc.double({ min: 0, max: 0.999, noNaN: true }), { minLength: 2, maxLength: 2 }),
        (spec, draws) => {
          let k = 0;
          const pool = new NodePool(100, () => draws[k++ % draws.length]!);
          spec.forEach((s, i) => pool.add(new FakeNode(`n${i}`), info({ memoryMB: s.memoryMB, used: s.used, condition: s.ready ? 'ready' : 'unhealthy' })));
          const eligible = spec.map((s, i) => ({ ...s, id: `n${i}` })).filter((s) => s.ready && s.used + 256 <= s.memoryMB);
          if (eligible.length === 0) {
            assert.throws(() => pool.pick(new Set(), { memoryMB: 256 }));
            return;
          }
          const picked = pool.pick(new Set(), { memoryMB: 256 }).nodeId;
          const chosen = eligible.find((e) => e.id === picked);
          assert.ok(chosen, `picked an eligible node (${picked})`);
          if (eligible.length > 1) {
            // it is at least as free as the other of the two drawn
            const first = eligible[Math.floor(draws[0]! * eligible.length)]!;
            const rest = eligible.filter((e) => e !== first);
            const second = rest[Math.floor(draws[1]! * rest.length)]!;
            const free = (e: typeof first) => 1 - e.used / e.memoryMB;
            assert.ok([first.id, second.id].includes(picked));
            assert.ok(free(chosen) >= Math.min(free(first), free(second)));
            assert.equal(free(chosen), Math.max(free(first), free(second)));
          }
        },
      ),
    );
  });
});

const report = { url: 'http://127.0.0.1:1', cpuCount: 2, memoryMB: 4096, diskMB: 10_000, maxSandboxes: 50, templates: ['base'], version: 't' };

forEachDatabase('fleet', (t) => {
  async function api(db: Database) {
    const admin = await createAdminKey(db, { name: 'fleet' });
    let app!: FastifyInstance;
    app = buildApiServer({
      lifecycle: {} as never, db, envdVersion: '0.6.1', authenticate: (k) => authenticateKey(db, k),
      fleet: { heartbeatMs: 2000, unhealthyAfterMs: 10_000 },
    });
    await app.ready();
    const call = apiCaller(() => app, () => admin.key);
    const joinToken = async (ttlSeconds?: number) => (await call({ method: 'POST', url: '/nestbox/v1/nodes/join-tokens', body: ttlSeconds ? { ttlSeconds } : {} })).json;
    const join = (token: string, nodeId: string) =>
      call({ method: 'POST', url: '/nestbox/v1/nodes/join', key: null, body: { joinToken: token, nodeId, nodeToken: 'n'.repeat(32), ...report } });
    const heartbeat = (nodeId: string, credential: string) =>
      app.inject({ method: 'POST', url: `/nestbox/v1/nodes/${nodeId}/heartbeat`, headers: { authorization: `Bearer ${credential}` }, payload: report })
        .then((r) => ({ status: r.statusCode, json: JSON.parse(r.body) }));
    return { app, call, joinToken, join, heartbeat };
  }

  test('a node joins with a join token, gets its own credential, heartbeats with it, shows ready', async () => {
    const db = await t.db();
    const f = await api(db);
    const tok = await f.joinToken();
    assert.match(tok.token, /^nbjoin_[0-9a-f]{40}$/);
    const joined = await f.join(tok.token, 'node-a');
    assert.equal(joined.status, 201, JSON.stringify(joined.json));
    assert.match(joined.json.credential, /^nbnode_[0-9a-f]{40}$/);
    assert.equal((await f.heartbeat('node-a', joined.json.credential)).status, 200);
    const listed = (await f.call({ url: '/nestbox/v1/nodes' })).json.find((n: any) => n.id === 'node-a');
    assert.equal(listed.state, 'ready');
    assert.deepEqual([listed.joined, listed.templates, listed.memoryMB], [true, ['base'], 4096]);
    // Silent past the limit: unhealthy (no placements), and ready again once heard.
    await db.query("UPDATE nodes SET last_seen_at = now() - interval '1 minute' WHERE id = 'node-a'");
    assert.equal((await f.call({ url: '/nestbox/v1/nodes' })).json.find((n: any) => n.id === 'node-a').state, 'unhealthy');
    await f.app.close();
  });

  test('wrong, expired and revoked join tokens are refused; so is a stolen credential of a removed node', async () => {
    const db = await t.db();
    const f = await api(db);
    assertApiError(await f.join(`nbjoin_${'0'.repeat(40)}`, 'node-x'), 401, /invalid join token.*nestbox nodes join-token/);
    assertApiError(await f.join('not-even-a-token', 'node-x'), 401);
    const expired = await f.joinToken(60);
    await db.query("UPDATE node_join_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", [expired.id]);
    assertApiError(await f.join(expired.token, 'node-x'), 401);
    const revoked = await f.joinToken();
    assert.equal((await f.call({ method: 'DELETE', url: `/nestbox/v1/nodes/join-tokens/${revoked.id}` })).status, 204);
    assertApiError(await f.join(revoked.token, 'node-x'), 401);
    assert.equal((await f.call({ url: '/nestbox/v1/nodes' })).json.some((n: any) => n.id === 'node-x'), false, 'nothing registered');

    const good = await f.joinToken();
    const a = (await f.join(good.token, 'node-r')).json.credential;
    const b = (await f.join(good.token, 'node-s')).json.credential;
    assert.equal((await f.heartbeat('node-s', a)).status, 401, "a node's credential is its own");
    assert.equal((await f.call({ method: 'DELETE', url: '/nestbox/v1/nodes/node-r' })).status, 204);
    assert.equal((await f.heartbeat('node-r', a)).status, 401, "a removed node's credential is void");
    assert.equal((await f.call({ url: '/nestbox/v1/nodes' })).json.some((n: any) => n.id === 'node-r'), false);
    assert.equal((await f.heartbeat('node-s', b)).status, 200);
    // Joining again (a valid token) brings it back with a new credential; the old stays void.
    const again = (await f.join(good.token, 'node-r')).json.credential;
    assert.equal((await f.heartbeat('node-r', again)).status, 200);
    assert.equal((await f.heartbeat('node-r', a)).status, 401);
    assertApiError(await f.call({ method: 'POST', url: '/nestbox/v1/nodes/nope/drain' }), 404, /node "nope" not found/);
    await f.app.close();
  });

  async function fleet(db: Database) {
    const clock = new ManualClock();
    const made = new Map<string, FakeNode>();
    const store = new Set<string>(); // the fleet's shared snapshot store
    await db.query('UPDATE nodes SET removed_at = now() WHERE removed_at IS NULL'); // earlier tests' nodes
    const pool = new NodePool();
    const registry = new NodeRegistry(db, pool, {
      unhealthyAfterMs: 10_000,
      makeClient: (n) => {
        const node = made.get(n.id) ?? new FakeNode(n.id, Math.random, store);
        node.now = () => clock.t;
        made.set(n.id, node);
        return node;
      },
    });
    const svc = new LifecycleService({ db, nodes: pool, clock, waitTimeoutMs: 100 });
    const teamId = (await createTeam(db, { name: `fleet-${Math.random()}`, maxRunning: 1000 })).id;
    const params: CreateSandboxParams = {
      teamId, templateId: 'base', timeoutMs: 600_000, metadata: {}, envVars: {}, autoPause: false, autoPauseMemory: true,
      autoResume: false, allowInternetAccess: true, secure: true,
    };
    const ids = [`a${Math.random().toString(36).slice(2, 8)}`, `b${Math.random().toString(36).slice(2, 8)}`];
    for (const id of ids) {
      await registerJoinedNode(db, { id, token: 't', credentialHash: `h-${id}`, ...report, cpuCount: 1024, memoryMB: 1 << 20, maxSandboxes: 1000 });
    }
    await registry.tick();
    const [a, b] = ids.map((id) => made.get(id)!);
    return { clock, pool, registry, svc, params, a: a!, b: b!, drainer: new NodeDrainer(db, svc, pool) };
  }

  test('the registry brings joined nodes into placement; an unhealthy node gets none; a refused start goes elsewhere once', async () => {
    const db = await t.db();
    const f = await fleet(db);
    const placed = new Map<string, number>();
    for (let i = 0; i < 20; i++) {
      const s = await f.svc.create(f.params);
      placed.set(s.nodeId!, (placed.get(s.nodeId!) ?? 0) + 1);
    }
    assert.ok((placed.get(f.a.nodeId) ?? 0) > 0 && (placed.get(f.b.nodeId) ?? 0) > 0, `both nodes take sandboxes: ${JSON.stringify([...placed])}`);
    // b stops heartbeating: after the limit it is unhealthy and gets nothing.
    await db.query("UPDATE nodes SET last_seen_at = now() - interval '1 minute' WHERE id = $1", [f.b.nodeId]);
    await f.registry.tick();
    const bBefore = f.b.calls.filter((c) => c.startsWith('create')).length;
    for (let i = 0; i < 5; i++) assert.equal((await f.svc.create(f.params)).nodeId, f.a.nodeId);
    assert.equal(f.b.calls.filter((c) => c.startsWith('create')).length, bBefore);
    // b is back; a refuses starts (draining): every start lands on b, after one refusal each at most.
    await db.query('UPDATE nodes SET last_seen_at = now() WHERE id = $1', [f.b.nodeId]);
    await f.registry.tick();
    f.a.faults.draining = true;
    const aCalls = f.a.calls.length;
    const bCreates = f.b.calls.filter((c) => c.startsWith('create')).length;
    for (let i = 0; i < 6; i++) assert.equal((await f.svc.create(f.params)).nodeId, f.b.nodeId);
    assert.ok(f.a.calls.length - aCalls <= 6, 'a refused each start at most once');
    assert.equal(f.b.calls.filter((c) => c.startsWith('create')).length - bCreates, 6, 'exactly one start on b each');
  });

  /** Forces the next start on `first`: the other node is held back for the first pick only. */
  function startOn(f: Awaited<ReturnType<typeof fleet>>, first: FakeNode, other: FakeNode) {
    const pick = f.pool.pick.bind(f.pool);
    let picks = 0;
    f.pool.pick = (exclude, want) => pick(picks++ === 0 ? new Set([...(exclude ?? []), other.nodeId]) : exclude, want);
    return () => { f.pool.pick = pick; };
  }
  const createsOf = (n: FakeNode, id?: string) => n.calls.filter((c) => c.startsWith('create') && (!id || c === `create ${id}`)).length;
  const usage = (db: Database, id: string) => db.query<{ node_id: string | null }>('SELECT * FROM usage_intervals WHERE sandbox_id = $1', [id]);

  test('a start the first node fails is placed on another node exactly once; the sandbox runs there', async () => {
    const db = await t.db();
    const f = await fleet(db);
    f.a.faults.failCreate = 1;
    const restore = startOn(f, f.a, f.b);
    const s = await f.svc.create(f.params);
    restore();
    assert.equal(s.nodeId, f.b.nodeId);
    assert.deepEqual([createsOf(f.a, s.sandboxId), createsOf(f.b, s.sandboxId)], [1, 1], 'once on a, once on b');
    assert.deepEqual([f.a.containers.has(s.sandboxId), f.b.containers.has(s.sandboxId)], [false, true]);
    const row = (await getSandbox(db, s.sandboxId))!;
    assert.deepEqual([row.state, row.nodeId], ['running', f.b.nodeId]);
    const events = await assertLegalHistory(db, s.sandboxId);
    assert.deepEqual(events.map((e) => `${e.to}:${e.reason}`), ['starting:requested', 'running:created']);
    assert.equal((await usage(db, s.sandboxId)).length, 1, 'one usage interval: the start on b');
    await assertLedger(db, s.sandboxId);
  });

  test('a start both nodes fail fails with both causes; the row ends failed and no node holds a container', async () => {
    const db = await t.db();
    const f = await fleet(db);
    f.a.faults.failCreate = 1;
    f.b.faults.failCreate = 1;
    const before = [createsOf(f.a), createsOf(f.b)];
    await assert.rejects(f.svc.create(f.params), (e: any) => {
      assert.equal(e.code, 'internal');
      assert.match(e.message, /^create failed on node [ab]\w+ \(fake node: create failed\) and again on node [ab]\w+ \(fake node: create failed\)$/);
      return true;
    });
    assert.deepEqual([createsOf(f.a) - before[0]!, createsOf(f.b) - before[1]!], [1, 1], 'each node asked once, no third try');
    const rows = await db.query<{ id: string; state: string; last_reason: string }>('SELECT id, state, last_reason FROM sandboxes WHERE team_id = $1', [f.params.teamId]);
    assert.deepEqual(rows.map((r) => `${r.state}:${r.last_reason}`), ['failed:create_failed']);
    await assertLegalHistory(db, rows[0]!.id);
    assert.equal((await usage(db, rows[0]!.id)).length, 0, 'never billed');
    assert.equal(f.a.containers.size + f.b.containers.size, 0);
    // Through the API: E2B's error shape, with both causes (not a bare "internal error").
    const { apiKey } = await createTeamWithKey(db, { name: `fleet-api-${Math.random()}` });
    const app = buildApiServer({ lifecycle: f.svc, db, envdVersion: '0.6.1', authenticate: (k) => authenticateKey(db, k) });
    await app.ready();
    const r = await apiCaller(() => app, () => apiKey.key)({ method: 'POST', url: '/sandboxes', body: { templateID: 'base' } });
    assertApiError(r, 500, /^create failed on node \w+ \(fake node: create failed\) and again on node \w+ \(fake node: create failed\)$/);
    await app.close();
  });

  test('a start whose answer was lost is placed again only after its node confirmed the kill', async () => {
    const db = await t.db();
    const f = await fleet(db);
    // a starts the container, then its answer is lost (a 500 or a timeout).
    const create = f.a.create.bind(f.a);
    f.a.create = async (req) => {
      await create(req);
      throw new NodeCallError('internal', 'fake node: create answer lost', { uncertain: true });
    };
    const seenOnB: string[] = [];
    const createOnB = f.b.create.bind(f.b);
    f.b.create = async (req) => {
      seenOnB.push(`a holds it: ${f.a.containers.has(req.sandboxId)}; a was asked: ${f.a.calls.filter((c) => c.endsWith(req.sandboxId)).join(', ')}`);
      return createOnB(req);
    };
    let restore = startOn(f, f.a, f.b);
    const s = await f.svc.create(f.params);
    restore();
    assert.deepEqual(seenOnB, [`a holds it: false; a was asked: create ${s.sandboxId}, kill ${s.sandboxId}`]);
    assert.equal(s.nodeId, f.b.nodeId);
    assert.deepEqual([f.a.containers.has(s.sandboxId), f.b.containers.has(s.sandboxId)], [false, true]);
    await assertLegalHistory(db, s.sandboxId);
    assert.equal((await usage(db, s.sandboxId)).length, 1);
    await assertLedger(db, s.sandboxId);

    // The kill is not confirmed: b is never asked, and the create fails as an uncertain one does
    // (its kill intent stored, for the sweeper to finish on a).
    f.a.kill = async () => {
      throw new NodeCallError('unavailable', 'fake node: kill timed out', { uncertain: true, retryable: true });
    };
    seenOnB.length = 0;
    restore = startOn(f, f.a, f.b);
    await assert.rejects(f.svc.create(f.params), /create answer lost/);
    restore();
    assert.deepEqual(seenOnB, [], 'b never asked while a may still hold it');
    const [stuck] = await db.query<{ id: string; state: string; node_id: string }>(
      "SELECT id, state, node_id FROM sandboxes WHERE team_id = $1 AND id <> $2", [f.params.teamId, s.sandboxId]);
    assert.deepEqual([stuck!.state, stuck!.node_id], ['killing', f.a.nodeId]);
    await assertLegalHistory(db, stuck!.id);
  });

  test('a failed start elsewhere that times out too is killed on the node it timed out on', async () => {
    const db = await t.db();
    const f = await fleet(db);
    f.a.faults.failCreate = 1;
    f.b.faults.timeoutAfterEffect = 1; // b starts it, the answer is lost (its kill answers the same way)
    const restore = startOn(f, f.a, f.b);
    await assert.rejects(f.svc.create(f.params), /create failed on node \w+ \(fake node: create failed\) and again on node \w+ \(fake node: create timed out\)/);
    restore();
    const [row] = await db.query<{ id: string; state: string; node_id: string }>('SELECT id, state, node_id FROM sandboxes WHERE team_id = $1', [f.params.teamId]);
    assert.equal(row!.node_id, f.b.nodeId, 'the kill intent names b, where the container may be');
    assert.ok(f.b.calls.includes(`kill ${row!.id}`), `b was asked to kill it: ${f.b.calls}`);
    assert.ok(['killing', 'killed'].includes(row!.state));
    f.b.faults.timeoutAfterEffect = 0;
    f.clock.advance(60_000);
    await new KillSweeper(db, f.svc).tick();
    assert.equal((await getSandbox(db, row!.id))!.state, 'killed');
    assert.equal(f.a.containers.size + f.b.containers.size, 0);
    await assertLegalHistory(db, row!.id);
    assert.equal((await usage(db, row!.id)).length, 0);
  });

  test('a resume the first node fails is placed on another node once', async () => {
    const db = await t.db();
    const f = await fleet(db);
    const s = await f.svc.create(f.params);
    await f.svc.pause(f.params.teamId, s.sandboxId, { memory: true });
    const [first, other] = s.nodeId === f.a.nodeId ? [f.a, f.b] : [f.b, f.a];
    first.faults.failResume = 1;
    const restore = startOn(f, first, other);
    const { sandbox } = await f.svc.connect(f.params.teamId, s.sandboxId, 60_000);
    restore();
    assert.equal(sandbox.nodeId, other.nodeId);
    assert.deepEqual([first.calls.filter((c) => c === `resume ${s.sandboxId}`).length, other.calls.filter((c) => c === `resume ${s.sandboxId}`).length], [1, 1]);
    assert.ok(other.containers.has(s.sandboxId) && !first.containers.has(s.sandboxId));
    await assertLegalHistory(db, s.sandboxId);
    await assertLedger(db, s.sandboxId);
  });

  test("a configured node's sandbox limit (nestbox up's NESTBOX_MAX_SANDBOXES) is registered and kept to", async () => {
    const db = await t.db();
    await db.query('UPDATE nodes SET removed_at = now() WHERE removed_at IS NULL');
    const pool = new NodePool();
    const node = new FakeNode(`up-${Math.random().toString(36).slice(2, 8)}`);
    await upsertNode(db, { id: node.nodeId, url: 'in-process:', token: '-', maxSandboxes: 2 });
    pool.add(node);
    const registry = new NodeRegistry(db, pool, { unhealthyAfterMs: 10_000 });
    await registry.tick();
    const svc = new LifecycleService({ db, nodes: pool, waitTimeoutMs: 100 });
    const teamId = (await createTeam(db, { name: `limit-${Math.random()}`, maxRunning: 100 })).id;
    const params: CreateSandboxParams = {
      teamId, templateId: 'base', timeoutMs: 600_000, metadata: {}, envVars: {}, autoPause: false, autoPauseMemory: true,
      autoResume: false, allowInternetAccess: true, secure: true,
    };
    await svc.create(params);
    await svc.create(params);
    await assert.rejects(svc.create(params), (e: any) => e.code === 'unavailable' && e.retryable === true && /no node can take a sandbox/.test(e.message));
    assert.equal(node.containers.size, 2);
    // Registered again without a limit (a restart of an older setup): the limit stays.
    await upsertNode(db, { id: node.nodeId, url: 'in-process:', token: '-' });
    await registry.tick();
    await assert.rejects(svc.create(params), /no node can take a sandbox/);
    assert.equal((await db.query<{ max_sandboxes: number }>('SELECT max_sandboxes FROM nodes WHERE id = $1', [node.nodeId]))[0]!.max_sandboxes, 2);
  });

  test("the operator's drain moves running sandboxes to another node with their events; undrain reopens", async () => {
    const db = await t.db();
    const f = await fleet(db);
    f.pool.setDraining(f.b.nodeId, true); // place on a first
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await f.svc.create(f.params)).sandboxId);
    f.pool.setDraining(f.b.nodeId, false);
    assert.ok(ids.every((id) => f.a.containers.has(id)));
    await setCordoned(db, f.a.nodeId, true);
    await f.registry.tick();
    const r = await f.drainer.tick();
    assert.deepEqual(r.failed, []);
    assert.deepEqual([...r.moved].sort(), [...ids].sort());
    for (const id of ids) {
      const row = (await getSandbox(db, id))!;
      assert.deepEqual([row.state, row.nodeId], ['running', f.b.nodeId]);
      assert.ok(f.b.containers.has(id) && !f.a.containers.has(id));
      const events = await db.query<{ to_state: string; reason: string }>('SELECT to_state, reason FROM lifecycle_events WHERE sandbox_id = $1 ORDER BY seq', [id]);
      assert.deepEqual(events.map((e) => `${e.to_state}:${e.reason}`).slice(-4), ['pausing:drain', 'paused:drain', 'resuming:drain', 'running:resumed']);
    }
    // Drained: new starts go to b only. Undrained: a takes them again.
    for (let i = 0; i < 4; i++) assert.equal((await f.svc.create(f.params)).nodeId, f.b.nodeId);
    await setCordoned(db, f.a.nodeId, false);
    await f.registry.tick();
    await f.drainer.tick();
    f.pool.setDraining(f.b.nodeId, true);
    assert.equal((await f.svc.create(f.params)).nodeId, f.a.nodeId);
  });

  test('sandboxes a drain paused while no other node could take them are moved on a later tick, once one can', async () => {
    const db = await t.db();
    const f = await fleet(db);
    f.pool.setDraining(f.b.nodeId, true);
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await f.svc.create(f.params)).sandboxId);
    // b is unhealthy (silent) when a is drained: the drain pauses a's sandboxes, and they wait.
    f.pool.setDraining(f.b.nodeId, false);
    await db.query("UPDATE nodes SET last_seen_at = now() - interval '1 minute' WHERE id = $1", [f.b.nodeId]);
    await setCordoned(db, f.a.nodeId, true);
    await f.registry.tick();
    const first = await f.drainer.tick();
    assert.deepEqual([first.moved, first.failed], [[], []]);
    for (const id of ids) assert.equal((await getSandbox(db, id))!.state, 'paused');
    // b is back: the next tick moves them, with the drain's events.
    await db.query('UPDATE nodes SET last_seen_at = now() WHERE id = $1', [f.b.nodeId]);
    await f.registry.tick();
    const second = await f.drainer.tick();
    assert.deepEqual([...second.moved].sort(), [...ids].sort());
    for (const id of ids) {
      const row = (await getSandbox(db, id))!;
      assert.deepEqual([row.state, row.nodeId], ['running', f.b.nodeId]);
      const events = await db.query<{ to_state: string; reason: string }>('SELECT to_state, reason FROM lifecycle_events WHERE sandbox_id = $1 ORDER BY seq', [id]);
      assert.deepEqual(events.map((e) => `${e.to_state}:${e.reason}`).slice(-4), ['pausing:drain', 'paused:drain', 'resuming:drain', 'running:resumed']);
    }
    // A sandbox its user paused is not the drain's to resume.
    const mine = (await f.svc.create(f.params)).sandboxId;
    await f.svc.pause(f.params.teamId, mine, { memory: true });
    await f.drainer.tick();
    assert.equal((await getSandbox(db, mine))!.state, 'paused');
  });
});

test('nestbox server: node timings from the environment, checked', () => {
  assert.deepEqual(nodeTimingsFromEnv({}), {});
  assert.deepEqual(nodeTimingsFromEnv({ NESTBOX_NODE_HEARTBEAT_MS: '500', NESTBOX_NODE_UNHEALTHY_AFTER_MS: '2000', NESTBOX_NODE_DOWN_AFTER_MS: '5000' }),
    { heartbeatMs: 500, unhealthyAfterMs: 2000, nodeDownAfterMs: 5000 });
  assert.throws(() => nodeTimingsFromEnv({ NESTBOX_NODE_DOWN_AFTER_MS: '5s' }), /NESTBOX_NODE_DOWN_AFTER_MS must be a positive number/);
  assert.throws(() => nodeTimingsFromEnv({ NESTBOX_NODE_HEARTBEAT_MS: '-1' }), /positive/);
  assert.throws(() => nodeTimingsFromEnv({ NESTBOX_NODE_UNHEALTHY_AFTER_MS: '1000' }), /longer than the heartbeat period/);
});

test("a node's sandbox limit: --max-sandboxes over NESTBOX_MAX_SANDBOXES over 200, a positive whole number", () => {
  assert.equal(runtimeConfigFromEnv({}).maxSandboxes, DEFAULT_MAX_SANDBOXES);
  assert.equal(DEFAULT_MAX_SANDBOXES, 200);
  assert.equal(runtimeConfigFromEnv({ NESTBOX_MAX_SANDBOXES: '35' }).maxSandboxes, 35);
  assert.equal(runtimeConfigFromEnv({ NESTBOX_MAX_SANDBOXES: '35' }, { maxSandboxes: '7' }).maxSandboxes, 7);
  for (const bad of ['0', '-3', '2.5', 'many', '1e3', '100001', ' ']) {
    assert.throws(() => runtimeConfigFromEnv({ NESTBOX_MAX_SANDBOXES: bad }), new RegExp(`^Error: NESTBOX_MAX_SANDBOXES must be a whole number of sandboxes from 1 to 100000 .*not "${bad}"`));
    assert.throws(() => runtimeConfigFromEnv({}, { maxSandboxes: bad }), new RegExp(`^Error: --max-sandboxes must be a whole number .*not "${bad}"`));
  }
});

test('nestbox server and up: the CPU overcommit from the environment, checked', () => {
  assert.equal(cpuOvercommitFromEnv({}), DEFAULT_CPU_OVERCOMMIT);
  assert.equal(cpuOvercommitFromEnv({ NESTBOX_CPU_OVERCOMMIT: '1.5' }), 1.5);
  for (const bad of ['0', '-2', 'lots', 'Infinity']) {
    assert.throws(() => cpuOvercommitFromEnv({ NESTBOX_CPU_OVERCOMMIT: bad }), new RegExp(`NESTBOX_CPU_OVERCOMMIT must be a positive number .* not "${bad}"`));
  }
});
