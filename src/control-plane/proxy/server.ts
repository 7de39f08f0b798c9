// The sandbox proxy (E2B_SANDBOX_URL): routes each request to the node agent holding the
// sandbox: envd (port 49983) to the agent's envd routes, every other port to the agent's port
// forwarding, which reaches the sandbox's own address.
import http, { type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { NestboxError } from '../../core/errors.ts';
import type { SandboxState } from '../../core/states.ts';
import type { Sql } from '../../store/database.ts';
import { getNode, type NodeRecord } from '../../store/nodes.ts';
import { getSandbox } from '../../store/sandboxes.ts';
import type { LifecycleApi } from '../lifecycle-types.ts';
import { checkEnvdAccess } from './access.ts';
import { NODE_ROUTES, NOT_HERE_HEADER, nodePath } from '../../node-api/routes.ts';
import { addForwardedHeaders, endToEndHeaders, forwardHttp, forwardUpgrade, readSmallBody, writeRawResponse } from '../../http/forward.ts';
import { ENVD_PORT, parseTarget, routeRequest, type RequestTarget } from './routing.ts';

export interface SandboxProxyOptions {
  db: Sql;
  /** Resumes paused sandboxes created with autoResume. */
  lifecycle: Pick<LifecycleApi, 'connect'>;
  /** How long the proxy waits for a connection to a node agent. */
  connectTimeoutMs?: number;
  now?: () => Date;
  log?: { warn(obj: object, msg?: string): void };
}

interface Resolved {
  sandboxId: string;
  secure: boolean;
  envdAccessToken: string;
  node: NodeRecord;
}

interface Prepared {
  r: Resolved;
  port: number;
  path: string;
  headers: OutgoingHttpHeaders;
}

class ProxyError extends Error {
  constructor(readonly status: number, message: string, readonly sandboxId: string | null, readonly extra: Record<string, unknown> = {}) {
    super(message);
  }
  body(): string {
    if (this.status === 502 && this.sandboxId) {
      return JSON.stringify({ sandboxId: this.sandboxId, message: this.message, code: 502, ...this.extra });
    }
    return JSON.stringify({ code: this.status, message: this.message, ...this.extra });
  }
}

const NOT_FOUND = 'The sandbox was not found';
const notFound = (id: string) => new ProxyError(502, NOT_FOUND, id);
const RESUMABLE: SandboxState[] = ['paused', 'pausing', 'resuming'];
/**
 * A drain moves a running sandbox to another node (pausing, paused, resuming, all reason
 * `drain`): a request meanwhile waits for the move, up to this long, and goes to the new node.
 */
const DRAIN_MOVE_WAIT_MS = 60_000;
const DRAIN_MOVE_POLL_MS = 100;
/**
 * Bodies up to this size are kept, so that a request the node answered "not here" (the
 * sandbox left it mid-move) can be sent again, at most MAX_SENDS times in all; larger
 * bodies stream straight through, and such a request fails as before.
 */
const REPLAYABLE_BODY_BYTES = 1 << 20;
const MAX_SENDS = 3;
/** How long a node's address and token are cached. */
const NODE_CACHE_MS = 5_000;
const JSON_HEADERS = { 'content-type': 'application/json', 'access-control-allow-origin': '*', 'cache-control': 'no-store' };

export class SandboxProxy {
  private readonly server: http.Server;
  private readonly agent = new http.Agent({ keepAlive: true, maxSockets: Infinity });
  private readonly nodes = new Map<string, { at: number; node: NodeRecord | null }>();
  private readonly resumes = new Map<string, Promise<string | null>>();
  private readonly upgraded = new Set<Duplex>();
  private readonly connectTimeoutMs: number;

  constructor(private readonly opts: SandboxProxyOptions) {
    this.connectTimeoutMs = opts.connectTimeoutMs ?? 5_000;
    // No request timeout: uploads and streams last as long as they need to.
    this.server = http.createServer({ requestTimeout: 0, headersTimeout: 60_000, keepAliveTimeout: 65_000 });
    this.server.on('request', (req, res) => void this.onRequest(req, res));
    this.server.on('upgrade', (req, socket, head) => void this.onUpgrade(req, socket, head));
  }

  async listen(host = '127.0.0.1', port = 3002): Promise<string> {
    await new Promise<void>((resolve, reject) => {
      this.server.once('error', reject);
      this.server.listen(port, host, () => {
        this.server.off('error', reject);
        resolve();
      });
    });
    const a = this.server.address() as AddressInfo;
    return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  }

  /** Stops listening and cuts every connection, streams and WebSockets included. */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    for (const s of this.upgraded) s.destroy();
    this.agent.destroy();
    await closed;
  }

  /** Forgets cached node addresses (after a node's address or token changed). */
  forgetNodes(): void {
    this.nodes.clear();
  }

  // --- resolution -----------------------------------------------------------------------------

  private async node(id: string): Promise<NodeRecord | null> {
    const hit = this.nodes.get(id);
    if (hit && Date.now() - hit.at < NODE_CACHE_MS) return hit.node;
    const node = await getNode(this.opts.db, id);
    this.nodes.set(id, { at: Date.now(), node });
    return node;
  }

  /** One resume per sandbox at a time in this process (the lifecycle service joins across processes). */
  private resume(teamId: string, id: string, timeoutMs: number): Promise<string | null> {
    let p = this.resumes.get(id);
    if (!p) {
      p = this.opts.lifecycle
        .connect(teamId, id, timeoutMs)
        .then((r) => r.sandbox.nodeId)
        .finally(() => this.resumes.delete(id));
      this.resumes.set(id, p);
    }
    return p;
  }

  private async resolve(sandboxId: string): Promise<Resolved> {
    let row = await getSandbox(this.opts.db, sandboxId);
    // Its user should see a short pause, not a stop (nor a 404 for a sandbox without auto-resume).
    for (const until = Date.now() + DRAIN_MOVE_WAIT_MS; row && row.lastReason === 'drain' && RESUMABLE.includes(row.state) && Date.now() < until;) {
      await new Promise((r) => setTimeout(r, DRAIN_MOVE_POLL_MS));
      row = await getSandbox(this.opts.db, sandboxId);
    }
    if (!row) throw notFound(sandboxId);
    let nodeId = row.nodeId;
    if (row.state !== 'running') {
      if (!row.autoResume || !RESUMABLE.includes(row.state)) throw notFound(sandboxId);
      try {
        nodeId = await this.resume(row.teamId, sandboxId, row.timeoutMs);
      } catch (e) {
        if (e instanceof NestboxError && (e.code === 'not_found' || e.code === 'conflict')) throw notFound(sandboxId);
        // The team is at its max_running: the client may retry once another sandbox has stopped.
        if (e instanceof NestboxError && e.code === 'limit') throw new ProxyError(429, e.message, sandboxId);
        this.opts.log?.warn({ err: e, sandboxId }, 'sandbox proxy: auto-resume failed');
        throw new ProxyError(502, `The sandbox could not be resumed: ${(e as Error).message}`, sandboxId);
      }
    }
    if (!nodeId) throw notFound(sandboxId);
    const node = await this.node(nodeId);
    if (!node || !/^https?:\/\//.test(node.url)) {
      throw new ProxyError(502, `The node running the sandbox (${nodeId}) is not reachable over HTTP`, sandboxId);
    }
    return { sandboxId, secure: row.secure, envdAccessToken: row.envdAccessToken, node };
  }

  /** Where the request goes on the node, with the headers for that hop; throws ProxyError. */
  private async prepare(req: IncomingMessage): Promise<Prepared> {
    const route = routeRequest(req.headers);
    if (!route.ok) {
      if (route.sandboxId) throw notFound(route.sandboxId);
      throw new ProxyError(400, `cannot tell which sandbox this request is for: ${route.reason}`, null);
    }
    const target = parseTarget(req.url);
    if (!target) throw new ProxyError(400, 'invalid request path', route.sandboxId);
    const r = await this.resolve(route.sandboxId);
    const envd = route.port === ENVD_PORT;
    if (envd) this.checkAccess(req, r, target);
    const headers = endToEndHeaders(req.headers);
    addForwardedHeaders(headers, req);
    // The node token authenticates this hop; the client's own Authorization travels beside it:
    // for envd it selects the user (X-Envd-Authorization), for other ports the agent restores it.
    delete headers['x-envd-authorization'];
    delete headers['x-forwarded-authorization'];
    const clientAuth = req.headers.authorization;
    if (clientAuth) headers[envd ? 'x-envd-authorization' : 'x-forwarded-authorization'] = clientAuth;
    headers.authorization = `Bearer ${r.node.token}`;
    const prefix = envd ? nodePath(NODE_ROUTES.envd, { id: r.sandboxId }) : nodePath(NODE_ROUTES.port, { id: r.sandboxId, port: route.port });
    return { r, port: route.port, path: prefix + target.path, headers };
  }

  private checkAccess(req: IncomingMessage, r: Resolved, target: RequestTarget) {
    // CORS preflights carry no credentials; envd answers them.
    if (req.method === 'OPTIONS' && req.headers['access-control-request-method']) return;
    const token = req.headers['x-access-token'];
    const decision = checkEnvdAccess({
      secure: r.secure,
      token: r.envdAccessToken,
      method: req.method ?? 'GET',
      pathname: target.pathname,
      query: target.query,
      accessToken: Array.isArray(token) ? token[0] : token,
      nowSeconds: Math.floor((this.opts.now?.() ?? new Date()).getTime() / 1000),
    });
    if (!decision.ok) throw new ProxyError(401, decision.message, r.sandboxId);
  }

  private nodeDown(r: Resolved, err: Error): ProxyError {
    const code = (err as { code?: string }).code;
    return new ProxyError(502, `The node running the sandbox did not answer (${code ?? err.message})`, r.sandboxId);
  }

  private failure(e: unknown, sandboxId: string | null): ProxyError {
    if (e instanceof ProxyError) return e;
    this.opts.log?.warn({ err: e, sandboxId }, 'sandbox proxy: request failed');
    return new ProxyError(502, `The sandbox proxy failed: ${(e as Error).message}`, sandboxId);
  }

  // --- HTTP -----------------------------------------------------------------------------------

  private send(res: ServerResponse, e: ProxyError) {
    if (res.headersSent || res.destroyed) {
      res.destroy();
      return;
    }
    res.writeHead(e.status, JSON_HEADERS);
    res.end(e.body());
  }

  private async onRequest(req: IncomingMessage, res: ServerResponse) {
    // A small body is read first, so that a request the node refused untouched (the sandbox
    // left it: a drain moved it) can be sent again to wherever the sandbox is now.
    let body: Buffer | undefined;
    try {
      body = await readSmallBody(req, REPLAYABLE_BODY_BYTES);
    } catch {
      return; // the client went away
    }
    for (let sends = 1; ; sends++) {
      let prepared;
      try {
        prepared = await this.prepare(req);
      } catch (e) {
        // Unread request bodies are drained so the connection stays usable.
        if (!body) req.resume();
        this.send(res, this.failure(e, null));
        return;
      }
      if (res.destroyed) return; // the client left while the sandbox was being resumed
      if (!(await this.forward(req, res, prepared, sends < MAX_SENDS ? body : undefined, body))) return;
    }
  }

  /** Forwards once; true when the node refused it untouched and it may be sent again. */
  private forward(req: IncomingMessage, res: ServerResponse, prepared: Prepared, replayable: Buffer | undefined, body: Buffer | undefined): Promise<boolean> {
    const { r, path, headers } = prepared;
    return new Promise<boolean>((resolve) => {
      try {
        forwardHttp(req, res, {
          origin: r.node.url,
          path,
          headers,
          agent: this.agent,
          connectTimeoutMs: this.connectTimeoutMs,
          body,
          intercept: (up) => {
            const notHere = up.statusCode === 502 && up.headers[NOT_HERE_HEADER] !== undefined;
            delete up.headers[NOT_HERE_HEADER];
            resolve(notHere && replayable !== undefined);
            return notHere && replayable !== undefined;
          },
          onError: (err) => {
            this.nodes.delete(r.node.id);
            this.send(res, this.nodeDown(r, err));
            resolve(false);
          },
        });
      } catch (e) {
        this.send(res, this.failure(e, r.sandboxId));
        resolve(false);
      }
    });
  }

  // --- upgrades (WebSocket) -------------------------------------------------------------------

  private async onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer) {
    this.upgraded.add(socket);
    socket.once('close', () => this.upgraded.delete(socket));
    socket.on('error', () => socket.destroy());
    let prepared;
    try {
      prepared = await this.prepare(req);
    } catch (e) {
      const err = this.failure(e, null);
      writeRawResponse(socket, err.status, JSON_HEADERS, err.body());
      return;
    }
    if (socket.destroyed) return;
    const { r, path, headers } = prepared;
    try {
      forwardUpgrade(req, socket, head, {
        origin: r.node.url,
        path,
        headers,
        connectTimeoutMs: this.connectTimeoutMs,
        onError: (err) => {
          this.nodes.delete(r.node.id);
          const e = this.nodeDown(r, err);
          writeRawResponse(socket, e.status, JSON_HEADERS, e.body());
        },
      });
    } catch (e) {
      const err = this.failure(e, r.sandboxId);
      writeRawResponse(socket, err.status, JSON_HEADERS, err.body());
    }
  }
}
