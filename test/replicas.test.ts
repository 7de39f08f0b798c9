// Two control-plane processes on one Postgres, racing on the same sandboxes through the public
// API, sharing one node: the lifecycle rules must hold across processes.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import pg from 'pg';
import { canTransition } from '../src/core/states.ts';
import { openDatabase, type Database } from '../src/store/database.ts';
import { migrate } from '../src/store/migrate.ts';
import { eventsOf, getSandbox } from '../src/store/sandboxes.ts';
import { MAINTENANCE_URL } from './helpers/databases.ts';
import { startFakeNodeServer } from './helpers/fake-node-server.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const KEY = 'e2b_' + 'ab12'.repeat(10);
const dbName = `nestbox_test_${Math.floor(Date.now() / 1000)}_replicas`;

let fakeNode: Awaited<ReturnType<typeof startFakeNodeServer>>;
let db: Database;
const procs: ChildProcess[] = [];
const urls: string[] = [];

async function admin(sql: string) {
  const c = new pg.Client({ connectionString: MAINTENANCE_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

function startReplica(databaseUrl: string): Promise<string> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(here, 'helpers/control-plane-process.ts')], {
    env: { ...process.env, DATABASE_URL: databaseUrl, NODE_URL: fakeNode.url, NODE_TOKEN: fakeNode.token, NESTBOX_API_KEY: KEY },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  procs.push(child);
  return new Promise((resolve, reject) => {
    child.once('exit', (code) => reject(new Error(`replica exited ${code}`)));
    createInterface({ input: child.stdout! }).once('line', (line) => resolve((JSON.parse(line) as { url: string }).url));
  });
}

before(async () => {
  fakeNode = await startFakeNodeServer();
  await admin(`CREATE DATABASE "${dbName}"`);
  const u = new URL(MAINTENANCE_URL);
  u.pathname = `/${dbName}`;
  db = await openDatabase({ url: u.toString() });
  await migrate(db);
  // both replicas start together: migrations and bootstrap must not race
  urls.push(...(await Promise.all([startReplica(u.toString()), startReplica(u.toString())])));
  await db.query('UPDATE teams SET max_running = 100000');
});

after(async () => {
  for (const p of procs) p.kill('SIGTERM');
  await Promise.all(procs.map((p) => new Promise((r) => (p.exitCode !== null ? r(null) : p.once('exit', r)))));
  await db?.close();
  await fakeNode?.close();
  await admin(`DROP DATABASE IF EXISTS "${dbName}" WITH (FORCE)`).catch(() => undefined);
});

async function call(replica: number, method: string, p: string, body?: unknown) {
  const res = await fetch(urls[replica % urls.length] + p, {
    method,
    headers: { 'x-api-key': KEY, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : undefined };
}

describe('two control-plane processes on one Postgres', () => {
  test('one team was bootstrapped, and both replicas serve it', async () => {
    assert.equal((await db.query('SELECT count(*)::int AS n FROM teams'))[0]!.n, 1);
    assert.equal((await call(0, 'GET', '/v2/sandboxes')).status, 200);
    assert.equal((await call(1, 'GET', '/v2/sandboxes')).status, 200);
  });

  test('property: racing requests on both replicas keep the state table, the node and the ledger in agreement', async () => {
    const op = fc.record({
      kind: fc.constantFrom('pause', 'connect', 'kill', 'resume', 'timeout', 'get'),
      target: fc.nat(3),
      replica: fc.nat(1),
      seconds: fc.integer({ min: 1, max: 3 }),
    });
    await fc.assert(
      fc.asyncProperty(fc.array(fc.array(op, { minLength: 2, maxLength: 6 }), { minLength: 1, maxLength: 5 }), fc.boolean(), async (groups, autoPause) => {
        const ids: string[] = [];
        for (let i = 0; i < 2; i++) {
          const r = await call(i, 'POST', '/sandboxes', { templateID: 'base', timeout: 30, autoPause });
          assert.equal(r.status, 201, JSON.stringify(r.body));
          ids.push(r.body.sandboxID);
        }
        for (const group of groups) {
          const answers = await Promise.all(group.map(async (o) => {
            const id = ids[o.target % ids.length]!;
            switch (o.kind) {
              case 'pause': return { o, r: await call(o.replica, 'POST', `/sandboxes/${id}/pause`) };
              case 'connect': return { o, r: await call(o.replica, 'POST', `/sandboxes/${id}/connect`, { timeout: 30 }) };
              case 'resume': return { o, r: await call(o.replica, 'POST', `/sandboxes/${id}/resume`, { timeout: 30 }) };
              case 'kill': return { o, r: await call(o.replica, 'DELETE', `/sandboxes/${id}`) };
              case 'timeout': return { o, r: await call(o.replica, 'POST', `/sandboxes/${id}/timeout`, { timeout: o.seconds }) };
              default: return { o, r: await call(o.replica, 'GET', `/sandboxes/${id}`) };
            }
          }));
          for (const { o, r } of answers) {
            const allowed: Record<string, number[]> = {
              pause: [204, 404, 409], connect: [200, 201, 404, 409], resume: [201, 404, 409],
              kill: [204, 404], timeout: [204, 404, 409], get: [200, 404],
            };
            assert.ok(allowed[o.kind]!.includes(r.status), `${o.kind} -> ${r.status} ${JSON.stringify(r.body)}`);
          }
        }
        // Push every end far away (this waits for transitions in flight), so no eviction starts
        // while the state is being checked.
        for (const id of ids) await call(0, 'POST', `/sandboxes/${id}/timeout`, { timeout: 600 });
        for (const id of ids) {
          let row = (await getSandbox(db, id))!;
          for (let i = 0; i < 300 && ['starting', 'pausing', 'resuming', 'killing'].includes(row.state); i++) {
            await new Promise((r) => setTimeout(r, 50));
            row = (await getSandbox(db, id))!;
          }
          assert.equal(fakeNode.node.containers.has(id), row.state === 'running', `container of a ${row.state} sandbox`);
          assert.equal(fakeNode.node.snapshots.has(id), row.state === 'paused', `snapshot of a ${row.state} sandbox`);
          const events = await eventsOf(db, id);
          for (let i = 1; i < events.length; i++) {
            assert.equal(events[i]!.from, events[i - 1]!.to);
            assert.ok(canTransition(events[i]!.from!, events[i]!.to));
          }
          assert.equal(events.at(-1)!.to, row.state);
          const open = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM usage_intervals WHERE sandbox_id = $1 AND closed_at IS NULL', [id]);
          assert.equal(open[0]!.n, row.state === 'running' ? 1 : 0);
        }
        for (const id of ids) await call(0, 'DELETE', `/sandboxes/${id}`);
      }),
      { numRuns: Number(process.env.REPLICA_RUNS ?? 15) },
    );
  });
});
