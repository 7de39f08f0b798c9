// E2B's template-build API, as the SDK's `Template.build` calls it: ask for a build
// (POST /v3/templates), ask whether each COPY step's files are here and upload them
// (GET, then PUT, /templates/{id}/files/{hash}), start it with its steps
// (POST /v2/templates/{id}/builds/{id}), poll its status with its logs
// (GET /templates/{id}/builds/{id}/status). A template's id is its name. Team-scoped: another
// team's build answers as one that does not exist.
import type { Readable } from 'node:stream';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import { conflict, invalid, NestboxError, notFound, unavailable } from '../../core/errors.ts';
import { TEMPLATE_NAME_PATTERN } from '../../core/ids.ts';
import type { Database } from '../../store/database.ts';
import {
  buildLogs, createTemplateBuild, getTemplateBuild, startTemplateBuild, teamBuildsTemplate, type BuildLogLevel,
} from '../../store/template-builds.ts';
import type { NodePool } from '../scheduler.ts';
import { baseOf, parseSteps } from '../template-builds/steps.ts';
import { buildNodeOf, type BuildNode, type NodeTemplate, type TemplateBuildRunner } from '../template-builds/runner.ts';
import { teamOf } from './auth.ts';
import { ErrorBody } from './schemas.ts';

export interface TemplateBuildRoutesOptions {
  db: Database;
  runner: TemplateBuildRunner;
  /** Without nodes nothing can be built: the routes that need one answer 503. */
  nodes?: NodePool;
}

const errors = { '4xx': ErrorBody, '5xx': ErrorBody } as const;
const security = [{ apiKey: [] }];
const tags = ['templates'];

const TemplateId = Type.String({ minLength: 1, maxLength: 128 });
const BuildId = Type.String({ minLength: 1, maxLength: 64 });
const Hash = Type.String({ pattern: '^[0-9a-f]{64}$', description: "sha256 (hex) of a COPY step's files, as the SDK computes it" });

export const BuildRequest = Type.Object(
  {
    name: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'The template to build (its id). name:tag is not supported' })),
    alias: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'Deprecated: name' })),
    tags: Type.Optional(Type.Array(Type.String({ maxLength: 128 }), { maxItems: 32 })),
    cpuCount: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
    memoryMB: Type.Optional(Type.Integer({ minimum: 128, maximum: 262144 })),
    minFreeDiskMb: Type.Optional(Type.Integer({ minimum: 0 })),
    teamID: Type.Optional(Type.String({ maxLength: 128 })),
  },
  { additionalProperties: false },
);

export const BuildRequested = Type.Object({
  templateID: Type.String(),
  buildID: Type.String(),
  names: Type.Array(Type.String()),
  aliases: Type.Array(Type.String()),
  tags: Type.Array(Type.String()),
  public: Type.Boolean(),
});

