// The chaos run (README, "When things fail"): many concurrent clients doing random operations through the
// public API against a real node agent (real containers) and a control plane on Postgres, both
// killed with SIGKILL at random moments and started again; injected faults in the runtime
// (checkpoint and restore fail), in node calls (time out before or after taking effect) and in
// the database (every connection dropped). Then the system is left alone for two reconcile
// periods and every invariant is checked. `make chaos` runs the long version; the short one is
// in test/chaos.e2e.test.ts.
//
// Fleet mode (--fleet): several control-plane replicas on the one Postgres (clients spread their
// calls over them) and several agents joined with a join token, on this host with ports and data
// directories of their own, and snapshots in one store they share: a real S3-compatible server
// (the one setup installs; `--store dir` for a shared directory instead). The chaos events are then those of
// a fleet's life, one at a time at random moments: a replica or an agent killed with SIGKILL and
// started again (the agent rejoins with its stored credential: it is restarted without the join
// token), a node drained by the operator and undrained, an agent stopped with SIGTERM (it drains
// itself) and started again. The invariants are checked on every node, plus: no sandbox ran on two
// nodes at once, and a sandbox changed node only by a pause and a resume (a drain's: reason drain).
//
//   node --import tsx test/chaos/chaos.ts [--ops 1000] [--crashes 20] [--clients 8]
//   node --import tsx test/chaos/chaos.ts --fleet [--agents 3] [--replicas 2] [--ops 600] [--crashes 16]
//     [--events replica,agent,drain,sigterm]   (only these kinds of fleet events)
//     [--store s3|dir]                          (where the nodes' snapshots go; default s3)
import { unmountPoolLeftovers } from '../helpers/pool-leftovers.ts';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { canTransition, type SandboxState } from '../../src/core/states.ts';
import type { LoopTimings } from '../../src/control-plane/control-plane.ts';
import { NodeJournal, type JournalEntry } from '../../src/runtime/journal.ts';

/** Billed time must equal the node's running time to within this, whatever the load. */
const BILLING_TOLERANCE_S = 0.05;
import { AgentProcess, freePort } from '../helpers/agent-process.ts';
import { TEST_ROOT } from '../helpers/agent-harness.ts';
import { MAINTENANCE_URL } from '../helpers/databases.ts';
import { startS3Server, type TestS3Server } from '../helpers/s3-server.ts';

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
  /** Fleet mode: this many joined agents and control-plane replicas (default: one of each, the node configured). */
  fleet?: {
    agents: number; replicas: number; /** Only these kinds of events (default: all). */ events?: FleetEvent[];
    /** Where the nodes' snapshots go: the S3 server (default) or a shared directory. */ store?: 's3' | 'dir';
  };
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

/**
 * Fleet mode: heartbeats every second; a node silent for 6 s gets no placements (a replica's or
 * an agent's restart takes a few seconds), and one silent for 45 s is down (its running
 * sandboxes lost), longer than any restart here, so a node is lost only when a restart fails.
 */
export const FLEET_TIMINGS: Partial<LoopTimings> = {
  ...TIMINGS,
  heartbeatMs: 1_000,
  unhealthyAfterMs: 6_000,
  nodeDownAfterMs: 45_000,
  registryMs: 1_000,
  drainWatchMs: 500,
};

export const FLEET_EVENTS = ['replica', 'agent', 'drain', 'sigterm'] as const;
export type FleetEvent = (typeof FLEET_EVENTS)[number];

