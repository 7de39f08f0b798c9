// Templates: import an OCI image archive (docker save or OCI layout tarball) as a template,
// list and delete them. The archive is streamed to a node agent, never buffered here.
import { PassThrough, type Readable } from 'node:stream';
import type { FastifyPluginAsyncTypebox } from '@fastify/type-provider-typebox';
import { Type, type Static } from 'typebox';
import { conflict, NestboxError, notFound, unavailable } from '../../core/errors.ts';
import type { Database } from '../../store/database.ts';
import { snapshotsUsingTemplate } from '../../store/snapshots.ts';
import { sandboxesUsingTemplate } from '../../store/templates.ts';
import { HttpNodeClient } from '../node-client.ts';
import type { NodeTemplate } from '../../node-api/wire.ts';
import type { NodePool } from '../scheduler.ts';
import { teamOf } from './auth.ts';
import { STATUS_BY_CODE } from './errors.ts';
import { ErrorBody } from './schemas.ts';

export interface TemplateRoutesOptions {
  nodes: NodePool;
  db?: Database;
}

const NAME = '^[a-z0-9][a-z0-9._-]{0,62}$';
const TemplateName = Type.String({ pattern: NAME, description: 'lower-case letters, digits, ".", "_", "-"; at most 63' });

export const TemplateView = Type.Object({
  name: Type.String(),
  builtin: Type.Boolean({ description: 'Built in (base): cannot be deleted' }),
  source: Type.Union([Type.Literal('docker'), Type.Literal('oci'), Type.Literal('build'), Type.Literal('builtin')]),
  importedAt: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  layers: Type.Integer(),
  sizeBytes: Type.Integer({ description: 'Bytes of file content written (uncompressed)' }),
  repoTags: Type.Array(Type.String()),
  env: Type.Record(Type.String(), Type.String(), { description: "The image's Env: defaults of every process" }),
  workdir: Type.Union([Type.String(), Type.Null()], { description: "The image's WorkingDir: default working directory" }),
  user: Type.Union([Type.String(), Type.Null()], { description: "The image's User: default user (null: root for images, user for base)" }),
  entrypoint: Type.Union([Type.Array(Type.String()), Type.Null()], { description: "The image's Entrypoint: run only when imported with start=true" }),
  cmd: Type.Union([Type.Array(Type.String()), Type.Null()], { description: "The image's Cmd: run only when imported with start=true" }),
  startCmd: Type.Union([Type.String(), Type.Null()], {
    description: 'What a sandbox of the template starts with (bash): a build\'s setStartCmd, or an image\'s entrypoint + cmd imported with start=true; null: nothing',
  }),
  readyCmd: Type.Union([Type.String(), Type.Null()], { description: 'The start command is up once this (bash) exits 0; null: no check' }),
});
export type TemplateView = Static<typeof TemplateView>;

export const ImportQuery = Type.Object(
  {
    name: TemplateName,
    start: Type.Optional(Type.Boolean({
      description: "Make the image's entrypoint + cmd (docker's rule) the template's start command: run in the image's workdir, as its user, " +
        'with its env, when a sandbox starts, and captured warm like a built template\'s. Without it they are only recorded. ' +
        'Refused for an image with neither.',
    })),
    readyCmd: Type.Optional(Type.String({ minLength: 1, maxLength: 65536, description: 'With start: a bash command that exits 0 once the started process is ready' })),
  },
  { additionalProperties: false },
);
export const TemplateParams = Type.Object({ name: TemplateName });

const errors = { '4xx': ErrorBody, '5xx': ErrorBody } as const;
const security = [{ apiKey: [] }];

function render(t: NodeTemplate): TemplateView {
  const m = t.meta;
  return {
    name: t.name, builtin: t.builtin, source: m?.source ?? 'builtin', importedAt: m?.importedAt ?? null,
    layers: m?.layers ?? 0, sizeBytes: m?.sizeBytes ?? 0, repoTags: m?.repoTags ?? [], env: m?.env ?? {},
    workdir: m?.workdir ?? null, user: m?.user ?? null, entrypoint: m?.entrypoint ?? null, cmd: m?.cmd ?? null,
    startCmd: m?.startCmd ?? null, readyCmd: m?.readyCmd ?? null,
  };
}

