// The envd protocol (E2B's in-sandbox daemon) served by the node agent for each sandbox, under
// `<NODE_ROUTES.envd>/*` (/v1/sandboxes/:id/envd/*): REST /health and /files, and Connect RPC for process.Process and
// filesystem.Filesystem, all mapped onto the sandbox init. See README.md in this folder.
import type { ServerResponse } from 'node:http';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Code, ConnectError, createConnectRouter, createContextValues } from '@connectrpc/connect';
import type { UniversalHandler } from '@connectrpc/connect/protocol';
import {
  compressionBrotli, compressionGzip, universalRequestFromNodeRequest, universalResponseToNodeResponse,
} from '@connectrpc/connect-node';
import { connectEnvelope, END_STREAM_FLAG } from '../../http/connect-envelope.ts';
import { NODE_ROUTES, NOT_HERE_HEADER } from '../../node-api/routes.ts';
import type { SandboxRuntime } from '../../runtime/sandbox-runtime.ts';
import { basicAuthUser, clientAuthorization, envdContextKey, requestUser, type EnvdRequestContext } from './context.ts';
import { templateProcessDefaults, type ProcessDefaults } from '../../runtime/templates.ts';
import { getFile, postFile, sendHttpError } from './files.ts';
import { filesystemService } from './filesystem-service.ts';
import { processService } from './process-service.ts';
import { WatcherRegistry } from './watchers.ts';
import { HttpError } from './errors.ts';
import { Process } from './gen/process/process_pb.ts';
import { Filesystem } from './gen/filesystem/filesystem_pb.ts';


export interface EnvdOptions {
  runtime: SandboxRuntime;
}

/**
 * E2B's proxy answer for a sandbox that is not running (the SDK's isRunning() reads 502 as
 * false), marked "not here" for the proxy: nothing was done, it may send the request on.
 */
function sandboxNotFound(reply: FastifyReply, sandboxId: string) {
  return reply.code(502).header('content-type', 'application/json').header(NOT_HERE_HEADER, '1')
    .send({ sandboxId, message: 'The sandbox was not found', code: 502 });
}

// envd answers browsers with permissive CORS (the SDK runs in browsers too).
const CORS_EXPOSE = [
  'Connect-Content-Encoding', 'Connect-Accept-Encoding', 'Grpc-Status', 'Grpc-Message', 'Grpc-Status-Details-Bin',
  'Content-Encoding', 'Content-Length', 'Content-Type',
].join(', ');

function corsHeaders(req: FastifyRequest, reply: FastifyReply): boolean {
  if (!req.headers.origin) return false;
  reply.header('access-control-allow-origin', '*');
  reply.header('access-control-expose-headers', CORS_EXPOSE);
  if (req.method === 'OPTIONS' && req.headers['access-control-request-method']) {
    reply.header('access-control-allow-methods', 'HEAD, GET, POST, PUT, PATCH, DELETE');
    const asked = req.headers['access-control-request-headers'];
    if (asked) reply.header('access-control-allow-headers', String(asked));
    reply.header('access-control-max-age', '7200');
    return true;
  }
  return false;
}

const RPC_PATH = /^\/[A-Za-z_][\w.]*\.[A-Za-z_]\w*\/[A-Za-z_]\w*$/;

/** Connect's answer for an RPC nobody serves: `unimplemented`, in the framing the client expects. */
function sendUnimplementedRpc(req: FastifyRequest, reply: FastifyReply, path: string) {
  const err = new ConnectError(`${path.slice(1)} is not implemented by Nestbox`, Code.Unimplemented);
  const ct = String(req.headers['content-type'] ?? '');
  req.raw.resume();
  if (ct.startsWith('application/connect+')) {
    // streaming call: HTTP 200, then an end-stream envelope carrying the error
    const body = connectEnvelope({ error: { code: 'unimplemented', message: err.rawMessage } }, END_STREAM_FLAG);
    return reply.code(200).header('content-type', ct.split(';')[0]!).send(body);
  }
  return reply.code(501).header('content-type', 'application/json').send({ code: 'unimplemented', message: err.rawMessage });
}

