// A control-plane process for the chaos run: killed with SIGKILL and started again on the same
// port and database. Prints {"url": ...} once it serves; SIGTERM stops it gracefully.
import { ControlPlane, type LoopTimings } from '../../src/control-plane/control-plane.ts';

const cp = new ControlPlane({
  databaseUrl: process.env.DATABASE_URL!,
  dataDir: '/nonexistent',
  port: Number(process.env.PORT),
  proxyPort: null,
  bootstrapApiKey: process.env.NESTBOX_API_KEY,
  nodes: [{ id: process.env.NODE_ID!, url: process.env.NODE_URL!, token: process.env.NODE_TOKEN! }],
  timings: JSON.parse(process.env.CHAOS_TIMINGS ?? '{}') as Partial<LoopTimings>,
  injectNodeTimeouts: Number(process.env.CHAOS_NODE_TIMEOUTS ?? 0),
  logger: { level: 'error' },
});
const started = await cp.start();
process.stdout.write(JSON.stringify({ url: started.url }) + '\n');
process.once('SIGTERM', async () => {
  await cp.stop();
  process.exit(0);
});
