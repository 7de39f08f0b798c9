// The store, against both backends: PGlite and a fresh database on the local Postgres server.
import { createHash } from 'node:crypto';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { openDatabase, redactUrl, type Database } from '../src/store/database.ts';
import { loadMigrations, migrate, type Migration } from '../src/store/migrate.ts';
import {
  API_KEY_PATTERN,
  authenticateApiKey,
  createApiKey,
  createTeam,
  ensureBootstrapTeam,
  getTeam,
  listApiKeys,
  listTeams,
  maskApiKey,
  revokeApiKey,
} from '../src/store/teams.ts';
import { getNode, listNodes, setNodeState, touchNode, upsertNode } from '../src/store/nodes.ts';
import {
  ADMIN_KEY_PATTERN, authenticateAdminKey, createAdminKey, ensureBootstrapAdminKey, listAdminKeys, revokeAdminKeyKeepingOne,
} from '../src/store/admin-keys.ts';
import { authenticateKey } from '../src/store/credentials.ts';
import { createTeamWithKey, getTeamSummary, listTeamSummaries } from '../src/store/teams.ts';
import { forEachDatabase, tempPgliteDataDir } from './helpers/databases.ts';

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');
const MIGRATIONS = loadMigrations();
const LATEST = MIGRATIONS[MIGRATIONS.length - 1]!.version;

async function tables(db: Database): Promise<string[]> {
  const rows = await db.query<{ table_name: string }>(
    `SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name`,
  );
  return rows.map((r) => r.table_name);
}

/** Rejects with the error's `code` property checked. */
async function rejectsWithCode(p: Promise<unknown>, code: string, message?: RegExp): Promise<void> {
  await assert.rejects(p, (err: Error & { code?: string }) => {
    assert.equal(err.code, code, `expected code ${code}, got ${err.code}: ${err.message}`);
    if (message) assert.match(err.message, message);
    return true;
  });
}

describe('store: pure pieces', () => {
  test('migration files are numbered without gaps, starting at 001', () => {
    assert.deepEqual(
      MIGRATIONS.map((m) => m.version),
      MIGRATIONS.map((_, i) => i + 1),
    );
    assert.equal(MIGRATIONS[0]!.name, 'init');
  });

  test('a Postgres connection failure names the server, without the password', async () => {
    await assert.rejects(openDatabase({ url: 'postgres://nestbox:hunter2@127.0.0.1:1/nestbox' }), (err: Error) => {
      assert.match(err.message, /^cannot connect to Postgres at postgres:\/\/nestbox:\*\*\*@127\.0\.0\.1:1\/nestbox: /);
      assert.doesNotMatch(err.message, /hunter2/);
      return true;
    });
    assert.equal(redactUrl('postgres://u@h/d'), 'postgres://u@h/d');
  });

  test('a PGlite data dir is refused to a second opener while it is open', async () => {
    const { dataDir, remove } = await tempPgliteDataDir();
    try {
      const a = await openDatabase({ dataDir });
      await assert.rejects(openDatabase({ dataDir }), /already open/);
      await a.close();
      const b = await openDatabase({ dataDir }); // released on close
      await b.close();
      await b.close(); // idempotent
    } finally {
      await remove();
    }
  });

  test('mask keeps e2b_, two characters and the last four', () => {
    assert.equal(maskApiKey(`e2b_ab${'0'.repeat(34)}cdef`), 'e2b_ab…cdef');
  });
});

