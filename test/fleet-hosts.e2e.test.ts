// The fleet of issue 10 on one machine, as three hosts: three `nestbox agent --join` processes,
// each in its own network namespace with its own address and data directory (templates shared),
// snapshots in a real S3 server (Swift with s3api), and two `nestbox server` replicas on one
// Postgres database. Clients alternate between the replicas (the public API by fetch, the e2b
// SDK) and keep creating, running commands, pausing and resuming while each node in turn is
// drained, stopped (SIGTERM), restarted and undrained; sandboxes with a counter in memory go on
// counting wherever they are moved. Then a node is killed (SIGKILL, no drain): its running
// sandboxes are lost and stop billing, its paused ones resume elsewhere.
//
// Checked at the end: no failed client call (retryable refusals are retried as the SDK does),
// no container left on a drained node, every sandbox's events a legal walk, and each billed
// interval matches the time the container ran on its node (the node's journal) within 50 ms.
import { unmountPoolLeftovers } from './helpers/pool-leftovers.ts';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import pg from 'pg';
import { RateLimitError, Sandbox, ServiceBusyError } from 'e2b';
import { openDatabase, type Database } from '../src/store/database.ts';
import { NodeJournal, type JournalEntry } from '../src/runtime/journal.ts';
import { eventually, TEST_ROOT } from './helpers/agent-harness.ts';
import { AgentProcess, freePort } from './helpers/agent-process.ts';
import { MAINTENANCE_URL } from './helpers/databases.ts';
import { assertLegalHistory, assertLedger } from './helpers/lifecycle-asserts.ts';
import { NetnsHosts } from './helpers/netns-hosts.ts';
import { startS3Server, type TestS3Server } from './helpers/s3-server.ts';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/nestbox');
const API_KEY = `e2b_${randomBytes(20).toString('hex')}`;
const ADMIN_KEY = `nestbox_admin_${randomBytes(20).toString('hex')}`;
const run = randomBytes(4).toString('hex');
const base = path.join(TEST_ROOT, `fleet-hosts-${run}`);
const dbName = `nestbox_test_fleet_${run}`;
const BILLING_TOLERANCE_MS = 50;

const net = new NetnsHosts();
let s3: TestS3Server | undefined;
let db: Database | undefined;
let dbCreated = false;
const replicas: Array<{ proc: ChildProcess; apiUrl: string; sandboxUrl: string; out: string }> = [];
const agents: AgentProcess[] = [];
/** The clients' loops: stopped at the end of the test, or by after() when it failed. */
const workload = { stop: false, running: [] as Promise<void>[] };
let passed = false;

// --- clients ---------------------------------------------------------------------------------

/** Every client call, and those that failed for good (a retryable refusal is retried, not a failure). */
const calls = { total: 0, retried: 0, failed: [] as string[] };
const replica = (i: number) => replicas[i % replicas.length]!;
const sdkOpts = (i: number) => ({ apiUrl: replica(i).apiUrl, sandboxUrl: replica(i).sandboxUrl, apiKey: API_KEY, requestTimeoutMs: 120_000 });

class Retryable extends Error {}

/** One client call: retried after a retryable refusal (429/503 with Retry-After, as the SDK reads them), else counted as failed. */
async function call<T>(what: string, fn: () => Promise<T>): Promise<T> {
  calls.total++;
  for (let attempt = 0; ; attempt++) {
    try {
      return await fn();
    } catch (e) {
      const retryable = e instanceof Retryable || e instanceof RateLimitError || e instanceof ServiceBusyError;
      if (retryable && attempt < 60) {
        calls.retried++;
        await new Promise((r) => setTimeout(r, 1000));
        continue;
      }
      calls.failed.push(`${what}: ${(e as Error).message}`);
      throw e;
    }
  }
}

