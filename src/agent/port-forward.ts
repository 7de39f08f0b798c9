// Port forwarding on the node: `<NODE_ROUTES.port>/*` (/v1/sandboxes/:id/ports/:port/*) reaches http://<sandbox address>:<port>/*
// (HTTP and WebSocket upgrades). The control plane's sandbox proxy is the only caller; the node
// token authenticates it, and never reaches the sandbox.
import type { IncomingMessage, OutgoingHttpHeaders } from 'node:http';
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { isSandboxId } from '../core/ids.ts';
import { bearerToken, sameSecret } from '../http/credentials.ts';
import { endToEndHeaders, forwardHttp, forwardUpgrade, writeRawResponse } from '../http/forward.ts';
import { NODE_ROUTES, NOT_HERE_HEADER, parsePortUrl } from '../node-api/routes.ts';
import type { SandboxRuntime } from '../runtime/sandbox-runtime.ts';

export interface PortForwardOptions {
  runtime: Pick<SandboxRuntime, 'record' | 'admission'>;
  nodeToken: string;
  /** How long to wait for the sandbox to accept a connection (default 5 s). */
  connectTimeoutMs?: number;
}

const JSON_HEADERS = { 'content-type': 'application/json' };

function parsePort(raw: string): number | null {
  if (!/^\d{1,5}$/.test(raw)) return null;
  const n = Number(raw);
  return n >= 1 && n <= 65535 ? n : null;
}

/** Headers for the sandbox: the node token dropped, the client's own Authorization restored. */
function sandboxHeaders(req: IncomingMessage, fallbackHost: string): OutgoingHttpHeaders {
  const headers = endToEndHeaders(req.headers);
  delete headers.authorization;
  delete headers['x-envd-authorization'];
  const clientAuth = req.headers['x-forwarded-authorization'];
  delete headers['x-forwarded-authorization'];
  if (clientAuth) headers.authorization = Array.isArray(clientAuth) ? clientAuth[0] : clientAuth;
  // Apps see the host name the client used (as on E2B), e.g. 8000-<id>.<domain>.
  const fwdHost = req.headers['x-forwarded-host'];
  headers.host = (Array.isArray(fwdHost) ? fwdHost[0] : fwdHost) || fallbackHost;
  const prior = req.headers['x-forwarded-for'];
  if (!prior) headers['x-forwarded-for'] = req.socket.remoteAddress ?? '';
  return headers;
}

class ForwardError extends Error {
  constructor(readonly status: number, readonly body: Record<string, unknown>, readonly headers: Record<string, string> = {}) {
    super(String(body.message));
  }
}

/** The sandbox is not on this node (or is being paused away): the proxy may send the request on. */
const notHere = (sandboxId: string) =>
  new ForwardError(502, { sandboxId, message: 'The sandbox was not found', code: 502 }, { [NOT_HERE_HEADER]: '1' });

/**
 * Registers the port-forward routes and the upgrade handler on the agent's server, and cuts a
 * sandbox's forwarded connections before it is paused or killed (a checkpoint must not carry
 * connections to the host).
 */