forEachDatabase('store', (t) => {
  // ---------------------------------------------------------------------------------------------
  // Migrations

  test('migrations apply once, are recorded, and are idempotent', async () => {
    const db = await t.fresh();
    const first = await migrate(db);
    assert.deepEqual(first, { applied: MIGRATIONS.map((m) => m.version), version: LATEST });
    const expected = ['api_keys', 'lifecycle_events', 'nodes', 'outbox_cursors', 'sandboxes', 'schema_migrations', 'teams', 'usage_intervals'];
    for (const table of expected) assert.ok((await tables(db)).includes(table), table);

    const again = await migrate(db);
    assert.deepEqual(again, { applied: [], version: LATEST });
    const recorded = await db.query<{ version: number; name: string; applied_at: Date }>(
      'SELECT version, name, applied_at FROM schema_migrations ORDER BY version',
    );
    assert.deepEqual(
      recorded.map((r) => [r.version, r.name]),
      MIGRATIONS.map((m) => [m.version, m.name]),
    );
    assert.ok(recorded[0]!.applied_at instanceof Date);
  });

  test('a migration that fails leaves nothing behind', async () => {
    const db = await t.fresh();
    const broken: Migration[] = [
      { version: 1, name: 'good', sql: 'CREATE TABLE a (x int); CREATE TABLE b (y int);' },
      { version: 2, name: 'bad', sql: 'CREATE TABLE c (z int); SELECT * FROM no_such_table;' },
    ];
    await assert.rejects(migrate(db, broken), /migration 002_bad failed: .*no_such_table/);
    assert.deepEqual(await tables(db), []);
    // Fixed, it applies from scratch.
    broken[1]!.sql = 'CREATE TABLE c (z int);';
    assert.deepEqual((await migrate(db, broken)).applied, [1, 2]);
  });

  test('a database migrated by a newer Nestbox is refused, not modified', async () => {
    const db = await t.fresh({ migrate: true });
    await db.query(`INSERT INTO schema_migrations (version, name) VALUES (999, 'future')`);
    await assert.rejects(migrate(db), /schema version 999.*newer Nestbox/);
  });

  test('concurrent migrations, from several handles at once, apply each migration once', async () => {
    const handles = t.concurrentHandles
      ? await Promise.all([t.open({ migrate: false }), t.open({ migrate: false }), t.open({ migrate: false })])
      : [await t.db()];
    // On a fresh database (the Postgres suite's own is new here; PGlite's may be migrated by now:
    // then this checks that concurrent calls on one handle are serialised).
    const results = await Promise.all([...handles, ...handles].map((h) => migrate(h)));
    const appliedCounts = new Map<number, number>();
    for (const r of results) for (const v of r.applied) appliedCounts.set(v, (appliedCounts.get(v) ?? 0) + 1);
    for (const [v, n] of appliedCounts) assert.equal(n, 1, `migration ${v} applied ${n} times`);
    for (const r of results) assert.equal(r.version, LATEST);
    const rows = await handles[0]!.query<{ n: number }>('SELECT count(*) AS n FROM schema_migrations');
    assert.equal(rows[0]!.n, MIGRATIONS.length);
  });

  // ---------------------------------------------------------------------------------------------
  // Connections and transactions

  test('data persists across close and reopen', async () => {
    const db = await t.db();
    const team = await createTeam(db, { name: 'persistent' });
    await db.close();
    const again = await t.open();
    assert.equal((await getTeam(again, team.id))?.name, 'persistent');
    if (t.kind === 'pglite') assert.equal(await t.db(), again);
  });

  test('a transaction commits what its function did and returns its value', async () => {
    const db = await t.db();
    const id = await db.transaction(async (tx) => (await createTeam(tx, { name: 'committed' })).id);
    assert.equal((await getTeam(db, id))?.name, 'committed');
  });

  test('a transaction whose function throws is rolled back, and the error passes through', async () => {
    const db = await t.db();
    const boom = new Error('boom');
    let id = '';
    await assert.rejects(
      db.transaction(async (tx) => {
        id = (await createTeam(tx, { name: 'rolled back' })).id;
        assert.ok(await getTeam(tx, id));
        throw boom;
      }),
      (err) => err === boom,
    );
    assert.equal(await getTeam(db, id), null);
    // A failed statement aborts the transaction; the handle is fine afterwards.
    await assert.rejects(db.transaction((tx) => tx.query('SELECT * FROM no_such_table')), /no_such_table/);
    assert.equal((await db.query<{ one: number }>('SELECT 1 AS one'))[0]!.one, 1);
  });

  test('statements from other callers never run inside an open transaction', async () => {
    const db = await t.db();
    const tag = `isolation-${Math.random()}`;
    let opened!: () => void;
    const isOpen = new Promise<void>((r) => (opened = r));
    const txDone = db.transaction(async (tx) => {
      await createTeam(tx, { name: tag });
      opened();
      await sleep(50);
      throw new Error('roll back');
    });
    // Another caller (outside the transaction's async context) while it is open with an
    // uncommitted row.
    await isOpen;
    const outsideRead = db.query<{ n: number }>('SELECT count(*) AS n FROM teams WHERE name = $1', [tag]);
    const outsideWrite = createTeam(db, { name: `${tag}-outside` });
    await assert.rejects(txDone, /roll back/);
    // The read saw no uncommitted row; the write was not swept into the rolled-back transaction.
    assert.equal((await outsideRead)[0]!.n, 0);
    await outsideWrite;
    const rows = await db.query<{ name: string }>('SELECT name FROM teams WHERE name LIKE $1', [`${tag}%`]);
    assert.deepEqual(
      rows.map((r) => r.name),
      [`${tag}-outside`],
    );
  });

  test('using the Database instead of tx inside its own transaction is a clear error', async () => {
    const db = await t.db();
    await assert.rejects(
      db.transaction(() => db.query('SELECT 1')),
      /inside its own open transaction: use the transaction's handle/,
    );
    await assert.rejects(
      db.transaction(() => db.transaction(() => Promise.resolve())),
      /inside its own open transaction/,
    );
    let leaked: { query: Database['query'] } | undefined;
    await db.transaction(async (tx) => {
      leaked = tx;
    });
    await assert.rejects(leaked!.query('SELECT 1'), /transaction is already finished/);
  });

  test('serializable transactions that conflict are retried until they commit', async () => {
    const db = await t.db();
    const second = t.concurrentHandles ? await t.open() : db;
    await db.exec('CREATE TABLE IF NOT EXISTS tx_retry (k text, v int)');
    await db.query('DELETE FROM tx_retry');
    let attempts = 0;
    let arrived = 0;
    let release!: () => void;
    const barrier = new Promise<void>((r) => (release = r));
    // Each reads the total then writes; run concurrently under serializable, one must fail
    // (40001) at least once on Postgres and be retried.
    const work = (h: Database, k: string) =>
      h.transaction(
        async (tx) => {
          attempts++;
          const [row] = await tx.query<{ total: number }>('SELECT COALESCE(sum(v), 0) AS total FROM tx_retry');
          if (++arrived === 2) release();
          if (t.concurrentHandles) await Promise.race([barrier, sleep(500)]);
          await tx.query('INSERT INTO tx_retry (k, v) VALUES ($1, $2)', [k, row!.total + 1]);
        },
        { isolation: 'serializable' },
      );
    await Promise.all([work(db, 'a'), work(second, 'b')]);
    const rows = await db.query<{ v: number }>('SELECT v FROM tx_retry ORDER BY v');
    assert.deepEqual(
      rows.map((r) => r.v),
      [1, 2],
    );
    if (t.concurrentHandles) assert.ok(attempts > 2, `expected a retry, saw ${attempts} attempts`);
  });

  test('int8 and numeric come back as numbers, timestamptz as Date, jsonb as values', async () => {
    const db = await t.db();
    const team = await createTeam(db, { name: 'types' });
    const at = new Date('2025-03-04T05:06:07.089Z');
    const metadata = { user: 'ada', nested: { list: [1, 'two', null], ok: true } };
    await db.query(
      `INSERT INTO sandboxes (id, team_id, template_id, state, generation, cpu_count, memory_mb, disk_mb,
         metadata, env_vars, envd_access_token, timeout_ms, end_at, started_at, state_changed_at, last_reason)
       VALUES ($1, $2, 'base', 'running', $3, 2, 512, 1024, $4, $5, 'tok', $6, $7, $7, $7, 'requested')`,
      ['sbxtypes000000000000', team.id, 2 ** 40, JSON.stringify(metadata), JSON.stringify({}), 3_600_000, at],
    );
    const [row] = await db.query<Record<string, unknown>>(
      `SELECT generation, timeout_ms, metadata, env_vars, end_at, remaining_ms, allow_internet,
              (SELECT count(*) FROM sandboxes) AS n, sum(memory_mb::numeric) / 3 AS third,
              ARRAY[generation, 7::bigint] AS gens
       FROM sandboxes WHERE id = $1 GROUP BY id`,
      ['sbxtypes000000000000'],
    );
    assert.equal(row!.generation, 2 ** 40);
    assert.equal(row!.timeout_ms, 3_600_000);
    assert.equal(typeof row!.n, 'number');
    assert.equal(typeof row!.third, 'number');
    assert.ok(Math.abs((row!.third as number) - 512 / 3) < 1e-9);
    assert.deepEqual(row!.gens, [2 ** 40, 7]);
    assert.deepEqual(row!.metadata, metadata);
    assert.deepEqual(row!.env_vars, {});
    assert.ok(row!.end_at instanceof Date);
    assert.equal((row!.end_at as Date).toISOString(), at.toISOString());
    assert.equal(row!.remaining_ms, null);
    assert.equal(row!.allow_internet, true);
    // bigserial too, and a plain object as a jsonb parameter.
    const [ev] = await db.query<{ seq: unknown; j: unknown }>(
      `INSERT INTO lifecycle_events (id, sandbox_id, team_id, to_state, reason, generation, at)
       VALUES (gen_random_uuid(), 's', $1, 'running', 'requested', 1, now()) RETURNING seq, $2::jsonb AS j`,
      [team.id, { a: 1 }],
    );
    assert.equal(typeof ev!.seq, 'number');
    assert.deepEqual(ev!.j, { a: 1 });
  });

  test('FOR UPDATE SKIP LOCKED and advisory locks are available', async () => {
    const db = await t.db();
    await createTeam(db, { name: 'lockable' });
    const rows = await db.transaction(async (tx) => {
      await tx.query('SELECT pg_advisory_xact_lock(1234)');
      const [got] = await tx.query<{ ok: boolean }>('SELECT pg_try_advisory_xact_lock(1235) AS ok');
      assert.equal(got!.ok, true);
      return tx.query(`SELECT id FROM teams WHERE name = 'lockable' LIMIT 1 FOR UPDATE SKIP LOCKED`);
    });
    assert.equal(rows.length, 1);
  });

  // ---------------------------------------------------------------------------------------------
  // Teams and API keys

  test('teams: create with defaults or limits, get, list', async () => {
    const db = await t.db();
    const a = await createTeam(db, { name: '  acme  ' });
    assert.equal(a.name, 'acme');
    assert.equal(a.maxRunning, 20);
    assert.equal(a.maxTimeoutS, 86400);
    assert.ok(a.createdAt instanceof Date);
    const b = await createTeam(db, { name: 'small', maxRunning: 2, maxTimeoutS: 60 });
    assert.deepEqual(await getTeam(db, b.id), b);
    assert.equal(await getTeam(db, 'no-such-team'), null);
    const ids = (await listTeams(db)).map((x) => x.id);
    assert.ok(ids.includes(a.id) && ids.includes(b.id));
    await rejectsWithCode(createTeam(db, { name: ' ' }), 'invalid');
    await rejectsWithCode(createTeam(db, { name: 'x', maxRunning: 0 }), 'invalid');
    await rejectsWithCode(createTeam(db, { name: 'x', maxTimeoutS: 1.5 }), 'invalid');
  });

  test('keys: E2B format, stored only as sha256 and mask, shown once', async () => {
    const db = await t.db();
    const team = await createTeam(db, { name: 'keys' });
    const created = await createApiKey(db, team.id, { name: 'ci' });
    assert.match(created.key, API_KEY_PATTERN);
    assert.match(created.key, /^e2b_[0-9a-f]{40}$/);
    assert.equal(created.mask, `${created.key.slice(0, 6)}…${created.key.slice(-4)}`);
    const other = await createApiKey(db, team.id);
    assert.notEqual(other.key, created.key);

    const [row] = await db.query<Record<string, unknown>>('SELECT * FROM api_keys WHERE id = $1', [created.id]);
    assert.equal(row!.key_hash, sha256(created.key));
    assert.equal(row!.key_mask, created.mask);
    assert.equal(row!.name, 'ci');
    assert.ok(!JSON.stringify(row).includes(created.key.slice(4)), 'the key itself must not be stored');

    const listed = await listApiKeys(db, team.id);
    const byId = (a: string[], b: string[]) => a[0]!.localeCompare(b[0]!);
    assert.deepEqual(
      listed.map((k) => [k.id, k.mask, k.name]).sort(byId),
      [
        [created.id, created.mask, 'ci'],
        [other.id, other.mask, ''],
      ].sort(byId),
    );
    assert.ok(!JSON.stringify(listed).includes(created.key.slice(4)));
  });

  test('keys: authenticate a valid key; unknown, malformed and revoked keys are refused', async () => {
    const db = await t.db();
    const team = await createTeam(db, { name: 'auth' });
    const { id, key } = await createApiKey(db, team.id);
    assert.deepEqual(await authenticateApiKey(db, key), { kind: 'team', teamId: team.id, keyId: id });
    assert.equal(await authenticateApiKey(db, `e2b_${'0'.repeat(40)}`), null);
    for (const bad of ['', key.toUpperCase(), `${key}0`, key.slice(0, -1), ` ${key}`, sha256(key)]) {
      assert.equal(await authenticateApiKey(db, bad), null, JSON.stringify(bad));
    }

    assert.equal(await revokeApiKey(db, 'some-other-team', id), false);
    assert.deepEqual(await authenticateApiKey(db, key), { kind: 'team', teamId: team.id, keyId: id });
    assert.equal(await revokeApiKey(db, team.id, id), true);
    assert.equal(await authenticateApiKey(db, key), null);
    assert.equal(await revokeApiKey(db, team.id, id), true, 'revoking twice is fine');
    assert.equal(await revokeApiKey(db, team.id, 'no-such-key'), false);
    assert.deepEqual(await listApiKeys(db, team.id), []);
    const all = await listApiKeys(db, team.id, { includeRevoked: true });
    assert.equal(all.length, 1);
    assert.ok(all[0]!.revokedAt instanceof Date);
  });

  test('keys: last_used_at is recorded, at most once a minute', async () => {
    const db = await t.db();
    const team = await createTeam(db, { name: 'usage' });
    const { id, key } = await createApiKey(db, team.id);
    const lastUsed = async () =>
      (await db.query<{ last_used_at: Date | null }>('SELECT last_used_at FROM api_keys WHERE id = $1', [id]))[0]!
        .last_used_at;
    assert.equal(await lastUsed(), null);
    await authenticateApiKey(db, key);
    const first = await lastUsed();
    assert.ok(first instanceof Date);
    await sleep(5);
    await authenticateApiKey(db, key);
    assert.equal((await lastUsed())!.getTime(), first.getTime(), 'not rewritten within a minute');
    await db.query(`UPDATE api_keys SET last_used_at = now() - interval '2 minutes' WHERE id = $1`, [id]);
    await authenticateApiKey(db, key);
    assert.ok((await lastUsed())!.getTime() > Date.now() - 30_000, 'rewritten after a minute');
  });

  test('keys: an explicit key must have E2B format; duplicates and unknown teams are refused', async () => {
    const db = await t.db();
    const team = await createTeam(db, { name: 'explicit' });
    const key = `e2b_${'ab12'.repeat(10)}`;
    const created = await createApiKey(db, team.id, { key });
    assert.equal(created.key, key);
    assert.equal(created.mask, 'e2b_ab…ab12');
    assert.deepEqual(await authenticateApiKey(db, key), { kind: 'team', teamId: team.id, keyId: created.id });
    for (const bad of [`e2b_${'AB12'.repeat(10)}`, `e2b_${'a'.repeat(39)}`, `e2b_${'a'.repeat(41)}`, 'a'.repeat(44), `sk_${'a'.repeat(40)}`, '']) {
      await rejectsWithCode(createApiKey(db, team.id, { key: bad }), 'invalid', /e2b_\[0-9a-f\]\{40\}/);
    }
    await rejectsWithCode(createApiKey(db, team.id, { key }), 'conflict');
    await rejectsWithCode(createApiKey(db, 'no-such-team'), 'not_found');
  });

  test('bootstrap: an empty database gets team "default" and a key, once', async () => {
    const db = await t.fresh({ migrate: true });
    const first = await ensureBootstrapTeam(db);
    assert.ok(first.apiKey);
    assert.match(first.apiKey, API_KEY_PATTERN);
    assert.equal((await getTeam(db, first.teamId))?.name, 'default');
    assert.deepEqual(await authenticateApiKey(db, first.apiKey), {
      kind: 'team',
      teamId: first.teamId,
      keyId: (await listApiKeys(db, first.teamId))[0]!.id,
    });
    const second = await ensureBootstrapTeam(db);
    assert.deepEqual(second, { teamId: first.teamId, apiKey: null });
    assert.equal((await listTeams(db)).length, 1);
    assert.equal((await listApiKeys(db, first.teamId)).length, 1);
  });

  test('bootstrap: with NESTBOX_API_KEY, that key; later, an unseen key is added and a revoked one stays revoked', async () => {
    const db = await t.fresh({ migrate: true });
    const key = `e2b_${'0123456789'.repeat(4)}`;
    await rejectsWithCode(ensureBootstrapTeam(db, { apiKey: 'e2b_short' }), 'invalid', /NESTBOX_API_KEY/);
    assert.equal((await listTeams(db)).length, 0);
    const boot = await ensureBootstrapTeam(db, { apiKey: key });
    assert.equal(boot.apiKey, key);
    assert.equal((await authenticateApiKey(db, key))?.teamId, boot.teamId);
    assert.deepEqual(await ensureBootstrapTeam(db, { apiKey: key }), { teamId: boot.teamId, apiKey: null });

    const later = `e2b_${'f'.repeat(40)}`;
    assert.deepEqual(await ensureBootstrapTeam(db, { apiKey: later }), { teamId: boot.teamId, apiKey: later });
    assert.equal((await authenticateApiKey(db, later))?.teamId, boot.teamId);

    const { keyId } = (await authenticateApiKey(db, key))!;
    await revokeApiKey(db, boot.teamId, keyId);
    assert.deepEqual(await ensureBootstrapTeam(db, { apiKey: key }), { teamId: boot.teamId, apiKey: null });
    assert.equal(await authenticateApiKey(db, key), null);
    assert.equal((await listTeams(db)).length, 1);
  });

  test('bootstrap: replicas starting together create one team', async () => {
    const db = await t.fresh({ migrate: true });
    const results = await Promise.all(Array.from({ length: 4 }, () => ensureBootstrapTeam(db)));
    assert.equal(new Set(results.map((r) => r.teamId)).size, 1);
    assert.equal(results.filter((r) => r.apiKey !== null).length, 1);
    assert.equal((await listTeams(db)).length, 1);
    if (t.concurrentHandles) {
      // Two more handles on the suite's own database, racing from scratch.
      const [a, b] = [await t.open(), await t.open()];
      await a.query('DELETE FROM api_keys');
      await a.query('DELETE FROM sandboxes');
      await a.query('DELETE FROM teams');
      const raced = await Promise.all([a, b, a, b].map((h) => ensureBootstrapTeam(h)));
      assert.equal(new Set(raced.map((r) => r.teamId)).size, 1);
      assert.equal(raced.filter((r) => r.apiKey !== null).length, 1);
    }
  });

  // ---------------------------------------------------------------------------------------------
  // Teams made by the admin API, admin keys

  test('a team with its first key, in one go; names unique ignoring case; limits kept', async () => {
    const db = await t.fresh({ migrate: true });
    const { team, apiKey } = await createTeamWithKey(db, { name: ' Acme ', maxRunning: 3, maxTimeoutS: 120, keyName: 'ci' });
    assert.deepEqual([team.name, team.maxRunning, team.maxTimeoutS], ['Acme', 3, 120]);
    assert.match(apiKey.key, API_KEY_PATTERN);
    assert.deepEqual(await authenticateKey(db, apiKey.key), { kind: 'team', teamId: team.id, keyId: apiKey.id });
    assert.deepEqual((await listApiKeys(db, team.id)).map((k) => k.name), ['ci']);
    const defaults = await createTeamWithKey(db, { name: 'plain' });
    assert.deepEqual([defaults.team.maxRunning, defaults.team.maxTimeoutS], [20, 86400]);
    assert.equal((await listApiKeys(db, defaults.team.id))[0]!.name, 'default');

    await rejectsWithCode(createTeamWithKey(db, { name: 'ACME' }), 'conflict', new RegExp(`"ACME" exists already \\(${team.id}\\)`));
    await rejectsWithCode(createTeamWithKey(db, { name: 'tab\there' }), 'invalid', /control characters/);
    await rejectsWithCode(createTeamWithKey(db, { name: 'x'.repeat(129) }), 'invalid', /at most 128/);
    await rejectsWithCode(createTeamWithKey(db, { name: 'zero', maxRunning: 0 }), 'invalid', /maxRunning/);
    assert.equal((await listTeams(db)).length, 2, 'a refused team leaves nothing behind');
    assert.equal((await db.query('SELECT 1 FROM api_keys')).length, 2);

    // Created together: the same name from racing callers gives one team.
    const raced = await Promise.allSettled(Array.from({ length: 4 }, () => createTeamWithKey(db, { name: 'racer' })));
    assert.equal(raced.filter((r) => r.status === 'fulfilled').length, 1);
    assert.equal((await listTeams(db)).filter((x) => x.name === 'racer').length, 1);
  });

  test('team summaries count active keys and the sandboxes under max_running', async () => {
    const db = await t.fresh({ migrate: true });
    const { team, apiKey } = await createTeamWithKey(db, { name: 'counted' });
    const other = await createTeamWithKey(db, { name: 'other' });
    await createApiKey(db, team.id);
    await revokeApiKey(db, team.id, apiKey.id);
    const insert = (id: string, teamId: string, state: string) =>
      db.query(
        `INSERT INTO sandboxes (id, team_id, template_id, state, cpu_count, memory_mb, disk_mb, envd_access_token, timeout_ms,
           started_at, state_changed_at, last_reason)
         VALUES ($1, $2, 'base', $3, 1, 512, 1024, 't', 1000, now(), now(), 'requested')`,
        [id, teamId, state],
      );
    for (const [i, state] of ['starting', 'running', 'pausing', 'paused', 'resuming', 'killed'].entries()) {
      await insert(`sbx${i}`, team.id, state);
    }
    await insert('theirs', other.team.id, 'running');
    const summary = await getTeamSummary(db, team.id);
    assert.deepEqual([summary!.activeKeys, summary!.activeSandboxes], [1, 4]);
    assert.equal(await getTeamSummary(db, 'no-such-team'), null);
    const all = await listTeamSummaries(db);
    assert.deepEqual(all.map((x) => [x.name, x.activeKeys, x.activeSandboxes]), [['counted', 1, 4], ['other', 1, 1]]);
  });

  test('admin keys: their own format, stored as sha256 and mask only, never accepted as team keys', async () => {
    const db = await t.fresh({ migrate: true });
    const created = await createAdminKey(db, { name: 'ops' });
    assert.match(created.key, ADMIN_KEY_PATTERN);
    assert.match(created.key, /^nestbox_admin_[0-9a-f]{40}$/);
    assert.equal(created.mask, `${created.key.slice(0, 16)}…${created.key.slice(-4)}`);
    const [row] = await db.query<Record<string, unknown>>('SELECT * FROM admin_keys WHERE id = $1', [created.id]);
    assert.equal(row!.key_hash, sha256(created.key));
    assert.ok(!JSON.stringify(row).includes(created.key.slice(14)), 'the key itself must not be stored');

    assert.deepEqual(await authenticateKey(db, created.key), { kind: 'admin', adminKeyId: created.id });
    const team = await createTeamWithKey(db, { name: 'team' });
    assert.equal((await authenticateKey(db, team.apiKey.key))?.kind, 'team');
    assert.equal(await authenticateAdminKey(db, team.apiKey.key), null, 'a team key is no admin key');
    assert.equal(await authenticateApiKey(db, created.key), null, 'an admin key is no team key');
    // Even with the hash planted in the other table, the prefix decides which table is asked.
    await db.query(`INSERT INTO api_keys (id, team_id, key_hash, key_mask) VALUES ('planted', $1, $2, 'x')`, [team.team.id, sha256(created.key)]);
    assert.deepEqual(await authenticateKey(db, created.key), { kind: 'admin', adminKeyId: created.id });
    for (const bad of ['', created.key.toUpperCase(), `${created.key}0`, created.key.slice(0, -1), `e2b_${created.key.slice(14)}`]) {
      assert.equal(await authenticateKey(db, bad), null, JSON.stringify(bad));
    }
    await rejectsWithCode(createAdminKey(db, { key: 'nestbox_admin_short' }), 'invalid', /nestbox_admin_\[0-9a-f\]\{40\}/);
    await rejectsWithCode(createAdminKey(db, { key: created.key }), 'conflict');
  });

  test('admin keys: revoked ones are refused; the last active one cannot be revoked', async () => {
    const db = await t.fresh({ migrate: true });
    const first = await createAdminKey(db);
    const second = await createAdminKey(db);
    await revokeAdminKeyKeepingOne(db, second.id);
    assert.equal(await authenticateKey(db, second.key), null);
    await revokeAdminKeyKeepingOne(db, second.id); // idempotent
    await rejectsWithCode(revokeAdminKeyKeepingOne(db, first.id), 'conflict', /last active admin key/);
    await rejectsWithCode(revokeAdminKeyKeepingOne(db, 'no-such-key'), 'not_found');
    assert.deepEqual((await listAdminKeys(db)).map((k) => k.id), [first.id]);
    assert.equal((await listAdminKeys(db, { includeRevoked: true })).length, 2);
    // Two concurrent revocations of the last two: one wins.
    const third = await createAdminKey(db);
    const results = await Promise.allSettled([revokeAdminKeyKeepingOne(db, first.id), revokeAdminKeyKeepingOne(db, third.id)]);
    assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
    assert.equal((await listAdminKeys(db)).length, 1);
  });

  test('admin key bootstrap: generated, or NESTBOX_ADMIN_KEY; once; an unseen key later is added, a revoked one stays revoked', async () => {
    const db = await t.fresh({ migrate: true });
    const generated = await ensureBootstrapAdminKey(db);
    assert.match(generated.adminKey!, ADMIN_KEY_PATTERN);
    assert.deepEqual(await ensureBootstrapAdminKey(db), { adminKey: null });

    const chosen = `nestbox_admin_${'0123456789'.repeat(4)}`;
    const fresh = await t.fresh({ migrate: true });
    await rejectsWithCode(ensureBootstrapAdminKey(fresh, { adminKey: 'e2b_' + 'a'.repeat(40) }), 'invalid', /NESTBOX_ADMIN_KEY must be "nestbox_admin_"/);
    assert.deepEqual(await ensureBootstrapAdminKey(fresh, { adminKey: chosen }), { adminKey: chosen });
    assert.equal((await authenticateKey(fresh, chosen))?.kind, 'admin');
    assert.deepEqual(await ensureBootstrapAdminKey(fresh, { adminKey: chosen }), { adminKey: null });
    const later = `nestbox_admin_${'f'.repeat(40)}`;
    assert.deepEqual(await ensureBootstrapAdminKey(fresh, { adminKey: later }), { adminKey: later });
    const laterId = (await authenticateAdminKey(fresh, later))!.adminKeyId;
    await revokeAdminKeyKeepingOne(fresh, laterId);
    assert.deepEqual(await ensureBootstrapAdminKey(fresh, { adminKey: later }), { adminKey: null });
    assert.equal(await authenticateKey(fresh, later), null);

    // Replicas starting together on one database make one key.
    const racing = await t.fresh({ migrate: true });
    const results = await Promise.all(Array.from({ length: 4 }, () => ensureBootstrapAdminKey(racing)));
    assert.equal(results.filter((r) => r.adminKey !== null).length, 1);
    assert.equal((await listAdminKeys(racing)).length, 1);
  });

  test('migration 003 on a database from before admin keys: teams and keys kept, the admin key made on start', async () => {
    const db = await t.fresh({ migrate: false });
    await migrate(db, MIGRATIONS.filter((m) => m.version < 3));
    const boot = await ensureBootstrapTeam(db);
    assert.deepEqual((await migrate(db)).applied.filter((v) => v >= 3)[0], 3);
    assert.equal((await authenticateKey(db, boot.apiKey!))?.kind, 'team');
    assert.match((await ensureBootstrapAdminKey(db)).adminKey!, ADMIN_KEY_PATTERN);
  });

  // ---------------------------------------------------------------------------------------------
  // Nodes

  test('nodes: register, re-register keeps state, set state, list, touch', async () => {
    const db = await t.db();
    const n = await upsertNode(db, { id: 'node-a', url: 'http://10.0.0.1:5007', token: 't1' });
    assert.equal(n.state, 'ready');
    assert.ok(n.lastSeenAt instanceof Date);
    assert.equal(await setNodeState(db, 'node-a', 'draining'), true);
    const again = await upsertNode(db, { id: 'node-a', url: 'http://10.0.0.2:5007', token: 't2' });
    assert.deepEqual([again.url, again.token, again.state], ['http://10.0.0.2:5007', 't2', 'draining']);
    assert.equal(again.createdAt.getTime(), n.createdAt.getTime());
    assert.equal((await upsertNode(db, { ...again, state: 'ready' })).state, 'ready');

    await upsertNode(db, { id: 'node-b', url: 'http://10.0.0.3:5007', token: 't3', state: 'down' });
    assert.deepEqual(
      (await listNodes(db)).filter((x) => x.id.startsWith('node-')).map((x) => [x.id, x.state]),
      [
        ['node-a', 'ready'],
        ['node-b', 'down'],
      ],
    );
    assert.deepEqual(
      (await listNodes(db, { state: 'down' })).map((x) => x.id),
      ['node-b'],
    );

    await db.query(`UPDATE nodes SET last_seen_at = now() - interval '1 hour' WHERE id = 'node-b'`);
    assert.equal(await touchNode(db, 'node-b'), true);
    assert.ok((await getNode(db, 'node-b'))!.lastSeenAt!.getTime() > Date.now() - 60_000);
    assert.equal(await touchNode(db, 'node-zzz'), false);
    assert.equal(await setNodeState(db, 'node-zzz', 'down'), false);
    assert.equal(await getNode(db, 'node-zzz'), null);
    await rejectsWithCode(setNodeState(db, 'node-a', 'gone' as never), 'invalid');
  });
});
