import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { openDatabase, redactUrl, type Database } from '../store/database.ts';
import { migrate } from '../store/migrate.ts';
import { upsertNode } from '../store/nodes.ts';
import { authenticateApiKey, ensureBootstrapTeam } from '../store/teams.ts';
import { buildApiServer } from './api/server.ts';
import { LifecycleService, type Clock } from './lifecycle.ts';
import { Evictor } from './loops/evictor.ts';
import { KillSweeper } from './loops/kill-sweeper.ts';
import { Loop } from './loops/loop.ts';
import { HttpNodeClient, type NodeClient } from './node-client.ts';
import { SandboxProxy } from './proxy/server.ts';
import { NodePool } from './scheduler.ts';

/** The envd protocol version sandboxes report; the SDK turns features on by it. */
export const ENVD_VERSION = '0.6.1';

export interface NodeEndpoint {
  id: string;
  url: string;
  token: string;
}

export interface ControlPlaneOptions {
  /** postgres://… for a Postgres server; otherwise PGlite in `dataDir`. */
  databaseUrl?: string;
  dataDir: string;
  host?: string;
  port?: number;
  domain?: string | null;
  /** Nodes over HTTP, or ready-made clients (tests, benchmarks). */
  nodes?: NodeEndpoint[];
  nodeClients?: NodeClient[];
  /** Becomes the first team's key when the database is empty. */
  bootstrapApiKey?: string;
  clock?: Clock;
  logger?: boolean | object;
  /** Background loops (evictor, kill sweeper); tests may tick them by hand instead. */
  loops?: boolean;
  /** The sandbox proxy (E2B_SANDBOX_URL), default 127.0.0.1:3002; `proxyPort: null` turns it off. */
  proxyHost?: string;
  proxyPort?: number | null;
  /** Postgres connection pool size (default 10); ignored on PGlite. */
  poolSize?: number;
}

export interface StartedControlPlane {
  url: string;
  /** The first team's key, only on the start that created it. */
  createdApiKey: string | null;
  teamId: string;
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
  evictor!: Evictor;
  sweeper!: KillSweeper;
  private api?: FastifyInstance;
  private proxy?: SandboxProxy;
  private readonly loops: Loop[] = [];

  constructor(private readonly opts: ControlPlaneOptions) {}

  async start(): Promise<StartedControlPlane> {
    if (this.opts.databaseUrl) {
      this.db = await openDatabase({ url: this.opts.databaseUrl, poolSize: this.opts.poolSize });
    } else {
      await mkdir(this.opts.dataDir, { recursive: true });
      this.db = await openDatabase({ dataDir: path.join(this.opts.dataDir, 'db') });
    }
    await migrate(this.db);
    const boot = await ensureBootstrapTeam(this.db, { apiKey: this.opts.bootstrapApiKey });
    const pool = new NodePool();
    for (const n of this.opts.nodes ?? []) {
      await upsertNode(this.db, n);
      pool.add(new HttpNodeClient(n.id, n.url, n.token));
    }
    for (const c of this.opts.nodeClients ?? []) {
      await upsertNode(this.db, { id: c.nodeId, url: 'in-process:', token: '-' });
      pool.add(c);
    }
    this.lifecycle = new LifecycleService({ db: this.db, nodes: pool, clock: this.opts.clock });
    this.evictor = new Evictor(this.db, this.lifecycle);
    this.sweeper = new KillSweeper(this.db, this.lifecycle);
    const log = (name: string, e: unknown) => this.api?.log.error({ err: e }, `${name} tick failed`);
    if (this.opts.loops !== false) {
      // The evictor acts within a second of a sandbox's end (design: "within 1 s").
      this.loops.push(new Loop('evictor', () => this.evictor.tick(), 250, log));
      this.loops.push(new Loop('kill-sweeper', () => this.sweeper.tick(), 2_000, log));
    }
    this.api = buildApiServer({
      lifecycle: this.lifecycle,
      db: this.db,
      authenticate: async (key) => {
        const r = await authenticateApiKey(this.db, key);
        return r ? { teamId: r.teamId } : null;
      },
      envdVersion: ENVD_VERSION,
      domain: this.opts.domain ?? null,
      logger: this.opts.logger ?? false,
      now: this.opts.clock ? () => this.opts.clock!.now() : undefined,
    });
    const url = await this.api.listen({ host: this.opts.host ?? '127.0.0.1', port: this.opts.port ?? 3000 });
    let proxyUrl: string | null = null;
    if (this.opts.proxyPort !== null) {
      this.proxy = new SandboxProxy({ db: this.db, lifecycle: this.lifecycle, log: this.api.log });
      proxyUrl = await this.proxy.listen(this.opts.proxyHost ?? '127.0.0.1', this.opts.proxyPort ?? 3002).catch(async (e) => {
        await this.api?.close();
        throw e;
      });
    }
    for (const l of this.loops) l.start();
    return { url, createdApiKey: boot.apiKey, teamId: boot.teamId, proxyUrl };
  }

  /** Stops taking requests, lets loops and transitions in flight finish, closes the store. */
  async stop(): Promise<void> {
    await this.proxy?.close();
    await this.api?.close();
    await Promise.all(this.loops.map((l) => l.stop()));
    await this.lifecycle?.drain();
    await this.db?.close();
  }

  describeDatabase() {
    return this.opts.databaseUrl ? redactUrl(this.opts.databaseUrl) : `PGlite in ${path.join(this.opts.dataDir, 'db')}`;
  }
}