const TemplateStep = Type.Object(
  {
    type: Type.String({ minLength: 1, maxLength: 32 }),
    args: Type.Optional(Type.Array(Type.String({ maxLength: 131072 }), { maxItems: 512 })),
    filesHash: Type.Optional(Type.String({ maxLength: 128 })),
    force: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

export const BuildStart = Type.Object(
  {
    fromTemplate: Type.Optional(Type.String({ maxLength: 256 })),
    fromImage: Type.Optional(Type.String({ maxLength: 512 })),
    fromImageRegistry: Type.Optional(Type.Unknown()),
    startCmd: Type.Optional(Type.String({ maxLength: 65536 })),
    readyCmd: Type.Optional(Type.String({ maxLength: 65536 })),
    steps: Type.Optional(Type.Array(TemplateStep, { maxItems: 1000 })),
    force: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type BuildStart = Static<typeof BuildStart>;

const LogLevel = Type.Union([Type.Literal('debug'), Type.Literal('info'), Type.Literal('warn'), Type.Literal('error')]);
const LogEntry = Type.Object({
  timestamp: Type.String({ format: 'date-time' }),
  level: LogLevel,
  message: Type.String(),
  step: Type.Optional(Type.String()),
});

export const BuildInfo = Type.Object({
  templateID: Type.String(),
  buildID: Type.String(),
  status: Type.Union([Type.Literal('waiting'), Type.Literal('building'), Type.Literal('ready'), Type.Literal('error')]),
  logEntries: Type.Array(LogEntry),
  logs: Type.Array(Type.String(), { description: 'Deprecated: always empty; use logEntries' }),
  reason: Type.Optional(Type.Object({ message: Type.String(), step: Type.Optional(Type.String()), logEntries: Type.Array(LogEntry) })),
});

export const StatusQuery = Type.Object(
  {
    logsOffset: Type.Optional(Type.Integer({ minimum: 0, default: 0, description: 'Index of the first log entry to return' })),
    limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 1000 })),
    level: Type.Optional(LogLevel),
  },
  { additionalProperties: false },
);

const FileUpload = Type.Object({
  present: Type.Boolean({ description: 'Already uploaded (by this team): no upload needed' }),
  url: Type.Optional(Type.String({ description: 'Where to PUT the tarball' })),
  headers: Type.Optional(Type.Record(Type.String(), Type.String())),
});

const LEVELS: BuildLogLevel[] = ['debug', 'info', 'warn', 'error'];
const NAME_RULE = 'lower-case letters, digits, ".", "_", "-"; at most 63';

export const templateBuildRoutes: FastifyPluginAsyncTypebox<TemplateBuildRoutesOptions> = async (app, { db, runner, nodes }) => {
  /** The node holding templates and build files (nodes share one templates directory). */
  function templateNode(): BuildNode {
    const all = nodes?.all() ?? [];
    const node = all.filter((n) => !nodes!.isDraining(n.nodeId)).map(buildNodeOf).find(Boolean) ?? all.map(buildNodeOf).find(Boolean);
    if (!node) throw unavailable('no node can build templates now');
    return node;
  }

  /** The team's build of the template, or 404 as for one that does not exist. */
  async function teamBuild(teamId: string, templateId: string, buildId: string) {
    await runner.reapStale();
    const build = await getTemplateBuild(db, teamId, buildId);
    if (!build || build.templateName !== templateId) throw notFound(`build "${buildId}" of template "${templateId}" not found`);
    return build;
  }

  /** The files of a template may be uploaded by the team that builds it (and only then). */
  async function checkUploader(teamId: string, templateId: string) {
    if (!(await teamBuildsTemplate(db, teamId, templateId))) throw notFound(`template "${templateId}" not found`);
  }

  app.post(
    '/v3/templates',
    {
      schema: {
        summary: 'Ask for a template build (E2B: create template v3); its files and steps follow',
        tags, security, body: BuildRequest, response: { 202: BuildRequested, ...errors },
      },
    },
    async (req, reply) => {
      const teamId = teamOf(req);
      const name = req.body.name ?? req.body.alias;
      if (!name) throw invalid('a build needs the template name (name)');
      if (name.includes(':') || (req.body.tags?.length ?? 0) > 0) throw invalid('template tags (name:tag, tags) are not supported by this server: build under a plain name');
      if (!TEMPLATE_NAME_PATTERN.test(name)) throw invalid(`"${name}" is not a template name (${NAME_RULE})`);
      if (name === 'base') throw conflict('template "base" is built in');
      await runner.reapStale();
      if (nodes?.all().some((n) => buildNodeOf(n))) {
        const existing = await templateNode().getTemplate(name).catch((e: unknown) => {
          if (e instanceof NestboxError && e.code === 'not_found') return null;
          throw e;
        });
        if (existing) {
          // Another team's template answers as any name that is taken.
          throw conflict(`template "${name}" already exists: delete it first (DELETE /nestbox/v1/templates/${name}) or build under another name`);
        }
      }
      const build = await createTemplateBuild(db, { teamId, templateName: name, cpuCount: req.body.cpuCount ?? null, memoryMB: req.body.memoryMB ?? null });
      return reply.code(202).send({ templateID: name, buildID: build.id, names: [name], aliases: [name], tags: [], public: false });
    },
  );

  app.get(
    '/templates/:templateID/files/:hash',
    {
      schema: {
        summary: "Whether a COPY step's files are uploaded; if not, where to upload them (a PUT of the tarball)",
        tags, security, params: Type.Object({ templateID: TemplateId, hash: Hash }), response: { 201: FileUpload, ...errors },
      },
    },
    async (req, reply) => {
      const teamId = teamOf(req);
      const { templateID, hash } = req.params;
      await checkUploader(teamId, templateID);
      if (await templateNode().buildFilePresent(teamId, hash)) return reply.code(201).send({ present: true });
      // The upload is this API's own PUT, with the caller's own key (the SDK sends these headers).
      const host = req.headers.host ?? `${req.hostname}`;
      const url = `${req.protocol}://${host}/templates/${encodeURIComponent(templateID)}/files/${hash}`;
      const key = String(req.headers['x-api-key']);
      return reply.code(201).send({ present: false, url, headers: { 'X-API-Key': key } });
    },
  );

  // The tarball arrives as raw bytes (the SDK sends no content type) and is streamed to the node.
  void app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_req, payload, done) => done(null, payload));
    scope.put(
      '/templates/:templateID/files/:hash',
      {
        schema: {
          summary: "Upload a COPY step's files: a tar (or tar.gz) of them, paths relative to the build context",
          tags, security, params: Type.Object({ templateID: TemplateId, hash: Hash }),
          response: { 201: Type.Object({}), ...errors },
        },
      },
      async (req, reply) => {
        const teamId = teamOf(req);
        const { templateID, hash } = (req.params as { templateID: string; hash: string });
        const body = req.body as Readable | undefined;
        try {
          await checkUploader(teamId, templateID);
          if (!body || typeof body.pipe !== 'function') throw invalid('the request body must be the tarball');
          await templateNode().putBuildFile(teamId, hash, body);
        } catch (e) {
          body?.resume?.();
          throw e;
        }
        return reply.code(201).send({});
      },
    );
  });

  app.post(
    '/v2/templates/:templateID/builds/:buildID',
    {
      schema: {
        summary: 'Start a requested build with its steps (FROM a template or an imported image, RUN, COPY, ENV, WORKDIR, USER) and start command',
        tags, security, params: Type.Object({ templateID: TemplateId, buildID: BuildId }), body: BuildStart,
        response: { 202: Type.Null({ description: 'The build has started' }), ...errors },
      },
    },
    async (req, reply) => {
      const teamId = teamOf(req);
      const build = await teamBuild(teamId, req.params.templateID, req.params.buildID);
      const body = req.body;
      const spec = {
        base: baseOf(body),
        steps: parseSteps(body.steps ?? []),
        startCmd: body.startCmd?.trim() ? body.startCmd : null,
        readyCmd: body.readyCmd?.trim() ? body.readyCmd : null,
      };
      if (spec.readyCmd && !spec.startCmd) throw invalid('a ready command (readyCmd) needs a start command (setStartCmd)');
      const node = templateNode();
      for (const [i, s] of spec.steps.entries()) {
        if (s.kind === 'copy' && !(await node.buildFilePresent(teamId, s.filesHash))) {
          throw invalid(`step ${i + 1} (COPY ${s.src}): its files (${s.filesHash}) were not uploaded`);
        }
      }
      if (build.status !== 'waiting' || !(await startTemplateBuild(db, build.id, spec))) {
        throw conflict(`build "${build.id}" was started already (it is ${build.status === 'waiting' ? 'building' : build.status})`);
      }
      runner.start({ ...build, status: 'building' }, spec);
      return reply.code(202).send(null);
    },
  );

  app.get(
    '/templates/:templateID/builds/:buildID/status',
    {
      schema: {
        summary: "A build's status, its log entries from logsOffset on, and why it failed",
        tags, security, params: Type.Object({ templateID: TemplateId, buildID: BuildId }), querystring: StatusQuery,
        response: { 200: BuildInfo, ...errors },
      },
    },
    async (req) => {
      const teamId = teamOf(req);
      const build = await teamBuild(teamId, req.params.templateID, req.params.buildID);
      const minLevel = LEVELS.indexOf(req.query.level ?? 'debug');
      const entry = (l: { at: Date; level: BuildLogLevel; message: string; step: string | null }) => ({
        timestamp: l.at.toISOString(), level: l.level, message: l.message, ...(l.step ? { step: l.step } : {}),
      });
      const lines = await buildLogs(db, build.id, req.query.logsOffset ?? 0, req.query.limit ?? 1000);
      const logEntries = lines.filter((l) => LEVELS.indexOf(l.level) >= minLevel).map(entry);
      const info: Static<typeof BuildInfo> = { templateID: build.templateName, buildID: build.id, status: build.status, logEntries, logs: [] };
      if (build.status === 'error') {
        info.reason = { message: build.reason ?? 'the build failed', ...(build.reasonStep ? { step: build.reasonStep } : {}), logEntries: [] };
      }
      return info;
    },
  );

  app.get(
    '/templates/aliases/:alias',
    {
      schema: {
        summary: 'Whether a template of this name exists for the team (Template.exists)',
        tags, security, params: Type.Object({ alias: TemplateId }),
        response: { 200: Type.Object({ templateID: Type.String(), public: Type.Boolean() }), ...errors },
      },
    },
    async (req) => {
      const teamId = teamOf(req);
      const name = req.params.alias;
      const missing = notFound(`template "${name}" not found`);
      if (!TEMPLATE_NAME_PATTERN.test(name) || !nodes?.all().some((n) => buildNodeOf(n))) throw missing;
      let t: NodeTemplate;
      try {
        t = await templateNode().getTemplate(name);
      } catch (e) {
        if (e instanceof NestboxError && e.code === 'not_found') throw missing;
        throw e;
      }
      // Another team's template answers as one that does not exist.
      if (t.meta?.owner && t.meta.owner !== teamId) throw missing;
      return { templateID: t.name, public: !t.meta?.owner };
    },
  );
};