/** Fleet mode: an agent stopped with SIGTERM has this long to drain (NESTBOX_DRAIN_TIMEOUT_S). */
const FLEET_DRAIN_TIMEOUT_S = 30;

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
  /** Fleet mode only. */
  fleet?: {
    nodes: number;
    replicas: number;
    /** Operator drains (each followed by an undrain) and agents stopped with SIGTERM. */
    drains: number;
    gracefulStops: number;
    /** Sandboxes that were paused on one node and resumed on another; of those, moved by a drain. */
    moved: number;
    movedByDrain: number;
  };
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
    let startTimer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve, reject) => {
      let out = '';
      proc.stdout!.on('data', (d) => {
        out += d.toString();
        const line = out.split('\n').find((l) => l.startsWith('{'));
        if (line && !serving) {
          this.url = (JSON.parse(line) as { url: string }).url;
          serving = true;
          resolve();
        }
      });
      proc.once('exit', (code) => reject(new Error(`control plane exited (${code}): ${this.stderr.slice(-2000)}`)));
      startTimer = setTimeout(() => {
        proc.kill('SIGKILL');
        reject(new Error('control plane did not start within 30 s'));
      }, 30_000);
    }).finally(() => clearTimeout(startTimer)); // once serving, it lives until killed
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
  const fleet = o.fleet ?? null;
  const result: ChaosResult = {
    operations: 0, answers: {}, crashes: { controlPlane: 0, agent: 0 },
    faults: { checkpoint: 0, restore: 0, nodeTimeout: 0, dbDrops: 0 }, sandboxes: 0, violations: [], maxBillingDiffS: 0,
    convergeMs: 0, restartRetries: 0,
    ...(fleet ? { fleet: { nodes: fleet.agents, replicas: fleet.replicas, drains: 0, gracefulStops: 0, moved: 0, movedByDrain: 0 } } : {}),
  };
  const dbName = `nestbox_chaos_${Date.now()}_${randomBytes(3).toString('hex')}`;
  const admin = new pg.Client({ connectionString: MAINTENANCE_URL });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${dbName}`);
  const dbUrl = new URL(MAINTENANCE_URL);
  dbUrl.pathname = '/' + dbName;
  const key = 'e2b_' + randomBytes(20).toString('hex');
  const adminKey = 'nestbox_admin_' + randomBytes(20).toString('hex');
  const timings = fleet ? FLEET_TIMINGS : TIMINGS;

  const faultyAgentEnv = { NESTBOX_INJECT_FAULTS: `checkpoint=${o.checkpointFault},restore=${o.restoreFault}` };
  const faultyCpEnv = { CHAOS_NODE_TIMEOUTS: String(o.nodeTimeoutFault) };
  // Fleet mode: the snapshot store the nodes share (S3 unless --store dir), set once the server is up.
  let storeEnv: Record<string, string> = {};
  const agentEnv = (faulty: boolean) => ({
    ...(faulty ? faultyAgentEnv : {}), ...(fleet ? { NESTBOX_DRAIN_TIMEOUT_S: String(FLEET_DRAIN_TIMEOUT_S) } : {}), ...storeEnv,
  });
  const agents: AgentProcess[] = [];
  const cps: ControlPlaneProcess[] = [];
  const agentLogs = new Map<AgentProcess, string>();
  const keepAgentLog = (a: AgentProcess) => agentLogs.set(a, (agentLogs.get(a) ?? '') + a.stderr);
  let cpLog = '';
  // With CHAOS_KEEP_LOGS: every process's stderr, and the harness's own events, by time.
  const timeline: string[] = [];
  const mark = (who: string, text: string) => {
    if (!process.env.CHAOS_KEEP_LOGS) return;
    for (const line of text.split('\n')) if (line.trim()) timeline.push(`${new Date().toISOString()} ${who} ${line}`);
  };
  const startAgent = async (a: AgentProcess) => {
    await a.start();
    mark(a.nodeId, a.stderr); // what it said before serving (recovery)
    mark('harness', `agent ${a.nodeId} serving`);
    a.proc?.stderr?.on('data', (d) => mark(a.nodeId, d.toString()));
    a.proc?.stdout?.on('data', (d) => mark(a.nodeId, d.toString())); // its API's warnings and errors
  };
  const sharedSnapshots = path.join(TEST_ROOT, `chaos-snapshots-${randomBytes(4).toString('hex')}`);
  let s3: TestS3Server | null = null;
  const cpEnv = { DATABASE_URL: dbUrl.toString(), NESTBOX_API_KEY: key, NESTBOX_ADMIN_KEY: adminKey, CHAOS_TIMINGS: JSON.stringify(timings),
    ...(process.env.CHAOS_KEEP_LOGS ? { CHAOS_LOG: '1' } : {}) };

  const call = async (base: string, k: string, method: string, p: string, body?: unknown): Promise<{ status: number; json: any }> => {
    const res = await fetch(base + p, {
      method,
      headers: { 'x-api-key': k, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
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
  // Clients spread their calls over the replicas (one in the single-node mode).
  const anyReplica = () => cps[Math.floor(Math.random() * cps.length)]!;
  const api = (method: string, p: string, body?: unknown) => call(`http://127.0.0.1:${anyReplica().port}`, key, method, p, body);
  const adminApi = (method: string, p: string, body?: unknown) => call(`http://127.0.0.1:${anyReplica().port}`, adminKey, method, p, body);
  /** An operator's call, retried the way an operator would on 503 (a dropped database connection) or no answer. */
  const adminCall = async (method: string, p: string, body?: unknown) => {
    for (let attempt = 1; ; attempt++) {
      const r = await adminApi(method, p, body).catch(() => ({ status: 0, json: null }));
      if ((r.status !== 503 && r.status !== 0) || attempt >= 20) return r;
      await sleep(250);
    }
  };
  const nodesList = async () => {
    const r = await adminCall('GET', '/nestbox/v1/nodes');
    if (r.status !== 200) throw new Error(`GET /nestbox/v1/nodes: ${r.status} ${JSON.stringify(r.json)}`);
    return r.json as Array<{ id: string; state: string; cordoned: boolean }>;
  };
  const waitForReadyNodes = async (why: string, ms = 60_000) => {
    const until = Date.now() + ms;
    let last: Array<{ id: string; state: string }> = [];
    while (Date.now() < until) {
      last = await nodesList().catch(() => []);
      if (last.length === agents.length && last.every((n) => n.state === 'ready')) return;
      await sleep(250);
    }
    result.violations.push(`${why}: nodes not all ready within ${ms / 1000} s: ${last.map((n) => `${n.id} ${n.state}`).join(', ')}`);
  };

  try {
    if (!fleet) {
      const agent = new AgentProcess({ env: agentEnv(true) });
      agents.push(agent);
      await startAgent(agent);
      cps.push(new ControlPlaneProcess({ ...cpEnv, NODE_ID: agent.nodeId, NODE_URL: agent.url, NODE_TOKEN: agent.token }, await freePort()));
      await cps[0]!.start(faultyCpEnv);
    } else {
      // One replica migrates the database first; the others start on it at once.
      for (let i = 0; i < fleet.replicas; i++) cps.push(new ControlPlaneProcess(cpEnv, await freePort()));
      await cps[0]!.start(faultyCpEnv);
      await Promise.all(cps.slice(1).map((c) => c.start(faultyCpEnv)));
      if ((fleet.store ?? 's3') === 's3') s3 = await startS3Server();
      storeEnv = s3 ? {
        NESTBOX_S3_ENDPOINT: s3.endpoint, NESTBOX_S3_BUCKET: `chaos-${randomBytes(4).toString('hex')}`, NESTBOX_S3_REGION: s3.region,
        NESTBOX_S3_ACCESS_KEY_ID: s3.accessKeyId, NESTBOX_S3_SECRET_ACCESS_KEY: s3.secretAccessKey,
      } : {};
      const made = await adminCall('POST', '/nestbox/v1/nodes/join-tokens', {});
      if (made.status !== 201) throw new Error(`join token: ${made.status} ${JSON.stringify(made.json)}`);
      for (let i = 0; i < fleet.agents; i++) {
        const joinUrl = `http://127.0.0.1:${cps[i % cps.length]!.port}`;
        const a = new AgentProcess({
          nodeId: `chaos-${i}-${randomBytes(2).toString('hex')}`, env: agentEnv(true),
          // With S3 each node stages and downloads in a directory of its own.
          ...(s3 ? {} : { snapshotDir: sharedSnapshots }),
          args: ['--join', joinUrl, '--join-token', made.json.token],
        });
        agents.push(a);
        await startAgent(a);
        // Every later start proves the stored credential: no join token any more.
        a.args = ['--join', joinUrl];
      }
      await waitForReadyNodes('after joining');
      o.log(`fleet up: ${cps.length} replicas, ${agents.length} agents joined (${agents.map((a) => a.nodeId).join(', ')}); snapshots in ${s3 ? `S3 at ${s3.endpoint}` : sharedSnapshots}`);
    }

    // --- the storm ----------------------------------------------------------------------------
    const known: string[] = [];
    const dead = new Set<string>();
    let attempts = 0;
    const crashEvery = Math.max(1, Math.floor(o.ops / (o.crashes + 1)));
    const dropEvery = o.dbDrops ? Math.max(1, Math.floor(o.ops / (o.dbDrops + 1))) : Infinity;
    // Fleet mode: the moments are random (half to one and a half periods apart).
    const nextGap = () => (fleet ? Math.max(1, Math.round(crashEvery * (0.5 + Math.random()))) : crashEvery);
    let nextCrash = nextGap();
    let nextDrop = dropEvery;
    let drops = 0;
    let crashing: Promise<void> | null = null;
    let events = 0;
    const round: FleetEvent[] = [];

    const restartReplica = async (c: ControlPlaneProcess, extraEnv: Record<string, string>) => {
      await c.kill('SIGKILL');
      cpLog += c.stderr;
      await sleep(Math.random() * 500);
      await c.start(extraEnv);
    };
    const restartAgent = async (a: AgentProcess) => {
      a.signal('SIGKILL');
      await a.exited;
      keepAgentLog(a);
      await sleep(Math.random() * 500);
      await startAgent(a);
    };
    const pickAgent = () => agents[Math.floor(Math.random() * agents.length)]!;

    /** The operator drains a node, waits until nothing runs on it (or a minute passes), undrains it. */
    const drainAndUndrain = async (a: AgentProcess) => {
      const drained = await adminCall('POST', `/nestbox/v1/nodes/${a.nodeId}/drain`);
      if (drained.status !== 204) throw new Error(`drain ${a.nodeId}: ${drained.status} ${JSON.stringify(drained.json)}`);
      const until = Date.now() + 60_000;
      let running: string[] = [];
      for (;;) {
        const inv = await a.json<{ sandboxes: Array<{ sandboxId: string; state: string }> }>('GET', '/v1/sandboxes');
        running = inv.sandboxes.filter((s) => s.state === 'running' || s.state === 'creating').map((s) => s.sandboxId);
        if (running.length === 0 || Date.now() > until) break;
        await sleep(250);
      }
      if (running.length) result.violations.push(`node ${a.nodeId} drained for a minute still runs ${running.join(', ')}`);
      await sleep(Math.random() * 2_000); // drained a while: placements go elsewhere
      const undrained = await adminCall('POST', `/nestbox/v1/nodes/${a.nodeId}/undrain`);
      if (undrained.status !== 204) throw new Error(`undrain ${a.nodeId}: ${undrained.status} ${JSON.stringify(undrained.json)}`);
      result.fleet!.drains++;
    };

    /** SIGTERM: the agent drains itself (its sandboxes move away) and exits; then it is started again. */
    const stopGracefully = async (a: AgentProcess) => {
      a.signal('SIGTERM');
      const code = await Promise.race([a.exited, sleep((FLEET_DRAIN_TIMEOUT_S + 30) * 1000).then(() => 'late' as const)]);
      if (code === 'late') {
        result.violations.push(`agent ${a.nodeId} did not exit within ${FLEET_DRAIN_TIMEOUT_S + 30} s of SIGTERM`);
        a.signal('SIGKILL');
        await a.exited;
      } else if (code !== 0) {
        o.log(`agent ${a.nodeId} drained with errors (exit ${code}): ${a.stderr.split('\n').filter((l) => /drain/.test(l)).join(' | ')}`);
      }
      keepAgentLog(a);
      await sleep(Math.random() * 500);
      await startAgent(a);
      result.fleet!.gracefulStops++;
    };

    const crash = async () => {
      if (!fleet) {
        const victim = (result.crashes.controlPlane + result.crashes.agent) % 2 === 0 ? 'controlPlane' : 'agent';
        if (victim === 'controlPlane') await restartReplica(cps[0]!, faultyCpEnv);
        else await restartAgent(agents[0]!);
        result.crashes[victim]++;
        o.log(`crash ${result.crashes.controlPlane + result.crashes.agent}: ${victim} killed and restarted (op ${result.operations})`);
        return;
      }
      // Every kind once per round, in a random order, on a random victim.
      if (round.length === 0) round.push(...[...(fleet.events ?? FLEET_EVENTS)].sort(() => Math.random() - 0.5));
      const kind = round.pop()!;
      events++;
      const at = result.operations;
      mark('harness', `event ${events}: ${kind} begins`);
      if (kind === 'replica') {
        const i = Math.floor(Math.random() * cps.length);
        await restartReplica(cps[i]!, faultyCpEnv);
        result.crashes.controlPlane++;
        o.log(`event ${events}: replica ${i} killed and restarted (op ${at})`);
        mark('harness', `event ${events}: replica ${i} restarted`);
      } else if (kind === 'agent') {
        const a = pickAgent();
        await restartAgent(a);
        result.crashes.agent++;
        o.log(`event ${events}: agent ${a.nodeId} killed and restarted, rejoined with its credential (op ${at})`);
      } else if (kind === 'drain') {
        const a = pickAgent();
        const t0 = Date.now();
        await drainAndUndrain(a);
        o.log(`event ${events}: node ${a.nodeId} drained and undrained in ${((Date.now() - t0) / 1000).toFixed(1)} s (op ${at})`);
      } else {
        const a = pickAgent();
        const t0 = Date.now();
        await stopGracefully(a);
        o.log(`event ${events}: agent ${a.nodeId} stopped with SIGTERM (drained itself) and restarted in ${((Date.now() - t0) / 1000).toFixed(1)} s (op ${at})`);
      }
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

    // Fleet mode: exactly `crashes` events; the storm goes on past `ops` until they all began.
    const eventsLeft = () => fleet !== null && events < o.crashes;
    await Promise.all(Array.from({ length: o.clients }, async () => {
      while ((result.operations < o.ops || eventsLeft()) && attempts < o.ops * 20) {
        attempts++;
        if ((result.operations >= nextCrash || (fleet && result.operations >= o.ops)) && !crashing && (!fleet || eventsLeft())) {
          nextCrash += nextGap();
          crashing = crash()
            .catch((e) => void result.violations.push(`could not restart after a crash: ${(e as Error).message}`))
            .finally(() => (crashing = null));
        }
        if (result.operations >= nextDrop && drops < o.dbDrops) {
          nextDrop += dropEvery;
          drops++;
          void dropConnections();
        }
        await one();
        if (crashing) await sleep(50);
      }
    }));
    await crashing;

    // --- convergence: faults off, the system left alone for two reconcile periods ------------
    o.log(`storm over: ${result.operations} operations answered; converging`);
    for (const c of cps) {
      await c.kill('SIGKILL');
      cpLog += c.stderr;
    }
    for (const a of agents) {
      a.signal('SIGKILL');
      await a.exited;
      keepAgentLog(a);
      a.env = agentEnv(false); // faults off from here
    }
    if (!fleet) {
      await agents[0]!.start();
      await cps[0]!.start();
    } else {
      // Replicas first: a restarted agent proves its credential to its replica before it serves.
      await Promise.all(cps.map((c) => c.start()));
      await Promise.all(agents.map((a) => startAgent(a)));
      for (const n of await nodesList()) if (n.cordoned) result.violations.push(`node ${n.id} is still drained after the storm`);
      await waitForReadyNodes('converging');
    }
    o.log('faults off, all processes restarted; leaving the system alone for two reconcile periods');
    const convergeStart = Date.now();
    await sleep(2 * timings.reconcileMs!);
    result.convergeMs = Date.now() - convergeStart;
    for (const c of cps) await c.kill('SIGTERM'); // graceful: the database holds still while it is checked
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
      // Every node's containers; the snapshot store (shared by the nodes in fleet mode).
      const containers = new Map<string, Array<{ nodeId: string; state: string }>>();
      const snapshots = new Set<string>();
      for (const a of agents) {
        const inv = await a.json<{ sandboxes: Array<{ sandboxId: string; state: string }>; snapshots: string[] }>('GET', '/v1/sandboxes');
        for (const s of inv.sandboxes) containers.set(s.sandboxId, [...(containers.get(s.sandboxId) ?? []), { nodeId: a.nodeId, state: s.state }]);
        inv.snapshots.forEach((id) => snapshots.add(id));
      }
      const here = (id: string) => (fleet ? ` on ${containers.get(id)?.map((c) => c.nodeId).join(', ') ?? 'no node'}` : '');
      for (const [id, list] of containers) {
        const row = byId.get(id);
        for (const c of list) {
          if (!row || row.state !== 'running' || row.node_id !== c.nodeId) {
            v(`container ${id} (${c.state}) on node ${c.nodeId}, but its row is ${row?.state ?? 'missing'}${row?.node_id && row.node_id !== c.nodeId ? ` on ${row.node_id}` : ''}`);
          }
        }
        if (list.filter((c) => c.state === 'running').length > 1) v(`${id} is running on two nodes:${here(id)}`);
      }
      for (const row of rows) {
        const onItsNode = containers.get(row.id)?.find((c) => c.nodeId === row.node_id);
        if (row.state === 'running' && onItsNode?.state !== 'running') {
          v(`${row.id} is running in the database on ${row.node_id}, that node has ${onItsNode?.state ?? 'nothing'}${here(row.id)}`);
        }
        if (row.state === 'paused' && !snapshots.has(row.id)) v(`${row.id} is paused but has no snapshot`);
        if (['starting', 'pausing', 'resuming', 'killing'].includes(row.state)) v(`${row.id} is stuck in ${row.state}`);
      }
      for (const id of snapshots) {
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

      // Billing against the nodes' own journals: time the container ran on a node while the
      // sandbox was the customer's (from its creation until it ended), against the usage ledger.
      const journal: Array<JournalEntry & { nodeId: string }> = [];
      for (const a of agents) {
        for (const j of await new NodeJournal(path.join(a.dataDir, 'journal.jsonl')).read()) journal.push({ ...j, nodeId: a.nodeId });
      }
      journal.sort((x, y) => Date.parse(x.at) - Date.parse(y.at));
      const intervals = (await db.query<{ sandbox_id: string; opened_at: Date; closed_at: Date | null }>(
        'SELECT sandbox_id, opened_at, closed_at FROM usage_intervals')).rows;
      for (const [id, list] of perSandbox) {
        const from = list[0]!.at.getTime();
        // A sandbox found lost ended when it was found so (a container its node kept running
        // unseen, e.g. while the node restarted, is not the customer's any more).
        const endEvent = list.find((e) => (e.to_state === 'killing' && e.reason === 'lost') || e.to_state === 'killed' || e.to_state === 'failed');
        // A create that never became the customer's (it failed) is not billed, whatever ran; nor
        // is an attempt that failed before another node's start succeeded (the control plane
        // killed it, confirmed, before it placed the start again): runs that ended before the
        // sandbox first ran.
        const firstRunning = list.find((e) => e.to_state === 'running')?.at.getTime() ?? null;
        const until = firstRunning === null ? from : endEvent ? endEvent.at.getTime() : frozenAt;
        const mine = journal.filter((x) => x.sandboxId === id);
        let observed = 0;
        // Runs per node: [start, stop) as each node saw them.
        const runs: Array<{ nodeId: string; start: number; end: number; cause: string; endCause: string }> = [];
        for (const a of agents) {
          let startedAt: { t: number; cause: string } | null = null;
          for (const j of mine.filter((x) => x.nodeId === a.nodeId)) {
            const t = Date.parse(j.at);
            if (j.event === 'start') startedAt ??= { t, cause: j.cause };
            else if (startedAt !== null) {
              if (firstRunning === null || t > firstRunning) observed += Math.max(0, Math.min(t, until) - Math.max(startedAt.t, from));
              runs.push({ nodeId: a.nodeId, start: startedAt.t, end: t, cause: startedAt.cause, endCause: j.cause });
              startedAt = null;
            }
          }
          if (startedAt !== null) {
            observed += Math.max(0, until - Math.max(startedAt.t, from));
            runs.push({ nodeId: a.nodeId, start: startedAt.t, end: Number.POSITIVE_INFINITY, cause: startedAt.cause, endCause: '' });
          }
        }
        const billed = intervals.filter((i) => i.sandbox_id === id)
          .reduce((sum, i) => sum + ((i.closed_at?.getTime() ?? frozenAt) - i.opened_at.getTime()), 0);
        const diff = Math.abs(billed - observed) / 1000;
        result.maxBillingDiffS = Math.max(result.maxBillingDiffS, diff);
        const t0 = from;
        const rel = (t: number) => ((t - t0) / 1000).toFixed(2);
        const story = () => `events (0 = ${new Date(t0).toISOString()}) ` + list.map((e) => `${rel(e.at.getTime())} ${e.to_state}(${e.reason})`).join(', ') + '; nodes ' +
          mine.map((j) => `${rel(Date.parse(j.at))} ${fleet ? `${j.nodeId}:` : ''}${j.event}(${j.cause})`).join(', ');
        if (diff > BILLING_TOLERANCE_S) {
          v(`${id}: billed ${(billed / 1000).toFixed(2)} s, ran ${(observed / 1000).toFixed(2)} s on the nodes; ${story()}`);
        }
        if (!fleet) continue;
        // Never on two nodes at once (to within the billing tolerance), and from one node to
        // another only by a pause there and a resume here.
        runs.sort((x, y) => x.start - y.start);
        for (let i = 1; i < runs.length; i++) {
          const [prev, next] = [runs[i - 1]!, runs[i]!];
          if (prev.nodeId === next.nodeId) continue;
          if (next.start < prev.end - BILLING_TOLERANCE_S * 1000) v(`${id} ran on ${prev.nodeId} and ${next.nodeId} at once; ${story()}`);
          else if (next.cause === 'resume' && prev.endCause !== 'pause') v(`${id} resumed on ${next.nodeId} after it ${prev.endCause} on ${prev.nodeId}, not a pause; ${story()}`);
        }
        const moved = runs.some((r, i) => i > 0 && r.cause === 'resume' && r.nodeId !== runs[i - 1]!.nodeId);
        if (moved) result.fleet!.moved++;
        // A drain's events: pausing and paused, then resuming and running elsewhere (or killed at its deadline).
        const drainSteps: Record<string, SandboxState[]> = { pausing: ['running'], paused: ['pausing'], resuming: ['paused'], running: ['resuming'], killing: ['running'], killed: ['running', 'killing'] };
        const byDrain = list.filter((e) => e.reason === 'drain');
        for (const e of byDrain) {
          if (!drainSteps[e.to_state]?.includes(e.from_state!)) v(`${id}: a drain's event ${e.from_state} -> ${e.to_state} is not a step of a drain; ${story()}`);
        }
        if (moved && byDrain.some((e) => e.to_state === 'resuming')) result.fleet!.movedByDrain++;
      }
    } finally {
      await db.end();
    }

    o.log(`checked ${result.sandboxes} sandboxes; resuming the paused ones`);
    // Every paused sandbox resumes (faults off), and everything can be cleaned up.
    await Promise.all(cps.map((c) => c.start()));
    if (fleet) await waitForReadyNodes('before resuming the paused sandboxes');
    // Room first (the team may run 20 at once, and more than that may be paused): the running
    // ones, checked already, go; then each paused one resumes, and goes.
    const running = (await api('GET', '/v2/sandboxes?state=running&limit=100')).json as Array<{ sandboxID: string }>;
    for (const s of running) await api('DELETE', `/sandboxes/${s.sandboxID}`);
    const paused = (await api('GET', '/v2/sandboxes?state=paused&limit=100')).json as Array<{ sandboxID: string }>;
    for (const s of paused) {
      const r = await api('POST', `/sandboxes/${s.sandboxID}/connect`, { timeout: 60 });
      if (r.status !== 201) result.violations.push(`paused ${s.sandboxID} did not resume: ${r.status} ${JSON.stringify(r.json)}`);
      else await api('DELETE', `/sandboxes/${s.sandboxID}`);
    }
    const all = (await api('GET', '/v2/sandboxes?limit=100')).json as Array<{ sandboxID: string }>;
    for (const s of all) await api('DELETE', `/sandboxes/${s.sandboxID}`);
    // What a failed operation left (a directory without a container, say) is the reconciler's
    // to remove at its next tick; what is still there two periods later is a leak. Either way
    // the agent's lines about it are shown.
    for (const a of agents) {
      type Left = { sandboxes: Array<{ sandboxId: string; state: string; busy: boolean }>; snapshots: string[] };
      const read = () => a.json<Left>('GET', '/v1/sandboxes');
      const describe = (left: Left) => [...left.sandboxes.map((s) => `${s.sandboxId} (${s.state}${s.busy ? ', busy' : ''})`), ...left.snapshots.map((s) => `snapshot ${s}`)];
      const first = await read();
      if (!first.sandboxes.length && !first.snapshots.length) continue;
      const since = Date.now();
      let left = first;
      while ((left.sandboxes.length || left.snapshots.length) && Date.now() - since < 2 * timings.reconcileMs! + 1000) {
        await sleep(250);
        left = await read();
      }
      keepAgentLog(a);
      const ids = [...first.sandboxes.map((s) => s.sandboxId), ...first.snapshots];
      const lines = (agentLogs.get(a) ?? '').split('\n').filter((l) => ids.some((id) => l.includes(id))).slice(-20);
      const held = `node ${a.nodeId} held ${describe(first).join(', ')} right after everything was killed`;
      if (left.sandboxes.length || left.snapshots.length) {
        result.violations.push(`${held}, and still holds ${describe(left).join(', ')} two reconcile periods later; its lines: ${lines.join(' | ')}`);
      } else {
        o.log(`${held}; the reconciler removed it within ${Date.now() - since} ms; the agent's lines about it: ${lines.join(' | ') || '(none)'}`);
      }
    }
  } finally {
    for (const c of cps) cpLog += c.stderr;
    for (const a of agents) keepAgentLog(a);
    const agentLog = [...agentLogs.values()].join('');
    result.faults.checkpoint = count(agentLog, 'injected fault: checkpoint');
    result.faults.restore = count(agentLog, 'injected fault: restore');
    result.faults.nodeTimeout = count(cpLog, 'injected fault: node_timeout');
    result.restartRetries = cps.reduce((n, c) => n + c.failedStarts.length, 0);
    for (const c of cps) {
      result.violations.push(...c.unexpectedExits);
      for (const f of c.failedStarts) o.log(`a control-plane start failed and was retried: ${f.split('\n').find((l) => /rror/.test(l)) ?? f.slice(0, 200)}`);
    }
    if (process.env.CHAOS_KEEP_LOGS) {
      const { writeFile } = await import('node:fs/promises');
      for (const [a, log] of agentLogs) await writeFile(fleet ? `/tmp/chaos-agent-${a.nodeId}.log` : '/tmp/chaos-agent.log', log);
      await writeFile('/tmp/chaos-cp.log', cpLog);
      await writeFile('/tmp/chaos-timeline.log', timeline.sort().join('\n') + '\n');
    }
    for (const c of cps) {
      await c.kill('SIGTERM').catch(() => undefined);
      await c.kill('SIGKILL').catch(() => undefined);
    }
    for (const agent of agents) {
      if (agent.proc && agent.proc.exitCode === null) {
        // Whatever is left is removed by the runtime itself before the agent stops.
        await agent.json<{ sandboxes: Array<{ sandboxId: string }> }>('GET', '/v1/sandboxes')
          .then(async (inv) => {
            for (const s of inv.sandboxes) await agent.api('DELETE', `/v1/sandboxes/${s.sandboxId}?deleteSnapshot=true`);
          }).catch(() => undefined);
        agent.signal('SIGKILL');
        await agent.exited;
      }
      await unmountPoolLeftovers(agent.base);
      await rm(agent.base, { recursive: true, force: true }).catch((e) => {
        result.violations.push(`the node's directory could not be removed after the run: ${(e as Error).message}`);
      });
    }
    if (fleet) await rm(sharedSnapshots, { recursive: true, force: true }).catch(() => undefined);
    await s3?.stop().catch(() => undefined);
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
    ...(r.fleet ? [
      `fleet: ${r.fleet.replicas} replicas, ${r.fleet.nodes} nodes; operator drains ${r.fleet.drains}, agents stopped with SIGTERM ${r.fleet.gracefulStops}; ` +
        `sandboxes moved between nodes ${r.fleet.moved} (by a drain ${r.fleet.movedByDrain})`,
    ] : []),
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
  const only = process.argv.includes('--events') ? process.argv[process.argv.indexOf('--events') + 1]!.split(',') : null;
  for (const e of only ?? []) if (!(FLEET_EVENTS as readonly string[]).includes(e)) throw new Error(`--events: ${e} is not one of ${FLEET_EVENTS.join(', ')}`);
  const storeArg = process.argv.includes('--store') ? process.argv[process.argv.indexOf('--store') + 1] : 's3';
  if (storeArg !== 's3' && storeArg !== 'dir') throw new Error(`--store: ${storeArg} is not s3 or dir`);
  const fleet = process.argv.includes('--fleet')
    ? { agents: arg('agents', 3), replicas: arg('replicas', 2), store: storeArg as 's3' | 'dir', ...(only ? { events: only as FleetEvent[] } : {}) }
    : undefined;
  const r = await runChaos({
    ops: arg('ops', 1000), crashes: arg('crashes', 24), clients: arg('clients', 8),
    checkpointFault: 0.1, restoreFault: 0.1, nodeTimeoutFault: 0.05, dbDrops: arg('db-drops', 10), maxLive: arg('max-live', 12), fleet,
    log: (m) => process.stderr.write(`[chaos] ${m}\n`),
  });
  process.stdout.write(formatResult(r) + `\nduration: ${((Date.now() - started) / 1000).toFixed(0)} s\n`);
  process.exit(r.violations.length ? 1 : 0);
}
