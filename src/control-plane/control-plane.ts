import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { openDatabase, redactUrl, type Database } from '../store/database.ts';
import { migrate } from '../store/migrate.ts';
import { upsertNode } from '../store/nodes.ts';
import { ensureBootstrapAdminKey } from '../store/admin-keys.ts';
import { authenticateKey } from '../store/credentials.ts';
import { ensureBootstrapTeam } from '../store/teams.ts';
import { adminKeyFilePath, keepAdminKey } from './admin-key-file.ts';
import { buildApiServer } from './api/server.ts';
import { TemplateBuildRunner } from './template-builds/runner.ts';
import { SnapshotSweeper } from './loops/snapshot-sweeper.ts';
import { SnapshotService } from './snapshots.ts';
import type { Clock } from './clock.ts';
import { LifecycleService } from './lifecycle.ts';
import { Evictor } from './loops/evictor.ts';
import { KillSweeper } from './loops/kill-sweeper.ts';
import { Loop } from './loops/loop.ts';
import { Reconciler } from './loops/reconciler.ts';
import { NodeDrainer } from './loops/node-drainer.ts';
import { NodeRegistry } from './loops/node-registry.ts';
import { WebhookDispatcher } from './webhooks/dispatcher.ts';
import { FaultyNodeClient } from './faulty-node.ts';
import { HttpNodeClient, type NodeClient } from './node-client.ts';
import { SandboxProxy } from './proxy/server.ts';
import { loopbackSandboxDomain } from './proxy/routing.ts';
import { NodePool } from './scheduler.ts';

/** The envd protocol version sandboxes report; the SDK turns features on by it. */
export const ENVD_VERSION = '0.6.1';

export interface NodeEndpoint {
  id: string;
  url: string;
  token: string;
  /** Its sandbox limit (the agent's NESTBOX_MAX_SANDBOXES), kept to by placement; unset: none. */
  maxSandboxes?: number;
}

export interface ControlPlaneOptions {
  /** postgres://… for a Postgres server; otherwise PGlite in `dataDir`. */
  databaseUrl?: string;
  dataDir: string;
  host?: string;
  port?: number;
  /**
   * Base domain of sandbox traffic, given to clients with each sandbox (the SDK's getHost).
   * Unset: the local sandbox proxy's, `localhost:<its port>` (as `nestbox up` gives it), so
   * E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY are all a client needs; null: none (the
   * client's E2B_DOMAIN).
   */
  domain?: string | null;
  /** Nodes over HTTP, or ready-made clients (tests, benchmarks). */
  nodes?: NodeEndpoint[];
  nodeClients?: NodeClient[];
  /** Becomes the first team's key when the database is empty. */
  bootstrapApiKey?: string;
  /** Becomes the first admin key when the database has none (NESTBOX_ADMIN_KEY). */
  bootstrapAdminKey?: string;
  /** Where a new admin key is written (mode 0600); default `<dataDir>/admin-key`; null: nowhere. */
  adminKeyFile?: string | null;
  clock?: Clock;
  logger?: boolean | object;
  /** Background loops (evictor, kill sweeper); tests may tick them by hand instead. */
  loops?: boolean;
  /** The sandbox proxy (E2B_SANDBOX_URL), default 127.0.0.1:3002; `proxyPort: null` turns it off. */
  proxyHost?: string;
  proxyPort?: number | null;
  /** Postgres connection pool size (default 10); ignored on PGlite. */
  poolSize?: number;
  /** Chaos testing only: probability that a state-changing node call times out. */
  injectNodeTimeouts?: number;
  /** vCPUs a node's sandboxes may ask for per CPU it has (NESTBOX_CPU_OVERCOMMIT; default DEFAULT_CPU_OVERCOMMIT). */
  cpuOvercommit?: number;
  /** Periods and grace times of the reliability loops (defaults suit production). */
  timings?: Partial<LoopTimings>;
}

export interface LoopTimings {
  evictMs: number;
  sweepMs: number;
  /** A kill stays unconfirmed this long before the sweeper calls the node again. */
  sweepGraceMs: number;
  reconcileMs: number;
  /** Rows that changed more recently than this are spared by the reconciler. */
  reconcileGraceMs: number;
  nodeDownAfterMs: number;
  /** How often nodes are asked whether they are draining. */
  drainWatchMs: number;
  /** Idle ticks are one UPDATE that matches nothing; deliveries go out within this. */
  webhookMs: number;
  /** How long a call to a node agent may take before its outcome counts as unknown. */
  nodeCallTimeoutMs: number;
  /** How often the node list is read again (nodes that joined or left through any replica). */
  registryMs: number;
  /** Heartbeat period asked of joined nodes. */
  heartbeatMs: number;
  /** A joined node silent this long is unhealthy: no placements. */
  unhealthyAfterMs: number;
}

