import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { runtimeConfigFromEnv, type RuntimeConfig } from '../runtime/config.ts';
import { SandboxRuntime } from '../runtime/sandbox-runtime.ts';
import { StartGate } from './start-gate.ts';
import { defaultAdvertiseUrl, FleetMembership } from './fleet-membership.ts';
import { checkNodeId, defaultFleetNodeId } from './node-id.ts';
import { formatProblems, preflight } from './preflight.ts';
import { buildAgentServer } from './server.ts';
import type { DrainPolicy } from '../node-api/wire.ts';
import { drainNode, type DrainPlan, type ShutdownReport } from './shutdown.ts';
import { collectIncomplete } from '../runtime/snapshot-store.ts';

/** A snapshot without a manifest untouched this long is no put in progress: it is collected. */
const INCOMPLETE_GRACE_MS = 60 * 60_000; // a large upload writes no new object for a while
const INCOMPLETE_SWEEP_MS = 5 * 60_000;

export interface AgentOptions {
  config?: RuntimeConfig;
  host?: string;
  port?: number;
  nodeToken?: string;
  nodeId?: string;
  logger?: boolean | object;
  /** Join a control plane (`nestbox agent --join`): heartbeats with capacity and templates. */
  join?: { controlPlaneUrl: string; joinToken?: string; advertiseUrl?: string };
}

const VERSION = (() => {
  try {
    return (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;
  } catch {
    return 'unknown';
  }
})();

export class HostNotReadyError extends Error {}

/** The node token survives restarts, so a control plane keeps reaching a restarted agent. */
function persistentToken(dataDir: string): string {
  const file = path.join(dataDir, 'node-token');
  try {
    const token = readFileSync(file, 'utf8').trim();
    if (token) return token;
  } catch {
    /* first start */
  }
  const token = randomBytes(24).toString('hex');
  mkdirSync(dataDir, { recursive: true, mode: 0o711 });
  writeFileSync(file, token + '\n', { mode: 0o600 });
  return token;
}

/** A running node agent: runtime + internal API. */
export class Agent {
  readonly runtime: SandboxRuntime;
  readonly starts = new StartGate();
  readonly nodeToken: string;
  /** Given, or (joining a fleet) the host's, or `local`. */
  readonly nodeId: string;
  /** Set once a drain has begun: what the control plane should do with the live sandboxes. */
  drainPlan: DrainPlan | null = null;
  private server?: FastifyInstance;
  membership?: FleetMembership;
  private incompleteSweep?: NodeJS.Timeout;
  url = '';

  constructor(private readonly opts: AgentOptions = {}) {
    this.runtime = new SandboxRuntime(opts.config ?? runtimeConfigFromEnv());
    this.nodeToken = opts.nodeToken ?? process.env.NESTBOX_NODE_TOKEN ?? persistentToken(this.runtime.cfg.dataDir);
    // In a fleet every node needs its own id: `local` on each host would be one node.
    if (!opts.join) this.nodeId = opts.nodeId ?? 'local';
    else this.nodeId = opts.nodeId !== undefined ? checkNodeId(opts.nodeId) : defaultFleetNodeId();
  }

  async start(): Promise<string> {
    const problems = await preflight(this.runtime.cfg);
    if (problems.length) throw new HostNotReadyError(formatProblems(problems));
    await this.runtime.start();
    // What a previous run cut short is repaired before anything else touches the host.
    for (const note of await this.runtime.recover()) process.stderr.write(`nestbox agent: recovered ${note}\n`);
    this.server = buildAgentServer({
      runtime: this.runtime,
      nodeToken: this.nodeToken,
      nodeId: this.nodeId,
      starts: this.starts,
      drainPlan: () => this.drainPlan,
      logger: this.opts.logger,
    });
    const host = this.opts.host ?? '127.0.0.1';
    this.url = await this.server.listen({ host, port: this.opts.port ?? 3001 });
    this.collectIncompleteSnapshots();
    if (this.opts.join) {
      const port = Number(new URL(this.url).port);
      this.membership = new FleetMembership({
        controlPlaneUrl: this.opts.join.controlPlaneUrl,
        joinToken: this.opts.join.joinToken,
        nodeId: this.nodeId,
        nodeToken: this.nodeToken,
        advertiseUrl: this.opts.join.advertiseUrl ?? defaultAdvertiseUrl(host, port),
        config: this.runtime.cfg,
        maxSandboxes: this.runtime.cfg.maxSandboxes,
        storedTemplates: () => this.runtime.templates.list(),
        version: VERSION,
        log: (m) => process.stderr.write(`nestbox agent: ${m}\n`),
      });
      try {
        await this.membership.start();
      } catch (e) {
        await this.server.close();
        throw e;
      }
    }
    return this.url;
  }

  /**
   * Graceful shutdown (SIGTERM): drain the node (see shutdown.ts), then close the API. The
   * report lists what had to be force-stopped and every failure on the way.
   */
  async shutdown(opts: { deadlineMs: number; policy: DrainPolicy; handoverMs?: number; log?: (msg: string) => void }): Promise<ShutdownReport> {
    clearInterval(this.incompleteSweep);
    this.drainPlan = { policy: opts.policy, deadline: new Date(Date.now() + opts.deadlineMs) };
    const report = await drainNode(this.runtime, this.starts, this.drainPlan, opts);
    this.membership?.stop();
    await this.server?.close();
    await this.runtime.close();
    return report;
  }

  /**
   * Half-written snapshots (a pause or snapshot cut short on any node: objects without a
   * manifest) are collected once nothing has written them for INCOMPLETE_GRACE_MS: at start and
   * then every INCOMPLETE_SWEEP_MS. Every node may do it; a delete is idempotent.
   */
  private collectIncompleteSnapshots() {
    const sweep = () => collectIncomplete(this.runtime.store, INCOMPLETE_GRACE_MS)
      .then((notes) => notes.forEach((n) => process.stderr.write(`nestbox agent: ${n}\n`)))
      .catch((e) => process.stderr.write(`nestbox agent: collecting incomplete snapshots failed: ${(e as Error).message}\n`));
    void sweep();
    this.incompleteSweep = setInterval(sweep, INCOMPLETE_SWEEP_MS);
    this.incompleteSweep.unref();
  }

  /** Stops serving once admitted starts finish; sandboxes keep running (tests, restarts). */
  async stop(): Promise<void> {
    clearInterval(this.incompleteSweep);
    await this.starts.closeAndWait();
    this.membership?.stop();
    await this.server?.close();
    await this.runtime.close();
  }
}
