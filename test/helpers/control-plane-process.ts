// A control-plane replica as its own OS process, for tests that race several of them on one
// Postgres. Prints {"url": ...} on stdout once it serves; stops on SIGTERM.
import { ControlPlane } from '../../src/control-plane/control-plane.ts';

const cp = new ControlPlane({
  databaseUrl: process.env.DATABASE_URL!,
  dataDir: '/nonexistent',
  port: 0,
  proxyPort: null,
  bootstrapApiKey: process.env.NESTBOX_API_KEY,
  nodes: [{ id: process.env.NODE_ID ?? 'fake-http-node', url: process.env.NODE_URL!, token: process.env.NODE_TOKEN! }],
} as ConstructorParameters<typeof ControlPlane>[0]);
const started = await cp.start();
process.stdout.write(JSON.stringify({ url: started.url }) + '\n');
process.once('SIGTERM', async () => {
  await cp.stop();
  process.exit(0);
});
