// nestbox usage [--from] [--to]
import type { Command } from 'commander';
import {
  action, contextFrom, formatDuration, formatNumber, formatTime, printJson, printTable, println, withApiOptions,
  type CommonOptions,
} from '../output.ts';

interface Figures {
  runningSeconds: number;
  cpuSeconds: number;
  memoryGiBSeconds: number;
}

interface UsageReport {
  teamId: string;
  from: string | null;
  to: string;
  totals: Figures;
  sandboxes: Array<Figures & { sandboxId: string; open: boolean }>;
}

export function registerUsageCommand(program: Command) {
  withApiOptions(
    program
      .command('usage')
      .description("the team's compute usage: running time, CPU and memory seconds (paused time is free)")
      .option('--from <time>', 'start of the window: ISO 8601 timestamp or date (default: since the first usage)')
      .option('--to <time>', 'end of the window (default: now)'),
  ).action(
    action(async (opts: CommonOptions & { from?: string; to?: string }) => {
      const ctx = contextFrom(opts);
      const { body } = await ctx.client.get<UsageReport>('/usage', { from: opts.from, to: opts.to });
      if (ctx.json) return printJson(body);
      const t = body.totals;
      println(`Usage from ${body.from ? formatTime(body.from) : 'the beginning'} to ${formatTime(body.to)}`);
      println(
        `Total: running ${formatDuration(t.runningSeconds)} (${formatNumber(t.runningSeconds)} s), ` +
          `${formatNumber(t.cpuSeconds)} CPU-s, ${formatNumber(t.memoryGiBSeconds)} GiB-s`,
      );
      if (body.sandboxes.length === 0) return;
      printTable(
        ['SANDBOX', 'RUNNING', 'CPU-S', 'GIB-S', 'NOW'],
        body.sandboxes.map((s) => [
          s.sandboxId,
          formatDuration(s.runningSeconds),
          formatNumber(s.cpuSeconds),
          formatNumber(s.memoryGiBSeconds),
          s.open ? 'running' : '-',
        ]),
      );
    }),
  );
}
