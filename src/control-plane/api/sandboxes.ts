import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import type { FastifyRequest } from 'fastify';
import { Type, type TSchema } from 'typebox';
import { notFound } from '../../core/errors.ts';
import { NAMED_SNAPSHOT_ID_PATTERN } from '../../core/ids.ts';
import type { LifecycleApi, SandboxView } from '../lifecycle-types.ts';
import type { SnapshotService } from '../snapshots.ts';
import { teamOf } from './auth.ts';
import { createParams } from './create-params.ts';
import { notImplemented, sandboxNotFound } from './errors.ts';
import { listFilters, parseMetadataFilter, parseStates, sandboxIdFrom } from './query.ts';
import {
  ConnectBody, ConnectBodyV2, ErrorBody, LegacyListQuery, ListedSandbox, ListQuery, MetricsQuery, NewSandbox,
  NewSandboxV2, PauseBody, RefreshBody, ResumeBody, SandboxCreated, SandboxDetail, SandboxIdParams, SandboxMetric,
  TimeoutBody,
} from './schemas.ts';
import { publicState, renderCreated, renderDetail, renderListed, renderMetric, storedStates, type RenderContext } from './views.ts';

export interface SandboxRoutesOptions {
  lifecycle: LifecycleApi;
  render: RenderContext;
  /** Whether the team may start sandboxes of the template (another team's import: no). */
  templateAllowed?: (teamId: string, template: string) => Promise<boolean>;
  /** The team's named snapshots: a create naming one (by id or name) starts from it. */
  snapshots?: SnapshotService;
}

const LEGACY_LIST_MAX_PAGES = 100;

const NoContent = Type.Null({ description: 'No content' });
const errors = { '4xx': ErrorBody, '5xx': ErrorBody } as const;
const responses = <T extends Record<number, TSchema>>(ok: T) => ({ ...ok, ...errors });
const security = [{ apiKey: [] }];

/** Routes whose body is optional: an absent body validates as `{}` (and so gets its defaults). */
async function optionalBody(req: FastifyRequest) {
  if (req.body === undefined || req.body === null) (req as { body: unknown }).body = {};
}

function refuseColdResume(memory: boolean | undefined) {
  if (memory === false) throw notImplemented('resuming without memory (memory=false)');
}

