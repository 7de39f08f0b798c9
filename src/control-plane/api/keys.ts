import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import type { Database } from '../../store/database.ts';
import { createApiKey, listApiKeys, revokeApiKeyKeepingOne, type ApiKeyInfo } from '../../store/teams.ts';
import { teamOf } from './auth.ts';
import { ErrorBody } from './schemas.ts';

export interface KeyRoutesOptions {
  db: Database;
}

const DateTime = Type.String({ format: 'date-time' });
const NullableDateTime = Type.Union([DateTime, Type.Null()]);

export const ApiKeyListed = Type.Object({
  id: Type.String(),
  name: Type.String(),
  mask: Type.String({ description: 'The key with its middle elided, e.g. e2b_01…cdef or nestbox_admin_01…cdef' }),
  createdAt: DateTime,
  lastUsedAt: NullableDateTime,
  revokedAt: NullableDateTime,
});
export type ApiKeyListed = Static<typeof ApiKeyListed>;

export const NewApiKey = Type.Object({
  name: Type.String({ maxLength: 128, default: '', description: 'A label for listings' }),
});
export type NewApiKey = Static<typeof NewApiKey>;

export const ApiKeyCreated = Type.Object({
  id: Type.String(),
  key: Type.String({ description: 'The whole key: shown this once, never again' }),
  mask: Type.String(),
});

export const KeyIdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });

const errors = { '4xx': ErrorBody, '5xx': ErrorBody } as const;
const security = [{ apiKey: [] }];

/** A key as listed: never the key itself (team and admin keys alike). */
export function renderApiKey(k: Omit<ApiKeyInfo, 'teamId'>): ApiKeyListed {
  return {
    id: k.id,
    name: k.name,
    mask: k.mask,
    createdAt: k.createdAt.toISOString(),
    lastUsedAt: k.lastUsedAt?.toISOString() ?? null,
    revokedAt: k.revokedAt?.toISOString() ?? null,
  };
}

/**
 * The team's API keys. Any key of a team manages all of the team's keys (there are no roles);
 * a key may revoke itself, but the team's last active key cannot be revoked (409).
 */
export const keyRoutes: FastifyPluginAsyncTypebox<KeyRoutesOptions> = async (app, { db }) => {
  app.get(
    '/nestbox/v1/keys',
    {
      schema: {
        summary: "List the team's API keys, revoked ones included",
        tags: ['keys'],
        security,
        response: { 200: Type.Array(ApiKeyListed), ...errors },
      },
    },
    async (req) => (await listApiKeys(db, teamOf(req), { includeRevoked: true })).map(renderApiKey),
  );

  app.post(
    '/nestbox/v1/keys',
    {
      preValidation: async (req) => {
        if (req.body === undefined || req.body === null) (req as { body: unknown }).body = {};
      },
      schema: {
        summary: 'Create an API key (the key is in this response only)',
        tags: ['keys'],
        security,
        body: NewApiKey,
        response: { 201: ApiKeyCreated, ...errors },
      },
    },
    async (req, reply) => {
      const created = await createApiKey(db, teamOf(req), { name: req.body.name.trim() });
      return reply.code(201).header('Cache-Control', 'no-store').send(created);
    },
  );

  app.delete(
    '/nestbox/v1/keys/:id',
    {
      schema: {
        summary: "Revoke an API key (409 for the team's last active key)",
        tags: ['keys'],
        security,
        params: KeyIdParams,
        response: { 204: Type.Null({ description: 'No content' }), ...errors },
      },
    },
    async (req, reply) => {
      await revokeApiKeyKeepingOne(db, teamOf(req), req.params.id);
      return reply.code(204).send(null);
    },
  );
};
