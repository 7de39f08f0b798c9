// The chaos run (README, "When things fail"): many concurrent clients doing random operations through the
// public API against a real node agent (real containers) and a control plane on Postgres, both
// killed with SIGKILL at random moments and started again; injected faults in the runtime
// (checkpoint and restore fail), in node calls (time out before or after taking effect) and in
// the database (every connection dropped). Then the system is left alone for two reconcile
// periods and every invariant is checked. `make chaos` runs the long version; the short one is
// in test/chaos.e2e.test.ts.
//
//   node --import tsx test/chaos/chaos.ts [--ops 1000] [--crashes 20] [--clients 8]
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { canTransition, type SandboxState } from '../../src/core/states.ts';
import type { LoopTimings } from '../../src/control-plane/control-plane.ts';
import { NodeJournal } from '../../src/runtime/journal.ts';

/** Billed time must equal the node's running time to within this, whatever the load. */
const BILLING_TOLERANCE_S = 0.05;
import { AgentProcess, freePort } from '../helpers/agent-process.ts';
import { MAINTENANCE_URL } from '../helpers/databases.ts';

const here = path.dirname(fileURLToPath(import.meta.url));
const TSX = path.resolve(here, '../../node_modules/tsx/dist/esm/index.mjs');

export interface ChaosOptions {
  ops: number;
  crashes: number;
  clients: number;
  /** Probabilities of injected faults. */
  checkpointFault: number;
  restoreFault: number;
  nodeTimeoutFault: number;
  /** How many times every database connection is dropped. */
  dbDrops: number;
  /** At most this many sandboxes alive at once (the host has 2 cores). */
  maxLive: number;
  log: (msg: string) => void;
}

export const TIMINGS: Partial<LoopTimings> = {
  evictMs: 250,
  sweepMs: 500,
  sweepGraceMs: 1_000,
  reconcileMs: 2_000,
  reconcileGraceMs: 1_500,
  nodeDownAfterMs: 600_000,
  nodeCallTimeoutMs: 20_000,
};

export interface ChaosResult {
  operations: number;
  answers: Record<string, number>;
  crashes: { controlPlane: number; agent: number };
  faults: { checkpoint: number; restore: number; nodeTimeout: number; dbDrops: number };
  sandboxes: number;
  violations: string[];
  /** The largest difference between billed and node-observed running time of one sandbox, s. */
  maxBillingDiffS: number;
  convergeMs: number;
  restartRetries: number;
}

class ControlPlaneProcess {
  proc: ChildProcess | null = null;
  stderr = '';
  url = '';
  constructor(private readonly env: Record<string, string>, readonly port: number) {}

  /** Starts it, again if a start fails (a dropped database connection during its migrations). */
  async start(extraEnv: Record<string, string> = {}) {
    for (let attempt = 1; ; attempt++) {
      try {
        return await this.startOnce(extraEnv);
      } catch (e) {
        this.failedStarts.push((e as Error).message.slice(0, 500));
        if (attempt >= 20) throw e;
        await sleep(250);
      }
    }
  }

  failedStarts: string[] = [];
  /** Exits nobody asked for (a crash of its own): each is a violation. */
  unexpectedExits: string[] = [];
  private expectingExit = false;