/** The E2B sandbox routes. Every handler: validate, authenticate, one lifecycle call, render. */
export const sandboxRoutes: FastifyPluginAsyncTypebox<SandboxRoutesOptions> = async (app, { lifecycle, render, templateAllowed, snapshots }) => {
  /** Creates, once the team is known to be allowed the template (as an unknown one otherwise). */
  async function create(p: ReturnType<typeof createParams>) {
    const snapshot = await snapshots?.find(p.teamId, p.templateId);
    if (snapshot) return lifecycle.create(snapshots!.fromSnapshot(p, snapshot));
    if (NAMED_SNAPSHOT_ID_PATTERN.test(p.templateId)) throw notFound(`snapshot "${p.templateId}" not found`);
    if (templateAllowed && !(await templateAllowed(p.teamId, p.templateId))) throw notFound(`template "${p.templateId}" not found`);
    return lifecycle.create(p);
  }

  /** A sandbox the caller may see; hidden (going or gone) ones are 404 like unknown ones. */
  async function visible(teamId: string, sandboxId: string): Promise<SandboxView> {
    const view = await lifecycle.get(teamId, sandboxId);
    if (publicState(view.state) === null) throw sandboxNotFound(sandboxId);
    return view;
  }

  // --- create -------------------------------------------------------------------------------
  app.post(
    '/sandboxes',
    {
      schema: {
        summary: 'Create a sandbox (legacy; default timeout 15 s)',
        tags: ['sandboxes'],
        security,
        body: NewSandbox,
        response: responses({ 201: SandboxCreated }),
      },
    },
    async (req, reply) => {
      const view = await create(createParams(teamOf(req), req.body));
      return reply.code(201).send(renderCreated(view, render));
    },
  );

  app.post(
    '/v2/sandboxes',
    {
      schema: {
        summary: 'Create a sandbox (default timeout 300 s)',
        tags: ['sandboxes'],
        security,
        body: NewSandboxV2,
        response: responses({ 201: SandboxCreated }),
      },
    },
    async (req, reply) => {
      const view = await create(createParams(teamOf(req), req.body));
      return reply.code(201).send(renderCreated(view, render));
    },
  );

  // --- list ---------------------------------------------------------------------------------
  app.get(
    '/v2/sandboxes',
    {
      schema: {
        summary: 'List sandboxes, paginated (X-Next-Token, X-Total-Running headers)',
        tags: ['sandboxes'],
        security,
        querystring: ListQuery,
        response: responses({ 200: Type.Array(ListedSandbox) }),
      },
    },
    async (req, reply) => {
      const q = req.query;
      const page = await lifecycle.list(teamOf(req), {
        states: storedStates(parseStates(q.state) ?? ['running', 'paused']),
        metadata: parseMetadataFilter(q.metadata),
        limit: q.limit,
        nextToken: q.nextToken,
        ...listFilters(q),
      });
      if (page.nextToken) reply.header('X-Next-Token', page.nextToken);
      reply.header('X-Total-Running', String(page.totalRunning));
      return page.sandboxes.filter((v) => publicState(v.state) !== null).map((v) => renderListed(v, render));
    },
  );

  app.get(
    '/sandboxes',
    {
      schema: {
        summary: 'List running sandboxes (legacy, unpaginated)',
        tags: ['sandboxes'],
        security,
        querystring: LegacyListQuery,
        response: responses({ 200: Type.Array(ListedSandbox) }),
      },
    },
    async (req) => {
      const teamId = teamOf(req);
      const metadata = parseMetadataFilter(req.query.metadata);
      const states = storedStates(['running']);
      const filters = listFilters(req.query);
      const out: SandboxView[] = [];
      let nextToken: string | undefined;
      for (let i = 0; i < LEGACY_LIST_MAX_PAGES; i++) {
        const page = await lifecycle.list(teamId, { states, metadata, limit: 100, nextToken, ...filters });
        out.push(...page.sandboxes);
        if (!page.nextToken) break;
        nextToken = page.nextToken;
      }
      return out.filter((v) => publicState(v.state) !== null).map((v) => renderListed(v, render));
    },
  );

  // --- one sandbox --------------------------------------------------------------------------
  app.get(
    '/sandboxes/:sandboxID',
    {
      schema: {
        summary: 'Get a sandbox',
        tags: ['sandboxes'],
        security,
        params: SandboxIdParams,
        response: responses({ 200: SandboxDetail }),
      },
    },
    async (req) => renderDetail(await visible(teamOf(req), sandboxIdFrom(req.params.sandboxID)), render),
  );

  app.delete(
    '/sandboxes/:sandboxID',
    {
      schema: {
        summary: 'Kill a sandbox (a paused one: delete its snapshot)',
        tags: ['sandboxes'],
        security,
        params: SandboxIdParams,
        response: responses({ 204: NoContent }),
      },
    },
    async (req, reply) => {
      await lifecycle.kill(teamOf(req), sandboxIdFrom(req.params.sandboxID));
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/sandboxes/:sandboxID/timeout',
    {
      schema: {
        summary: 'Set the timeout to now + timeout seconds (may shorten)',
        tags: ['sandboxes'],
        security,
        params: SandboxIdParams,
        body: TimeoutBody,
        response: responses({ 204: NoContent }),
      },
    },
    async (req, reply) => {
      // a paused sandbox is a 409 (the lifecycle refuses it; E2B answers 404, older SDKs resume on either)
      await lifecycle.setTimeout(teamOf(req), sandboxIdFrom(req.params.sandboxID), req.body.timeout * 1000);
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/sandboxes/:sandboxID/refreshes',
    {
      preValidation: optionalBody,
      schema: {
        summary: 'Keep the sandbox alive for at least duration seconds more (never shortens)',
        tags: ['sandboxes'],
        security,
        params: SandboxIdParams,
        body: RefreshBody,
        response: responses({ 204: NoContent }),
      },
    },
    async (req, reply) => {
      await lifecycle.refresh(teamOf(req), sandboxIdFrom(req.params.sandboxID), req.body.duration * 1000);
      return reply.code(204).send(null);
    },
  );

  app.post(
    '/sandboxes/:sandboxID/pause',
    {
      preValidation: optionalBody,
      schema: {
        summary: 'Pause a running sandbox; returns when its snapshot is written',
        tags: ['sandboxes'],
        security,
        params: SandboxIdParams,
        body: PauseBody,
        response: responses({ 204: NoContent }),
      },
    },
    async (req, reply) => {
      await lifecycle.pause(teamOf(req), sandboxIdFrom(req.params.sandboxID), { memory: req.body.memory });
      return reply.code(204).send(null);
    },
  );

  async function connect(req: FastifyRequest, sandboxID: string, timeoutSeconds: number) {
    const { sandbox, resumed } = await lifecycle.connect(teamOf(req), sandboxIdFrom(sandboxID), timeoutSeconds * 1000);
    return { status: resumed ? 201 : 200, body: renderCreated(sandbox, render) };
  }

  app.post(
    '/sandboxes/:sandboxID/connect',
    {
      schema: {
        summary: 'Connect: extend a running sandbox (200) or resume a paused one (201)',
        tags: ['sandboxes'],
        security,
        params: SandboxIdParams,
        body: ConnectBody,
        response: responses({ 200: SandboxCreated, 201: SandboxCreated }),
      },
    },
    async (req, reply) => {
      refuseColdResume(req.body.memory);
      const { status, body } = await connect(req, req.params.sandboxID, req.body.timeout);
      return reply.code(status).send(body);
    },
  );

  app.post(
    '/v2/sandboxes/:sandboxID/connect',
    {
      preValidation: optionalBody,
      schema: {
        summary: 'Connect (v2; body optional, default timeout 300 s)',
        tags: ['sandboxes'],
        security,
        params: SandboxIdParams,
        body: ConnectBodyV2,
        response: responses({ 200: SandboxCreated, 201: SandboxCreated }),
      },
    },
    async (req, reply) => {
      refuseColdResume(req.body.memory);
      const { status, body } = await connect(req, req.params.sandboxID, req.body.timeout);
      return reply.code(status).send(body);
    },
  );

  app.post(
    '/sandboxes/:sandboxID/resume',
    {
      preValidation: optionalBody,
      schema: {
        summary: 'Resume a paused sandbox (legacy; 409 when it is running)',
        tags: ['sandboxes'],
        security,
        params: SandboxIdParams,
        body: ResumeBody,
        response: responses({ 201: SandboxCreated }),
      },
    },
    async (req, reply) => {
      refuseColdResume(req.body.memory);
      const view = await lifecycle.resume(teamOf(req), sandboxIdFrom(req.params.sandboxID), req.body.timeout * 1000, { autoPause: req.body.autoPause });
      return reply.code(201).send(renderCreated(view, render));
    },
  );

  app.get(
    '/sandboxes/:sandboxID/metrics',
    {
      schema: {
        summary: 'Resource usage samples of a sandbox',
        tags: ['sandboxes'],
        security,
        params: SandboxIdParams,
        querystring: MetricsQuery,
        response: responses({ 200: Type.Array(SandboxMetric) }),
      },
    },
    async (req) => {
      const { start, end } = req.query;
      const metrics = await lifecycle.metrics(teamOf(req), sandboxIdFrom(req.params.sandboxID));
      return metrics
        .filter((m) => {
          const t = m.timestamp.getTime() / 1000;
          return (start === undefined || t >= start) && (end === undefined || t <= end);
        })
        .map(renderMetric);
    },
  );
};
