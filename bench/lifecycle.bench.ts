// `make bench` (second half): the control plane's lifecycle throughput and API latency with a
// zero-latency fake runtime, on PGlite and on Postgres, beside the raw transaction rate of the
// same database in the same run (the physical limit of the store on this machine).
//
// The load generator runs in a worker thread (its own event loop, real HTTP over keep-alive
// connections to 127.0.0.1), so its own work does not sit in the control plane's event loop.
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import pg from 'pg';
import { ControlPlane } from '../src/control-plane/control-plane.ts';
import type { Database } from '../src/store/database.ts';
import { createApiKey, createTeam } from '../src/store/teams.ts';
import { FakeNode } from '../test/helpers/fake-node.ts';
import { printTable, row, type Row } from './stats.ts';

const SECONDS = Number(process.env.BENCH_LIFECYCLE_SECONDS ?? 15);
const RAW_SECONDS = Number(process.env.BENCH_RAW_SECONDS ?? 5);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 200);
/** Postgres pool size of the control plane (unset: the control plane's default). */
const PG_POOL = process.env.BENCH_PG_POOL ? Number(process.env.BENCH_PG_POOL) : undefined;
/**
 * Teams the clients are spread over (default 1: everyone on the bootstrap team). A diagnostic:
 * creates of one team serialise on its row lock (the quota check), so >1 shows that lock's cost.
 */
const TEAMS = Number(process.env.BENCH_TEAMS ?? 1);
/** Which databases to measure (comma-separated), e.g. BENCH_DATABASES=postgres while profiling. */
const DATABASES = (process.env.BENCH_DATABASES ?? 'pglite,postgres').split(',').map((s) => s.trim());
const MAINTENANCE_URL = process.env.NESTBOX_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const API_KEY = 'e2b_' + 'b3'.repeat(20);
const OPS = ['create', 'pause', 'connect', 'kill'] as const;
type Op = (typeof OPS)[number];

interface LoadConfig {
  url: string;
  /** Client i uses apiKeys[i % length]. */
  apiKeys: string[];
  seconds: number;
  clients: number;
}

interface LoadResult {
  latencies: Record<Op, number[]>;
  /** "op status" → count, for every non-2xx answer ("op network" for a failed request). */
  errors: Record<string, number>;
  requests: number;
  elapsedMs: number;
  client: string;
}

// ---------------------------------------------------------------------------------------------
// Load generator (runs in the worker)

const headersFor = (apiKey: string, body: unknown): Record<string, string> =>
  body === undefined ? { 'x-api-key': apiKey } : { 'x-api-key': apiKey, 'content-type': 'application/json' };

interface Http {
  call(apiKey: string, method: string, p: string, body?: unknown): Promise<{ status: number; json: unknown }>;
  close(): Promise<void>;
}

