// nestbox events [--follow] [--after <seq>]
import type { Command } from 'commander';
import { CliError } from '../api-client.ts';
import { action, contextFrom, intArg, println, withApiOptions, type CommonOptions } from '../output.ts';

interface LifecycleEventData {
  id: string;
  sandboxId: string;
  from: string | null;
  to: string;
  reason: string;
  at: string;
}

/**
 * Streams the team's lifecycle events (GET /events, server-sent events). Without --follow it
 * prints what has happened after --after and stops when the stream has nothing more for a
 * moment; with --follow it keeps going, reconnecting from the last event id if the stream drops.
 */
export function registerEventsCommand(program: Command) {
  withApiOptions(
    program
      .command('events')
      .description("the team's lifecycle events (starting, running, paused, killed, ...)")
      .option('-f, --follow', 'keep streaming new events')
      .option('--after <seq>', 'start after this event sequence number (default: the beginning; with --follow: now)', intArg(0, Number.MAX_SAFE_INTEGER)),
  ).action(
    action(async (opts: CommonOptions & { follow?: boolean; after?: number }) => {
      const ctx = contextFrom(opts);
      const { apiUrl, apiKey } = ctx.client.config;
      // A listing starts at the beginning; --follow starts now unless told otherwise.
      let last = opts.after ?? (opts.follow ? undefined : 0);
      for (;;) {
        const ctrl = new AbortController();
        let res: Response;
        try {
          res = await fetch(`${apiUrl}/events${last === undefined ? '' : `?after=${last}`}`, {
            headers: { 'x-api-key': apiKey, accept: 'text/event-stream' }, signal: ctrl.signal,
          });
        } catch (e) {
          throw new CliError(`cannot reach the Nestbox API at ${apiUrl}: ${(e as Error).message}`);
        }
        if (!res.ok) {
          const body = (await res.json().catch(() => ({}))) as { message?: string };
          throw new CliError(`${body.message ?? res.statusText} (HTTP ${res.status})`);
        }
        const reader = res.body!.getReader();
        let buf = '';
        let idle: NodeJS.Timeout | undefined;
        const armIdle = () => {
          if (opts.follow) return;
          clearTimeout(idle);
          idle = setTimeout(() => ctrl.abort(), 1500);
        };
        armIdle();
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            buf += Buffer.from(value).toString();
            let i;
            while ((i = buf.indexOf('\n\n')) >= 0) {
              const frame = buf.slice(0, i);
              buf = buf.slice(i + 2);
              const id = /^id: (\d+)$/m.exec(frame);
              const data = /^data: (.*)$/m.exec(frame);
              if (!id || !data) continue;
              last = Number(id[1]);
              const e = JSON.parse(data[1]!) as LifecycleEventData;
              // --json: one object per line, so a follower can be piped into a line reader
              if (ctx.json) println(JSON.stringify({ seq: last, ...e }));
              else println(`${e.at}  ${e.sandboxId}  ${e.from ?? '-'} -> ${e.to}  (${e.reason})`);
              armIdle();
            }
          }
        } catch (e) {
          if (!ctrl.signal.aborted) throw new CliError(`event stream failed: ${(e as Error).message}`);
        } finally {
          clearTimeout(idle);
        }
        if (!opts.follow) return;
        await new Promise((r) => setTimeout(r, 500)); // the stream dropped: reconnect after `last`
      }
    }),
  );
}
