// The usage report (the ledger's math: clipping, open intervals, CPU and memory weighting) and
// the usage and key routes, on PGlite and Postgres.
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { parseTimestamp } from '../src/control-plane/api/usage.ts';
import type { Database } from '../src/store/database.ts';
import { authenticateApiKey, createApiKey, createTeam, isApiKey } from '../src/store/teams.ts';
import { usageReport } from '../src/store/usage.ts';
import { forEachDatabase } from './helpers/databases.ts';
import { FakeLifecycle } from './helpers/fake-lifecycle.ts';
import { apiCaller, assertApiError } from './helpers/api-inject.ts';

const T0 = Date.parse('2026-03-01T00:00:00Z');
const at = (seconds: number) => new Date(T0 + seconds * 1000);

async function interval(
  db: Database,
  i: { teamId: string; sandboxId: string; open: number; close?: number; cpu?: number; memMB?: number },
) {
  await db.query(
    `INSERT INTO usage_intervals (sandbox_id, team_id, opened_event_id, opened_at, closed_event_id, closed_at, cpu_count, memory_mb)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
    [
      i.sandboxId, i.teamId, randomUUID(), at(i.open), i.close === undefined ? null : randomUUID(),
      i.close === undefined ? null : at(i.close), i.cpu ?? 1, i.memMB ?? 1024,
    ],
  );
}

const newTeam = async (db: Database) => (await createTeam(db, { name: `t-${randomUUID().slice(0, 8)}` })).id;

forEachDatabase('usage report', (t) => {
  test('closed intervals: seconds, CPU-seconds and GiB-seconds, summed per sandbox and in total', async () => {
    const db = await t.db();
    const team = await newTeam(db);
    // sb1 ran 1 h on 2 vCPUs / 512 MiB, then (after a pause) 30 min more.
    await interval(db, { teamId: team, sandboxId: 'sb1', open: 0, close: 3600, cpu: 2, memMB: 512 });
    await interval(db, { teamId: team, sandboxId: 'sb1', open: 7200, close: 9000, cpu: 2, memMB: 512 });
    // sb2: 10 s on 4 vCPUs / 3 GiB.
    await interval(db, { teamId: team, sandboxId: 'sb2', open: 100, close: 110, cpu: 4, memMB: 3072 });
    const r = await usageReport(db, { teamId: team, now: at(10_000) });
    assert.equal(r.teamId, team);
    assert.equal(r.from, null);
    assert.deepEqual(r.to, at(10_000));
    assert.deepEqual(r.sandboxes, [
      { sandboxId: 'sb1', runningSeconds: 5400, cpuSeconds: 10_800, memoryGiBSeconds: 2700, open: false },
      { sandboxId: 'sb2', runningSeconds: 10, cpuSeconds: 40, memoryGiBSeconds: 30, open: false },
    ]);
    assert.deepEqual(r.totals, { runningSeconds: 5410, cpuSeconds: 10_840, memoryGiBSeconds: 2730 });
  });

  test('intervals are clipped to [from, to]; ones outside it count nothing', async () => {
    const db = await t.db();
    const team = await newTeam(db);
    await interval(db, { teamId: team, sandboxId: 'a', open: 0, close: 100, cpu: 2, memMB: 2048 }); // overlaps from
    await interval(db, { teamId: team, sandboxId: 'b', open: 150, close: 160 }); // inside
    await interval(db, { teamId: team, sandboxId: 'c', open: 190, close: 300 }); // overlaps to
    await interval(db, { teamId: team, sandboxId: 'd', open: 0, close: 50 }); // before
    await interval(db, { teamId: team, sandboxId: 'e', open: 200, close: 250 }); // starts exactly at to
    await interval(db, { teamId: team, sandboxId: 'f', open: 0, close: 400, cpu: 3 }); // spans the whole window
    const r = await usageReport(db, { teamId: team, from: at(60), to: at(200), now: at(1000) });
    assert.deepEqual(r.from, at(60));
    assert.deepEqual(r.to, at(200));
    const by = Object.fromEntries(r.sandboxes.map((s) => [s.sandboxId, s]));
    assert.deepEqual(Object.keys(by).sort(), ['a', 'b', 'c', 'f']);
    assert.deepEqual([by.a!.runningSeconds, by.a!.cpuSeconds, by.a!.memoryGiBSeconds], [40, 80, 80]);
    assert.equal(by.b!.runningSeconds, 10);
    assert.equal(by.c!.runningSeconds, 10);
    assert.deepEqual([by.f!.runningSeconds, by.f!.cpuSeconds], [140, 420]);
    assert.equal(r.totals.runningSeconds, 200);
    // A window with nothing in it, and an empty window.
    assert.deepEqual((await usageReport(db, { teamId: team, from: at(500), to: at(600), now: at(1000) })).sandboxes, []);
    const empty = await usageReport(db, { teamId: team, from: at(150), to: at(150), now: at(1000) });
    assert.deepEqual(empty.totals, { runningSeconds: 0, cpuSeconds: 0, memoryGiBSeconds: 0 });
  });

  test('an open interval counts up to now, and to `to` when that is earlier', async () => {
    const db = await t.db();
    const team = await newTeam(db);
    await interval(db, { teamId: team, sandboxId: 'live', open: 100, cpu: 2, memMB: 256 });
    await interval(db, { teamId: team, sandboxId: 'done', open: 0, close: 10 });
    const r = await usageReport(db, { teamId: team, now: at(160) });
    const live = r.sandboxes.find((s) => s.sandboxId === 'live')!;
    assert.deepEqual(live, { sandboxId: 'live', runningSeconds: 60, cpuSeconds: 120, memoryGiBSeconds: 15, open: true });
    assert.equal(r.sandboxes.find((s) => s.sandboxId === 'done')!.open, false);
    // The clock moves on: the figures grow.
    assert.equal((await usageReport(db, { teamId: team, now: at(220) })).sandboxes.find((s) => s.sandboxId === 'live')!.runningSeconds, 120);
    // A window that ends before now: clipped there, and not accruing any more within it.
    const past = await usageReport(db, { teamId: team, to: at(130), now: at(220) });
    assert.deepEqual(past.sandboxes.find((s) => s.sandboxId === 'live'), {
      sandboxId: 'live', runningSeconds: 30, cpuSeconds: 60, memoryGiBSeconds: 7.5, open: false,
    });
    // A window that ends after now: an open interval still stops at now.
    const future = await usageReport(db, { teamId: team, from: at(150), to: at(10_000), now: at(220) });
    assert.deepEqual(future.sandboxes.map((s) => [s.sandboxId, s.runningSeconds, s.open]), [['live', 70, true]]);
    // An interval opened after `now` (clock skew) counts nothing rather than a negative time.
    assert.deepEqual((await usageReport(db, { teamId: team, from: at(50), now: at(90) })).sandboxes, []);
  });

  test('fractions of seconds, other teams, and invalid windows', async () => {
    const db = await t.db();
    const team = await newTeam(db);
    const other = await newTeam(db);
    await interval(db, { teamId: team, sandboxId: 'x', open: 0, close: 1.25, cpu: 2, memMB: 100 });
    await interval(db, { teamId: other, sandboxId: 'y', open: 0, close: 100 });
    const r = await usageReport(db, { teamId: team, now: at(10) });
    assert.deepEqual(r.sandboxes, [{ sandboxId: 'x', runningSeconds: 1.25, cpuSeconds: 2.5, memoryGiBSeconds: 0.122, open: false }]);
    await assert.rejects(usageReport(db, { teamId: team, from: at(10), to: at(5), now: at(10) }), /from must not be after to/);
    assert.deepEqual((await usageReport(db, { teamId: randomUUID(), now: at(10) })).sandboxes, []);
  });
});

// --- routes --------------------------------------------------------------------------------------

test('parseTimestamp: ISO 8601 with a zone, or a date alone; out-of-range fields refused', () => {
  assert.equal(parseTimestamp('from', '2026-01-02').toISOString(), '2026-01-02T00:00:00.000Z');
  assert.equal(parseTimestamp('from', '2026-01-02T03:04:05Z').toISOString(), '2026-01-02T03:04:05.000Z');
  assert.equal(parseTimestamp('from', '2026-01-02T03:04:05.5+02:00').toISOString(), '2026-01-02T01:04:05.500Z');
  for (const bad of ['2026-02-30', '2026-13-01', '2026-01-01T25:00Z', '2026-01-01T10:00:00', 'yesterday', '1767225600', '']) {
    assert.throws(() => parseTimestamp('from', bad), /not an ISO 8601 timestamp/, bad);
  }
});

forEachDatabase('usage and key routes', (t) => {
  const NOW = at(3600);
  let db: Database;
  let app: FastifyInstance;
  let teamId: string;
  let key: string;

  before(async () => {
    db = await t.db();
    teamId = await newTeam(db);
    key = (await createApiKey(db, teamId, { name: 'first' })).key;
    app = buildApiServer({
      lifecycle: new FakeLifecycle(),
      authenticate: (k) => authenticateApiKey(db, k),
      envdVersion: '0.6.4',
      db,
      now: () => NOW,
    });
    await app.ready();
  });
  after(async () => {
    await app?.close();
  });

  const call = apiCaller(() => app, () => key);
  const assertError = assertApiError;

  test('GET /usage: authenticated, validated, the team\'s own report', async () => {
    await interval(db, { teamId, sandboxId: 'r1', open: 0, close: 600, cpu: 2, memMB: 2048 });
    await interval(db, { teamId, sandboxId: 'r2', open: 3000, cpu: 1, memMB: 512 }); // open: 600 s at NOW
    assertError(await call({ url: '/usage', key: null }), 401, /missing API key/);
    assertError(await call({ url: '/usage', key: 'e2b_' + '0'.repeat(40) }), 401, /invalid API key/);
    assertError(await call({ url: '/usage?from=yesterday' }), 400, /from: "yesterday" is not an ISO 8601 timestamp/);
    assertError(await call({ url: '/usage?to=2026-02-30' }), 400, /to: /);
    assertError(await call({ url: '/usage?from=2026-03-02&to=2026-03-01' }), 400, /from must not be after to/);
    assertError(await call({ url: `/usage?from=${'2'.repeat(100)}` }), 400);

    const all = await call({ url: '/usage' });
    assert.equal(all.status, 200);
    assert.deepEqual(all.json, {
      teamId,
      from: null,
      to: NOW.toISOString(),
      totals: { runningSeconds: 1200, cpuSeconds: 1800, memoryGiBSeconds: 1500 },
      sandboxes: [
        { sandboxId: 'r1', runningSeconds: 600, cpuSeconds: 1200, memoryGiBSeconds: 1200, open: false },
        { sandboxId: 'r2', runningSeconds: 600, cpuSeconds: 600, memoryGiBSeconds: 300, open: true },
      ],
    });
    const window = await call({ url: `/usage?from=${encodeURIComponent(at(300).toISOString())}&to=2026-03-01T00:55:00%2B00:00` });
    assert.equal(window.status, 200);
    assert.equal(window.json.from, at(300).toISOString());
    assert.equal(window.json.to, at(3300).toISOString());
    assert.deepEqual(window.json.sandboxes.map((s: any) => [s.sandboxId, s.runningSeconds, s.open]), [['r1', 300, false], ['r2', 300, false]]);
  });

  test('keys: list, create (shown once), the new key works, revoke, revoked key refused', async () => {
    const list0 = await call({ url: '/nestbox/v1/keys' });
    assert.equal(list0.status, 200);
    assert.equal(list0.json.length, 1);
    assert.deepEqual(Object.keys(list0.json[0]).sort(), ['createdAt', 'id', 'lastUsedAt', 'mask', 'name', 'revokedAt']);
    assert.equal(list0.json[0].name, 'first');
    assert.equal(list0.json[0].mask, `${key.slice(0, 6)}…${key.slice(-4)}`);
    assert.equal(list0.json[0].revokedAt, null);
    assert.ok(list0.json[0].lastUsedAt, 'last use is recorded');
    assert.ok(!JSON.stringify(list0.json).includes(key), 'the listing never shows a whole key');

    const created = await call({ method: 'POST', url: '/nestbox/v1/keys', body: { name: 'ci' } });
    assert.equal(created.status, 201);
    assert.deepEqual(Object.keys(created.json).sort(), ['id', 'key', 'mask']);
    assert.ok(isApiKey(created.json.key));
    assert.equal(created.headers['cache-control'], 'no-store');
    const newKey: string = created.json.key;
    assert.equal((await call({ url: '/nestbox/v1/keys', key: newKey })).status, 200, 'the new key authenticates');
    const list1 = (await call({ url: '/nestbox/v1/keys' })).json;
    assert.deepEqual(list1.map((k: any) => k.name), ['first', 'ci']);

    // A body is optional; the name is bounded.
    const unnamed = await call({ method: 'POST', url: '/nestbox/v1/keys' });
    assert.equal(unnamed.status, 201);
    assertError(await call({ method: 'POST', url: '/nestbox/v1/keys', body: { name: 'x'.repeat(129) } }), 400);
    assertError(await call({ method: 'POST', url: '/nestbox/v1/keys', body: { name: 5 } }), 400);
    assertError(await call({ method: 'POST', url: '/nestbox/v1/keys', key: null, body: {} }), 401);

    // A key may revoke itself.
    const del = await call({ method: 'DELETE', url: `/nestbox/v1/keys/${created.json.id}`, key: newKey });
    assert.equal(del.status, 204);
    assertError(await call({ url: '/nestbox/v1/keys', key: newKey }), 401, /invalid API key/);
    const list2 = (await call({ url: '/nestbox/v1/keys' })).json;
    const revoked = list2.find((k: any) => k.id === created.json.id);
    assert.ok(revoked.revokedAt && Number.isFinite(Date.parse(revoked.revokedAt)));
    // Idempotent; unknown ids are 404.
    assert.equal((await call({ method: 'DELETE', url: `/nestbox/v1/keys/${created.json.id}` })).status, 204);
    assertError(await call({ method: 'DELETE', url: `/nestbox/v1/keys/${randomUUID()}` }), 404, /not found/);
    assertError(await call({ method: 'DELETE', url: '/nestbox/v1/keys/not-a-uuid' }), 404);
    await call({ method: 'DELETE', url: `/nestbox/v1/keys/${unnamed.json.id}` });
  });

  test("keys: the team's last active key cannot be revoked (409); another team's keys are out of reach", async () => {
    const active = (await call({ url: '/nestbox/v1/keys' })).json.filter((k: any) => k.revokedAt === null);
    assert.equal(active.length, 1);
    assertError(await call({ method: 'DELETE', url: `/nestbox/v1/keys/${active[0].id}` }), 409, /last active API key/);
    assert.equal((await call({ url: '/nestbox/v1/keys' })).status, 200, 'still works');

    const otherTeam = await newTeam(db);
    const otherKey = await createApiKey(db, otherTeam, { name: 'theirs' });
    await createApiKey(db, otherTeam, { name: 'theirs too' });
    assertError(await call({ method: 'DELETE', url: `/nestbox/v1/keys/${otherKey.id}` }), 404);
    const theirs = (await call({ url: '/nestbox/v1/keys', key: otherKey.key })).json;
    assert.deepEqual(theirs.map((k: any) => k.name), ['theirs', 'theirs too']);
    assert.ok(!(await call({ url: '/nestbox/v1/keys' })).json.some((k: any) => k.name.startsWith('theirs')));

    // Two concurrent revocations of a team's last two keys: exactly one succeeds.
    const both = (await call({ url: '/nestbox/v1/keys', key: otherKey.key })).json.map((k: any) => k.id);
    const results = await Promise.all(
      both.map((id: string) => call({ method: 'DELETE', url: `/nestbox/v1/keys/${id}`, key: otherKey.key })),
    );
    const statuses = results.map((r) => r.status).sort();
    // The key revoked first may be the caller's own: then the second request is 401 instead of 409.
    assert.equal(statuses.filter((s) => s === 204).length, 1, JSON.stringify(statuses));
    assert.ok(statuses.every((s) => s === 204 || s === 409 || s === 401), JSON.stringify(statuses));
  });

  test('the OpenAPI document lists the usage and key routes', async () => {
    const doc = (await call({ url: '/openapi.json', key: null })).json;
    assert.ok(doc.paths['/usage']?.get);
    assert.ok(doc.paths['/nestbox/v1/keys']?.get && doc.paths['/nestbox/v1/keys']?.post);
    assert.ok(doc.paths['/nestbox/v1/keys/{id}']?.delete);
    assert.equal(doc.paths['/nestbox/v1/keys'].post.requestBody.required, false);
  });
});

test('without a database the usage and key routes are not served', async () => {
  const app = buildApiServer({ lifecycle: new FakeLifecycle(), authenticate: async () => ({ kind: 'team', teamId: 't' }), envdVersion: '0.6.4' });
  const res = await app.inject({ method: 'GET', url: '/usage', headers: { 'x-api-key': 'k' } });
  assert.equal(res.statusCode, 404);
  await app.close();
});
