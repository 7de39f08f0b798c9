import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import { Type, type Static } from 'typebox';
import { notFound } from '../../core/errors.ts';
import type { Database } from '../../store/database.ts';
import {
  createJoinToken, generateNodeCredential, listJoinTokens, NODE_CREDENTIAL_PATTERN, revokeJoinToken, sha256, useJoinToken,
  type JoinTokenInfo,
} from '../../store/join-tokens.ts';
import {
  effectiveState, listNodes, nodeByCredential, nodeLoads, recordHeartbeat, registerJoinedNode, removeNode, setCordoned,
  type NodeRecord,
} from '../../store/nodes.ts';
import {
  HeartbeatAnswer, JoinBody, Joined, MEMBERSHIP_ROUTES, MEMBERSHIP_STATUS, NodeCapacityFields, NodeReport,
} from '../../node-api/membership.ts';
import { ApiError } from './errors.ts';
import { ErrorBody } from './schemas.ts';

export interface NodeRoutesOptions {
  db: Database;
  /** A joined node not heard from within this is unhealthy (shown so, and given no placements). */
  unhealthyAfterMs: number;
  /** How often a joined agent is asked to send a heartbeat. */
  heartbeatMs: number;
}

const DateTime = Type.String({ format: 'date-time' });
const NullableDateTime = Type.Union([DateTime, Type.Null()]);

export const NodeView = Type.Object({
  id: Type.String(),
  url: Type.String(),
  state: Type.Union([Type.Literal('ready'), Type.Literal('draining'), Type.Literal('unhealthy'), Type.Literal('down')], {
    description: 'ready: takes sandboxes; draining: no placements, sandboxes move away; unhealthy: heartbeats missed, no placements; down: silent, holds nothing',
  }),
  cordoned: Type.Boolean({ description: 'Drained by the operator (until undrained)' }),
  joined: Type.Boolean({ description: 'Joined with a join token (false: configured at start)' }),
  lastSeenAt: NullableDateTime,
  ...NodeCapacityFields,
  templates: Type.Array(Type.String()),
  version: Type.String(),
  sandboxes: Type.Integer({ description: 'Live sandboxes placed on it' }),
});
export type NodeView = Static<typeof NodeView>;

const JoinTokenView = Type.Object({
  id: Type.String(),
  createdAt: DateTime,
  expiresAt: DateTime,
  revokedAt: NullableDateTime,
  lastUsedAt: NullableDateTime,
});

const NewJoinToken = Type.Object(
  { ttlSeconds: Type.Integer({ minimum: 1, maximum: 30 * 24 * 3600, default: 24 * 3600, description: 'How long the token can be used' }) },
  { additionalProperties: false },
);

const JoinTokenCreated = Type.Object({ ...JoinTokenView.properties, token: Type.String({ description: 'The token: shown this once' }) });

const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 64 }) });
const errors = { '4xx': ErrorBody, '5xx': ErrorBody } as const;
const security = [{ adminKey: [] }];
const config = { admin: true };
const publicConfig = { public: true };

const iso = (d: Date | null) => d?.toISOString() ?? null;
const renderToken = (t: JoinTokenInfo) => ({
  id: t.id, createdAt: t.createdAt.toISOString(), expiresAt: t.expiresAt.toISOString(), revokedAt: iso(t.revokedAt), lastUsedAt: iso(t.lastUsedAt),
});

const nodeNotFound = (id: string) => notFound(`node "${id}" not found (nestbox nodes list shows the fleet)`);

/** The node a heartbeat's bearer credential belongs to; 401 otherwise. */
async function nodeOf(db: Database, req: FastifyRequest, id: string): Promise<NodeRecord> {
  const header = req.headers.authorization ?? '';
  const credential = header.startsWith('Bearer ') ? header.slice(7) : '';
  const node = NODE_CREDENTIAL_PATTERN.test(credential) ? await nodeByCredential(db, sha256(credential)) : null;
  if (!node || node.id !== id) {
    throw new ApiError(MEMBERSHIP_STATUS.unauthorized, 'invalid node credential (the node was removed, or joined again elsewhere): join it again with a join token');
  }
  return node;
}

/**
 * The fleet: nodes join with a join token and heartbeat with their own credential (public
 * routes, each checking its own token); the operator lists, drains, undrains and removes nodes
 * and makes join tokens (admin key).
 */
