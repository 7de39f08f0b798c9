import { adminKeyFilePath, controlDirFromEnv } from '../control-plane/admin-key-file.ts';
import { ControlPlane } from '../control-plane/control-plane.ts';
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
