import { Command } from 'commander';
import { registerExecCommands } from './commands/exec.ts';
import { registerFilesCommands } from './commands/files.ts';
import { registerKeysCommands } from './commands/keys.ts';
import { registerSandboxCommands } from './commands/sandbox.ts';
import { registerUsageCommand } from './commands/usage.ts';
import { registerEventsCommand } from './commands/events.ts';
// `up` and `agent` load the server side on demand, so that the API commands start quickly.
import type { UpOptions } from './up.ts';

const program = new Command();
program.name('nestbox').description('Self-hosted sandboxes: runc containers with memory-preserving pause and resume');

async function runAgent(opts: { host: string; port: string }) {
  const { Agent, HostNotReadyError } = await import('../agent/agent.ts');
  const agent = new Agent({ host: opts.host, port: Number(opts.port), logger: { level: process.env.NESTBOX_LOG_LEVEL ?? 'info' } });
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
  const stop = async () => {
    await agent.stop();
    process.exit(0);
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
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
  .action(runAgent);

registerSandboxCommands(program);
registerExecCommands(program);
registerFilesCommands(program);
registerKeysCommands(program);
registerUsageCommand(program);
registerEventsCommand(program);

await program.parseAsync();