/** Templates without an owner (base, or placed by hand) are everyone's; imported ones their team's. */
const visibleTo = (t: NodeTemplate, teamId: string) => !t.meta?.owner || t.meta.owner === teamId;

/**
 * The node that holds templates. Nodes share one templates directory (one host, or a shared
 * file system), so one node imports for all; only nodes reached over HTTP can.
 */
function templateNode(nodes: NodePool): HttpNodeClient {
  const node = nodes.all().find((n) => n instanceof HttpNodeClient && !nodes.isDraining(n.nodeId))
    ?? nodes.all().find((n) => n instanceof HttpNodeClient);
  if (!node) throw unavailable('no node can import templates now');
  return node as HttpNodeClient;
}

/**
 * Whether a team may start sandboxes of a template: `base`, templates without an owner and the
 * team's own imports, yes; another team's import, no. A template no node has is left to the
 * create to report; a node that cannot say is a retryable refusal (never a guess).
 */
export function templateAccess(nodes: NodePool) {
  return async (teamId: string, name: string): Promise<boolean> => {
    if (name === 'base') return true;
    if (!nodes.all().some((n) => n instanceof HttpNodeClient)) return true; // no node imports: none is anyone's
    try {
      return visibleTo(await templateNode(nodes).getTemplate(name), teamId);
    } catch (e) {
      if (e instanceof NestboxError && (e.code === 'not_found' || e.code === 'invalid')) return true;
      throw unavailable(`cannot check template "${name}" now; retry shortly`);
    }
  };
}

/**
 * Deletes a team's template (imported or built); false when the team has none of that name.
 * Refused while sandboxes (running or paused) use it; base and unowned templates never go.
 */
export async function deleteTemplate(nodes: NodePool, db: Database | undefined, teamId: string, name: string): Promise<boolean> {
  let t: NodeTemplate;
  try {
    t = await templateNode(nodes).getTemplate(name);
  } catch (e) {
    if (e instanceof NestboxError && (e.code === 'not_found' || e.code === 'invalid')) return false;
    throw e;
  }
  if (!visibleTo(t, teamId)) return false;
  if (t.builtin || !t.meta?.owner) throw conflict(`template "${name}" is built in and cannot be deleted`);
  if (db) {
    const users = await sandboxesUsingTemplate(db, name);
    if (users.length) throw conflict(`template "${name}" is in use by ${users.length === 20 ? 'at least 20' : users.length} sandbox${users.length === 1 ? '' : 'es'}: kill them first`);
    const snapshots = await snapshotsUsingTemplate(db, name);
    if (snapshots.length) throw conflict(`template "${name}" holds ${snapshots.length === 20 ? 'at least 20' : snapshots.length} snapshot${snapshots.length === 1 ? '' : 's'} (${snapshots.slice(0, 3).join(', ')}): delete them first`);
  }
  await templateNode(nodes).deleteTemplate(name); // the node checks its own sandboxes again
  return true;
}

