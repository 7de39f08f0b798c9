// A control-plane replica as its own OS process, for tests that race several of them on one
// Postgres (replicas) or kill it with SIGKILL and start it again on the same port (chaos).
// Prints {"url": ...} on stdout once it serves; SIGTERM stops it gracefully.
//   DATABASE_URL; NODE_URL and NODE_TOKEN (a node configured at start; without them, nodes join
//   it with a join token, like `nestbox server`); optional NODE_ID, PORT (default: any),
//   NESTBOX_API_KEY, NESTBOX_ADMIN_KEY, CHAOS_TIMINGS (JSON of LoopTimings), CHAOS_NODE_TIMEOUTS
//   (probability of injected timeouts), CHAOS_LOG=1 (warnings on stderr).
import { ControlPlane, type LoopTimings } from '../../src/control-plane/control-plane.ts';

const cp = new ControlPlane({
  databaseUrl: process.env.DATABASE_URL!,
  dataDir: '/nonexistent',
  port: Number(process.env.PORT ?? 0),
  proxyPort: null,
  bootstrapApiKey: process.env.NESTBOX_API_KEY,
  bootstrapAdminKey: process.env.NESTBOX_ADMIN_KEY,
  adminKeyFile: null, // no control directory here
  nodes: process.env.NODE_URL
    ? [{ id: process.env.NODE_ID ?? 'fake-http-node', url: process.env.NODE_URL, token: process.env.NODE_TOKEN! }]
    : [],
  timings: JSON.parse(process.env.CHAOS_TIMINGS ?? '{}') as Partial<LoopTimings>,
  injectNodeTimeouts: Number(process.env.CHAOS_NODE_TIMEOUTS ?? 0),
  // CHAOS_LOG=1: warnings and errors (reconcile actions, failed drains) as JSON lines on stderr.
  logger: process.env.CHAOS_LOG === '1' ? { level: 'warn', stream: process.stderr } : false,
});
const started = await cp.start();
process.stdout.write(JSON.stringify({ url: started.url }) + '\n');
process.once('SIGTERM', async () => {
  await cp.stop();
  process.exit(0);
});
