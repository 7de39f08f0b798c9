import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import { Type, type Static } from 'typebox';
import { notFound } from '../../core/errors.ts';
import type { Database } from '../../store/database.ts';
import {
  createApiKey, createTeamWithKey, DEFAULT_MAX_RUNNING, DEFAULT_MAX_TIMEOUT_S, getTeam, getTeamSummary, listApiKeys,
  listTeamSummaries, MAX_TEAM_NAME_LENGTH, type TeamSummary,
} from '../../store/teams.ts';
import { ApiKeyCreated, ApiKeyListed, NewApiKey, renderApiKey } from './keys.ts';
import { ErrorBody, MAX_TIMEOUT_S } from './schemas.ts';

export interface AdminTeamRoutesOptions {
  db: Database;
}

/** A bound on max_running that still fits any host. */
export const MAX_RUNNING_LIMIT = 100_000;

const DateTime = Type.String({ format: 'date-time' });

export const TeamView = Type.Object({
  id: Type.String(),
  name: Type.String(),
  maxRunning: Type.Integer({ description: 'Sandboxes the team may have running at once (429 past it)' }),
  maxTimeoutS: Type.Integer({ description: 'Longest timeout, in seconds, a sandbox of the team may ask for' }),
  createdAt: DateTime,
  activeKeys: Type.Integer({ description: 'API keys not revoked' }),
  activeSandboxes: Type.Integer({ description: 'Sandboxes counting toward maxRunning now (starting, running, pausing, resuming)' }),
});
export type TeamView = Static<typeof TeamView>;

export const TeamDetail = Type.Object({
  ...TeamView.properties,
  keys: Type.Array(ApiKeyListed, { description: "The team's API keys, revoked ones included" }),
});

// Nestbox's own API, not E2B's: unknown fields are refused rather than ignored.
export const NewTeam = Type.Object(
  {
    name: Type.String({ minLength: 1, maxLength: MAX_TEAM_NAME_LENGTH, description: 'Unique, ignoring case' }),
    maxRunning: Type.Integer({
      minimum: 1, maximum: MAX_RUNNING_LIMIT, default: DEFAULT_MAX_RUNNING, description: 'Sandboxes the team may have running at once',
    }),
    maxTimeoutS: Type.Integer({
      minimum: 1, maximum: MAX_TIMEOUT_S, default: DEFAULT_MAX_TIMEOUT_S, description: 'Longest sandbox timeout, in seconds',
    }),
    keyName: Type.String({ maxLength: 128, default: 'default', description: 'Label of the first API key' }),
  },
  { additionalProperties: false },
);
export type NewTeam = Static<typeof NewTeam>;

export const TeamCreated = Type.Object({
  team: TeamView,
  apiKey: Type.Object({ ...ApiKeyCreated.properties }, { description: "The team's first API key: shown this once" }),
});

export const TeamKeyCreated = Type.Object({ teamId: Type.String(), ...ApiKeyCreated.properties });

export const TeamIdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });

const errors = { '4xx': ErrorBody, '5xx': ErrorBody } as const;
const security = [{ adminKey: [] }];
const config = { admin: true };

const render = (t: TeamSummary): TeamView => ({
  id: t.id, name: t.name, maxRunning: t.maxRunning, maxTimeoutS: t.maxTimeoutS, createdAt: t.createdAt.toISOString(),
  activeKeys: t.activeKeys, activeSandboxes: t.activeSandboxes,
});

const teamNotFound = (id: string) => notFound(`team "${id}" not found`);

async function optionalBody(req: FastifyRequest) {
  if (req.body === undefined || req.body === null) (req as { body: unknown }).body = {};
}

/** The operator's view of teams (admin keys only): create one with its first key, list, show, add keys. */
export const adminTeamRoutes: FastifyPluginAsyncTypebox<AdminTeamRoutesOptions> = async (app, { db }) => {
  app.post(
    '/nestbox/v1/admin/teams',
    {
      config,
      schema: {
        summary: 'Create a team and its first API key (the key is in this response only)',
        tags: ['admin'],
        security,
        body: NewTeam,
        response: { 201: TeamCreated, ...errors },
      },
    },
    async (req, reply) => {
      const { name, maxRunning, maxTimeoutS, keyName } = req.body;
      const { team, apiKey } = await createTeamWithKey(db, { name, maxRunning, maxTimeoutS, keyName: keyName.trim() });
      return reply
        .code(201)
        .header('Cache-Control', 'no-store')
        .send({ team: render({ ...team, activeKeys: 1, activeSandboxes: 0 }), apiKey });
    },
  );

  app.get(
    '/nestbox/v1/admin/teams',
    {
      config,
      schema: {
        summary: 'List every team, oldest first',
        tags: ['admin'],
        security,
        response: { 200: Type.Array(TeamView), ...errors },
      },
    },
    async () => (await listTeamSummaries(db)).map(render),
  );

  app.get(
    '/nestbox/v1/admin/teams/:id',
    {
      config,
      schema: {
        summary: 'A team, its limits and its API keys (masked)',
        tags: ['admin'],
        security,
        params: TeamIdParams,
        response: { 200: TeamDetail, ...errors },
      },
    },
    async (req) => {
      const team = await getTeamSummary(db, req.params.id);
      if (!team) throw teamNotFound(req.params.id);
      const keys = await listApiKeys(db, team.id, { includeRevoked: true });
      return { ...render(team), keys: keys.map(renderApiKey) };
    },
  );

  app.post(
    '/nestbox/v1/admin/teams/:id/keys',
    {
      config,
      preValidation: optionalBody,
      schema: {
        summary: 'Create an API key for a team (the key is in this response only)',
        tags: ['admin'],
        security,
        params: TeamIdParams,
        body: NewApiKey,
        response: { 201: TeamKeyCreated, ...errors },
      },
    },
    async (req, reply) => {
      if (!(await getTeam(db, req.params.id))) throw teamNotFound(req.params.id);
      const created = await createApiKey(db, req.params.id, { name: req.body.name.trim() });
      return reply.code(201).header('Cache-Control', 'no-store').send({ teamId: req.params.id, ...created });
    },
  );
};