/** The public API by fetch on replica i; a 429/503 with Retry-After throws Retryable. */
async function api(i: number, method: string, p: string, body?: unknown): Promise<any> {
  const res = await fetch(replica(i).apiUrl + p, {
    method,
    headers: { 'X-API-Key': API_KEY, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  if ((res.status === 429 || res.status === 503) && res.headers.get('retry-after')) throw new Retryable(`${res.status} ${text}`);
  if (!res.ok) throw new Error(`${method} ${p} on replica ${i % replicas.length} -> ${res.status} ${text}`);
  return text ? JSON.parse(text) : undefined;
}

const cli = async (i: number, ...args: string[]) => {
  const env = { ...process.env, E2B_API_URL: replica(i).apiUrl, NESTBOX_ADMIN_KEY: ADMIN_KEY, E2B_API_KEY: API_KEY };
  return JSON.parse((await promisify(execFile)(BIN, [...args, '--json'], { env })).stdout);
};
/** A sandbox's events, for failure messages. */
const history = async (id: string) => (await db!.query<{ from_state: string; to_state: string; reason: string; at: Date }>(
  'SELECT from_state, to_state, reason, at FROM lifecycle_events WHERE sandbox_id = $1 ORDER BY seq', [id]))
  .map((e) => `${e.at.toISOString().slice(11, 23)} ${e.from_state}->${e.to_state}(${e.reason})`).join(', ');
const rowOf = async (id: string) => (await db!.query<{ state: string; node_id: string | null }>('SELECT state, node_id FROM sandboxes WHERE id = $1', [id]))[0]!;

// Started with timeoutMs 0: the SDK's default deadline (60 s) kills a command, as envd does.
// Written whole and renamed: a read (or a dump) between truncate and write would find it empty.
const COUNTER = 'python3 -c "import os,time\ni=0\nwhile True:\n  i+=1\n  open(\'/tmp/n.new\',\'w\').write(str(i))\n  os.replace(\'/tmp/n.new\',\'/tmp/n\')\n  time.sleep(0.05)"';
const count = async (s: Sandbox) => Number((await s.commands.run('cat /tmp/n 2>/dev/null || echo 0')).stdout);
/** The counter of a sandbox through replica i (resuming it if paused), and that it still counts. */
async function counterGoesOn(id: string, i: number, atLeast: number): Promise<number> {
  const s = await call(`connect ${id}`, () => Sandbox.connect(id, sdkOpts(i)));
  const now = await call(`count ${id}`, () => count(s)).catch(async (e: Error) => {
    throw new Error(`counting in ${id} through replica ${i % 2}: ${e.message}; its events: ${await history(id)}; row: ${JSON.stringify(await rowOf(id))}`);
  });
  assert.ok(now >= atLeast, `the counter of ${id} went on from ${atLeast} (now ${now}): memory kept`);
  await eventually(() => call(`count ${id}`, () => count(s)), (n) => n > now, `the counter of ${id} still counts`).catch(async (e: Error) => {
    const ps = await s.commands.run('ps -eo pid,stat,wchan:20,cmd').then((r) => r.stdout, (err: Error) => err.message);
    throw new Error(`${e.message}; its events: ${await history(id)}; on ${(await rowOf(id)).node_id} its processes:\n${ps}`);
  });
  return now;
}

// --- the fleet -------------------------------------------------------------------------------

async function startReplica(i: number) {
  // A port found free on loopback may be taken on the service address (the S3 server's, say):
  // the replica then exits at once with EADDRINUSE and is started again on other ports.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startReplicaOn(i, await freePort(), await freePort());
    } catch (e) {
      if (attempt >= 5 || !/EADDRINUSE/.test((e as Error).message)) throw e;
      replicas.pop();
    }
  }
}

async function startReplicaOn(i: number, port: number, proxyPort: number) {
  const host = net.serviceAddress;
  const proc = spawn(BIN, ['server', '--host', host, '--port', String(port), '--proxy-host', host, '--proxy-port', String(proxyPort)], {
    env: {
      ...process.env, DATABASE_URL: dbUrl(), NESTBOX_CONTROL_DIR: path.join(base, `control-${i}`),
      NESTBOX_API_KEY: API_KEY, NESTBOX_ADMIN_KEY: ADMIN_KEY, NESTBOX_LOG_LEVEL: 'warn',
      // A silent node is noticed within seconds (defaults: 10 s unhealthy, 60 s down).
      NESTBOX_NODE_HEARTBEAT_MS: '500', NESTBOX_NODE_UNHEALTHY_AFTER_MS: '2000', NESTBOX_NODE_DOWN_AFTER_MS: '5000',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const r = { proc, apiUrl: '', sandboxUrl: '', out: '' };
  replicas.push(r);
  proc.stderr!.on('data', (d) => (r.out += d.toString()));
  await new Promise<void>((resolve, reject) => {
    proc.stdout!.on('data', (d) => {
      r.out += d.toString();
      const a = /^E2B_API_URL=(\S+)$/m.exec(r.out);
      const s = /^E2B_SANDBOX_URL=(\S+)$/m.exec(r.out);
      if (a && s) {
        [r.apiUrl, r.sandboxUrl] = [a[1]!, s[1]!];
        resolve();
      }
    });
    proc.once('exit', (code) => reject(new Error(`nestbox server exited (${code}): ${r.out}`)));
  });
}

function dbUrl() {
  const u = new URL(MAINTENANCE_URL);
  u.pathname = `/${dbName}`;
  return u.toString();
}

async function maintenance(sql: string) {
  const c = new pg.Client({ connectionString: MAINTENANCE_URL });
  await c.connect();
  try {
    await c.query(sql);
  } finally {
    await c.end();
  }
}

before(async () => {
  await mkdir(base, { recursive: true });
  const hosts = await net.setup(3);
  await maintenance(`CREATE DATABASE ${dbName}`);
  dbCreated = true;
  s3 = await startS3Server({ host: net.serviceAddress });
  await startReplica(0); // the first one migrates the database and makes the team
  await startReplica(1);
  db = await openDatabase({ url: dbUrl(), poolSize: 2 });
  const token = (await cli(0, 'nodes', 'join-token')).token as string;
  const s3Env = {
    NESTBOX_S3_ENDPOINT: s3.endpoint, NESTBOX_S3_BUCKET: `fleet-${run}`, NESTBOX_S3_REGION: s3.region,
    NESTBOX_S3_ACCESS_KEY_ID: s3.accessKeyId, NESTBOX_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
  };
  await Promise.all(hosts.map(async (h, n) => {
    const port = await freePort();
    const a = new AgentProcess({
      nodeId: `host-${n + 1}`, netns: h.netns, host: h.address, env: s3Env,
      // Each node joins through one of the replicas.
      args: ['--join', replica(n).apiUrl, '--join-token', token, '--advertise-url', `http://${h.address}:${port}`],
    });
    a.port = port;
    agents.push(a);
    await a.start();
  }));
  agents.sort((x, y) => x.nodeId.localeCompare(y.nodeId));
});

after(async () => {
  workload.stop = true; // no create may be in flight while the agents go
  await Promise.all(workload.running);
  if (!passed) {
    // What the replicas and agents said (warnings and errors), for the failure at hand.
    for (const [i, r] of replicas.entries()) process.stdout.write(`# replica ${i}:\n${r.out.split('\n').slice(-40).map((l) => `#   ${l}`).join('\n')}\n`);
    for (const a of agents) process.stdout.write(`# ${a.nodeId}:\n${a.stderr.split('\n').slice(-20).map((l) => `#   ${l}`).join('\n')}\n`);
  }
  // Every container and snapshot goes through its agent (a dead one is started again, alone).
  for (const a of agents) {
    if (a.proc?.exitCode !== null || a.proc?.signalCode !== null) {
      a.args = [];
      await a.start().catch((e: Error) => process.stdout.write(`# cleanup: ${a.nodeId} did not start again: ${e.message}\n`));
    }
    const inv = await a.json('GET', '/v1/sandboxes').catch(() => ({ sandboxes: [], snapshots: [] }));
    for (const s of inv.sandboxes) await a.api('DELETE', `/v1/sandboxes/${s.sandboxId}?deleteSnapshot=true`).catch(() => undefined);
    for (const id of inv.snapshots ?? []) await a.api('DELETE', `/v1/snapshots/${id}`).catch(() => undefined);
    a.signal('SIGKILL');
    await a.exited;
  }
  for (const r of replicas) {
    r.proc.kill('SIGTERM');
    await new Promise((resolve) => (r.proc.exitCode !== null ? resolve(null) : r.proc.once('exit', resolve)));
  }
  await db?.close().catch(() => undefined);
  if (dbCreated) await maintenance(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
  await s3?.stop();
  await net.cleanup();
  // Every directory is tried; one still busy (a mount left behind) fails the suite, named.
  for (const a of agents) await unmountPoolLeftovers(a.base);
  const left = await Promise.all([...agents.map((a) => a.base), base].map((d) => rm(d, { recursive: true, force: true }).then(() => null, (e: Error) => e.message)));
  assert.deepEqual(left.filter(Boolean), [], 'everything removed');
});

// --- the workload ----------------------------------------------------------------------------

/**
 * One client's life cycles until stopped: create (SDK or API, alternating replicas), run a
 * command, pause, resume through the other replica, run again, kill.
 */
async function clientLoop(worker: number, made: string[]) {
  for (let i = worker; !workload.stop; i += 2) {
    try {
      let id: string;
      if (i % 2 === 0) {
        id = (await call('create (SDK)', () => Sandbox.create('base', { ...sdkOpts(i), timeoutMs: 300_000 }))).sandboxId;
      } else {
        id = (await call('create (API)', () => api(i, 'POST', '/sandboxes', { templateID: 'base', timeout: 300 }))).sandboxID;
      }
      made.push(id);
      const sbx = await call('connect', () => Sandbox.connect(id, sdkOpts(i + 1)));
      const echo = await call('command', () => sbx.commands.run(`echo ${i} > /home/user/i; cat /home/user/i`));
      assert.equal(echo.stdout, `${i}\n`);
      if (i % 2 === 0) await call('pause (SDK)', () => sbx.pause());
      else await call('pause (API)', () => api(i + 1, 'POST', `/sandboxes/${id}/pause`));
      const again = await call('resume (SDK connect)', () => Sandbox.connect(id, sdkOpts(i)));
      const read = await call('command after resume', () => again.commands.run('cat /home/user/i'));
      assert.equal(read.stdout, `${i}\n`, `${id} kept its file over pause and resume`);
      await call('kill (API)', () => api(i + 1, 'DELETE', `/sandboxes/${id}`));
    } catch (e) {
      if (!calls.failed.length) calls.failed.push(`workload ${worker}: ${(e as Error).message}`);
      return; // the test fails; this client stops
    }
  }
}

/**
 * A client that keeps using one running sandbox (a command through each replica in turn) while
 * the drains move it: it must see short pauses, never an error.
 */
async function busyLoop(id: string, worker: number) {
  for (let k = 0; !workload.stop; k++) {
    try {
      const sbx = await call('connect (busy)', () => Sandbox.connect(id, sdkOpts(k)));
      const out = await call('command (busy)', () => sbx.commands.run(`echo ${k}`));
      assert.equal(out.stdout, `${k}\n`);
    } catch (e) {
      if (!calls.failed.length) calls.failed.push(`busy client ${worker}: ${(e as Error).message}`);
      return;
    }
  }
}

// --- the test --------------------------------------------------------------------------------

test('three hosts, two replicas, S3 snapshots: drains move sandboxes with their memory; a killed node loses its running sandboxes', { timeout: 600_000 }, async () => {
  const t0 = Date.now();
  const lap = (what: string) => process.stdout.write(`# ${((Date.now() - t0) / 1000).toFixed(1)} s: ${what}\n`);
  const nodes = await eventually(() => cli(1, 'nodes', 'list'), (l: any[]) => l.filter((n) => n.state === 'ready').length === 3, 'three ready nodes', 60_000);
  assert.deepEqual(nodes.map((n: any) => n.url).sort(), agents.map((a) => a.url).sort(), 'each node advertises its own address');
  lap('three nodes ready');

  // Sandboxes with a counter in memory, two of them paused.
  const counters: string[] = [];
  for (let i = 0; i < 5; i++) {
    const s = await call('create counter', () => Sandbox.create('base', { ...sdkOpts(i), timeoutMs: 600_000 }));
    await call('start counter', () => s.commands.run(COUNTER, { background: true, timeoutMs: 0 }));
    counters.push(s.sandboxId);
  }
  const last = new Map<string, number>();
  for (const [i, id] of counters.entries()) last.set(id, await counterGoesOn(id, i, 0));
  const paused = counters.slice(3);
  const running = counters.slice(0, 3);
  for (const [i, id] of paused.entries()) await call('pause counter', () => api(i, 'POST', `/sandboxes/${id}/pause`));
  lap(`counters on ${(await Promise.all(counters.map(rowOf))).map((r) => r.node_id).join(', ')}`);

  // Clients at work while each node in turn is drained, stopped, restarted and undrained.
  const made: string[] = [];
  const busy: string[] = [];
  for (let i = 0; i < 2; i++) busy.push((await call('create (busy)', () => Sandbox.create('base', { ...sdkOpts(i), timeoutMs: 600_000 }))).sandboxId);
  workload.running = [clientLoop(0, made), clientLoop(1, made), ...busy.map((id, i) => busyLoop(id, i))];
  for (const [n, a] of agents.entries()) {
    await cli(n, 'nodes', 'drain', a.nodeId);
    await eventually(async () => ({
      rows: await db!.query('SELECT id FROM sandboxes WHERE node_id = $1 AND state IN (\'starting\', \'running\', \'pausing\', \'resuming\')', [a.nodeId]),
      inv: await a.json('GET', '/v1/sandboxes'),
    }), (x) => x.rows.length === 0 && x.inv.sandboxes.length === 0, `${a.nodeId} empty`, 120_000);
    assert.deepEqual((await a.json('GET', '/v1/sandboxes')).sandboxes, [], `no container left on the drained ${a.nodeId}`);
    lap(`${a.nodeId} drained`);
    a.signal('SIGTERM');
    assert.equal(await a.exited, 0, `${a.nodeId} stopped cleanly: ${a.stderr}`);
    await a.start();
    await cli(n + 1, 'nodes', 'undrain', a.nodeId);
    await eventually(() => cli(n, 'nodes', 'list'), (l: any[]) => l.find((x) => x.id === a.nodeId)?.state === 'ready', `${a.nodeId} ready again`);
    lap(`${a.nodeId} restarted and undrained`);
    // Every running counter is running (wherever it is now), through either replica.
    for (const [i, id] of running.entries()) {
      await eventually(() => rowOf(id), (r) => r.state === 'running', `${id} running again`).catch(async (e: Error) => {
        throw new Error(`${e.message}; its events: ${await history(id)}`);
      });
      last.set(id, await counterGoesOn(id, i + n, last.get(id)!));
    }
  }
  workload.stop = true;
  await Promise.all(workload.running);
  const moves = async (ids: string[]) => (await db!.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM lifecycle_events WHERE reason = 'drain' AND to_state = 'pausing' AND sandbox_id = ANY($1::text[])`, [ids]))[0]!.n;
  lap(`${made.length} workload sandboxes (${await moves(made)} moves), 2 busy ones (${await moves(busy)} moves); ${calls.total} client calls, ${calls.retried} retried`);
  // Each node was drained in turn while they ran: each was moved at least once, under its
  // client's feet (paused by the drain; resumed elsewhere by the drain or by its client's connect).
  for (const id of busy) assert.ok(await moves([id]) >= 1, `${id} was moved by a drain`);
  for (const id of busy) await call('kill (busy)', () => api(0, 'DELETE', `/sandboxes/${id}`));
  assert.deepEqual(calls.failed, [], `no client call failed (${calls.total} calls, ${calls.retried} retries)`);
  assert.ok(made.length >= 4, `the clients kept working during the drains (${made.length} sandboxes)`);
  // The paused counters resume on any node, memory and all.
  for (const [i, id] of paused.entries()) last.set(id, await counterGoesOn(id, i, last.get(id)!));
  assert.deepEqual(calls.failed, []);

  // A node killed without a drain: all counters are moved onto host-1 (the others drained), one
  // new sandbox is paused there; the others are undrained, and host-1 gets SIGKILL.
  const victim = agents[0]!;
  for (const [n, a] of agents.entries()) if (a !== victim) await cli(n, 'nodes', 'drain', a.nodeId);
  await eventually(async () => Promise.all(counters.map(rowOf)), (rows) => rows.every((r) => r.state === 'running' && r.node_id === victim.nodeId), 'every counter on host-1', 120_000);
  const pausedThere = await call('create', () => Sandbox.create('base', { ...sdkOpts(0), timeoutMs: 600_000 }));
  assert.equal((await rowOf(pausedThere.sandboxId)).node_id, victim.nodeId);
  await call('start counter', () => pausedThere.commands.run(COUNTER, { background: true, timeoutMs: 0 }));
  const pausedAt = await eventually(() => call('count', () => count(pausedThere)), (x) => x > 0, 'the counter runs');
  await call('pause', () => pausedThere.pause());
  for (const [n, a] of agents.entries()) if (a !== victim) await cli(n, 'nodes', 'undrain', a.nodeId);
  await eventually(() => cli(0, 'nodes', 'list'), (l: any[]) => l.filter((x) => x.state === 'ready').length === 3, 'all three ready');
  victim.signal('SIGKILL');
  await victim.exited;
  const killedAt = Date.now();
  lap('host-1 killed');
  const lost = await eventually(async () => Promise.all(counters.map(rowOf)), (rows) => rows.every((r) => r.state === 'killed'), 'the counters on host-1 are killed', 120_000);
  assert.equal(lost.length, counters.length);
  for (const id of counters) {
    const end = (await db!.query<{ reason: string }>('SELECT reason FROM lifecycle_events WHERE sandbox_id = $1 AND to_state = \'killed\'', [id]))[0]!;
    assert.equal(end.reason, 'lost', `${id} was lost with its node`);
    const open = await db!.query<{ closed_at: Date | null }>('SELECT closed_at FROM usage_intervals WHERE sandbox_id = $1 ORDER BY opened_at DESC LIMIT 1', [id]);
    assert.ok(open[0]!.closed_at && open[0]!.closed_at.getTime() <= killedAt, `billing of ${id} stopped at the node's last confirmed moment`);
  }
  await counterGoesOn(pausedThere.sandboxId, 1, pausedAt);
  const movedTo = (await rowOf(pausedThere.sandboxId)).node_id;
  assert.ok(movedTo && movedTo !== victim.nodeId, `the paused sandbox of the killed node resumed on ${movedTo}`);
  lap('lost and resumed elsewhere');
  // Started again, the killed node rejoins; what it still ran is removed by the reconciler.
  await victim.start();
  await eventually(() => victim.json('GET', '/v1/sandboxes'), (inv: any) => inv.sandboxes.length === 0, 'the lost containers removed from host-1', 120_000);
  await call('kill', () => api(0, 'DELETE', `/sandboxes/${pausedThere.sandboxId}`));
  lap('host-1 back, its lost containers removed');

  // Records: every sandbox's events a legal walk; billing as the nodes saw it.
  const journal = new Map<string, Array<JournalEntry & { node: string }>>();
  for (const a of agents) {
    for (const e of await new NodeJournal(path.join(a.dataDir, 'journal.jsonl')).read()) {
      journal.set(e.sandboxId, [...(journal.get(e.sandboxId) ?? []), { ...e, node: a.nodeId }]);
    }
  }
  const ids = (await db!.query<{ id: string }>('SELECT id FROM sandboxes')).map((r) => r.id);
  for (const id of ids) {
    await assertLegalHistory(db!, id);
    await assertLedger(db!, id);
    // The node's runs of the container: each start with the stop after it on the same node.
    const runs: Array<{ node: string; start: number; stop: number | null }> = [];
    for (const e of (journal.get(id) ?? []).sort((x, y) => Date.parse(x.at) - Date.parse(y.at))) {
      if (e.event === 'start') runs.push({ node: e.node, start: Date.parse(e.at), stop: null });
      else {
        const open = [...runs].reverse().find((r) => r.node === e.node && r.stop === null);
        if (open) open.stop = Date.parse(e.at);
      }
    }
    const intervals = await db!.query<{ opened_at: Date; closed_at: Date | null; reason: string | null }>(
      `SELECT u.opened_at, u.closed_at, e.reason FROM usage_intervals u LEFT JOIN lifecycle_events e ON e.id = u.closed_event_id
       WHERE u.sandbox_id = $1 ORDER BY u.opened_at`, [id]);
    for (const iv of intervals) {
      assert.ok(iv.closed_at, `every interval of ${id} is closed`);
      const opened = iv.opened_at.getTime();
      const closed = iv.closed_at.getTime();
      const run = runs.find((r) => Math.abs(r.start - opened) <= BILLING_TOLERANCE_MS);
      const show = () => `${id}: billed ${new Date(opened).toISOString()} .. ${new Date(closed).toISOString()} (${iv.reason}); node runs ` +
        runs.map((r) => `${r.node} ${new Date(r.start).toISOString()} .. ${r.stop ? new Date(r.stop).toISOString() : 'open'}`).join(', ');
      assert.ok(run, `a billed interval starts when its container started: ${show()}`);
      if (iv.reason === 'lost') assert.ok(closed <= killedAt && closed >= opened, `billing of a lost sandbox ends at its node's last answer: ${show()}`);
      else assert.ok(run.stop !== null && Math.abs(run.stop - closed) <= BILLING_TOLERANCE_MS, `a billed interval ends when its container stopped: ${show()}`);
    }
  }
  lap(`${ids.length} sandboxes checked`);
  assert.deepEqual(calls.failed, [], `no client call failed (${calls.total} calls, ${calls.retried} retries)`);
  passed = true;
});