export const DEFAULT_TIMINGS: LoopTimings = {
  evictMs: 250, // the evictor acts within a second of a sandbox's end
  sweepMs: 2_000,
  sweepGraceMs: 5_000,
  reconcileMs: 5_000,
  reconcileGraceMs: 15_000,
  nodeDownAfterMs: 60_000,
  drainWatchMs: 1_000,
  webhookMs: 1_000,
  nodeCallTimeoutMs: 120_000,
  registryMs: 1_000,
  heartbeatMs: 2_000,
  unhealthyAfterMs: 10_000,
};

export interface StartedControlPlane {
  url: string;
  /** The first team's key, only on the start that created it. */
  createdApiKey: string | null;
  teamId: string;
  /** The first admin key, only on the start that created it (or registered NESTBOX_ADMIN_KEY). */
  createdAdminKey: string | null;
  /** Where that key was written; null when it was not (see adminKeyFileError). */
  adminKeyFile: string | null;
  adminKeyFileError: string | null;
  /** The sandbox proxy's URL; null when it is off. */
  proxyUrl: string | null;
}

/**
 * One control-plane process: store, lifecycle service, background loops and the public API.
 * Stateless apart from the database: several may run against one Postgres.
 */
export class ControlPlane {
  db!: Database;
  lifecycle!: LifecycleService;
  templateBuilds?: TemplateBuildRunner;
  evictor!: Evictor;
  sweeper!: KillSweeper;
  reconciler!: Reconciler;
  webhooks!: WebhookDispatcher;
  drainer!: NodeDrainer;
  registry!: NodeRegistry;
  readonly timings: LoopTimings;
  private api?: FastifyInstance;
  private proxy?: SandboxProxy;
  private readonly loops: Loop[] = [];
  /** What clients are given as `domain`; the proxy's is known once it listens. */
  private sandboxDomain: string | null;

  constructor(private readonly opts: ControlPlaneOptions) {
    this.timings = { ...DEFAULT_TIMINGS, ...opts.timings };
    this.sandboxDomain = opts.domain ?? null;
  }