export function registerPortForward(app: FastifyInstance, opts: PortForwardOptions): void {
  const connectTimeoutMs = opts.connectTimeoutMs ?? 5_000;
  const open = new Map<string, Set<Socket>>();

  const track = (sandboxId: string) => (socket: Socket) => {
    let set = open.get(sandboxId);
    if (!set) open.set(sandboxId, (set = new Set()));
    set.add(socket);
    socket.once('close', () => {
      set.delete(socket);
      if (!set.size && open.get(sandboxId) === set) open.delete(sandboxId);
    });
  };

  // (destroy, not resetAndDestroy: on Node 20 a reset socket can leave the process spinning at exit)
  const cut = (sandboxId: string) => {
    for (const s of open.get(sandboxId) ?? []) s.destroy();
    open.delete(sandboxId);
  };

  /** The sandbox's address and the upstream path; throws ForwardError. */
  const target = async (url: string) => {
    const m = parsePortUrl(url);
    if (!m) throw new ForwardError(404, { code: 404, message: 'not found' });
    const { sandboxId, rest } = m;
    const port = parsePort(m.port);
    if (!isSandboxId(sandboxId)) throw new ForwardError(502, { sandboxId, message: 'The sandbox was not found', code: 502 });
    if (port === null) throw new ForwardError(400, { code: 400, message: `invalid port ${m.port}` });
    let address: string | null;
    try {
      address = (await opts.runtime.record(sandboxId)).address;
    } catch {
      address = null;
    }
    if (!address || opts.runtime.admission.isClosed(sandboxId)) throw notHere(sandboxId);
    return { sandboxId, port, origin: `http://${address}:${port}`, path: rest, host: `${address}:${port}` };
  };

  const portClosed = (t: { sandboxId: string; port: number }, err: Error) => ({
    sandboxId: t.sandboxId,
    message: 'The sandbox is running but port is not open',
    port: t.port,
    code: 502,
    reason: (err as { code?: string }).code ?? err.message,
  });

  app.register(async (scope) => {
    // Bodies are streamed to the sandbox untouched: no parsing, no size limit.
    scope.removeAllContentTypeParsers();
    scope.addContentTypeParser('*', (_req, _payload, done) => done(null));
    const handler = async (req: FastifyRequest, reply: FastifyReply) => {
      let t;
      try {
        t = await target(req.raw.url ?? '');
      } catch (e) {
        if (e instanceof ForwardError) return reply.code(e.status).headers(e.headers).send(e.body);
        throw e;
      }
      reply.hijack();
      const res = reply.raw;
      forwardHttp(req.raw, res, {
        origin: t.origin,
        path: t.path,
        headers: sandboxHeaders(req.raw, t.host),
        agent: false,
        connectTimeoutMs,
        onSocket: track(t.sandboxId),
        onError: (err) => {
          if (res.headersSent || res.destroyed) return void res.destroy();
          res.writeHead(502, JSON_HEADERS);
          res.end(JSON.stringify(portClosed(t, err)));
        },
      });
    };
    scope.all(NODE_ROUTES.port, handler);
    scope.all(`${NODE_ROUTES.port}/*`, handler);
  });

  // A pause or a kill of the sandbox: its forwarded connections go first.
  app.addHook('onRequest', async (req) => {
    const route = req.routeOptions.url;
    const stops = (route === NODE_ROUTES.pause && req.method === 'POST') || (route === NODE_ROUTES.sandbox && req.method === 'DELETE');
    if (stops) cut((req.params as { id: string }).id);
  });

  app.server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    socket.on('error', () => socket.destroy());
    const url = req.url ?? '';
    if (!parsePortUrl(url)) {
      // Not ours: answer only when nobody else listens for upgrades.
      if (app.server.listenerCount('upgrade') === 1) writeRawResponse(socket, 404, JSON_HEADERS, JSON.stringify({ code: 404, message: 'not found' }));
      return;
    }
    const token = bearerToken(req.headers.authorization);
    if (!token || !sameSecret(token, opts.nodeToken)) {
      writeRawResponse(socket, 401, JSON_HEADERS, JSON.stringify({ code: 401, message: 'missing or invalid node token' }));
      return;
    }
    void target(url).then(
      (t) => {
        if (socket.destroyed) return;
        forwardUpgrade(req, socket, head, {
          origin: t.origin,
          path: t.path,
          headers: sandboxHeaders(req, t.host),
          connectTimeoutMs,
          onSocket: track(t.sandboxId),
          onError: (err) => writeRawResponse(socket, 502, JSON_HEADERS, JSON.stringify(portClosed(t, err))),
        });
      },
      (e: unknown) => {
        const fe = e instanceof ForwardError ? e : new ForwardError(500, { code: 500, message: 'internal error' });
        writeRawResponse(socket, fe.status, { ...JSON_HEADERS, ...fe.headers }, JSON.stringify(fe.body));
      },
    );
  });
}