/**
 * Registers the envd routes on the agent's server (inside their own encapsulated scope: request
 * bodies are left unread for the handlers to stream). Authentication is the agent's node-token
 * hook, which runs before these routes.
 */
export function registerEnvd(app: FastifyInstance, opts: EnvdOptions) {
  const { runtime } = opts;
  const watchers = new WatcherRegistry();
  const router = createConnectRouter({
    acceptCompression: [compressionGzip, compressionBrotli],
    jsonOptions: { ignoreUnknownFields: true },
  });
  router.service(Process, processService);
  router.service(Filesystem, filesystemService(watchers));
  const rpcHandlers = new Map<string, UniversalHandler>(router.handlers.map((h) => [h.requestPath, h]));

  // Long-lived streams would keep the server from closing: end them first.
  const live = new Set<ServerResponse>();
  app.addHook('preClose', async () => {
    for (const res of live) res.destroy();
    live.clear();
  });
  app.addHook('onClose', async () => watchers.closeAll());

  app.register(async (scope) => {
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_req, payload, done) => done(null, payload));

    scope.all(`${NODE_ROUTES.envd}/*`, async (req, reply) => {
      if (corsHeaders(req, reply)) return reply.code(204).send();
      const sandboxId = (req.params as { id: string }).id;
      const sub = '/' + ((req.params as Record<string, string>)['*'] ?? '');
      let envVars: Record<string, string>;
      let defaults: ProcessDefaults;
      try {
        const record = await runtime.record(sandboxId);
        // An imported image's env, working directory and user are defaults; the request's win.
        defaults = await templateProcessDefaults(runtime.cfg, record.template);
        envVars = { ...defaults.env, ...(record.envVars ?? {}) };
      } catch {
        req.raw.resume();
        return sandboxNotFound(reply, sandboxId);
      }
      // Counted while it is answered (streams included): a pause waits for it, or refuses it untouched.
      const release = runtime.admission.enter(sandboxId);
      if (!release) {
        req.raw.resume();
        return sandboxNotFound(reply, sandboxId);
      }
      reply.raw.once('close', release);
      const rc: EnvdRequestContext = {
        sandboxId,
        envVars,
        user: basicAuthUser(clientAuthorization(req.headers)) ?? defaults.user ?? requestUser(req.headers),
        cwd: defaults.cwd,
        init: runtime.initClient(sandboxId),
        runtime,
      };

      if (sub === '/health') {
        if (req.method !== 'GET' && req.method !== 'HEAD') return sendHttpError(reply, new HttpError(405, 'method not allowed'));
        try {
          await rc.init.ping();
        } catch {
          return sandboxNotFound(reply, sandboxId);
        }
        return reply.code(204).send();
      }
      if (sub === '/files') {
        if (req.method === 'GET') return getFile(req, reply, rc);
        if (req.method === 'POST') return postFile(req, reply, rc);
        req.raw.resume();
        return sendHttpError(reply, new HttpError(405, 'method not allowed'));
      }

      const handler = rpcHandlers.get(sub);
      if (!handler) {
        if (RPC_PATH.test(sub)) return sendUnimplementedRpc(req, reply, sub);
        req.raw.resume();
        return sendHttpError(reply, new HttpError(501, `${req.method} ${sub} is not implemented by Nestbox`));
      }

      reply.hijack();
      const res = reply.raw;
      for (const [k, v] of Object.entries(reply.getHeaders())) if (v !== undefined) res.setHeader(k, v as string | string[]);
      live.add(res);
      res.once('close', () => live.delete(res));
      try {
        const uReq = universalRequestFromNodeRequest(req.raw, res, undefined, createContextValues().set(envdContextKey, rc));
        const uRes = await handler(uReq);
        await universalResponseToNodeResponse(uRes, res);
      } catch (e) {
        // The client went away or the response broke mid-stream: nothing left to tell anyone.
        if (!res.headersSent) {
          res.writeHead(500, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ code: 'internal', message: (e as Error).message }));
        } else res.destroy();
      }
    });
  });
}
