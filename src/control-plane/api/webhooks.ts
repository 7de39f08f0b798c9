import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import { notFound } from '../../core/errors.ts';
import type { Database } from '../../store/database.ts';
import {
  createWebhook, deleteWebhook, getWebhook, listDeliveries, listWebhooks, MAX_WEBHOOK_URL_LENGTH, MIN_SECRET_LENGTH,
  type Delivery, type WebhookInfo,
} from '../../store/webhooks.ts';
import { teamOf } from './auth.ts';
import { ErrorBody } from './schemas.ts';

export interface WebhookRoutesOptions {
  db: Database;
}

const DateTime = Type.String({ format: 'date-time' });

export const WebhookView = Type.Object({
  id: Type.String(),
  url: Type.String(),
  createdAt: DateTime,
  lastSeq: Type.Integer({ description: 'Every outbox event up to this sequence number has been handled' }),
  attempts: Type.Integer({ description: 'Failed attempts so far of the next event (0 when healthy)' }),
  nextAttemptAt: Type.Union([DateTime, Type.Null()], { description: 'When the next retry is due; null: now' }),
});
export type WebhookView = Static<typeof WebhookView>;

// Nestbox's own API, not E2B's: unknown fields are refused rather than ignored.
export const NewWebhook = Type.Object(
  {
    url: Type.String({ minLength: 1, maxLength: MAX_WEBHOOK_URL_LENGTH, description: 'http(s) URL events are POSTed to' }),
    secret: Type.Optional(
      Type.String({ minLength: MIN_SECRET_LENGTH, maxLength: 256, description: 'HMAC key; generated when absent' }),
    ),
  },
  { additionalProperties: false },
);
export type NewWebhook = Static<typeof NewWebhook>;

export const WebhookCreated = Type.Object({
  id: Type.String(),
  url: Type.String(),
  createdAt: DateTime,
  secret: Type.String({ description: 'The signing secret: shown this once, never again' }),
});

export const DeliveryView = Type.Object({
  id: Type.Integer(),
  eventId: Type.String(),
  eventSeq: Type.Integer(),
  sandboxId: Type.String(),
  attempt: Type.Integer(),
  outcome: Type.Union([Type.Literal('delivered'), Type.Literal('failed'), Type.Literal('gave_up')]),
  httpStatus: Type.Union([Type.Integer(), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  durationMs: Type.Integer(),
  at: DateTime,
});
export type DeliveryView = Static<typeof DeliveryView>;

export const WebhookIdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });
export const DeliveriesQuery = Type.Object({
  limit: Type.Integer({ minimum: 1, maximum: 1000, default: 100 }),
});

const errors = { '4xx': ErrorBody, '5xx': ErrorBody } as const;
const security = [{ apiKey: [] }];

const render = (w: WebhookInfo): WebhookView => ({
  id: w.id, url: w.url, createdAt: w.createdAt.toISOString(), lastSeq: w.lastSeq, attempts: w.attempts,
  nextAttemptAt: w.nextAttemptAt?.toISOString() ?? null,
});

const renderDelivery = (d: Delivery): DeliveryView => ({
  id: d.id, eventId: d.eventId, eventSeq: d.eventSeq, sandboxId: d.sandboxId, attempt: d.attempt, outcome: d.outcome,
  httpStatus: d.httpStatus, error: d.error, durationMs: d.durationMs, at: d.at.toISOString(),
});

const webhookNotFound = (id: string) => notFound(`webhook "${id}" not found`);

/**
 * The team's webhooks: lifecycle events POSTed, signed, to a URL. Registering starts at the
 * current end of the outbox. Another team's webhooks are "not found".
 */
export const webhookRoutes: FastifyPluginAsyncTypebox<WebhookRoutesOptions> = async (app, { db }) => {
  app.post(
    '/nestbox/v1/webhooks',
    {
      schema: {
        summary: 'Register a webhook (its secret is in this response only)',
        tags: ['webhooks'],
        security,
        body: NewWebhook,
        response: { 201: WebhookCreated, ...errors },
      },
    },
    async (req, reply) => {
      const w = await createWebhook(db, teamOf(req), { url: req.body.url, secret: req.body.secret });
      return reply
        .code(201)
        .header('Cache-Control', 'no-store')
        .send({ id: w.id, url: w.url, createdAt: w.createdAt.toISOString(), secret: w.secret });
    },
  );

  app.get(
    '/nestbox/v1/webhooks',
    {
      schema: {
        summary: "List the team's webhooks (without secrets)",
        tags: ['webhooks'],
        security,
        response: { 200: Type.Array(WebhookView), ...errors },
      },
    },
    async (req) => (await listWebhooks(db, teamOf(req))).map(render),
  );

  app.get(
    '/nestbox/v1/webhooks/:id',
    {
      schema: {
        summary: 'A webhook and its delivery state',
        tags: ['webhooks'],
        security,
        params: WebhookIdParams,
        response: { 200: WebhookView, ...errors },
      },
    },
    async (req) => {
      const w = await getWebhook(db, teamOf(req), req.params.id);
      if (!w) throw webhookNotFound(req.params.id);
      return render(w);
    },
  );

  app.delete(
    '/nestbox/v1/webhooks/:id',
    {
      schema: {
        summary: 'Delete a webhook: nothing more is delivered to it',
        tags: ['webhooks'],
        security,
        params: WebhookIdParams,
        response: { 204: Type.Null({ description: 'No content' }), ...errors },
      },
    },
    async (req, reply) => {
      if (!(await deleteWebhook(db, teamOf(req), req.params.id))) throw webhookNotFound(req.params.id);
      return reply.code(204).send(null);
    },
  );

  app.get(
    '/nestbox/v1/webhooks/:id/deliveries',
    {
      schema: {
        summary: "A webhook's delivery attempts, newest first",
        tags: ['webhooks'],
        security,
        params: WebhookIdParams,
        querystring: DeliveriesQuery,
        response: { 200: Type.Array(DeliveryView), ...errors },
      },
    },
    async (req) => {
      const teamId = teamOf(req);
      if (!(await getWebhook(db, teamId, req.params.id))) throw webhookNotFound(req.params.id);
      return (await listDeliveries(db, teamId, req.params.id, req.query.limit)).map(renderDelivery);
    },
  );
};
