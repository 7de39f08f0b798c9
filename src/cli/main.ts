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
import type { ServerOptions } from './server.ts';
import { registerNodesCommands } from './commands/nodes.ts';

const program = new Command();
program.name('nestbox').description('Self-hosted sandboxes: runc containers with memory-preserving pause and resume');

interface AgentCliOptions {
  host?: string;
  port: string;
  nodeId?: string;
  join?: string;
  joinToken?: string;
  advertiseUrl?: string;
  maxSandboxes?: string;
}

async function runAgent(opts: AgentCliOptions) {
  const { Agent, HostNotReadyError } = await import('../agent/agent.ts');
  const { runtimeConfigFromEnv } = await import('../runtime/config.ts');
  const { drainSettingsFromEnv } = await import('./up.ts');
  drainSettingsFromEnv(); // a bad setting fails now, not at shutdown
  const joinToken = opts.joinToken ?? process.env.NESTBOX_JOIN_TOKEN;
  if (joinToken && !opts.join) throw new Error('--join-token goes with --join <control plane URL>');
  const agent = new Agent({
    config: runtimeConfigFromEnv(process.env, { maxSandboxes: opts.maxSandboxes }),
    // A node that joins a control plane on another host listens beyond loopback.
    host: opts.host ?? (opts.join ? '0.0.0.0' : '127.0.0.1'), port: Number(opts.port),
    nodeId: opts.nodeId ?? (process.env.NESTBOX_NODE_ID || undefined),
    logger: { level: process.env.NESTBOX_LOG_LEVEL ?? 'info' },
    join: opts.join ? { controlPlaneUrl: opts.join, joinToken, advertiseUrl: opts.advertiseUrl ?? process.env.NESTBOX_ADVERTISE_URL } : undefined,
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
  .option('--max-sandboxes <n>', 'live sandboxes this node takes at most (default: $NESTBOX_MAX_SANDBOXES or 200)')
  .action(async (opts: UpOptions) => (await import('./up.ts')).up(opts));

program
  .command('agent')
  .description('run only the node agent of this host (with --join: a node of a fleet)')
  .option('--host <host>', 'address to listen on (default 127.0.0.1; 0.0.0.0 with --join)')
  .option('--port <port>', 'port of the node agent API', '3001')
  .option('--node-id <id>', 'name of this node (default: $NESTBOX_NODE_ID; else with --join the host\'s name, otherwise "local")')
  .option('--join <url>', 'the control plane to join (its API URL)')
  .option('--join-token <token>', 'a join token from `nestbox nodes join-token` (or $NESTBOX_JOIN_TOKEN)')
  .option('--advertise-url <url>', 'where the control plane reaches this agent (default: this host\'s address and --port)')
  .option('--max-sandboxes <n>', 'live sandboxes this node takes at most (default: $NESTBOX_MAX_SANDBOXES or 200)')
  .action(runAgent);

program
  .command('server')
  .description('run the control plane alone (API, sandbox proxy, loops); nodes join it with `nestbox agent --join`')
  .option('--host <host>', 'address of the API', '0.0.0.0')
  .option('--port <port>', 'port of the API', '3000')
  .option('--proxy-host <host>', 'address of the sandbox proxy', '0.0.0.0')
  .option('--proxy-port <port>', 'port of the sandbox proxy', '3002')
  .action(async (opts: ServerOptions) => (await import('./server.ts')).server(opts));

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
registerNodesCommands(program);

await program.parseAsync();
