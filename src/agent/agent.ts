import { randomBytes } from 'node:crypto';
import type { FastifyInstance } from 'fastify';
import { runtimeConfigFromEnv, type RuntimeConfig } from '../runtime/config.ts';
import { SandboxRuntime } from '../runtime/sandbox-runtime.ts';
import { DrainGate } from './drain-gate.ts';
import { formatProblems, preflight } from './preflight.ts';
import { buildAgentServer } from './server.ts';

export interface AgentOptions {
  config?: RuntimeConfig;
  host?: string;
  port?: number;
  nodeToken?: string;
  nodeId?: string;
  logger?: boolean | object;
}

export class HostNotReadyError extends Error {}

/** A running node agent: runtime + internal API. */
export class Agent {
  readonly runtime: SandboxRuntime;
  readonly drain = new DrainGate();
  readonly nodeToken: string;
  private server?: FastifyInstance;
  url = '';

  constructor(private readonly opts: AgentOptions = {}) {
    this.runtime = new SandboxRuntime(opts.config ?? runtimeConfigFromEnv());
    this.nodeToken = opts.nodeToken ?? process.env.NESTBOX_NODE_TOKEN ?? randomBytes(24).toString('hex');
  }

  async start(): Promise<string> {
    const problems = await preflight(this.runtime.cfg);
    if (problems.length) throw new HostNotReadyError(formatProblems(problems));
    await this.runtime.start();
    this.server = buildAgentServer({
      runtime: this.runtime,
      nodeToken: this.nodeToken,
      nodeId: this.opts.nodeId ?? 'local',
      drain: this.drain,
      logger: this.opts.logger,
    });
    this.url = await this.server.listen({ host: this.opts.host ?? '127.0.0.1', port: this.opts.port ?? 3001 });
    return this.url;
  }

  async stop(): Promise<void> {
    await this.drain.drain();
    await this.server?.close();
  }
}
