// Listing as E2B defines it (order, startedAfter, template, beside state, metadata and paging),
// through the real `e2b` SDK, and a team's max_running on every way a sandbox comes back to
// life (resume, connect, the proxy's auto-resume), on PGlite and Postgres: real store, real
// lifecycle service, an in-memory node.
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { Sandbox } from 'e2b';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { LifecycleService } from '../src/control-plane/lifecycle.ts';
import { SandboxProxy } from '../src/control-plane/proxy/server.ts';
import { NodePool } from '../src/control-plane/scheduler.ts';
import { authenticateKey } from '../src/store/credentials.ts';
import type { Database } from '../src/store/database.ts';
import { upsertNode } from '../src/store/nodes.ts';
import { getSandbox } from '../src/store/sandboxes.ts';
import { createTeamWithKey } from '../src/store/teams.ts';
import { forEachDatabase } from './helpers/databases.ts';
import { FakeNode } from './helpers/fake-node.ts';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

forEachDatabase('list and quota', (t) => {
  let db: Database;
  let app: FastifyInstance;
  let lifecycle: LifecycleService;
  let proxy: SandboxProxy;
  let api: string;
  let proxyUrl: string;

  before(async () => {
    db = await t.db();
    const pool = new NodePool();
    pool.add(new FakeNode('node-1'));
    await upsertNode(db, { id: 'node-1', url: 'http://127.0.0.1:9', token: 'list-and-quota-node-token' });
    lifecycle = new LifecycleService({ db, nodes: pool });
    app = buildApiServer({ lifecycle, db, authenticate: (k) => authenticateKey(db, k), envdVersion: '0.6.1' });
    await app.listen({ host: '127.0.0.1', port: 0 });
    api = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    proxy = new SandboxProxy({ db, lifecycle });
    proxyUrl = await proxy.listen('127.0.0.1', 0);
  });

  after(async () => {
    await proxy?.close();
    await app?.close();
    await lifecycle?.waitForInFlight();
  });

  async function call(method: string, url: string, key: string, body?: unknown) {
    const res = await fetch(api + url, {
      method,
      headers: { 'x-api-key': key, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers };
  }

  async function create(key: string, body: Record<string, unknown> = {}): Promise<string> {
    const r = await call('POST', '/v2/sandboxes', key, { templateID: 'base', timeout: 600, ...body });
    assert.equal(r.status, 201, JSON.stringify(r.json));
    return r.json.sandboxID;
  }

  test('Sandbox.list honours order, startedAfter and template (and with state, metadata and paging)', async () => {
    const { apiKey } = await createTeamWithKey(db, { name: 'lister' });
    const opts = { apiKey: apiKey.key, apiUrl: api, requestTimeoutMs: 10_000 };
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push(await create(apiKey.key, { templateID: i % 2 ? 'other' : 'base', metadata: { suite: 'list' } }));
      await sleep(15); // distinct start times
    }
    const startOf = async (id: string) => (await getSandbox(db, id))!.startedAt;

    const all = async (o: Record<string, unknown>) => {
      const pager = Sandbox.list({ ...opts, ...o });
      const out: string[] = [];
      while (pager.hasNext) out.push(...(await pager.nextItems()).map((s) => s.sandboxId));
      return out;
    };
    // Default: newest first; asc: oldest first; both across pages.
    assert.deepEqual(await all({ limit: 2 }), [...ids].reverse());
    assert.deepEqual(await all({ limit: 2, order: 'asc' }), ids);
    assert.deepEqual(await all({ order: 'desc' }), [...ids].reverse());

    const since = await startOf(ids[2]!);
    assert.deepEqual(await all({ order: 'asc', query: { startedAfter: since } }), ids.slice(2), 'started at or after');
    assert.deepEqual(await all({ order: 'asc', limit: 1, query: { template: 'other' } }), [ids[1], ids[3]]);
    assert.deepEqual(await all({ order: 'asc', query: { template: 'base', startedAfter: since, metadata: { suite: 'list' } } }), [ids[2], ids[4]]);
    assert.deepEqual(await all({ query: { template: 'nothing-like-it' } }), []);

    await call('POST', `/sandboxes/${ids[0]}/pause`, apiKey.key);
    assert.deepEqual(await all({ order: 'asc', query: { state: ['paused'], template: 'base' } }), [ids[0]]);

    // The legacy list (running only) takes the same filters.
    const legacy = await call('GET', `/sandboxes?order=asc&template=base&startedAfter=${encodeURIComponent(since.toISOString())}`, apiKey.key);
    assert.equal(legacy.status, 200);
    assert.deepEqual(legacy.json.map((s: any) => s.sandboxID), [ids[2], ids[4]]);
    const legacyDefault = await call('GET', '/sandboxes', apiKey.key);
    assert.deepEqual(legacyDefault.json.map((s: any) => s.sandboxID), [ids[4], ids[3], ids[2], ids[1]]);

    // Bad values are 400s.
    assert.equal((await call('GET', '/v2/sandboxes?order=sideways', apiKey.key)).status, 400);
    assert.equal((await call('GET', '/v2/sandboxes?startedAfter=yesterday', apiKey.key)).status, 400);
  });

  test("resume, connect and the proxy's auto-resume respect the team's max_running", async () => {
    const { team, apiKey } = await createTeamWithKey(db, { name: 'tight', maxRunning: 1 });
    const key = apiKey.key;
    const sleeper = await create(key, { autoPause: true, autoResume: { enabled: true } });
    assert.equal((await call('POST', `/sandboxes/${sleeper}/pause`, key)).status, 204);
    const busy = await create(key); // the one slot, taken while the other is paused

    const resumed = await call('POST', `/sandboxes/${sleeper}/resume`, key, { timeout: 60 });
    assert.equal(resumed.status, 429, JSON.stringify(resumed.json));
    assert.match(resumed.json.message, /limit of 1 concurrent sandboxes/);
    const connected = await call('POST', `/sandboxes/${sleeper}/connect`, key, { timeout: 60 });
    assert.equal(connected.status, 429);
    const viaProxy = await fetch(proxyUrl + '/', { headers: { 'E2b-Sandbox-Id': sleeper, 'E2b-Sandbox-Port': '8080' } });
    assert.equal(viaProxy.status, 429);
    assert.match((await viaProxy.json()).message, /limit of 1 concurrent sandboxes/);
    assert.equal((await getSandbox(db, sleeper))!.state, 'paused', 'refused resumes leave it paused');

    // Concurrent resumes and creates never overshoot: once the slot is free, exactly one wins.
    assert.equal((await call('DELETE', `/sandboxes/${busy}`, key)).status, 204);
    const other = await create(key, { autoPause: true });
    assert.equal((await call('POST', `/sandboxes/${other}/pause`, key)).status, 204);
    const race = await Promise.all([
      call('POST', `/sandboxes/${sleeper}/connect`, key, { timeout: 60 }),
      call('POST', `/sandboxes/${other}/connect`, key, { timeout: 60 }),
      call('POST', '/v2/sandboxes', key, { templateID: 'base', timeout: 60 }),
    ]);
    assert.deepEqual(race.map((r) => r.status).filter((s) => s !== 429).length, 1, JSON.stringify(race.map((r) => r.status)));
    const live = (await call('GET', '/v2/sandboxes?state=running', key)).json as any[];
    assert.equal(live.length, 1);
    assert.ok(team.id);
  });
});
