// The admin API (teams and admin keys) over inject, on PGlite and Postgres: shapes, keys shown
// once, validation (400 with a clear message), conflicts, unknown teams, the OpenAPI document;
// and the guard that keeps admin routes under their prefix.
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import Fastify, { type FastifyInstance } from 'fastify';
import { installAuth } from '../src/control-plane/api/auth.ts';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { ensureBootstrapAdminKey } from '../src/store/admin-keys.ts';
import { authenticateKey } from '../src/store/credentials.ts';
import type { Database } from '../src/store/database.ts';
import { apiCaller, assertApiError } from './helpers/api-inject.ts';
import { forEachDatabase } from './helpers/databases.ts';
import { FakeLifecycle } from './helpers/fake-lifecycle.ts';

const TEAMS = '/nestbox/v1/admin/teams';

forEachDatabase('admin API', (t) => {
  let db: Database;
  let app: FastifyInstance;
  let adminKey: string;

  before(async () => {
    db = await t.db();
    adminKey = (await ensureBootstrapAdminKey(db)).adminKey!;
    app = buildApiServer({ lifecycle: new FakeLifecycle(), db, authenticate: (k) => authenticateKey(db, k), envdVersion: '0.6.4' });
    await app.ready();
  });
  after(async () => {
    await app?.close();
  });

  const call = apiCaller(() => app, () => adminKey);

  test('create a team: the team and its first key (shown once), which works on team routes', async () => {
    const r = await call({ method: 'POST', url: TEAMS, body: { name: 'acme', maxRunning: 3, maxTimeoutS: 600, keyName: 'ci' } });
    assert.equal(r.status, 201, JSON.stringify(r.json));
    assert.equal(r.headers['cache-control'], 'no-store');
    assert.deepEqual(Object.keys(r.json).sort(), ['apiKey', 'team']);
    const { team, apiKey } = r.json;
    assert.deepEqual(Object.keys(team).sort(), ['activeKeys', 'activeSandboxes', 'createdAt', 'id', 'maxRunning', 'maxTimeoutS', 'name']);
    assert.deepEqual([team.name, team.maxRunning, team.maxTimeoutS, team.activeKeys, team.activeSandboxes], ['acme', 3, 600, 1, 0]);
    assert.deepEqual(Object.keys(apiKey).sort(), ['id', 'key', 'mask']);
    assert.match(apiKey.key, /^e2b_[0-9a-f]{40}$/);
    const keys = await call({ url: '/nestbox/v1/keys', key: apiKey.key });
    assert.equal(keys.status, 200);
    assert.deepEqual(keys.json.map((k: any) => [k.id, k.name]), [[apiKey.id, 'ci']]);

    const plain = await call({ method: 'POST', url: TEAMS, body: { name: 'plain co' } });
    assert.equal(plain.status, 201);
    assert.deepEqual([plain.json.team.maxRunning, plain.json.team.maxTimeoutS], [20, 86400], 'defaults');
  });

  test('bad input is a 400 saying what is wrong; a taken name is a 409 saying what to do', async () => {
    const cases: Array<[unknown, RegExp]> = [
      [{}, /required properties name/],
      [{ name: '' }, /body\/name must not have fewer than 1 characters/],
      [{ name: '   ' }, /a team needs a name/],
      [{ name: 'x'.repeat(129) }, /body\/name must not have more than 128 characters/],
      [{ name: 'line\nbreak' }, /must not contain control characters/],
      [{ name: 5 }, /body\/name must be string/],
      [{ name: 'n', maxRunning: 0 }, /body\/maxRunning must be >= 1/],
      [{ name: 'n', maxRunning: '5' }, /body\/maxRunning must be integer/],
      [{ name: 'n', maxRunning: 100_001 }, /body\/maxRunning must be <= 100000/],
      [{ name: 'n', maxTimeoutS: 1.5 }, /body\/maxTimeoutS must be integer/],
      [{ name: 'n', maxTimeoutS: 86_401 }, /body\/maxTimeoutS must be <= 86400/],
      [{ name: 'n', max_running: 5 }, /must not have additional properties/],
    ];
    for (const [body, re] of cases) assertApiError(await call({ method: 'POST', url: TEAMS, body }), 400, re);
    assertApiError(await call({ method: 'POST', url: TEAMS }), 400);
    await call({ method: 'POST', url: TEAMS, body: { name: 'Unique Name' } });
    assertApiError(await call({ method: 'POST', url: TEAMS, body: { name: 'unique name' } }), 409, /a team named "unique name" exists already \(.+\): choose another name/);
    assert.ok(!(await call({ url: TEAMS })).json.some((x: any) => x.name === 'n'), 'nothing was created by refused requests');
  });

  test('list and show: limits, counts, keys masked (never whole)', async () => {
    const created = (await call({ method: 'POST', url: TEAMS, body: { name: 'shown', maxRunning: 7 } })).json;
    const extra = (await call({ method: 'POST', url: `${TEAMS}/${created.team.id}/keys`, body: { name: 'second' } })).json;
    const list = await call({ url: TEAMS });
    assert.equal(list.status, 200);
    const names = list.json.map((x: any) => x.name);
    assert.ok(names.indexOf('acme') < names.indexOf('shown'), 'oldest first');
    const listed = list.json.find((x: any) => x.id === created.team.id);
    assert.deepEqual([listed.maxRunning, listed.activeKeys, listed.activeSandboxes], [7, 2, 0]);

    const shown = await call({ url: `${TEAMS}/${created.team.id}` });
    assert.equal(shown.status, 200);
    assert.equal(shown.json.name, 'shown');
    assert.deepEqual(shown.json.keys.map((k: any) => k.name), ['default', 'second']);
    assert.deepEqual(shown.json.keys.map((k: any) => k.mask), [created.apiKey.mask, extra.mask]);
    const text = JSON.stringify(shown.json) + JSON.stringify(list.json);
    assert.ok(!text.includes(created.apiKey.key) && !text.includes(extra.key), 'never a whole key');

    assertApiError(await call({ url: `${TEAMS}/${randomUUID()}` }), 404, /^team ".+" not found$/);
    assertApiError(await call({ url: `${TEAMS}/not-a-uuid` }), 404, /team "not-a-uuid" not found/);
    assertApiError(await call({ url: `${TEAMS}/${'x'.repeat(65)}` }), 400);
  });

  test("a team's further keys: shown once, the team's; unknown team 404; body optional; bad name 400", async () => {
    const team = (await call({ method: 'POST', url: TEAMS, body: { name: 'keyed' } })).json.team;
    const r = await call({ method: 'POST', url: `${TEAMS}/${team.id}/keys`, body: { name: 'deploy' } });
    assert.equal(r.status, 201);
    assert.equal(r.headers['cache-control'], 'no-store');
    assert.deepEqual(Object.keys(r.json).sort(), ['id', 'key', 'mask', 'teamId']);
    assert.equal(r.json.teamId, team.id);
    assert.deepEqual(await authenticateKey(db, r.json.key), { kind: 'team', teamId: team.id, keyId: r.json.id });
    const unnamed = await call({ method: 'POST', url: `${TEAMS}/${team.id}/keys` });
    assert.equal(unnamed.status, 201);
    assertApiError(await call({ method: 'POST', url: `${TEAMS}/${team.id}/keys`, body: { name: 'x'.repeat(129) } }), 400);
    assertApiError(await call({ method: 'POST', url: `${TEAMS}/${randomUUID()}/keys`, body: {} }), 404, /team ".+" not found/);
  });

  test('admin keys: list (masked), create (shown once), revoke; never the last', async () => {
    const created = await call({ method: 'POST', url: '/nestbox/v1/admin/keys', body: { name: 'rotation' } });
    assert.equal(created.status, 201);
    assert.equal(created.headers['cache-control'], 'no-store');
    assert.match(created.json.key, /^nestbox_admin_[0-9a-f]{40}$/);
    const listed = await call({ url: '/nestbox/v1/admin/keys', key: created.json.key });
    assert.equal(listed.status, 200);
    assert.deepEqual(listed.json.map((k: any) => k.name), ['bootstrap', 'rotation']);
    assert.ok(!JSON.stringify(listed.json).includes(created.json.key));
    assert.equal(listed.json[1].mask, `${created.json.key.slice(0, 16)}…${created.json.key.slice(-4)}`);
    // Rotation: the new key revokes the old one; the old one is then refused.
    const old = listed.json[0].id;
    assert.equal((await call({ method: 'DELETE', url: `/nestbox/v1/admin/keys/${old}`, key: created.json.key })).status, 204);
    assertApiError(await call({ url: TEAMS }), 401, /invalid admin key/);
    adminKey = created.json.key;
    assertApiError(await call({ method: 'DELETE', url: `/nestbox/v1/admin/keys/${created.json.id}` }), 409, /last active admin key/);
    assertApiError(await call({ method: 'DELETE', url: `/nestbox/v1/admin/keys/${randomUUID()}` }), 404, /admin key .+ not found/);
  });

  test('the OpenAPI document lists the admin routes, with the adminKey scheme', async () => {
    const doc = (await call({ url: '/openapi.json', key: null })).json;
    assert.deepEqual(doc.components.securitySchemes.adminKey, {
      type: 'apiKey', in: 'header', name: 'X-API-Key', description: 'An admin key (nestbox_admin_…)',
    });
    const ops: Array<[string, string]> = [
      [TEAMS, 'post'], [TEAMS, 'get'], [`${TEAMS}/{id}`, 'get'], [`${TEAMS}/{id}/keys`, 'post'],
      ['/nestbox/v1/admin/keys', 'get'], ['/nestbox/v1/admin/keys', 'post'], ['/nestbox/v1/admin/keys/{id}', 'delete'],
    ];
    for (const [path, method] of ops) {
      const op = doc.paths[path]?.[method];
      assert.ok(op, `${method} ${path}`);
      assert.deepEqual(op.security, [{ adminKey: [] }]);
      assert.deepEqual(op.tags, ['admin']);
    }
    assert.equal(doc.paths[TEAMS].post.requestBody.required, true);
    assert.deepEqual(doc.paths[TEAMS].post.requestBody.content['application/json'].schema.required, ['name']);
    assert.equal(doc.paths[`${TEAMS}/{id}/keys`].post.requestBody.required, false);
  });
});

test('admin routes live under /nestbox/v1/admin/ and only there: anything else fails at start', async () => {
  const build = (url: string, admin: boolean) => {
    const app = Fastify();
    installAuth(app, async () => null);
    void app.register(async (scope) => {
      scope.get(url, { config: { admin } }, async () => ({}));
    });
    return app;
  };
  await assert.rejects(async () => build('/nestbox/v1/admin/forgotten', false).ready(), /need config\.admin/);
  await assert.rejects(async () => build('/nestbox/v1/elsewhere', true).ready(), /need config\.admin/);
  const fine = build('/nestbox/v1/admin/ok', true);
  await fine.ready();
  await fine.close();
});
