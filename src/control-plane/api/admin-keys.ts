import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { createAdminKey, listAdminKeys, revokeAdminKeyKeepingOne } from '../../store/admin-keys.ts';
import type { Database } from '../../store/database.ts';
import { ApiKeyCreated, ApiKeyListed, KeyIdParams, NewApiKey, renderApiKey } from './keys.ts';
import { ErrorBody } from './schemas.ts';

export interface AdminKeyRoutesOptions {
  db: Database;
}

const errors = { '4xx': ErrorBody, '5xx': ErrorBody } as const;
const security = [{ adminKey: [] }];
const config = { admin: true };

/**
 * The operator's own keys, to rotate them: create a new one, then revoke the old. The last
 * active admin key cannot be revoked (409): nobody could manage teams any more.
 */
export const adminKeyRoutes: FastifyPluginAsyncTypebox<AdminKeyRoutesOptions> = async (app, { db }) => {
  app.get(
    '/nestbox/v1/admin/keys',
    {
      config,
      schema: {
        summary: 'List the admin keys, revoked ones included',
        tags: ['admin'],
        security,
        response: { 200: Type.Array(ApiKeyListed), ...errors },
      },
    },
    async () => (await listAdminKeys(db, { includeRevoked: true })).map(renderApiKey),
  );

  app.post(
    '/nestbox/v1/admin/keys',
    {
      config,
      preValidation: async (req) => {
        if (req.body === undefined || req.body === null) (req as { body: unknown }).body = {};
      },
      schema: {
        summary: 'Create an admin key (the key is in this response only)',
        tags: ['admin'],
        security,
        body: NewApiKey,
        response: { 201: ApiKeyCreated, ...errors },
      },
    },
    async (req, reply) => {
      const created = await createAdminKey(db, { name: req.body.name.trim() });
      return reply.code(201).header('Cache-Control', 'no-store').send(created);
    },
  );

  app.delete(
    '/nestbox/v1/admin/keys/:id',
    {
      config,
      schema: {
        summary: 'Revoke an admin key (409 for the last active one)',
        tags: ['admin'],
        security,
        params: KeyIdParams,
        response: { 204: Type.Null({ description: 'No content' }), ...errors },
      },
    },
    async (req, reply) => {
      await revokeAdminKeyKeepingOne(db, req.params.id);
      return reply.code(204).send(null);
    },
  );
};
