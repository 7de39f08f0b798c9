import { Command } from 'commander';
import { registerAdminKeysCommands } from './commands/admin-keys.ts';
import { registerExecCommands } from './commands/exec.ts';
import { registerFilesCommands } from './commands/files.ts';
import { registerKeysCommands } from './commands/keys.ts';
import { registerSandboxCommands } from './commands/sandbox.ts';
import { registerTeamsCommands } from './commands/teams.ts';
import { registerUsageCommand } from './commands/usage.ts';
import { registerEventsCommand } from './commands/events.ts';
import { registerWebhooksCommands } from './commands/webhooks.ts';
import { registerTemplateCommands } from './commands/templates.ts';
// `up` and `agent` load the server side on demand, so that the API commands start quickly.
import type { UpOptions } from './up.ts';

const program = new Command();
program.name('nestbox').description('Self-hosted sandboxes: runc containers with memory-preserving pause and resume');

async function runAgent(opts: { host: string; port: string; nodeId?: string }) {
  const { Agent, HostNotReadyError } = await import('../agent/agent.ts');
  const { drainSettingsFromEnv } = await import('./up.ts');
  drainSettingsFromEnv(); // a bad setting fails now, not at shutdown
  const agent = new Agent({
    host: opts.host, port: Number(opts.port), nodeId: opts.nodeId ?? process.env.NESTBOX_NODE_ID,
    logger: { level: process.env.NESTBOX_LOG_LEVEL ?? 'info' },
  });
  try {
    const url = await agent.start();
    process.stdout.write(`nestbox node agent listening on ${url}\nNESTBOX_NODE_TOKEN=${agent.nodeToken}\n`);
  } catch (e) {
    if (e instanceof HostNotReadyError) {
      process.stderr.write(`${e.message}\n`);
      process.exit(2);
    }
    throw e;
  }
  // SIGTERM drains the node (see src/agent/shutdown.ts); a second signal stops at once.
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) process.exit(1);
    stopping = true;
    const drain = drainSettingsFromEnv();
    process.stderr.write(`${signal}: draining (policy ${drain.policy}, deadline ${drain.deadlineMs / 1000} s)\n`);
    const report = await agent.shutdown({ ...drain, log: (m) => process.stderr.write(`${m}\n`) });
    process.stderr.write(`drained: ${report.leftInTime} of ${report.liveAtStart} live sandboxes left the node in time\n`);
    for (const e of report.errors) process.stderr.write(`drain error: ${e}\n`);
    process.exit(report.errors.length ? 1 : 0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
}

program
  .command('up')
  .description('run Nestbox on this machine in the foreground, with embedded defaults')
  .option('--host <host>', 'address of the API', '127.0.0.1')
  .option('--port <port>', 'port of the API', '3000')
  .option('--agent-port <port>', 'port of the node agent (loopback only)', '3001')
  .action(async (opts: UpOptions) => (await import('./up.ts')).up(opts));

program
  .command('agent')
  .description('run only the node agent of this host')
  .option('--host <host>', 'address to listen on', '127.0.0.1')
  .option('--port <port>', 'port of the node agent API', '3001')
  .option('--node-id <id>', 'name of this node (default: $NESTBOX_NODE_ID or "local")')
  .action(runAgent);

registerSandboxCommands(program);
registerExecCommands(program);
registerFilesCommands(program);
registerKeysCommands(program);
registerUsageCommand(program);
registerEventsCommand(program);
registerWebhooksCommands(program);
registerTemplateCommands(program);
registerTeamsCommands(program);
registerAdminKeysCommands(program);

await program.parseAsync();
