import { adminKeyFilePath, controlDirFromEnv } from '../control-plane/admin-key-file.ts';
import { ControlPlane, DEFAULT_TIMINGS, type LoopTimings } from '../control-plane/control-plane.ts';
import { DEFAULT_CPU_OVERCOMMIT } from '../control-plane/scheduler.ts';
import { upBanner } from './up-banner.ts';

export interface ServerOptions {
  host: string;
  port: string;
  proxyHost: string;
  proxyPort: string;
}

/**
 * `nestbox server`: the control plane alone (API, sandbox proxy, loops), no node of its own.
 * Nodes join it (`nestbox agent --join`); replicas share one Postgres through DATABASE_URL
 * (without it: PGlite in the control directory, for one replica).
 */
export async function server(opts: ServerOptions) {
  const logger = { level: process.env.NESTBOX_LOG_LEVEL ?? 'info' };
  const cp = new ControlPlane({
    databaseUrl: process.env.DATABASE_URL,
    dataDir: controlDirFromEnv(),
    host: opts.host,
    port: Number(opts.port),
    proxyHost: opts.proxyHost,
    proxyPort: Number(opts.proxyPort),
    domain: process.env.NESTBOX_DOMAIN ?? null,
    bootstrapApiKey: process.env.NESTBOX_API_KEY,
    bootstrapAdminKey: process.env.NESTBOX_ADMIN_KEY,
    logger,
    timings: nodeTimingsFromEnv(),
    cpuOvercommit: cpuOvercommitFromEnv(),
  });
  const started = await cp.start();
  const lines = upBanner(started, { store: cp.describeDatabase(), agentUrl: 'none (nodes join with `nestbox agent --join`)', adminKeyFile: adminKeyFilePath(controlDirFromEnv()) });
  lines[0] = `Nestbox control plane is up (store: ${cp.describeDatabase()}); nodes join with \`nestbox agent --join ${started.url.replace('0.0.0.0', '<this host>')} --join-token <token>\`.`;
  process.stdout.write(lines.join('\n') + '\n');
  if (started.adminKeyFileError) process.stderr.write(`warning: ${started.adminKeyFileError}\n`);
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    process.stderr.write(`${signal}: stopping the control plane\n`);
    await cp.stop().then(() => process.exit(0), (e: unknown) => {
      process.stderr.write(`control plane stop failed: ${(e as Error).message}\n`);
      process.exit(1);
    });
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}

/**
 * NESTBOX_CPU_OVERCOMMIT: how many vCPUs the sandboxes on a node may ask for per CPU the node
 * has (placement skips a node past it). A positive number, default DEFAULT_CPU_OVERCOMMIT.
 */
export function cpuOvercommitFromEnv(env: NodeJS.ProcessEnv = process.env): number {
  const raw = env.NESTBOX_CPU_OVERCOMMIT;
  if (raw === undefined || raw === '') return DEFAULT_CPU_OVERCOMMIT;
  const factor = Number(raw);
  if (!Number.isFinite(factor) || factor <= 0) {
    throw new Error(`NESTBOX_CPU_OVERCOMMIT must be a positive number (vCPUs per CPU of a node, e.g. 4 or 1.5), not "${raw}"`);
  }
  return factor;
}

/**
 * How quickly the fleet notices a silent node: NESTBOX_NODE_HEARTBEAT_MS (period asked of the
 * nodes, default 2000), NESTBOX_NODE_UNHEALTHY_AFTER_MS (no placements, default 10000) and
 * NESTBOX_NODE_DOWN_AFTER_MS (its sandboxes are lost, default 60000). All replicas of one
 * fleet should use the same values.
 */
export function nodeTimingsFromEnv(env: NodeJS.ProcessEnv = process.env): Partial<LoopTimings> {
  const out: Partial<LoopTimings> = {};
  const settings = [
    ['NESTBOX_NODE_HEARTBEAT_MS', 'heartbeatMs'], ['NESTBOX_NODE_UNHEALTHY_AFTER_MS', 'unhealthyAfterMs'], ['NESTBOX_NODE_DOWN_AFTER_MS', 'nodeDownAfterMs'],
  ] as const;
  for (const [name, key] of settings) {
    const raw = env[name];
    if (raw === undefined || raw === '') continue;
    const ms = Number(raw);
    if (!Number.isInteger(ms) || ms <= 0) throw new Error(`${name} must be a positive number of milliseconds, not "${raw}"`);
    out[key] = ms;
  }
  if ((out.unhealthyAfterMs ?? DEFAULT_TIMINGS.unhealthyAfterMs) <= (out.heartbeatMs ?? DEFAULT_TIMINGS.heartbeatMs)) throw new Error('NESTBOX_NODE_UNHEALTHY_AFTER_MS must be longer than the heartbeat period');
  return out;
}