  private async startOnce(extraEnv: Record<string, string>) {
    this.stderr = '';
    const proc = spawn(process.execPath, ['--import', TSX, path.join(here, '../helpers/control-plane-process.ts')], {
      env: { ...process.env, ...this.env, ...extraEnv, PORT: String(this.port) },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.proc = proc;
    proc.stderr!.on('data', (d) => (this.stderr += d.toString()));
    this.expectingExit = false;
    let serving = false;
    proc.once('exit', (code, signal) => {
      if (serving && !this.expectingExit) {
        const why = this.stderr.split('\n').filter((l) => /rror/.test(l)).slice(0, 2).join(' | ');
        this.unexpectedExits.push(`control plane exited on its own (${code ?? signal}): ${why}`);
        void this.start(extraEnv).catch(() => undefined);
      }
    });
    await new Promise<void>((resolve, reject) => {
      let out = '';
      proc.stdout!.on('data', (d) => {
        out += d.toString();
        const line = out.split('\n').find((l) => l.startsWith('{'));
        if (line) {
          this.url = (JSON.parse(line) as { url: string }).url;
          serving = true;
          resolve();
        }
      });
      proc.once('exit', (code) => reject(new Error(`control plane exited (${code}): ${this.stderr.slice(-2000)}`)));
      setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error('control plane did not start within 30 s'));
      }, 30_000).unref();
    });
  }

  async kill(signal: NodeJS.Signals) {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    this.expectingExit = true;
    const exited = new Promise((r) => proc.once('exit', r));
    proc.kill(signal);
    await exited;
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const count = (text: string, needle: string) => text.split(needle).length - 1;

export async function runChaos(o: ChaosOptions): Promise<ChaosResult> {
  const result: ChaosResult = {
    operations: 0, answers: {}, crashes: { controlPlane: 0, agent: 0 },
    faults: { checkpoint: 0, restore: 0, nodeTimeout: 0, dbDrops: 0 }, sandboxes: 0, violations: [], maxBillingDiffS: 0,
    convergeMs: 0, restartRetries: 0,
  };
  const dbName = `nestbox_chaos_${Date.now()}_${randomBytes(3).toString('hex')}`;
  const admin = new pg.Client({ connectionString: MAINTENANCE_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  const dbUrl = new URL(MAINTENANCE_URL);
  dbUrl.pathname = '/' + dbName;
  const key = 'e2b_' + randomBytes(20).toString('hex');

  const faultyAgentEnv = { NESTBOX_INJECT_FAULTS: `checkpoint=${o.checkpointFault},restore=${o.restoreFault}` };
  const agent = new AgentProcess({ env: faultyAgentEnv });
  let agentLog = '';
  let cpLog = '';
  await agent.start();
  const cp = new ControlPlaneProcess({
    DATABASE_URL: dbUrl.toString(), NESTBOX_API_KEY: key, NODE_ID: agent.nodeId, NODE_URL: agent.url, NODE_TOKEN: agent.token,
    CHAOS_TIMINGS: JSON.stringify(TIMINGS),
  }, await freePort());
  const faultyCpEnv = { CHAOS_NODE_TIMEOUTS: String(o.nodeTimeoutFault) };
  await cp.start(faultyCpEnv);
  const apiUrl = `http://127.0.0.1:${cp.port}`;

  const api = async (method: string, p: string, body?: unknown): Promise<{ status: number; json: any }> => {
    const res = await fetch(apiUrl + p, {
      method,
      headers: { 'x-api-key': key, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(60_000),
    });
    const text = await res.text();
    let json: any;
    try {
      json = text ? JSON.parse(text) : undefined;
    } catch {
      json = text;
    }
    return { status: res.status, json };
  };

  try {
    // --- the storm ----------------------------------------------------------------------------
    const known: string[] = [];
    const dead = new Set<string>();
    let attempts = 0;
    const crashEvery = Math.max(1, Math.floor(o.ops / (o.crashes + 1)));
    const dropEvery = o.dbDrops ? Math.max(1, Math.floor(o.ops / (o.dbDrops + 1))) : Infinity;
    let nextCrash = crashEvery;
    let nextDrop = dropEvery;
    let crashing: Promise<void> | null = null;

    const crash = async () => {
      const victim = (result.crashes.controlPlane + result.crashes.agent) % 2 === 0 ? 'controlPlane' : 'agent';
      if (victim === 'controlPlane') {
        await cp.kill('SIGKILL');
        cpLog += cp.stderr;
        await sleep(Math.random() * 500);
        await cp.start(faultyCpEnv);
      } else {
        agent.signal('SIGKILL');
        await agent.exited;
        agentLog += agent.stderr;
        await sleep(Math.random() * 500);
        await agent.start();
      }
      result.crashes[victim]++;
      o.log(`crash ${result.crashes.controlPlane + result.crashes.agent}: ${victim} killed and restarted (op ${result.operations})`);
    };

    const dropConnections = async () => {
      await admin.query('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()', [dbName]);
      result.faults.dbDrops++;
    };

    const pick = () => {
      const live = known.filter((id) => !dead.has(id));
      return live[Math.floor(Math.random() * live.length)];
    };

    const one = async () => {
      const live = known.filter((id) => !dead.has(id)).length;
      const r = Math.random();
      let kind: string;
      if (r < 0.25) kind = live >= o.maxLive ? 'kill' : 'create';
      else if (r < 0.42) kind = 'pause';
      else if (r < 0.62) kind = 'connect';
      else if (r < 0.72) kind = 'kill';
      else if (r < 0.82) kind = 'timeout';
      else if (r < 0.9) kind = 'info';
      else kind = 'list';
      const id = pick();
      let answer: { status: number; json: any };
      try {
        if (kind === 'create' || !id) {
          kind = 'create';
          answer = await api('POST', '/sandboxes', {
            templateID: 'base', timeout: 20 + Math.floor(Math.random() * 100), autoPause: Math.random() < 0.5,
          });
          if (answer.status === 201) known.push(answer.json.sandboxID);
        } else if (kind === 'pause') answer = await api('POST', `/sandboxes/${id}/pause`, {});
        else if (kind === 'connect') answer = await api('POST', `/sandboxes/${id}/connect`, { timeout: 30 + Math.floor(Math.random() * 60) });
        else if (kind === 'kill') {
          answer = await api('DELETE', `/sandboxes/${id}`);
          if (answer.status === 204 || answer.status === 404) dead.add(id);
        } else if (kind === 'timeout') answer = await api('POST', `/sandboxes/${id}/timeout`, { timeout: 1 + Math.floor(Math.random() * 30) });
        else if (kind === 'info') {
          answer = await api('GET', `/sandboxes/${id}`);
          if (answer.status === 404) dead.add(id);
        } else answer = await api('GET', '/v2/sandboxes?limit=100');
      } catch {
        answer = { status: 0, json: null }; // the control plane is down or the call was cut
      }
      const label = `${kind} ${answer.status || 'no answer'}`;
      result.answers[label] = (result.answers[label] ?? 0) + 1;
      if (answer.status !== 0) result.operations++;
      else await sleep(100); // the control plane is restarting: come back shortly
      // Anything but these is a wrong answer: 400/401/403 mean the API itself misbehaved.
      if (![0, 200, 201, 204, 404, 409, 429, 500, 502, 503].includes(answer.status)) {
        result.violations.push(`unexpected answer to ${kind}: ${answer.status} ${JSON.stringify(answer.json)}`);
      }
    };

    await Promise.all(Array.from({ length: o.clients }, async () => {
      while (result.operations < o.ops && attempts < o.ops * 20) {
        attempts++;
        if (result.operations >= nextCrash && !crashing) {
          nextCrash += crashEvery;
          crashing = crash()
            .catch((e) => void result.violations.push(`could not restart after a crash: ${(e as Error).message}`))
            .finally(() => (crashing = null));
        }
        if (result.operations >= nextDrop) {
          nextDrop += dropEvery;
          void dropConnections();
        }
        await one();
        if (crashing) await sleep(50);
      }
    }));
    await crashing;

    // --- convergence: faults off, the system left alone for two reconcile periods ------------
    o.log(`storm over: ${result.operations} operations answered; converging`);
    await cp.kill('SIGKILL');
    cpLog += cp.stderr;
    agent.signal('SIGKILL');
    await agent.exited;
    agentLog += agent.stderr;
    agent.env = {}; // faults off from here
    await agent.start();
    await cp.start();
    o.log('faults off, both processes restarted; leaving the system alone for two reconcile periods');
    const convergeStart = Date.now();
    await sleep(2 * TIMINGS.reconcileMs!);
    result.convergeMs = Date.now() - convergeStart;
    await cp.kill('SIGTERM'); // graceful: the database holds still while it is checked
    const frozenAt = Date.now();

    // --- invariants -----------------------------------------------------------------------------
    const db = new pg.Client({ connectionString: dbUrl.toString() });
    await db.connect();
    try {
      const v = (msg: string) => result.violations.push(msg);
      const rows = (await db.query<{ id: string; state: SandboxState; node_id: string | null }>(
        'SELECT id, state, node_id FROM sandboxes')).rows;
      result.sandboxes = rows.length;
      const byId = new Map(rows.map((r) => [r.id, r]));
      const inv = await agent.json<{ sandboxes: Array<{ sandboxId: string; state: string }>; snapshots: string[] }>('GET', '/v1/sandboxes');
      const containers = new Map(inv.sandboxes.map((s) => [s.sandboxId, s.state]));
      for (const [id, state] of containers) {
        const row = byId.get(id);
        if (!row || row.state !== 'running') v(`container ${id} (${state}) on the node, but its row is ${row?.state ?? 'missing'}`);
      }
      for (const row of rows) {
        if (row.state === 'running' && containers.get(row.id) !== 'running') v(`${row.id} is running in the database, the node has ${containers.get(row.id) ?? 'nothing'}`);
        if (row.state === 'paused' && !inv.snapshots.includes(row.id)) v(`${row.id} is paused but has no snapshot`);
        if (['starting', 'pausing', 'resuming', 'killing'].includes(row.state)) v(`${row.id} is stuck in ${row.state}`);
      }
      for (const id of inv.snapshots) {
        if (byId.get(id)?.state !== 'paused') v(`snapshot of ${id} whose row is ${byId.get(id)?.state ?? 'missing'}`);
      }
      const open = (await db.query<{ sandbox_id: string }>('SELECT sandbox_id FROM usage_intervals WHERE closed_at IS NULL')).rows;
      for (const o2 of open) if (byId.get(o2.sandbox_id)?.state !== 'running') v(`open usage interval of ${o2.sandbox_id}, which is ${byId.get(o2.sandbox_id)?.state}`);
      const twice = (await db.query<{ sandbox_id: string; n: number }>(
        'SELECT sandbox_id, count(*)::int AS n FROM usage_intervals WHERE closed_at IS NULL GROUP BY sandbox_id HAVING count(*) > 1')).rows;
      for (const t of twice) v(`${t.sandbox_id} has ${t.n} open usage intervals`);

      const events = (await db.query<{ id: string; seq: string; sandbox_id: string; from_state: SandboxState | null; to_state: SandboxState; reason: string; at: Date }>(
        'SELECT id, seq, sandbox_id, from_state, to_state, reason, at FROM lifecycle_events ORDER BY seq')).rows;
      if (new Set(events.map((e) => e.id)).size !== events.length) v('duplicate event ids in the outbox');
      const perSandbox = new Map<string, typeof events>();
      for (const e of events) perSandbox.set(e.sandbox_id, [...(perSandbox.get(e.sandbox_id) ?? []), e]);
      for (const [id, list] of perSandbox) {
        if (list[0]!.from_state !== null || list[0]!.to_state !== 'starting') v(`${id}: history does not begin with -> starting`);
        for (let i = 1; i < list.length; i++) {
          const e = list[i]!;
          if (e.from_state !== list[i - 1]!.to_state || !canTransition(e.from_state!, e.to_state)) {
            v(`${id}: illegal event ${e.from_state} -> ${e.to_state} after -> ${list[i - 1]!.to_state}`);
          }
        }
        if (byId.get(id) && list.at(-1)!.to_state !== byId.get(id)!.state) v(`${id}: row is ${byId.get(id)!.state}, last event says ${list.at(-1)!.to_state}`);
      }

      // Billing against the node's own journal: time the container ran on the node while the
      // sandbox was the customer's (from its creation until it ended), against the usage ledger.
      const journal = await new NodeJournal(path.join(agent.dataDir, 'journal.jsonl')).read();
      const intervals = (await db.query<{ sandbox_id: string; opened_at: Date; closed_at: Date | null }>(
        'SELECT sandbox_id, opened_at, closed_at FROM usage_intervals')).rows;
      for (const [id, list] of perSandbox) {
        const from = list[0]!.at.getTime();
        const endEvent = list.find((e) => e.to_state === 'killed' || e.to_state === 'failed');
        // A create that never became the customer's (it failed) is not billed, whatever ran.
        const until = !list.some((e) => e.to_state === 'running') ? from : endEvent ? endEvent.at.getTime() : frozenAt;
        let observed = 0;
        let startedAt: number | null = null;
        for (const j of journal.filter((x) => x.sandboxId === id)) {
          const t = Date.parse(j.at);
          if (j.event === 'start') startedAt ??= t;
          else if (startedAt !== null) {
            observed += Math.max(0, Math.min(t, until) - Math.max(startedAt, from));
            startedAt = null;
          }
        }
        if (startedAt !== null) observed += Math.max(0, until - Math.max(startedAt, from));
        const billed = intervals.filter((i) => i.sandbox_id === id)
          .reduce((sum, i) => sum + ((i.closed_at?.getTime() ?? frozenAt) - i.opened_at.getTime()), 0);
        const diff = Math.abs(billed - observed) / 1000;
        result.maxBillingDiffS = Math.max(result.maxBillingDiffS, diff);
        if (diff > BILLING_TOLERANCE_S) {
          const t0 = from;
          const rel = (t: number) => ((t - t0) / 1000).toFixed(2);
          v(`${id}: billed ${(billed / 1000).toFixed(2)} s, ran ${(observed / 1000).toFixed(2)} s on the node; events ` +
            list.map((e) => `${rel(e.at.getTime())} ${e.to_state}(${e.reason})`).join(', ') + '; node ' +
            journal.filter((x) => x.sandboxId === id).map((j) => `${rel(Date.parse(j.at))} ${j.event}(${j.cause})`).join(', '));
        }
      }
    } finally {
      await db.end();
    }

    o.log(`checked ${result.sandboxes} sandboxes; resuming the paused ones`);
    // Every paused sandbox resumes (faults off), and everything can be cleaned up.
    await cp.start();
    const paused = (await api('GET', '/v2/sandboxes?state=paused&limit=100')).json as Array<{ sandboxID: string }>;
    for (const s of paused) {
      const r = await api('POST', `/sandboxes/${s.sandboxID}/connect`, { timeout: 60 });
      if (r.status !== 201) result.violations.push(`paused ${s.sandboxID} did not resume: ${r.status} ${JSON.stringify(r.json)}`);
    }
    const all = (await api('GET', '/v2/sandboxes?limit=100')).json as Array<{ sandboxID: string }>;
    for (const s of all) await api('DELETE', `/sandboxes/${s.sandboxID}`);
    const left = await agent.json<{ sandboxes: unknown[]; snapshots: unknown[] }>('GET', '/v1/sandboxes');
    if (left.sandboxes.length || left.snapshots.length) {
      result.violations.push(`after killing everything the node still holds ${left.sandboxes.length} containers, ${left.snapshots.length} snapshots`);
    }
  } finally {
    cpLog += cp.stderr;
    agentLog += agent.stderr;
    result.faults.checkpoint = count(agentLog, 'injected fault: checkpoint');
    result.faults.restore = count(agentLog, 'injected fault: restore');
    result.faults.nodeTimeout = count(cpLog, 'injected fault: node_timeout');
    result.restartRetries = cp.failedStarts.length;
    result.violations.push(...cp.unexpectedExits);
    for (const f of cp.failedStarts) o.log(`a control-plane start failed and was retried: ${f.split('\n').find((l) => /rror/.test(l)) ?? f.slice(0, 200)}`);
    if (process.env.CHAOS_KEEP_LOGS) {
      const { writeFile } = await import('node:fs/promises');
      await writeFile('/tmp/chaos-agent.log', agentLog);
      await writeFile('/tmp/chaos-cp.log', cpLog);
    }
    await cp.kill('SIGTERM').catch(() => undefined);
    await cp.kill('SIGKILL').catch(() => undefined);
    if (agent.proc && agent.proc.exitCode === null) {
      // Whatever is left is removed by the runtime itself before the agent stops.
      await agent.json<{ sandboxes: Array<{ sandboxId: string }> }>('GET', '/v1/sandboxes')
        .then(async (inv) => {
          for (const s of inv.sandboxes) await agent.api('DELETE', `/v1/sandboxes/${s.sandboxId}?deleteSnapshot=true`);
        }).catch(() => undefined);
      agent.signal('SIGKILL');
      await agent.exited;
    }
    await rm(agent.base, { recursive: true, force: true }).catch((e) => {
      result.violations.push(`the node's directory could not be removed after the run: ${(e as Error).message}`);
    });
    await admin.query(`DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`).catch(() => undefined);
    await admin.end();
  }
  return result;
}

export function formatResult(r: ChaosResult): string {
  const lines = [
    ...(r.restartRetries ? [`control-plane starts that failed and were retried: ${r.restartRetries}`] : []),
    `operations answered: ${r.operations} (${Object.entries(r.answers).sort().map(([k, n]) => `${k}: ${n}`).join(', ')})`,
    `crashes: ${r.crashes.controlPlane + r.crashes.agent} (control plane ${r.crashes.controlPlane}, agent ${r.crashes.agent})`,
    `faults: checkpoint ${r.faults.checkpoint}, restore ${r.faults.restore}, node call timeouts ${r.faults.nodeTimeout}, database connection drops ${r.faults.dbDrops}`,
    `sandboxes: ${r.sandboxes}; converged for ${r.convergeMs} ms (two reconcile periods); largest billing difference ${r.maxBillingDiffS.toFixed(3)} s`,
    `violations: ${r.violations.length}`,
    ...r.violations.map((v) => `  - ${v}`),
  ];
  return lines.join('\n');
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const arg = (name: string, def: number) => {
    const i = process.argv.indexOf(`--${name}`);
    return i > 0 ? Number(process.argv[i + 1]) : def;
  };
  const started = Date.now();
  const r = await runChaos({
    ops: arg('ops', 1000), crashes: arg('crashes', 24), clients: arg('clients', 8),
    checkpointFault: 0.1, restoreFault: 0.1, nodeTimeoutFault: 0.05, dbDrops: arg('db-drops', 10), maxLive: 12,
    log: (m) => process.stderr.write(`[chaos] ${m}\n`),
  });
  process.stdout.write(formatResult(r) + `\nduration: ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
  process.exit(r.violations.length ? 1 : 0);
}
