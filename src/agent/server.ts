import { PassThrough, Readable } from 'node:stream';
import Fastify, { type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import { NestboxError } from '../core/errors.ts';
import { bearerToken, sameSecret } from '../http/credentials.ts';
import { InitError } from '../runtime/init/errors.ts';
import type { ProcessStream } from '../runtime/init/streams.ts';
import type { SandboxRuntime } from '../runtime/sandbox-runtime.ts';
import type { StartGate } from './start-gate.ts';
import type { DrainPlan } from './shutdown.ts';
import { registerEnvd } from './envd/index.ts';
import { registerPortForward } from './port-forward.ts';
import { registerTemplateRoutes } from './templates.ts';
import { templateProcessDefaults } from '../runtime/templates.ts';
import { statusOfCode } from '../node-api/errors.ts';
import { NODE_ROUTES as R } from '../node-api/routes.ts';
import {
  CreateSandboxBody, FileQuery, InputBody, KillQuery, ListDirQuery, MoveBody, PathBody, PauseBody, PidParam,
  ResizeBody, SandboxIdParam, SignalBody, StartProcessBody, WatchQuery, LiveSnapshotBody, SnapshotKeyParam,
} from '../node-api/schemas.ts';
import type {
  NodeErrorBody, NodeInventory, NodeMetrics, NodeSandboxDetail, NodeSandboxRecord, NodeSnapshotRecord, NodeStatus, NodeStop,
  ProcessStreamLine, WatchStreamLine,
} from '../node-api/wire.ts';

export interface AgentServerOptions {
  runtime: SandboxRuntime;
  nodeToken: string;
  nodeId: string;
  /** Admission of creates and resumes (closed while the node drains). */
  starts: StartGate;
  drainPlan?: () => DrainPlan | null;
  logger?: boolean | object;
}

/** The agent's internal API, used by the control plane; authenticated with the node token. */
export function buildAgentServer(opts: AgentServerOptions): FastifyInstance {
  const { runtime, starts } = opts;
  const app = Fastify({ logger: opts.logger ?? false, bodyLimit: 2 * 1024 * 1024 }).withTypeProvider<TypeBoxTypeProvider>();

  // File uploads arrive as raw bytes and are streamed to the sandbox, never buffered whole.
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  app.addHook('onRequest', async (req, reply) => {
    if (req.url === R.health) return;
    const token = bearerToken(req.headers.authorization);
    if (!token || !sameSecret(token, opts.nodeToken)) {
      return reply.code(401).send({ code: 401, message: 'missing or invalid node token' });
    }
  });

  app.setErrorHandler((err: unknown, _req, reply) => {
    const e = err as { validation?: unknown; statusCode?: number; message?: string; code?: string };
    if (e.validation) return reply.code(400).send({ code: 400, message: e.message });
    if (err instanceof NestboxError || err instanceof InitError) {
      const status = statusOfCode(err.code);
      const body: NodeErrorBody = { code: status, message: err.message };
      if (err instanceof NestboxError && err.retryable) body.retryable = true;
      return reply.code(status).send(body);
    }
    if (e.statusCode && e.statusCode >= 400 && e.statusCode < 500) {
      return reply.code(e.statusCode).send({ code: e.statusCode, message: e.message ?? 'bad request' });
    }
    app.log.error(err);
    return reply.code(500).send({ code: 500, message: 'internal error' });
  });

  app.get(R.health, async () => ({ ok: true }));

  // The control plane polls this: a draining node gets no new starts, and its plan says what
  // to do with the sandboxes still on it.
  app.get(R.node, async (): Promise<NodeStatus> => {
    const plan = opts.drainPlan?.() ?? null;
    return {
      nodeId: opts.nodeId,
      draining: starts.closed,
      inFlightStarts: starts.inFlight,
      drain: plan ? { policy: plan.policy, deadline: plan.deadline.toISOString() } : null,
    };
  });

  // --- sandboxes ------------------------------------------------------------------------------
  app.post(R.sandboxes, { schema: { body: CreateSandboxBody } }, async (req, reply) => {
    const b = req.body;
    const request = {
      sandboxId: b.sandboxId,
      template: b.template,
      resources: { cpuCount: b.cpuCount, memoryMB: b.memoryMB, pidsLimit: b.pidsLimit, diskMB: b.diskMB },
      envVars: b.envVars,
      metadata: b.metadata,
      allowInternetAccess: b.allowInternetAccess,
    };
    const record: NodeSandboxRecord = await starts.admit(() =>
      (b.fromSnapshot ? runtime.createFromSnapshot(request, b.fromSnapshot) : runtime.create(request)).catch((e: unknown) => {
        // The control plane passes the cause on to the API client: name it, never "internal error".
        if (e instanceof NestboxError || e instanceof InitError) throw e;
        req.log.error({ err: e }, 'create failed');
        throw new NestboxError('internal', `create failed: ${(e as Error).message ?? String(e)}`);
      }),
    );
    return reply.code(201).send(record);
  });

  // The inventory the reconciler compares with the database.
  app.get(R.sandboxes, async (): Promise<NodeInventory> => runtime.report());

  app.get(R.sandbox, { schema: { params: SandboxIdParam } }, async (req): Promise<NodeSandboxDetail> => {
    const record = await runtime.record(req.params.id);
    const state = await runtime.containerState(req.params.id);
    return { ...record, state: state?.status ?? 'broken', pid: state?.pid ?? null };
  });

  // Answers when the container stopped, by this node's clock: billing ends there.
  app.delete(R.sandbox, { schema: { params: SandboxIdParam, querystring: KillQuery } }, async (req): Promise<NodeStop> =>
    runtime.kill(req.params.id, { deleteSnapshot: req.query.deleteSnapshot ?? false }),
  );

  app.post(R.pause, { schema: { params: SandboxIdParam, body: PauseBody } }, async (req): Promise<NodeSnapshotRecord> =>
    runtime.pause(req.params.id, { memory: req.body.memory, quiesceMs: req.body.quiesceMs }),
  );

  // A named snapshot (or a fork's source) of a running sandbox, which keeps running.
  app.post(R.sandboxSnapshots, { schema: { params: SandboxIdParam, body: LiveSnapshotBody } }, async (req, reply) => {
    const snapshot: NodeSnapshotRecord = await runtime.snapshotLive(req.params.id, req.body.snapshotId);
    return reply.code(201).send(snapshot);
  });

  app.post(R.resume, { schema: { params: SandboxIdParam } }, async (req, reply) => {
    const record: NodeSandboxRecord = await starts.admit(() => runtime.resume(req.params.id));
    return reply.code(201).send(record);
  });

  app.get(R.metrics, { schema: { params: SandboxIdParam } }, async (req): Promise<NodeMetrics> => runtime.metrics(req.params.id));

  // When this node last stopped the sandbox's container (its journal): for a control plane
  // that lost the answer of the call that stopped it.
  app.get(R.lastStop, { schema: { params: SandboxIdParam } }, async (req): Promise<NodeStop> => ({
    stoppedAt: await runtime.journal.lastStop(req.params.id),
  }));

  app.get(R.snapshots, async (): Promise<{ snapshots: NodeSnapshotRecord[] }> => ({ snapshots: await runtime.snapshots() }));
  app.get(R.snapshot, { schema: { params: SandboxIdParam } }, async (req): Promise<NodeSnapshotRecord> => runtime.snapshot(req.params.id));
  app.delete(R.snapshot, { schema: { params: SnapshotKeyParam } }, async (req, reply) => {
    await runtime.deleteSnapshot(req.params.id);
    return reply.code(204).send();
  });

  // --- processes ------------------------------------------------------------------------------
  app.post(R.processes, { schema: { params: SandboxIdParam, body: StartProcessBody } }, async (req, reply) => {
    const record = await runtime.record(req.params.id);
    const b = req.body;
    // An imported image's env, working directory and user are defaults; the request's win.
    const defaults = await templateProcessDefaults(runtime.cfg, record.template);
    const stream = await runtime.initClient(req.params.id).start({
      argv: b.argv,
      env: { ...defaults.env, ...record.envVars, ...(b.env ?? {}) },
      cwd: b.cwd ?? defaults.cwd,
      user: b.user ?? defaults.user ?? 'user',
      pty: b.pty ?? null,
      stdin: b.stdin ?? false,
      tag: b.tag,
    });
    return sendProcessStream(req, reply, stream);
  });

  app.get(R.processes, { schema: { params: SandboxIdParam } }, async (req) => ({
    processes: await runtime.initClient(req.params.id).list(),
  }));

  app.get(R.processStream, { schema: { params: PidParam } }, async (req, reply) => {
    const stream = await runtime.initClient(req.params.id).attach(req.params.pid);
    return sendProcessStream(req, reply, stream);
  });

  app.post(R.processInput, { schema: { params: PidParam, body: InputBody } }, async (req) => {
    await runtime.initClient(req.params.id).input(req.params.pid, Buffer.from(req.body.data, 'base64'));
    return { ok: true };
  });
  app.post(R.processCloseStdin, { schema: { params: PidParam } }, async (req) => {
    await runtime.initClient(req.params.id).closeStdin(req.params.pid);
    return { ok: true };
  });
  app.post(R.processSignal, { schema: { params: PidParam, body: SignalBody } }, async (req) => {
    await runtime.initClient(req.params.id).signal(req.params.pid, req.body.signal);
    return { ok: true };
  });
  app.post(R.processResize, { schema: { params: PidParam, body: ResizeBody } }, async (req) => {
    await runtime.initClient(req.params.id).resize(req.params.pid, req.body.cols, req.body.rows);
    return { ok: true };
  });

  // --- files ----------------------------------------------------------------------------------
  app.get(R.files, { schema: { params: SandboxIdParam, querystring: FileQuery } }, async (req, reply) => {
    const file = await runtime.initClient(req.params.id).readFile(req.query.path, req.query.user ?? 'user');
    reply.header('content-type', 'application/octet-stream');
    reply.header('content-length', String(file.size));
    return reply.send(file.stream);
  });

  app.put(R.files, { schema: { params: SandboxIdParam, querystring: FileQuery } }, async (req) => {
    const body = req.body as Readable | Buffer | undefined;
    const source = body instanceof Readable ? body : Buffer.isBuffer(body) ? body : Buffer.alloc(0);
    const entry = await runtime.initClient(req.params.id).writeFile(req.query.path, source, { user: req.query.user ?? 'user' });
    return { entry };
  });

  app.get(R.fsStat, { schema: { params: SandboxIdParam, querystring: FileQuery } }, async (req) => ({
    entry: await runtime.initClient(req.params.id).stat(req.query.path, req.query.user ?? 'user'),
  }));
  app.get(R.fsList, { schema: { params: SandboxIdParam, querystring: ListDirQuery } }, async (req) => ({
    entries: await runtime.initClient(req.params.id).listDir(req.query.path, req.query.depth, req.query.user ?? 'user'),
  }));
  app.post(R.fsMkdir, { schema: { params: SandboxIdParam, body: PathBody } }, async (req) => ({
    created: await runtime.initClient(req.params.id).mkdir(req.body.path, req.body.user ?? 'user'),
  }));
  app.post(R.fsMove, { schema: { params: SandboxIdParam, body: MoveBody } }, async (req) => ({
    entry: await runtime.initClient(req.params.id).move(req.body.from, req.body.to, req.body.user ?? 'user'),
  }));
  app.post(R.fsRemove, { schema: { params: SandboxIdParam, body: PathBody } }, async (req) => {
    await runtime.initClient(req.params.id).remove(req.body.path, req.body.user ?? 'user');
    return { ok: true };
  });
  app.get(R.fsWatch, { schema: { params: SandboxIdParam, querystring: WatchQuery } }, async (req, reply) => {
    const watcher = await runtime.initClient(req.params.id).watch(req.query.path, { recursive: req.query.recursive, user: req.query.user ?? 'user' });
    const out = new PassThrough();
    const line = (l: WatchStreamLine) => out.write(JSON.stringify(l) + '\n');
    line({ type: 'watching' });
    req.raw.on('close', () => watcher.close());
    void (async () => {
      try {
        for await (const ev of watcher) line({ type: 'event', ...ev });
      } catch (e) {
        line({ type: 'error', message: (e as Error).message });
      }
      out.end();
    })();
    reply.header('content-type', 'application/x-ndjson');
    return reply.send(out);
  });

  registerPortForward(app, { runtime, nodeToken: opts.nodeToken });
  registerTemplateRoutes(app, { runtime });
  // --- envd protocol (E2B's in-sandbox API) -----------------------------------------------------
  registerEnvd(app, { runtime });

  return app;
}

/** Streams a process as NDJSON: start, output chunks (base64), then exit. */
function sendProcessStream(req: FastifyRequest, reply: FastifyReply, stream: ProcessStream) {
  const out = new PassThrough();
  const line = (l: ProcessStreamLine) => out.write(JSON.stringify(l) + '\n');
  line({ type: 'start', pid: stream.pid });
  req.raw.on('close', () => stream.detach());
  void (async () => {
    try {
      for await (const chunk of stream) {
        line({ type: 'data', channel: chunk.channel, data: chunk.data.toString('base64') });
      }
      const exit = await stream.exited;
      line({ type: 'exit', exitCode: exit.exitCode, signal: exit.signal });
    } catch (e) {
      line({ type: 'error', message: (e as Error).message });
    }
    out.end();
  })();
  reply.header('content-type', 'application/x-ndjson');
  return reply.send(out);
}
