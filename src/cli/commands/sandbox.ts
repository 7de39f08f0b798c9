// nestbox sandbox create | list | info | pause | resume | kill | timeout
import { InvalidArgumentError, type Command } from 'commander';
import { seg } from '../api-client.ts';
import {
  action, contextFrom, formatTime, intArg, keyValueArg, printFields, printJson, printTable, println, withApiOptions,
  type CommonOptions,
} from '../output.ts';

const MAX_TIMEOUT_S = 86_400;
const PAGE_SIZE = 100;

interface SandboxCreated {
  sandboxID: string;
  templateID: string;
  envdVersion: string;
  domain: string | null;
}

interface ListedSandbox {
  sandboxID: string;
  templateID: string;
  startedAt: string;
  endAt: string;
  cpuCount: number;
  memoryMB: number;
  diskSizeMB: number;
  metadata: Record<string, string>;
  state: 'running' | 'paused';
  envdVersion: string;
}

interface SandboxDetail extends ListedSandbox {
  domain: string | null;
  allowInternetAccess: boolean | null;
  lifecycle: { autoResume: boolean; onTimeout: 'kill' | 'pause' };
  /** Nestbox's own field; absent from E2B's answer. */
  nodeId?: string | null;
}

function statesArg(raw: string): string {
  const parts = raw.split(',').map((s) => s.trim()).filter(Boolean);
  if (parts.length === 0 || parts.some((p) => p !== 'running' && p !== 'paused')) {
    throw new InvalidArgumentError('expected running, paused or running,paused.');
  }
  return [...new Set(parts)].join(',');
}

/** E2B's metadata filter: each key and value URI-encoded, pairs joined like a query string. */
export function metadataFilter(m: Record<string, string>): string {
  return Object.entries(m)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
}

const formatMetadata = (m: Record<string, string>) =>
  Object.entries(m)
    .map(([k, v]) => `${k}=${v}`)
    .join(', ') || '-';

