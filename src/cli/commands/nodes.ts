// nestbox nodes list | join-token | drain <id> | undrain <id> | remove <id>: the fleet (operator).
import type { Command } from 'commander';
import { seg } from '../api-client.ts';
import { action, adminContextFrom, formatTime, printJson, printTable, println, withAdminOptions } from '../output.ts';

interface ListedNode {
  id: string;
  url: string;
  state: string;
  cordoned: boolean;
  joined: boolean;
  lastSeenAt: string | null;
  cpuCount: number;
  memoryMB: number;
  maxSandboxes: number;
  templates: string[];
  version: string;
  sandboxes: number;
}

type AdminOptions = { apiUrl?: string; adminKey?: string; json?: boolean };

const NODES = '/nestbox/v1/nodes';

export function registerNodesCommands(program: Command) {
  const nodes = program.command('nodes').description('the fleet: list, drain, undrain, remove nodes; join tokens (operator: needs an admin key)');

  withAdminOptions(nodes.command('list').alias('ls').description('list the nodes and their state')).action(
    action(async (opts: AdminOptions) => {
      const ctx = adminContextFrom(opts);
      const { body } = await ctx.client.get<ListedNode[]>(NODES);
      if (ctx.json) return printJson(body);
      printTable(
        ['ID', 'STATE', 'SANDBOXES', 'CPUS', 'MEMORY', 'TEMPLATES', 'LAST SEEN', 'URL'],
        body.map((n) => [
          n.id, n.state + (n.cordoned ? ' (drained)' : ''), `${n.sandboxes}${n.maxSandboxes ? `/${n.maxSandboxes}` : ''}`,
          n.cpuCount ? String(n.cpuCount) : '-', n.memoryMB ? `${n.memoryMB} MiB` : '-', n.templates.join(',') || '-',
          formatTime(n.lastSeenAt), n.url,
        ]),
      );
    }),
  );

  withAdminOptions(
    nodes.command('join-token').description('make a join token for `nestbox agent --join` (shown once)')
      .option('--ttl <seconds>', 'how long it can be used', '86400'),
  ).action(
    action(async (opts: AdminOptions & { ttl: string }) => {
      const ctx = adminContextFrom(opts);
      const ttlSeconds = Number(opts.ttl);
      if (!Number.isInteger(ttlSeconds) || ttlSeconds < 1) throw new Error(`--ttl must be a whole number of seconds, not "${opts.ttl}"`);
      const { body } = await ctx.client.post<{ id: string; token: string; expiresAt: string }>(`${NODES}/join-tokens`, { ttlSeconds });
      if (ctx.json) return printJson(body);
      println(`Join token ${body.id}, valid until ${formatTime(body.expiresAt)}. It is not shown again:`);
      println(body.token);
      println(`On each new host: nestbox agent --join ${ctx.client.config.apiUrl} --join-token ${body.token}`);
    }),
  );

  for (const [verb, what] of [['drain', 'no new sandboxes; its running sandboxes move to other nodes'], ['undrain', 'take sandboxes again']] as const) {
    withAdminOptions(nodes.command(verb).description(`${verb} a node: ${what}`).argument('<id>', 'node id (see nodes list)')).action(
      action(async (id: string, opts: AdminOptions) => {
        const ctx = adminContextFrom(opts);
        await ctx.client.post(`${NODES}/${seg(id)}/${verb}`);
        if (ctx.json) return printJson({ id, [verb === 'drain' ? 'drained' : 'undrained']: true });
        println(verb === 'drain' ? `Draining node ${id}: its sandboxes move to other nodes.` : `Node ${id} takes sandboxes again.`);
      }),
    );
  }

  withAdminOptions(nodes.command('remove').description('remove a drained node (its credential stops working)').argument('<id>', 'node id')).action(
    action(async (id: string, opts: AdminOptions) => {
      const ctx = adminContextFrom(opts);
      await ctx.client.delete(`${NODES}/${seg(id)}`);
      if (ctx.json) return printJson({ id, removed: true });
      println(`Removed node ${id}.`);
    }),
  );
}
