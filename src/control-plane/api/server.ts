import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { LifecycleApi } from '../lifecycle-types.ts';
import type { Database } from '../../store/database.ts';
import { adminKeyRoutes } from './admin-keys.ts';
import { adminTeamRoutes } from './admin-teams.ts';
import { installAuth, type Authenticate } from './auth.ts';
import { frameworkErrorHandler, installErrorHandling } from './errors.ts';
import { registerOpenApi, serveOpenApi } from './openapi.ts';
import { keyRoutes } from './keys.ts';
import { Health } from './schemas.ts';
import { sandboxRoutes } from './sandboxes.ts';
import { snapshotRoutes } from './snapshots.ts';
import { SnapshotService } from '../snapshots.ts';
import { usageRoutes } from './usage.ts';
import { eventRoutes } from './events.ts';
import { webhookRoutes } from './webhooks.ts';
import { deleteTemplate, templateAccess, templateRoutes } from './templates.ts';
import { templateBuildRoutes } from './template-builds.ts';
import { TemplateBuildRunner } from '../template-builds/runner.ts';
import { NodePool } from '../scheduler.ts';
import { nodeRoutes } from './nodes.ts';
import { validatorCompiler } from './validation.ts';
import type { RenderContext } from './views.ts';

export interface ApiServerOptions {
  lifecycle: LifecycleApi;
  authenticate: Authenticate;
  /**
   * Base domain of sandbox traffic, returned to clients as `domain`; null: the client's own. A
   * function is asked at each answer (a domain known only once the server started: its proxy's port).
   */
  domain?: string | null | (() => string | null);
  /** envd protocol version the sandboxes speak (the SDK gates features on it). */
  envdVersion: string;
  logger?: FastifyServerOptions['logger'];
  now?: () => Date;
  /**
   * The store: when given, the usage report (GET /usage), key and webhook management, the event
   * stream and the admin routes (/nestbox/v1/admin/…) are served.
   */
  db?: Database;
  /** The nodes: when given, the template routes (/nestbox/v1/templates) are served. */
  nodes?: NodePool;
  /** Runs template builds (with `db`); made here from the lifecycle and nodes when not given. */
  templateBuilds?: TemplateBuildRunner;
  /** Named snapshots and forks (the E2B routes): by default made from `db` and `nodes` when both are given. */
  snapshots?: SnapshotService;
  /** Heartbeat period asked of joined nodes, and the silence after which one is unhealthy. */
  fleet?: { heartbeatMs: number; unhealthyAfterMs: number };
}

export const DEFAULT_FLEET = { heartbeatMs: 2_000, unhealthyAfterMs: 10_000 };

export const BODY_LIMIT = 1024 * 1024;

/** The public REST API of the control plane (E2B-compatible). Call `ready()` or `listen()` on it. */
export function buildApiServer(opts: ApiServerOptions): FastifyInstance {
  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit: BODY_LIMIT,
    frameworkErrors: frameworkErrorHandler,
  }).withTypeProvider<TypeBoxTypeProvider>();

  app.setValidatorCompiler(validatorCompiler);
  installErrorHandling(app);

  // JSON only. An empty JSON body is "no body" (some clients send the header on every request);
  // text/plain is not accepted (415) rather than parsed into a string.
  app.removeContentTypeParser('text/plain');
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser('application/json');
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (req, body, done) => {
    const text = body as string;
    if (text.trim() === '') return done(null, undefined);
    return parseJson(req, text, done);
  });

  registerOpenApi(app, '0.1.0');
  installAuth(app, opts.authenticate);

  // Routes are added in plugins, so that they load after the OpenAPI generator (which sees them).
  void app.register(async (scope) => {
    scope.get(
      '/health',
      { config: { public: true }, schema: { summary: 'Liveness', tags: ['health'], response: { 200: Health } } },
      async () => ({ status: 'ok' }),
    );
    serveOpenApi(scope);
  });
  const domain = opts.domain;
  const render: RenderContext = {
    envdVersion: opts.envdVersion,
    get domain() {
      return typeof domain === 'function' ? domain() : (domain ?? null);
    },
    now: opts.now ?? (() => new Date()),
  };
  const snapshots = opts.snapshots ?? (opts.db && opts.nodes ? new SnapshotService({ db: opts.db, nodes: opts.nodes, lifecycle: opts.lifecycle }) : undefined);
  void app.register(sandboxRoutes, {
    lifecycle: opts.lifecycle,
    render,
    templateAllowed: opts.nodes ? templateAccess(opts.nodes) : undefined,
    snapshots,
  });
  if (snapshots) {
    const nodes = opts.nodes;
    void app.register(snapshotRoutes, {
      snapshots, render, deleteTemplate: nodes ? (teamId, name) => deleteTemplate(nodes, opts.db, teamId, name) : undefined,
    });
  }
  if (opts.nodes) void app.register(templateRoutes, { nodes: opts.nodes, db: opts.db });
  if (opts.db) {
    void app.register(usageRoutes, { db: opts.db, now: opts.now });
    void app.register(keyRoutes, { db: opts.db });
    void app.register(webhookRoutes, { db: opts.db });
    void app.register(eventRoutes, { db: opts.db });
    void app.register(adminTeamRoutes, { db: opts.db });
    void app.register(adminKeyRoutes, { db: opts.db });
    void app.register(nodeRoutes, { db: opts.db, ...(opts.fleet ?? DEFAULT_FLEET) });
    const runner = opts.templateBuilds ?? new TemplateBuildRunner({ db: opts.db, lifecycle: opts.lifecycle, nodes: opts.nodes ?? new NodePool() });
    void app.register(templateBuildRoutes, { db: opts.db, runner, nodes: opts.nodes });
  }

  return app;
}