export function registerSandboxCommands(program: Command) {
  const sandbox = program.command('sandbox').alias('sbx').description('create, list and control sandboxes');

  withApiOptions(
    sandbox
      .command('create')
      .description('create a sandbox')
      .option('--template <name>', 'template', 'base')
      .option('--timeout <seconds>', 'time to live in seconds', intArg(0, MAX_TIMEOUT_S), 300)
      .option('--metadata <key=value>', 'metadata (repeatable)', keyValueArg)
      .option('--env <KEY=VALUE>', 'environment variable (repeatable)', keyValueArg)
      .option('--auto-pause', 'pause instead of kill at the timeout', false),
  ).action(
    action(
      async (
        opts: CommonOptions & {
          template: string;
          timeout: number;
          metadata?: Record<string, string>;
          env?: Record<string, string>;
          autoPause: boolean;
        },
      ) => {
        const ctx = contextFrom(opts);
        const { body } = await ctx.progress(`Creating a sandbox from ${opts.template}`, () =>
          ctx.client.post<SandboxCreated>('/v2/sandboxes', {
            templateID: opts.template,
            timeout: opts.timeout,
            autoPause: opts.autoPause,
            ...(opts.metadata ? { metadata: opts.metadata } : {}),
            ...(opts.env ? { envVars: opts.env } : {}),
          }),
        );
        if (ctx.json) return printJson(body);
        println(
          `Created sandbox ${body.sandboxID} from template ${body.templateID}; ` +
            `it is ${opts.autoPause ? 'paused' : 'killed'} after ${opts.timeout} s unless extended.`,
        );
      },
    ),
  );

  withApiOptions(
    sandbox
      .command('list')
      .alias('ls')
      .description('list sandboxes (running and paused by default)')
      .option('--state <states>', 'running, paused or running,paused', statesArg)
      .option('--metadata <key=value>', 'only sandboxes with this metadata (repeatable)', keyValueArg)
      .option('--limit <n>', 'show at most n sandboxes', intArg(1, 1_000_000)),
  ).action(
    action(async (opts: CommonOptions & { state?: string; metadata?: Record<string, string>; limit?: number }) => {
      const ctx = contextFrom(opts);
      const all: ListedSandbox[] = [];
      await ctx.progress('Listing sandboxes', async () => {
        let nextToken: string | undefined;
        do {
          const want = opts.limit === undefined ? PAGE_SIZE : Math.min(PAGE_SIZE, opts.limit - all.length);
          const page = await ctx.client.get<ListedSandbox[]>('/v2/sandboxes', {
            state: opts.state,
            metadata: opts.metadata ? metadataFilter(opts.metadata) : undefined,
            limit: want,
            nextToken,
          });
          all.push(...page.body.slice(0, want));
          nextToken = page.headers.get('x-next-token') || undefined;
        } while (nextToken && (opts.limit === undefined || all.length < opts.limit));
      });
      if (ctx.json) return printJson(all);
      if (all.length === 0) return println('No sandboxes.');
      printTable(
        ['ID', 'TEMPLATE', 'STATE', 'STARTED', 'ENDS', 'CPU', 'MEMORY', 'METADATA'],
        all.map((s) => [
          s.sandboxID,
          s.templateID,
          s.state,
          formatTime(s.startedAt),
          s.state === 'paused' ? '-' : formatTime(s.endAt),
          s.cpuCount,
          `${s.memoryMB} MiB`,
          formatMetadata(s.metadata),
        ]),
      );
    }),
  );

  withApiOptions(sandbox.command('info').description('show a sandbox').argument('<id>', 'sandbox id')).action(
    action(async (id: string, opts: CommonOptions) => {
      const ctx = contextFrom(opts);
      const { body: s } = await ctx.client.get<SandboxDetail>(`/sandboxes/${seg(id)}`);
      if (ctx.json) return printJson({ ...s, nodeId: s.nodeId ?? null });
      printFields([
        ['id', s.sandboxID],
        ['template', s.templateID],
        ['state', s.state],
        ['node', s.nodeId ?? '-'],
        ['started', formatTime(s.startedAt)],
        ['ends', s.state === 'paused' ? '- (paused: the clock is stopped)' : formatTime(s.endAt)],
        ['on timeout', s.lifecycle.onTimeout],
        ['cpu', s.cpuCount],
        ['memory', `${s.memoryMB} MiB`],
        ['disk', `${s.diskSizeMB} MiB`],
        ['internet', s.allowInternetAccess === false ? 'no' : 'yes'],
        ['metadata', formatMetadata(s.metadata)],
        ['envd', s.envdVersion],
      ]);
    }),
  );

  withApiOptions(
    sandbox
      .command('pause')
      .description('pause a running sandbox (with its memory unless --no-memory)')
      .argument('<id>', 'sandbox id')
      .option('--no-memory', 'keep only the files; a resume boots fresh on them'),
  ).action(
    action(async (id: string, opts: CommonOptions & { memory: boolean }) => {
      const ctx = contextFrom(opts);
      await ctx.progress(`Pausing ${id}`, () => ctx.client.post(`/sandboxes/${seg(id)}/pause`, { memory: opts.memory }));
      if (ctx.json) return printJson({ sandboxID: id, state: 'paused', memory: opts.memory });
      println(`Paused sandbox ${id}${opts.memory ? '' : ' (files only, no memory)'}.`);
    }),
  );

  withApiOptions(
    sandbox
      .command('resume')
      .description('resume a paused sandbox (a running one: extend its timeout)')
      .argument('<id>', 'sandbox id')
      .option('--timeout <seconds>', 'time to live from now, in seconds', intArg(0, MAX_TIMEOUT_S), 300),
  ).action(
    action(async (id: string, opts: CommonOptions & { timeout: number }) => {
      const ctx = contextFrom(opts);
      const res = await ctx.progress(`Resuming ${id}`, () =>
        ctx.client.post<SandboxCreated>(`/sandboxes/${seg(id)}/connect`, { timeout: opts.timeout }),
      );
      if (ctx.json) return printJson(res.body);
      if (res.status === 201) println(`Resumed sandbox ${id}; it ends in ${opts.timeout} s unless extended.`);
      else println(`Sandbox ${id} is running already; it now ends in ${opts.timeout} s at the earliest.`);
    }),
  );

  withApiOptions(
    sandbox.command('kill').description('kill a sandbox (a paused one: delete its snapshot)').argument('<id>', 'sandbox id'),
  ).action(
    action(async (id: string, opts: CommonOptions) => {
      const ctx = contextFrom(opts);
      await ctx.progress(`Killing ${id}`, () => ctx.client.delete(`/sandboxes/${seg(id)}`));
      if (ctx.json) return printJson({ sandboxID: id, state: 'killed' });
      println(`Killed sandbox ${id}.`);
    }),
  );

  withApiOptions(
    sandbox
      .command('timeout')
      .description('set the time a running sandbox has left (may shorten it)')
      .argument('<id>', 'sandbox id')
      .argument('<seconds>', 'seconds from now', intArg(0, MAX_TIMEOUT_S)),
  ).action(
    action(async (id: string, seconds: number, opts: CommonOptions) => {
      const ctx = contextFrom(opts);
      await ctx.client.post(`/sandboxes/${seg(id)}/timeout`, { timeout: seconds });
      if (ctx.json) return printJson({ sandboxID: id, timeout: seconds });
      println(`Sandbox ${id} now ends in ${seconds} s.`);
    }),
  );
}
