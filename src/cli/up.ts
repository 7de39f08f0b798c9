import { Agent, HostNotReadyError } from '../agent/agent.ts';
import type { DrainPolicy } from '../node-api/wire.ts';
import { adminKeyFilePath, controlDirFromEnv } from '../control-plane/admin-key-file.ts';
import { ControlPlane } from '../control-plane/control-plane.ts';
import { runtimeConfigFromEnv } from '../runtime/config.ts';
import { DEFAULT_PROXY_PORT, loopbackSandboxDomain } from '../control-plane/proxy/routing.ts';
import { cpuOvercommitFromEnv } from './server.ts';
import { upBanner } from './up-banner.ts';

export interface UpOptions {
  host: string;
  port: string;
  agentPort: string;
  maxSandboxes?: string;
}

/**
 * `nestbox up`: the whole platform in one process with embedded defaults: a node agent for this
 * host, the control plane on PGlite in the data directory (or Postgres via DATABASE_URL).
 */
export async function up(opts: UpOptions) {
  const logger = { level: process.env.NESTBOX_LOG_LEVEL ?? 'warn' };
  drainSettingsFromEnv(); // a bad setting fails now, not at shutdown
  const cpuOvercommit = cpuOvercommitFromEnv();
  const config = runtimeConfigFromEnv(process.env, { maxSandboxes: opts.maxSandboxes });
  const agent = new Agent({ config, host: '127.0.0.1', port: Number(opts.agentPort), logger });
  let agentUrl: string;
  try {
    agentUrl = await agent.start();
  } catch (e) {
    if (e instanceof HostNotReadyError) {
      process.stderr.write(`${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  const cp = new ControlPlane({
    databaseUrl: process.env.DATABASE_URL,
    dataDir: controlDirFromEnv(),
    host: opts.host,
    port: Number(opts.port),
    proxyPort: DEFAULT_PROXY_PORT,
    domain: upSandboxDomain(process.env, DEFAULT_PROXY_PORT),
    nodes: [{ id: process.env.NESTBOX_NODE_ID ?? 'local', url: agentUrl, token: agent.nodeToken, maxSandboxes: config.maxSandboxes }],
    bootstrapApiKey: process.env.NESTBOX_API_KEY,
    bootstrapAdminKey: process.env.NESTBOX_ADMIN_KEY,
    cpuOvercommit,
    logger,
  });
  const started = await cp.start();
  const lines = upBanner(started, {
    store: cp.describeDatabase(), agentUrl, adminKeyFile: adminKeyFilePath(controlDirFromEnv()),
  });
  process.stdout.write(lines.join('\n') + '\n');
  if (started.adminKeyFileError) process.stderr.write(`warning: ${started.adminKeyFileError}\n`);
  // SIGTERM: the node drains while the control plane still runs (it pauses the sandboxes and
  // records their events), then the control plane stops. A second signal stops at once.
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    const drain = drainSettingsFromEnv();
    process.stderr.write(`${signal}: draining (policy ${drain.policy}, deadline ${drain.deadlineMs / 1000} s), then stopping\n`);
    let failed = false;
    try {
      const report = await agent.shutdown({ ...drain, log: (m) => process.stderr.write(`${m}\n`) });
      process.stderr.write(`drained: ${report.leftInTime} of ${report.liveAtStart} live sandboxes left the node in time\n`);
      for (const e of report.errors) process.stderr.write(`drain error: ${e}\n`);
      failed = report.errors.length > 0;
    } catch (e) {
      failed = true;
      process.stderr.write(`node agent drain failed: ${(e as Error).message}\n`);
    }
    await cp.stop().catch((e) => {
      failed = true;
      process.stderr.write(`control plane stop failed: ${(e as Error).message}\n`);
    });
    process.exit(failed ? 1 : 0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}

/** NESTBOX_DOMAIN, else the local proxy: getHost(port) is then <port>-<id>.localhost:<proxy port>. */
export function upSandboxDomain(env: NodeJS.ProcessEnv, proxyPort: number): string {
  return env.NESTBOX_DOMAIN || loopbackSandboxDomain(proxyPort);
}

/** NESTBOX_DRAIN_POLICY (pause | wait, default pause) and NESTBOX_DRAIN_TIMEOUT_S (default 60). */
export function drainSettingsFromEnv(env: NodeJS.ProcessEnv = process.env): { policy: DrainPolicy; deadlineMs: number } {
  const policy = env.NESTBOX_DRAIN_POLICY ?? 'pause';
  if (policy !== 'pause' && policy !== 'wait') throw new Error(`NESTBOX_DRAIN_POLICY must be pause or wait, not "${policy}"`);
  const seconds = Number(env.NESTBOX_DRAIN_TIMEOUT_S ?? 60);
  if (!Number.isFinite(seconds) || seconds < 0) throw new Error(`NESTBOX_DRAIN_TIMEOUT_S must be a number of seconds`);
  return { policy, deadlineMs: seconds * 1000 };
}
