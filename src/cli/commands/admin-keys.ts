// nestbox admin-keys list | create [--name] | revoke <id>: rotate the operator's own keys.
import type { Command } from 'commander';
import { seg } from '../api-client.ts';
import { action, adminContextFrom, formatTime, printJson, printTable, println, withAdminOptions } from '../output.ts';

interface ListedKey {
  id: string;
  name: string;
  mask: string;
  createdAt: string;
  lastUsedAt: string | null;
  revokedAt: string | null;
}

type AdminOptions = { apiUrl?: string; adminKey?: string; json?: boolean };

const KEYS = '/nestbox/v1/admin/keys';

export function registerAdminKeysCommands(program: Command) {
  const keys = program.command('admin-keys').description('manage the admin keys (operator: needs an admin key)');

  withAdminOptions(keys.command('list').description('list the admin keys (revoked ones too)')).action(
    action(async (opts: AdminOptions) => {
      const ctx = adminContextFrom(opts);
      const { body } = await ctx.client.get<ListedKey[]>(KEYS);
      if (ctx.json) return printJson(body);
      printTable(
        ['ID', 'NAME', 'KEY', 'CREATED', 'LAST USED', 'REVOKED'],
        body.map((k) => [k.id, k.name || '-', k.mask, formatTime(k.createdAt), formatTime(k.lastUsedAt), formatTime(k.revokedAt)]),
      );
    }),
  );

  withAdminOptions(
    keys.command('create').description('create an admin key (it is shown once)').option('--name <name>', 'a label for listings', ''),
  ).action(
    action(async (opts: AdminOptions & { name: string }) => {
      const ctx = adminContextFrom(opts);
      const { body } = await ctx.client.post<{ id: string; key: string; mask: string }>(KEYS, { name: opts.name });
      if (ctx.json) return printJson(body);
      println(`Created admin key ${body.id}${opts.name ? ` (${opts.name})` : ''}. Store it now: it is not shown again.`);
      println(body.key);
    }),
  );

  withAdminOptions(keys.command('revoke').description('revoke an admin key (never the last one)').argument('<id>', 'key id (see admin-keys list)')).action(
    action(async (id: string, opts: AdminOptions) => {
      const ctx = adminContextFrom(opts);
      await ctx.client.delete(`${KEYS}/${seg(id)}`);
      if (ctx.json) return printJson({ id, revoked: true });
      println(`Revoked admin key ${id}.`);
    }),
  );
}
