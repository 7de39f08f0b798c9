// nestbox teams create <name> [--max-running] [--max-timeout] | list | show <teamId> | keys create <teamId> [--name]
// Operator commands: they use the admin key, never a team's API key.
import type { Command } from 'commander';
import { seg } from '../api-client.ts';
import {
  action, adminContextFrom, formatTime, intArg, printFields, printJson, printTable, println, withAdminOptions,
} from '../output.ts';

interface Team {
  id: string;
  name: string;
  maxRunning: number;
  maxTimeoutS: number;
  createdAt: string;
  activeKeys: number;
  activeSandboxes: number;
}

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

type AdminOptions = { apiUrl?: string; adminKey?: string; json?: boolean };

const TEAMS = '/nestbox/v1/admin/teams';
// The bounds the API enforces, so that a typo is refused before any request.
const MAX_RUNNING_LIMIT = 100_000;
const MAX_TIMEOUT_S = 86_400;

const limits = (t: Team) => `at most ${t.maxRunning} running sandboxes, timeouts up to ${t.maxTimeoutS} s`;

export function registerTeamsCommands(program: Command) {
  const teams = program.command('teams').description('manage teams and their API keys (operator: needs the admin key)');

  withAdminOptions(
    teams
      .command('create')
      .description("create a team and its first API key (the key is shown once)")
      .argument('<name>', 'team name (unique, ignoring case)')
      .option('--max-running <n>', `sandboxes the team may have running at once (1-${MAX_RUNNING_LIMIT}; default 20)`, intArg(1, MAX_RUNNING_LIMIT))
      .option('--max-timeout <seconds>', `longest sandbox timeout the team may ask for (1-${MAX_TIMEOUT_S}; default ${MAX_TIMEOUT_S})`, intArg(1, MAX_TIMEOUT_S))
      .option('--key-name <name>', 'label of the first API key', 'default'),
  ).action(
    action(async (name: string, opts: AdminOptions & { maxRunning?: number; maxTimeout?: number; keyName: string }) => {
      const ctx = adminContextFrom(opts);
      const { body } = await ctx.client.post<{ team: Team; apiKey: CreatedKey }>(TEAMS, {
        name,
        keyName: opts.keyName,
        ...(opts.maxRunning === undefined ? {} : { maxRunning: opts.maxRunning }),
        ...(opts.maxTimeout === undefined ? {} : { maxTimeoutS: opts.maxTimeout }),
      });
      if (ctx.json) return printJson(body);
      println(`Created team ${body.team.name} (${body.team.id}): ${limits(body.team)}.`);
      println(`Its first API key (${body.apiKey.id}); store it now, it is not shown again:`);
      println(body.apiKey.key);
    }),
  );

  withAdminOptions(teams.command('list').alias('ls').description('list every team')).action(
    action(async (opts: AdminOptions) => {
      const ctx = adminContextFrom(opts);
      const { body } = await ctx.client.get<Team[]>(TEAMS);
      if (ctx.json) return printJson(body);
      if (body.length === 0) return println('No teams.');
      printTable(
        ['ID', 'NAME', 'ACTIVE SANDBOXES', 'MAX RUNNING', 'MAX TIMEOUT', 'KEYS', 'CREATED'],
        body.map((t) => [t.id, t.name, t.activeSandboxes, t.maxRunning, `${t.maxTimeoutS} s`, t.activeKeys, formatTime(t.createdAt)]),
      );
    }),
  );

  withAdminOptions(teams.command('show').description('a team, its limits and its API keys (masked)').argument('<teamId>', 'team id (see teams list)')).action(
    action(async (teamId: string, opts: AdminOptions) => {
      const ctx = adminContextFrom(opts);
      const { body } = await ctx.client.get<Team & { keys: ListedKey[] }>(`${TEAMS}/${seg(teamId)}`);
      if (ctx.json) return printJson(body);
      printFields([
        ['id', body.id],
        ['name', body.name],
        ['active sandboxes', `${body.activeSandboxes} of at most ${body.maxRunning}`],
        ['max timeout', `${body.maxTimeoutS} s`],
        ['created', formatTime(body.createdAt)],
      ]);
      if (body.keys.length === 0) return println('No API keys.');
      printTable(
        ['KEY ID', 'NAME', 'KEY', 'CREATED', 'LAST USED', 'REVOKED'],
        body.keys.map((k) => [k.id, k.name || '-', k.mask, formatTime(k.createdAt), formatTime(k.lastUsedAt), formatTime(k.revokedAt)]),
      );
    }),
  );

  const keys = teams.command('keys').description("manage a team's API keys as the operator");
  withAdminOptions(
    keys
      .command('create')
      .description('create an API key for a team (it is shown once)')
      .argument('<teamId>', 'team id (see teams list)')
      .option('--name <name>', 'a label for listings', ''),
  ).action(
    action(async (teamId: string, opts: AdminOptions & { name: string }) => {
      const ctx = adminContextFrom(opts);
      const { body } = await ctx.client.post<CreatedKey & { teamId: string }>(`${TEAMS}/${seg(teamId)}/keys`, { name: opts.name });
      if (ctx.json) return printJson(body);
      println(`Created API key ${body.id}${opts.name ? ` (${opts.name})` : ''} for team ${body.teamId}. Store it now: it is not shown again.`);
      println(body.key);
    }),
  );
}
