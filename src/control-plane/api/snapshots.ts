import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type } from 'typebox';
import { NestboxError } from '../../core/errors.ts';
import type { SnapshotRow } from '../../store/snapshots.ts';
import { MAX_FORK_COUNT, type SnapshotService } from '../snapshots.ts';
import { teamOf } from './auth.ts';
import { STATUS_BY_CODE } from './errors.ts';
import { ErrorBody, SandboxCreated, SandboxIdParams } from './schemas.ts';
import { renderCreated, type RenderContext } from './views.ts';

// E2B's snapshot and fork routes: a snapshot is a template-like thing (Sandbox.create takes its
// id or name; DELETE /templates/{id} removes it), a fork starts sandboxes from a running one.

const errors = { '4xx': ErrorBody, '5xx': ErrorBody } as const;
const security = [{ apiKey: [] }];

const SnapshotInfo = Type.Object({
  snapshotID: Type.String({ description: 'Pass it (or a name) to Sandbox.create as the template' }),
  names: Type.Array(Type.String()),
});
const SnapshotBody = Type.Object({
  name: Type.Optional(Type.String({ pattern: '^[a-z0-9][a-z0-9._-]{0,62}$', description: 'Lower-case letters, digits, ".", "_", "-"; unique in the team' })),
}, { additionalProperties: false });
const SnapshotListQuery = Type.Object({
  sandboxID: Type.Optional(Type.String({ maxLength: 64 })),
  name: Type.Optional(Type.String({ maxLength: 200 })),
  limit: Type.Integer({ minimum: 1, maximum: 100, default: 100 }),
  nextToken: Type.Optional(Type.String({ maxLength: 40 })),
}, { additionalProperties: false });
const ForkBody = Type.Object({
  count: Type.Integer({ minimum: 1, maximum: MAX_FORK_COUNT, default: 1 }),
  timeout: Type.Integer({ minimum: 0, maximum: 86_400, default: 15, description: 'Time to live of each fork, seconds' }),
}, { additionalProperties: false });
const ForkResult = Type.Object({ sandbox: Type.Optional(SandboxCreated), error: Type.Optional(ErrorBody) });
const TemplateIdParams = Type.Object({ templateID: Type.String({ minLength: 1, maxLength: 200 }) });

export interface SnapshotRoutesOptions {
  snapshots: SnapshotService;
  render: RenderContext;
  /** DELETE /templates/{id} of something that is not a snapshot (a template): true if deleted. */
  deleteTemplate?: (teamId: string, templateId: string) => Promise<boolean>;
}

/** A name as E2B's SDK shows it: the snapshot's own name (no team namespace here). */
function info(s: SnapshotRow) {
  return { snapshotID: s.snapshotId, names: s.name ? [s.name] : [] };
}

/** An empty body is an empty object (the SDK posts `{}` or nothing). */
async function optionalBody(req: { body: unknown }) {
  if (req.body === undefined || req.body === null) req.body = {};
}

export const snapshotRoutes: FastifyPluginAsyncTypebox<SnapshotRoutesOptions> = async (app, { snapshots, render, deleteTemplate }) => {
  app.post('/sandboxes/:sandboxID/snapshots', {
    preValidation: optionalBody,
    schema: {
      summary: 'Snapshot a running sandbox (memory and files; it keeps running). Create sandboxes from it by its id or name.',
      tags: ['snapshots'], security, params: SandboxIdParams, body: SnapshotBody, response: { 201: SnapshotInfo, ...errors },
    },
  }, async (req, reply) => {
    const snap = await snapshots.create(teamOf(req), req.params.sandboxID, { name: req.body.name });
    return reply.code(201).send(info(snap));
  });

  app.get('/snapshots', {
    schema: {
      summary: "List the team's snapshots, newest first (paginated: X-Next-Token)",
      tags: ['snapshots'], security, querystring: SnapshotListQuery, response: { 200: Type.Array(SnapshotInfo), ...errors },
    },
  }, async (req, reply) => {
    const q = req.query;
    const page = await snapshots.list(teamOf(req), { sandboxId: q.sandboxID, name: q.name, limit: q.limit, nextToken: q.nextToken });
    if (page.nextToken) reply.header('X-Next-Token', page.nextToken);
    return page.snapshots.map(info);
  });

  app.delete('/templates/:templateID', {
    schema: {
      summary: 'Delete a snapshot (by id or name) or a template',
      tags: ['snapshots', 'templates'], security, params: TemplateIdParams, response: { 204: Type.Null({ description: 'No content' }), ...errors },
    },
  }, async (req, reply) => {
    const teamId = teamOf(req);
    const id = req.params.templateID;
    const deleted = (await snapshots.delete(teamId, id)) || (deleteTemplate ? await deleteTemplate(teamId, id) : false);
    if (!deleted) throw new NestboxError('not_found', `template or snapshot "${id}" not found`);
    return reply.code(204).send(null);
  });

  app.post('/sandboxes/:sandboxID/fork', {
    preValidation: optionalBody,
    schema: {
      summary: 'Fork a running sandbox: count new sandboxes continuing from its memory and files (it keeps running)',
      tags: ['sandboxes'], security, params: SandboxIdParams, body: ForkBody, response: { 201: Type.Array(ForkResult), ...errors },
    },
  }, async (req, reply) => {
    const results = await snapshots.fork(teamOf(req), req.params.sandboxID, req.body.count, req.body.timeout * 1000);
    return reply.code(201).send(results.map((r) => (r.sandbox
      ? { sandbox: renderCreated(r.sandbox, render) }
      : { error: { code: STATUS_BY_CODE[r.error!.code] ?? 500, message: r.error!.message } })));
  });
};
