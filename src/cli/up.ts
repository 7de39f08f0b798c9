import { Agent, HostNotReadyError } from '../agent/agent.ts';
import { ControlPlane } from '../control-plane/control-plane.ts';

export interface UpOptions {
  host: string;
  port: string;
  agentPort: string;
}

/**
 * `nestbox up`: the whole platform in one process with embedded defaults: a node agent for this
 * host, the control plane on PGlite in the data directory (or Postgres via DATABASE_URL).
 */
export async function up(opts: UpOptions) {
  const home = process.env.NESTBOX_HOME ?? '/var/lib/nestbox';
  const logger = { level: process.env.NESTBOX_LOG_LEVEL ?? 'warn' };
  const agent = new Agent({ host: '127.0.0.1', port: Number(opts.agentPort), logger });
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
    dataDir: process.env.NESTBOX_CONTROL_DIR ?? `${home}/control`,
    host: opts.host,
    port: Number(opts.port),
    domain: process.env.NESTBOX_DOMAIN ?? null,
    nodes: [{ id: process.env.NESTBOX_NODE_ID ?? 'local', url: agentUrl, token: agent.nodeToken }],
    bootstrapApiKey: process.env.NESTBOX_API_KEY,
    logger,
  });
  const started = await cp.start();
  const apiUrl = started.url.replace('0.0.0.0', '127.0.0.1');
  const lines = [
    `Nestbox is up (store: ${cp.describeDatabase()}; node agent: ${agentUrl}).`,
    '',
    `E2B_API_URL=${apiUrl}`,
    `E2B_SANDBOX_URL=${started.proxyUrl ?? '(sandbox proxy disabled)'}`,
    started.createdApiKey
      ? `E2B_API_KEY=${started.createdApiKey}`
      : '# E2B_API_KEY: the key printed at the first start (or create one: nestbox keys create)',
    '',
  ];
  process.stdout.write(lines.join('\n') + '\n');
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(`${signal}: stopping (transitions in flight finish first)\n`);
    let failed = false;
    await cp.stop().catch((e) => {
      failed = true;
      process.stderr.write(`control plane stop failed: ${(e as Error).message}\n`);
    });
    await agent.stop().catch((e) => {
      failed = true;
      process.stderr.write(`node agent stop failed: ${(e as Error).message}\n`);
    });
    process.exit(failed ? 1 : 0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}
