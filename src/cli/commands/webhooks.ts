// nestbox webhooks list | create <url> [--secret] | delete <id> | deliveries <id> [--limit]
import type { Command } from 'commander';
import { seg } from '../api-client.ts';
import { action, contextFrom, formatTime, printJson, printTable, println, withApiOptions, type CommonOptions } from '../output.ts';

interface Webhook {
  id: string;
  url: string;
  createdAt: string;
  lastSeq: number;
  attempts: number;
  nextAttemptAt: string | null;
}

interface Delivery {
  eventId: string;
  sandboxId: string;
  attempt: number;
  outcome: 'delivered' | 'failed' | 'gave_up';
  httpStatus: number | null;
  error: string | null;
  durationMs: number;
  at: string;
}

const HOOKS = '/nestbox/v1/webhooks';

export function registerWebhooksCommands(program: Command) {
  const hooks = program.command('webhooks').description("manage the team's webhooks (lifecycle events, HMAC-signed)");

  withApiOptions(hooks.command('list').description("list the team's webhooks")).action(
    action(async (opts: CommonOptions) => {
      const ctx = contextFrom(opts);
      const { body } = await ctx.client.get<Webhook[]>(HOOKS);
      if (ctx.json) return printJson(body);
      if (body.length === 0) return println('No webhooks.');
      printTable(
        ['ID', 'URL', 'CREATED', 'DELIVERED UP TO', 'RETRYING'],
        body.map((w) => [w.id, w.url, formatTime(w.createdAt), String(w.lastSeq),
          w.attempts ? `${w.attempts} failed, next ${formatTime(w.nextAttemptAt)}` : '-']),
      );
    }),
  );

  withApiOptions(
    hooks.command('create').description('register a URL for the team\'s lifecycle events (the secret is shown once)')
      .argument('<url>', 'http(s) URL events are POSTed to')
      .option('--secret <secret>', 'signing secret to use (at least 16 characters; generated otherwise)'),
  ).action(
    action(async (url: string, opts: CommonOptions & { secret?: string }) => {
      const ctx = contextFrom(opts);
      const { body } = await ctx.client.post<Webhook & { secret: string }>(HOOKS, { url, ...(opts.secret ? { secret: opts.secret } : {}) });
      if (ctx.json) return printJson(body);
      println(`Created webhook ${body.id} for ${body.url}. Its signing secret (not shown again):`);
      println(body.secret);
    }),
  );

  withApiOptions(hooks.command('delete').description('stop delivering to a webhook').argument('<id>', 'webhook id')).action(
    action(async (id: string, opts: CommonOptions) => {
      const ctx = contextFrom(opts);
      await ctx.client.delete(`${HOOKS}/${seg(id)}`);
      if (ctx.json) return printJson({ id, deleted: true });
      println(`Deleted webhook ${id}.`);
    }),
  );

  withApiOptions(
    hooks.command('deliveries').description('the delivery log of a webhook, newest first').argument('<id>', 'webhook id')
      .option('--limit <n>', 'how many attempts to show', '20'),
  ).action(
    action(async (id: string, opts: CommonOptions & { limit: string }) => {
      const ctx = contextFrom(opts);
      const { body } = await ctx.client.get<Delivery[]>(`${HOOKS}/${seg(id)}/deliveries`, { limit: opts.limit });
      if (ctx.json) return printJson(body);
      if (body.length === 0) return println('No deliveries yet.');
      printTable(
        ['AT', 'EVENT', 'SANDBOX', 'ATTEMPT', 'OUTCOME', 'HTTP', 'MS', 'ERROR'],
        body.map((d) => [formatTime(d.at), d.eventId, d.sandboxId, String(d.attempt), d.outcome,
          d.httpStatus === null ? '-' : String(d.httpStatus), String(d.durationMs), d.error ?? '-']),
      );
    }),
  );
}