export const nodeRoutes: FastifyPluginAsyncTypebox<NodeRoutesOptions> = async (app, opts) => {
  const { db } = opts;
  const view = (n: NodeRecord, sandboxes: number): NodeView => ({
    id: n.id, url: n.url, state: effectiveState(n, n.joined ? opts.unhealthyAfterMs : Number.POSITIVE_INFINITY),
    cordoned: n.cordoned, joined: n.joined, lastSeenAt: iso(n.lastSeenAt), cpuCount: n.cpuCount, memoryMB: n.memoryMB,
    diskMB: n.diskMB, maxSandboxes: n.maxSandboxes, templates: n.templates, version: n.version, sandboxes,
  });

  app.get(
    '/nestbox/v1/nodes',
    { config, schema: { summary: 'The fleet: every node and its state', tags: ['nodes'], security, response: { 200: Type.Array(NodeView), ...errors } } },
    async () => {
      const loads = new Map((await nodeLoads(db)).map((l) => [l.nodeId, l.sandboxes]));
      return (await listNodes(db)).map((n) => view(n, loads.get(n.id) ?? 0));
    },
  );

  for (const [verb, cordoned] of [['drain', true], ['undrain', false]] as const) {
    app.post(
      `/nestbox/v1/nodes/:id/${verb}`,
      {
        config,
        schema: {
          summary: cordoned ? 'Drain a node: no placements; its running sandboxes move to other nodes' : 'Undrain a node: it takes sandboxes again',
          tags: ['nodes'], security, params: IdParams, response: { 204: Type.Null(), ...errors },
        },
      },
      async (req, reply) => {
        if (!(await setCordoned(db, req.params.id, cordoned))) throw nodeNotFound(req.params.id);
        return reply.code(204).send(null);
      },
    );
  }

  app.delete(
    '/nestbox/v1/nodes/:id',
    {
      config,
      schema: {
        summary: 'Remove a drained node: its credential is void (it may join again with a join token)',
        tags: ['nodes'], security, params: IdParams, response: { 204: Type.Null(), ...errors },
      },
    },
    async (req, reply) => {
      if (!(await removeNode(db, req.params.id))) throw nodeNotFound(req.params.id);
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/nestbox/v1/nodes/join-tokens',
    {
      config,
      preValidation: async (req) => {
        if (req.body === undefined || req.body === null) (req as { body: unknown }).body = {};
      },
      schema: {
        summary: 'Make a join token (shown once) for `nestbox agent --join`',
        tags: ['nodes'], security, body: NewJoinToken, response: { 201: JoinTokenCreated, ...errors },
      },
    },
    async (req, reply) => {
      const t = await createJoinToken(db, { ttlSeconds: req.body.ttlSeconds });
      return reply.code(201).header('Cache-Control', 'no-store').send({ ...renderToken(t), token: t.token });
    },
  );

  app.get(
    '/nestbox/v1/nodes/join-tokens',
    { config, schema: { summary: 'Join tokens (never the tokens themselves)', tags: ['nodes'], security, response: { 200: Type.Array(JoinTokenView), ...errors } } },
    async () => (await listJoinTokens(db)).map(renderToken),
  );

  app.delete(
    '/nestbox/v1/nodes/join-tokens/:id',
    {
      config,
      schema: { summary: 'Revoke a join token', tags: ['nodes'], security, params: IdParams, response: { 204: Type.Null(), ...errors } },
    },
    async (req, reply) => {
      if (!(await revokeJoinToken(db, req.params.id))) throw notFound(`join token "${req.params.id}" not found`);
      return reply.code(204).send(null);
    },
  );

  app.post(
    MEMBERSHIP_ROUTES.join,
    {
      config: publicConfig,
      schema: {
        summary: 'A node joins with a join token and gets its own credential',
        tags: ['nodes'], body: JoinBody, response: { [MEMBERSHIP_STATUS.joined]: Joined, ...errors },
      },
    },
    async (req, reply) => {
      const b = req.body;
      if (!(await useJoinToken(db, b.joinToken))) {
        throw new ApiError(MEMBERSHIP_STATUS.unauthorized, 'invalid join token (wrong, expired or revoked): make a new one with `nestbox nodes join-token`');
      }
      const credential = generateNodeCredential();
      await registerJoinedNode(db, {
        id: b.nodeId, url: b.url, token: b.nodeToken, credentialHash: sha256(credential), cpuCount: b.cpuCount, memoryMB: b.memoryMB,
        diskMB: b.diskMB, maxSandboxes: b.maxSandboxes, templates: b.templates, version: b.version,
      });
      return reply.code(MEMBERSHIP_STATUS.joined).header('Cache-Control', 'no-store').send({ nodeId: b.nodeId, credential, heartbeatMs: opts.heartbeatMs });
    },
  );

  app.post(
    MEMBERSHIP_ROUTES.heartbeat,
    {
      config: publicConfig,
      schema: {
        summary: "A node's heartbeat (its own credential as bearer token)",
        tags: ['nodes'], security: [{ nodeCredential: [] }], params: IdParams, body: NodeReport, response: { [MEMBERSHIP_STATUS.heartbeat]: HeartbeatAnswer, ...errors },
      },
    },
    async (req) => {
      const node = await nodeOf(db, req, req.params.id);
      const updated = (await recordHeartbeat(db, node.id, req.body)) ?? node;
      return { state: updated.state, cordoned: updated.cordoned, heartbeatMs: opts.heartbeatMs };
    },
  );
};