  async start(): Promise<StartedControlPlane> {
    if (this.opts.databaseUrl) {
      this.db = await openDatabase({ url: this.opts.databaseUrl, poolSize: this.opts.poolSize });
    } else {
      await mkdir(this.opts.dataDir, { recursive: true });
      this.db = await openDatabase({ dataDir: path.join(this.opts.dataDir, 'db') });
    }
    await migrate(this.db);
    const boot = await ensureBootstrapTeam(this.db, { apiKey: this.opts.bootstrapApiKey });
    const admin = await ensureBootstrapAdminKey(this.db, { adminKey: this.opts.bootstrapAdminKey });
    const kept = admin.adminKey
      ? await keepAdminKey(this.opts.adminKeyFile === undefined ? adminKeyFilePath(this.opts.dataDir) : this.opts.adminKeyFile, admin.adminKey)
      : { file: null, error: null };
    const pool = new NodePool(undefined, undefined, this.opts.cpuOvercommit);
    for (const n of this.opts.nodes ?? []) {
      await upsertNode(this.db, n);
      const client = new HttpNodeClient(n.id, n.url, n.token, this.timings.nodeCallTimeoutMs);
      pool.add(this.opts.injectNodeTimeouts ? new FaultyNodeClient(client, this.opts.injectNodeTimeouts) : client);
    }
    for (const c of this.opts.nodeClients ?? []) {
      await upsertNode(this.db, { id: c.nodeId, url: 'in-process:', token: '-' });
      pool.add(c);
    }
    this.lifecycle = new LifecycleService({ db: this.db, nodes: pool, clock: this.opts.clock });
    const faults = this.opts.injectNodeTimeouts;
    this.registry = new NodeRegistry(this.db, pool, {
      unhealthyAfterMs: this.timings.unhealthyAfterMs, nodeCallTimeoutMs: this.timings.nodeCallTimeoutMs,
      // Chaos testing: joined nodes get the same injected timeouts as configured ones.
      makeClient: faults
        ? (n) => new FaultyNodeClient(new HttpNodeClient(n.id, n.url, n.token, this.timings.nodeCallTimeoutMs), faults)
        : undefined,
    });
    await this.registry.tick(); // the nodes that joined before this replica started
    this.evictor = new Evictor(this.db, this.lifecycle);
    this.sweeper = new KillSweeper(this.db, this.lifecycle, this.timings.sweepGraceMs);
    this.reconciler = new Reconciler(this.db, this.lifecycle, pool, {
      graceMs: this.timings.reconcileGraceMs, nodeDownAfterMs: this.timings.nodeDownAfterMs,
    });
    this.webhooks = new WebhookDispatcher(this.db, { clock: this.opts.clock });
    this.drainer = new NodeDrainer(this.db, this.lifecycle, pool);
    const log = (name: string, e: unknown) => this.api?.log.error({ err: e }, `${name} tick failed`);
    const snapshots = new SnapshotService({ db: this.db, nodes: pool, lifecycle: this.lifecycle });
    if (this.opts.loops !== false) {
      const t = this.timings;
      this.loops.push(new Loop('evictor', () => this.evictor.tick(), t.evictMs, log));
      this.loops.push(new Loop('kill-sweeper', () => this.sweeper.tick(), t.sweepMs, log));
      this.loops.push(new Loop('reconciler', async () => {
        const r = await this.reconciler.tick();
        for (const a of r.actions) this.api?.log.warn({ reconcile: a }, `reconciled ${a.sandboxId}: ${a.action}${a.to ? ` -> ${a.to}` : ''}`);
      }, t.reconcileMs, log));
      this.loops.push(new Loop('node-drainer', async () => {
        const r = await this.drainer.tick();
        for (const f of r.failed) this.api?.log.error({ drain: f }, `drain of ${f.sandboxId} failed: ${f.error}`);
      }, t.drainWatchMs, log));
      this.loops.push(new Loop('webhooks', () => this.webhooks.tick(), t.webhookMs, log));
      const snapshotSweeper = new SnapshotSweeper(this.db, pool, snapshots, this.lifecycle.clock);
      this.loops.push(new Loop('snapshot-sweeper', async () => {
        const r = await snapshotSweeper.tick();
        for (const id of r.orphans) this.api?.log.warn(`removed snapshot ${id}: no row names it`);
        for (const id of r.abandoned) this.api?.log.warn(`removed snapshot ${id}: left unfinished`);
      }, t.reconcileMs * 10, log));
      this.loops.push(new Loop('node-registry', async () => {
        const r = await this.registry.tick();
        for (const id of r.joined) this.api?.log.info(`node ${id} joined`);
        for (const id of r.left) this.api?.log.info(`node ${id} left`);
      }, t.registryMs, log));
    }
    this.templateBuilds = new TemplateBuildRunner({ db: this.db, lifecycle: this.lifecycle, nodes: pool });
    this.api = buildApiServer({
      lifecycle: this.lifecycle,
      db: this.db,
      nodes: pool,
      snapshots,
      templateBuilds: this.templateBuilds,
      authenticate: (key) => authenticateKey(this.db, key),
      envdVersion: ENVD_VERSION,
      domain: () => this.sandboxDomain,
      logger: this.opts.logger ?? false,
      now: this.opts.clock ? () => this.opts.clock!.now() : undefined,
      fleet: { heartbeatMs: this.timings.heartbeatMs, unhealthyAfterMs: this.timings.unhealthyAfterMs },
    });
    const url = await this.api.listen({ host: this.opts.host ?? '127.0.0.1', port: this.opts.port ?? 3000 });
    let proxyUrl: string | null = null;
    if (this.opts.proxyPort !== null) {
      this.proxy = new SandboxProxy({ db: this.db, lifecycle: this.lifecycle, log: this.api.log });
      proxyUrl = await this.proxy.listen(this.opts.proxyHost ?? '127.0.0.1', this.opts.proxyPort ?? 3002).catch(async (e) => {
        await this.api?.close();
        throw e;
      });
      if (this.opts.domain === undefined) this.sandboxDomain = loopbackSandboxDomain(Number(new URL(proxyUrl).port));
    }
    for (const l of this.loops) l.start();
    return {
      url, createdApiKey: boot.apiKey, teamId: boot.teamId, proxyUrl,
      createdAdminKey: admin.adminKey, adminKeyFile: kept.file, adminKeyFileError: kept.error,
    };
  }

  /** Stops taking requests, lets loops and transitions in flight finish, closes the store. */
  async stop(): Promise<void> {
    await this.proxy?.close();
    await this.api?.close();
    await this.templateBuilds?.stop(); // builds in flight fail now, their sandboxes killed
    this.webhooks?.stop(); // a tick in progress ends after its current request
    await Promise.all(this.loops.map((l) => l.stop()));
    await this.lifecycle?.waitForInFlight();
    await this.db?.close();
  }

  describeDatabase() {
    return this.opts.databaseUrl ? redactUrl(this.opts.databaseUrl) : `PGlite in ${path.join(this.opts.dataDir, 'db')}`;
  }
}
