import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import type { Sql } from '../../store/database.ts';
import { lastEventSeq, OutboxReader } from '../../store/events.ts';
import { teamOf } from './auth.ts';
import { ErrorBody } from './schemas.ts';

export interface EventRoutesOptions {
  db: Sql;
}

/** How often an open stream reads the outbox. */
const POLL_MS = 200;
/** A comment line after this much silence keeps proxies from closing the stream. */
const KEEPALIVE_MS = 15_000;

export const EventsQuery = Type.Object({
  after: Type.Optional(Type.Integer({ minimum: 0, description: 'Replay events after this sequence number (the SSE id)' })),
});

/**
 * GET /events: the team's lifecycle events as server-sent events, read from the outbox in
 * order. Each event's SSE id is its sequence number, so a client that reconnects with
 * Last-Event-ID (or ?after=) resumes exactly where it stopped; without either it starts now.
 */
export const eventRoutes: FastifyPluginAsyncTypebox<EventRoutesOptions> = async (app, opts) => {
  // Open streams end when the server closes, or they would hold shutdown open for ever.
  const streams = new Set<() => void>();
  let shuttingDown = false;
  app.addHook('onClose', async () => {
    shuttingDown = true;
    for (const end of streams) end();
  });
  app.get(
    '/events',
    {
      schema: {
        summary: 'Live stream of the team\'s lifecycle events (text/event-stream, resumable with Last-Event-ID)',
        tags: ['events'],
        security: [{ apiKey: [] }],
        querystring: EventsQuery,
        response: { '4xx': ErrorBody, '5xx': ErrorBody },
      },
    },
    async (req, reply) => {
      const teamId = teamOf(req);
      const header = req.headers['last-event-id'];
      const fromHeader = typeof header === 'string' && /^\d{1,15}$/.test(header) ? Number(header) : undefined;
      const cursor = req.query.after ?? fromHeader ?? (await lastEventSeq(opts.db));
      const reader = new OutboxReader(opts.db, cursor);
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-store', connection: 'keep-alive' });
      res.write(': nestbox lifecycle events\n\n');
      let closed = shuttingDown;
      let wake: (() => void) | null = null;
      const end = () => {
        closed = true;
        wake?.();
      };
      streams.add(end);
      req.raw.on('close', end);
      let lastWrite = Date.now();
      while (!closed) {
        try {
          for (const e of await reader.next()) {
            if (e.teamId !== teamId) continue;
            res.write(`id: ${e.seq}\nevent: lifecycle\ndata: ${JSON.stringify({
              id: e.id, sandboxId: e.sandboxId, from: e.from, to: e.to, reason: e.reason, generation: e.generation, at: e.at.toISOString(),
            })}\n\n`);
            lastWrite = Date.now();
          }
        } catch (err) {
          req.log.warn({ err }, 'event stream read failed; retrying');
        }
        if (Date.now() - lastWrite > KEEPALIVE_MS) {
          res.write(': keepalive\n\n');
          lastWrite = Date.now();
        }
        if (closed) break;
        await new Promise<void>((r) => {
          const t = setTimeout(r, POLL_MS);
          wake = () => {
            clearTimeout(t);
            r();
          };
        });
      }
      streams.delete(end);
      res.end();
    },
  );
};
