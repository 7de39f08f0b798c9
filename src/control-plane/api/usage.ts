import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import type { Sql } from '../../store/database.ts';
import { usageReport } from '../../store/usage.ts';
import { teamOf } from './auth.ts';
import { ApiError } from './errors.ts';
import { ErrorBody } from './schemas.ts';

export interface UsageRoutesOptions {
  db: Sql;
  /** The clock open intervals count up to (tests inject one). */
  now?: () => Date;
}

const TIMESTAMP =
  /^(\d{4})-(\d{2})-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2}))?$/;

/**
 * An ISO 8601 timestamp with a zone ("2026-01-01T00:00:00Z", "…+02:00") or a date alone (UTC
 * midnight). Out-of-range fields (February 30, hour 25) are refused rather than rolled over.
 */
export function parseTimestamp(what: string, raw: string): Date {
  const m = TIMESTAMP.exec(raw);
  const bad = () => new ApiError(400, `${what}: "${raw.slice(0, 64)}" is not an ISO 8601 timestamp (e.g. 2026-01-01T00:00:00Z or 2026-01-01)`);
  if (!m) throw bad();
  const [, y, mo, d, h = '0', mi = '0', s = '0'] = m;
  const day = new Date(Date.UTC(Number(y), Number(mo) - 1, Number(d)));
  if (day.getUTCMonth() !== Number(mo) - 1 || day.getUTCDate() !== Number(d) || Number(h) > 23 || Number(mi) > 59 || Number(s) > 59) {
    throw bad();
  }
  const t = Date.parse(m[4] === undefined ? `${raw}T00:00:00Z` : raw);
  if (!Number.isFinite(t)) throw bad();
  return new Date(t);
}

const Timestamp = (description: string) =>
  Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: `${description}: ISO 8601 timestamp or date (UTC)` }));

export const UsageQuery = Type.Object({
  from: Timestamp('Start of the window (default: since the first usage)'),
  to: Timestamp('End of the window (default: now)'),
});
export type UsageQuery = Static<typeof UsageQuery>;

const Figures = {
  runningSeconds: Type.Number({ description: 'Seconds in the running state' }),
  cpuSeconds: Type.Number({ description: 'Running seconds × vCPUs' }),
  memoryGiBSeconds: Type.Number({ description: 'Running seconds × memory in GiB' }),
};

export const UsageReportBody = Type.Object({
  teamId: Type.String(),
  from: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'null: since the first usage' }),
  to: Type.String({ format: 'date-time' }),
  totals: Type.Object(Figures),
  sandboxes: Type.Array(
    Type.Object({
      sandboxId: Type.String(),
      ...Figures,
      open: Type.Boolean({ description: 'Running now: the figures grow until it stops' }),
    }),
  ),
});
export type UsageReportBody = Static<typeof UsageReportBody>;

/** GET /usage: the team's compute usage (paused time bills nothing). */
export const usageRoutes: FastifyPluginAsyncTypebox<UsageRoutesOptions> = async (app, opts) => {
  const now = opts.now ?? (() => new Date());
  app.get(
    '/usage',
    {
      schema: {
        summary: 'Compute usage of the team in a time window (running seconds, CPU and memory seconds)',
        tags: ['usage'],
        security: [{ apiKey: [] }],
        querystring: UsageQuery,
        response: { 200: UsageReportBody, '4xx': ErrorBody, '5xx': ErrorBody },
      },
    },
    async (req) => {
      const from = req.query.from === undefined ? undefined : parseTimestamp('from', req.query.from);
      const to = req.query.to === undefined ? undefined : parseTimestamp('to', req.query.to);
      if (from && to && from.getTime() > to.getTime()) throw new ApiError(400, 'from must not be after to');
      const r = await usageReport(opts.db, { teamId: teamOf(req), from, to, now: now() });
      return { ...r, from: r.from?.toISOString() ?? null, to: r.to.toISOString() };
    },
  );
};