export const templateRoutes: FastifyPluginAsyncTypebox<TemplateRoutesOptions> = async (app, { nodes, db }) => {
  // The archive arrives as raw bytes and is handed on as a stream.
  app.addContentTypeParser(['application/x-tar', 'application/octet-stream', 'application/gzip'], (_req, payload, done) => done(null, payload));

  async function visible(teamId: string, name: string): Promise<NodeTemplate> {
    let t: NodeTemplate;
    try {
      t = await templateNode(nodes).getTemplate(name);
    } catch (e) {
      if (e instanceof NestboxError && e.code === 'not_found') throw notFound(`template "${name}" not found`);
      throw e;
    }
    if (!visibleTo(t, teamId)) throw notFound(`template "${name}" not found`);
    return t;
  }

  app.post(
    '/nestbox/v1/templates',
    {
      schema: {
        summary: 'Import an image archive (docker save or OCI layout tarball, the request body) as a template',
        description:
          'The body is the archive itself (Content-Type application/x-tar or application/octet-stream), streamed. ' +
          'With `Accept: application/x-ndjson` the answer is a stream of progress lines ' +
          '(`received`, `layer`, `layer_done`), then `{"type":"done","template":…}` or `{"type":"error","code":…,"message":…}`; ' +
          'otherwise 201 with the template once it is imported, or the error.',
        tags: ['templates'],
        security,
        querystring: ImportQuery,
        response: { 200: Type.Unknown({ description: 'NDJSON progress lines (with Accept: application/x-ndjson)' }), 201: TemplateView, ...errors },
      },
    },
    async (req, reply) => {
      const teamId = teamOf(req);
      const { name, start, readyCmd } = req.query;
      const archive = req.body as Readable | undefined;
      if (!archive || typeof (archive as Readable).pipe !== 'function') {
        throw new NestboxError('invalid', 'the request body must be the image archive (Content-Type application/x-tar or application/octet-stream)');
      }
      if (readyCmd && !start) {
        archive.resume();
        throw new NestboxError('invalid', "a ready command (readyCmd) needs start=true: without it the image's entrypoint and cmd are not run");
      }
      const startOpt = start ? { start: { readyCmd: readyCmd ?? null } } : {};
      const node = templateNode(nodes);
      const wantsStream = (req.headers.accept ?? '').includes('application/x-ndjson');
      if (!wantsStream) {
        try {
          const t = await node.importTemplate(name, archive, { owner: teamId, ...startOpt });
          return reply.code(201).send(render(t));
        } catch (e) {
          archive.resume();
          throw e;
        }
      }
      const out = new PassThrough();
      const line = (o: object) => out.write(JSON.stringify(o) + '\n');
      void (async () => {
        try {
          const t = await node.importTemplate(name, archive, { owner: teamId, onEvent: line, ...startOpt });
          line({ type: 'done', template: render(t) });
        } catch (e) {
          archive.resume();
          const code = e instanceof NestboxError ? e.code : 'internal';
          const status = STATUS_BY_CODE[code] ?? 500;
          const message = e instanceof NestboxError && status < 500 ? e.message.replace(/^node [^:]+: /, '') : 'internal error';
          if (status >= 500) req.log.error({ err: e }, 'template import failed');
          line({ type: 'error', code: status, message });
        }
        out.end();
      })();
      return reply.code(200).header('content-type', 'application/x-ndjson').header('cache-control', 'no-store').send(out);
    },
  );

  app.get(
    '/nestbox/v1/templates',
    { schema: { summary: 'List the templates this team can use', tags: ['templates'], security, response: { 200: Type.Array(TemplateView), ...errors } } },
    async (req) => {
      const teamId = teamOf(req);
      return (await templateNode(nodes).listTemplates()).filter((t) => visibleTo(t, teamId)).map(render);
    },
  );

  app.get(
    '/nestbox/v1/templates/:name',
    { schema: { summary: 'One template', tags: ['templates'], security, params: TemplateParams, response: { 200: TemplateView, ...errors } } },
    async (req) => render(await visible(teamOf(req), req.params.name)),
  );

  app.delete(
    '/nestbox/v1/templates/:name',
    {
      schema: {
        summary: "Delete an imported template (409 while sandboxes, running or paused, use it; base cannot be deleted)",
        tags: ['templates'], security, params: TemplateParams, response: { 204: Type.Null({ description: 'No content' }), ...errors },
      },
    },
    async (req, reply) => {
      await visible(teamOf(req), req.params.name);
      await deleteTemplate(nodes, db, teamOf(req), req.params.name);
      return reply.code(204).send(null);
    },
  );
};