async function httpClient(url: string, connections: number): Promise<Http> {
  try {
    // undici's Pool: keep-alive, one connection per client, no WHATWG stream overhead.
    const { Pool } = await import('undici');
    const pool = new Pool(url, { connections, pipelining: 1, keepAliveTimeout: 60_000 });
    return {
      name: 'undici Pool',
      async call(apiKey, method, p, body) {
        const res = await pool.request({
          method: method as 'GET', path: p, headers: headersFor(apiKey, body),
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        const text = await res.body.text();
        return { status: res.statusCode, json: text ? JSON.parse(text) : null };
      },
      close: () => pool.close(),
    } as Http & { name: string };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ERR_MODULE_NOT_FOUND') throw e;
    // Node's global fetch: its default dispatcher keeps connections alive and has no per-origin cap.
    return {
      name: 'global fetch',
      async call(apiKey, method, p, body) {
        const res = await fetch(url + p, {
          method, headers: headersFor(apiKey, body),
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        const text = await res.text();
        return { status: res.status, json: text ? JSON.parse(text) : null };
      },
      close: async () => {},
    } as Http & { name: string };
  }
}

async function runLoad(cfg: LoadConfig): Promise<LoadResult> {
  const http = (await httpClient(cfg.url, cfg.clients)) as Http & { name: string };
  const latencies: Record<Op, number[]> = { create: [], pause: [], connect: [], kill: [] };
  const errors: Record<string, number> = {};
  let requests = 0;
  const t0 = performance.now();
  const end = t0 + cfg.seconds * 1000;

  /** One timed request; true on 2xx. Non-2xx and failed requests are counted as errors. */
  const step = async (key: string, op: Op, method: string, p: string, body?: unknown): Promise<{ ok: boolean; json: unknown }> => {
    const s = performance.now();
    requests++;
    try {
      const r = await http.call(key, method, p, body);
      latencies[op].push(performance.now() - s);
      if (r.status >= 200 && r.status < 300) return { ok: true, json: r.json };
      const k = `${op} ${r.status}`;
      errors[k] = (errors[k] ?? 0) + 1;
      return { ok: false, json: r.json };
    } catch {
      const k = `${op} network`;
      errors[k] = (errors[k] ?? 0) + 1;
      return { ok: false, json: null };
    }
  };

  const client = async (_: unknown, i: number) => {
    const key = cfg.apiKeys[i % cfg.apiKeys.length]!;
    while (performance.now() < end) {
      const c = await step(key, 'create', 'POST', '/sandboxes', { templateID: 'base', timeout: 300 });
      const id = (c.json as { sandboxID?: string } | null)?.sandboxID;
      if (!c.ok || !id) continue;
      const paused = await step(key, 'pause', 'POST', `/sandboxes/${id}/pause`, {});
      if (paused.ok) await step(key, 'connect', 'POST', `/sandboxes/${id}/connect`, { timeout: 60 });
      await step(key, 'kill', 'DELETE', `/sandboxes/${id}`);
    }
  };
  await Promise.all(Array.from({ length: cfg.clients }, client));
  const elapsedMs = performance.now() - t0;
  await http.close();
  return { latencies, errors, requests, elapsedMs, client: http.name };
}

function loadInWorker(cfg: LoadConfig): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    // Node 20 starts a worker's main module before tsx's hooks are in place: register them first.
    const boot = `import('tsx/esm/api').then((t) => { t.register(); return import(${JSON.stringify(import.meta.url)}); })`;
    const w = new Worker(boot, { eval: true, workerData: cfg });
    w.once('message', (m: LoadResult) => resolve(m));
    w.once('error', reject);
    w.once('exit', (code) => code !== 0 && reject(new Error(`load worker exited with ${code}`)));
  });
}

// ---------------------------------------------------------------------------------------------
// Raw store limit: bare fenced update + event insert transactions on throwaway rows

async function rawTransactions(db: Database, teamId: string, tasks: number, seconds: number): Promise<number> {
  const ids = Array.from({ length: tasks }, (_, i) => `rawbench${i}${randomBytes(4).toString('hex')}`);
  const now = new Date();
  for (const id of ids) {
    await db.query(
      `INSERT INTO sandboxes (id, team_id, template_id, state, cpu_count, memory_mb, disk_mb, envd_access_token,
         timeout_ms, started_at, state_changed_at, last_reason)
       VALUES ($1, $2, 'base', 'killed', 2, 512, 2048, 'x', 300000, $3, $3, 'requested')`,
      [id, teamId, now],
    );
  }
  let done = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  await Promise.all(ids.map(async (id) => {
    while (performance.now() < end) {
      await db.transaction(async (tx) => {
        const r = await tx.query<{ generation: number }>(
          'UPDATE sandboxes SET generation = generation + 1 WHERE id = $1 RETURNING generation', [id]);
        await tx.query(
          `INSERT INTO lifecycle_events (id, sandbox_id, team_id, from_state, to_state, reason, generation, at)
           VALUES ($1, $2, $3, 'killed', 'killed', 'requested', $4, $5)`,
          [randomUUID(), id, teamId, r[0]!.generation, new Date()],
        );
      });
      done++;
    }
  }));
  return done / ((performance.now() - t0) / 1000);
}

// ---------------------------------------------------------------------------------------------
// One database

interface DbResult {
  label: string;
  rows: Row[];
  transitionsPerS: number;
  rawTxPerS: number;
  requestsPerS: number;
  errors: Record<string, number>;
  client: string;
  /** Where the time went during the load: the control plane's event loop, this process, the host. */
  usage: { mainLoop: number; rawLoop: number; processCores: number; hostCores: number };
}

/** Busy and total jiffies of all CPUs, from /proc/stat (zeros where it is missing). */
async function hostCpu(): Promise<{ busy: number; total: number }> {
  try {
    const f = (await readFile('/proc/stat', 'utf8')).split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
    const total = f.reduce((a, b) => a + b, 0);
    return { busy: total - (f[3] ?? 0) - (f[4] ?? 0), total };
  } catch {
    return { busy: 0, total: 1 };
  }
}

const countEvents = async (db: Database) =>
  Number((await db.query<{ n: number }>('SELECT count(*)::bigint AS n FROM lifecycle_events'))[0]!.n);

async function benchOne(label: string, dbOpts: { databaseUrl?: string; dataDir: string }): Promise<DbResult> {
  const cp = new ControlPlane({
    ...dbOpts, nodeClients: [new FakeNode()], loops: true, port: 0, proxyPort: null, bootstrapApiKey: API_KEY, logger: false,
    ...(PG_POOL !== undefined ? { poolSize: PG_POOL } : {}),
  });
  const started = await cp.start();
  try {
    const apiKeys = [API_KEY];
    for (let t = 1; t < TEAMS; t++) {
      const team = await createTeam(cp.db, { name: `bench ${t}` });
      apiKeys.push((await createApiKey(cp.db, team.id)).key);
    }
    await cp.db.query('UPDATE teams SET max_running = 100000');
    const before = await countEvents(cp.db);
    const elu0 = performance.eventLoopUtilization();
    const cpu0 = process.cpuUsage();
    const host0 = await hostCpu();
    const load = await loadInWorker({ url: started.url, apiKeys, seconds: SECONDS, clients: CLIENTS });
    const elu = performance.eventLoopUtilization(elu0).utilization;
    const cpu = process.cpuUsage(cpu0);
    const host1 = await hostCpu();
    await cp.lifecycle.waitForInFlight();
    const after = await countEvents(cp.db);
    const secs = load.elapsedMs / 1000;
    const suffix = `(${label}, ${CLIENTS} clients)`;
    const rows = OPS.map((op) => row(`api ${op} ${suffix}`, load.latencies[op], null));
    rows.push(row(`api all requests ${suffix}`, OPS.flatMap((op) => load.latencies[op]), null));
    const rawElu0 = performance.eventLoopUtilization();
    const rawTxPerS = await rawTransactions(cp.db, started.teamId, CLIENTS, RAW_SECONDS);
    const rawLoop = performance.eventLoopUtilization(rawElu0).utilization;
    return {
      label, rows, transitionsPerS: (after - before) / secs, rawTxPerS, requestsPerS: load.requests / secs,
      errors: load.errors, client: load.client,
      usage: {
        mainLoop: elu,
        rawLoop,
        processCores: (cpu.user + cpu.system) / 1e6 / secs,
        hostCores: (host1.busy - host0.busy) / (host1.total - host0.total) * os.cpus().length,
      },
    };
  } finally {
    await cp.stop();
  }
}

async function withPostgres<T>(fn: (url: string) => Promise<T>): Promise<T | null> {
  const admin = new pg.Client({ connectionString: MAINTENANCE_URL });
  try {
    await admin.connect();
  } catch (e) {
    console.log(`postgres: skipped (cannot connect to ${MAINTENANCE_URL}: ${(e as Error).message})`);
    return null;
  }
  const name = `nestbox_bench_${randomBytes(6).toString('hex')}`;
  try {
    await admin.query(`CREATE DATABASE ${name}`);
    const u = new URL(MAINTENANCE_URL);
    u.pathname = `/${name}`;
    return await fn(u.toString());
  } finally {
    await admin.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch((e) => console.log(`cannot drop ${name}: ${e.message}`));
    await admin.end();
  }
}

const fmt = (x: number) => x.toFixed(0);

async function main() {
  const results: DbResult[] = [];
  const dir = await mkdtemp(path.join(os.tmpdir(), 'nestbox-bench-'));
  try {
    if (DATABASES.includes('pglite')) results.push(await benchOne('pglite', { dataDir: dir }));
  } finally {
    await rm(dir, { recursive: true, force: true });
    await rm(`${path.join(dir, 'db')}.lock`, { force: true });
  }
  if (DATABASES.includes('postgres')) {
    const pgResult = await withPostgres((url) => benchOne('postgres', { databaseUrl: url, dataDir: dir }));
    if (pgResult) results.push(pgResult);
  }

  console.log('');
  printTable(results.flatMap((r) => r.rows));
  console.log('');
  for (const r of results) {
    const errs = Object.entries(r.errors);
    console.log(
      `${r.label.padEnd(8)}  lifecycle transitions/s ${fmt(r.transitionsPerS).padStart(6)}` +
        `   raw transaction/s ${fmt(r.rawTxPerS).padStart(6)} (${((100 * r.transitionsPerS) / r.rawTxPerS).toFixed(0)}%)` +
        `   requests/s ${fmt(r.requestsPerS).padStart(6)}` +
        `   errors ${errs.length ? errs.map(([k, n]) => `${k}: ${n}`).join(', ') : 0}`,
    );
    console.log(
      `${''.padEnd(8)}  control-plane event loop ${(100 * r.usage.mainLoop).toFixed(0)}% busy` +
        ` (${((1000 * r.usage.mainLoop) / r.transitionsPerS).toFixed(2)} ms per transition;` +
        ` raw: ${(100 * r.usage.rawLoop).toFixed(0)}%, ${((1000 * r.usage.rawLoop) / r.rawTxPerS).toFixed(2)} ms per transaction);` +
        ` this process ${r.usage.processCores.toFixed(2)} cores (with the load worker);` +
        ` host ${r.usage.hostCores.toFixed(2)} of ${os.cpus().length} cores`,
    );
  }
  const pgPool = PG_POOL ?? 'default';
  console.log(`(${CLIENTS} clients via ${results[0]?.client} in a worker thread, ${SECONDS} s per database; raw: ${CLIENTS} tasks, ${RAW_SECONDS} s, same Database handle; postgres pool ${pgPool}${TEAMS > 1 ? `, ${TEAMS} teams` : ''})`);

  // Merge into results.json: replace our entries, keep everyone else's.
  const out = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results.json');
  type Entry = { name: string; p50_ms: number; p99_ms: number; limit_p50_ms: number | null };
  let existing: Entry[] = [];
  try {
    const parsed: unknown = JSON.parse(await readFile(out, 'utf8'));
    if (Array.isArray(parsed)) existing = parsed as Entry[];
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') console.log(`results.json unreadable, rewriting it: ${(e as Error).message}`);
  }
  const mine: Entry[] = results.flatMap((r) => [
    ...r.rows.map(({ name, p50_ms, p99_ms, limit_p50_ms }) => ({ name, p50_ms, p99_ms, limit_p50_ms })),
    {
      name: `lifecycle transitions/s (${r.label}) [per second, not ms; limit = raw transactions/s]`,
      p50_ms: Math.round(r.transitionsPerS), p99_ms: Math.round(r.transitionsPerS), limit_p50_ms: Math.round(r.rawTxPerS),
    },
    {
      name: `lifecycle requests/s (${r.label}, ${CLIENTS} clients) [per second, not ms]`,
      p50_ms: Math.round(r.requestsPerS), p99_ms: Math.round(r.requestsPerS), limit_p50_ms: null,
    },
  ]);
  const kept = existing.filter((e) => !(typeof e?.name === 'string' && (e.name.startsWith('api ') || e.name.startsWith('lifecycle '))));
  await writeFile(out, JSON.stringify([...kept, ...mine], null, 2) + '\n');
  console.log(`\nwrote ${out}`);
}

if (isMainThread) {
  await main();
} else {
  parentPort!.postMessage(await runLoad(workerData as LoadConfig));
}
