// nestbox keys list | create [--name] | revoke <id>
import type { Command } from 'commander';
import { seg } from '../api-client.ts';
import { action, contextFrom, formatTime, printJson, printTable, println, withApiOptions, type CommonOptions } from '../output.ts';

interface ListedKey {
  id: string;
  name: string;
  mask: string;
  createdAt: string;
  lastUsedAt: string | null;
  revokedAt: string | null;
}

interface CreatedKey {
  id: string;
  key: string;
  mask: string;
}

const KEYS = '/nestbox/v1/keys';

export function registerKeysCommands(program: Command) {
  const keys = program.command('keys').description("manage the team's API keys");

  withApiOptions(keys.command('list').description("list the team's API keys (revoked ones too)")).action(
    action(async (opts: CommonOptions) => {
      const ctx = contextFrom(opts);
      const { body } = await ctx.client.get<ListedKey[]>(KEYS);
      if (ctx.json) return printJson(body);
      if (body.length === 0) return println('No API keys.');
      printTable(
        ['ID', 'NAME', 'KEY', 'CREATED', 'LAST USED', 'REVOKED'],
        body.map((k) => [k.id, k.name || '-', k.mask, formatTime(k.createdAt), formatTime(k.lastUsedAt), formatTime(k.revokedAt)]),
      );
    }),
  );

  withApiOptions(
    keys.command('create').description('create an API key (it is shown once)').option('--name <name>', 'a label for listings', ''),
  ).action(
    action(async (opts: CommonOptions & { name: string }) => {
      const ctx = contextFrom(opts);
      const { body } = await ctx.client.post<CreatedKey>(KEYS, { name: opts.name });
      if (ctx.json) return printJson(body);
      println(`Created API key ${body.id}${opts.name ? ` (${opts.name})` : ''}. Store it now: it is not shown again.`);
      println(body.key);
    }),
  );

  withApiOptions(keys.command('revoke').description('revoke an API key').argument('<id>', 'key id (see keys list)')).action(
    action(async (id: string, opts: CommonOptions) => {
      const ctx = contextFrom(opts);
      await ctx.client.delete(`${KEYS}/${seg(id)}`);
      if (ctx.json) return printJson({ id, revoked: true });
      println(`Revoked API key ${id}.`);
    }),
  );
}
