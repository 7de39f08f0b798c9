// The sandbox proxy (E2B_SANDBOX_URL) in a real ControlPlane on PGlite, forwarding to a fake node
// agent (a plain HTTP server speaking the agent's route prefixes); and the whole chain
// client -> proxy -> the agent's real port forwarding -> an app standing in for a sandbox's port.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http, { type IncomingMessage, type ServerResponse } from 'node:http';
import net, { type AddressInfo } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { getSignature } from 'e2b';
import WebSocket, { WebSocketServer } from 'ws';
import { ControlPlane } from '../src/control-plane/control-plane.ts';
import type { CreateSandboxParams } from '../src/control-plane/lifecycle-types.ts';
import { fileSignature, checkEnvdAccess } from '../src/control-plane/proxy/access.ts';
import { parseTarget, routeRequest } from '../src/control-plane/proxy/routing.ts';
import { forwardHttp } from '../src/http/forward.ts';
import { NOT_HERE_HEADER } from '../src/node-api/routes.ts';
import { buildAgentServer } from '../src/agent/server.ts';
import { StartGate } from '../src/agent/start-gate.ts';
import type { SandboxRuntime } from '../src/runtime/sandbox-runtime.ts';
import { RequestAdmission } from '../src/runtime/request-admission.ts';
import { newSandboxId } from '../src/core/ids.ts';
import { upsertNode } from '../src/store/nodes.ts';
import { getSandbox } from '../src/store/sandboxes.ts';
import { FakeNode } from './helpers/fake-node.ts';

const AGENT_TOKEN = 'node-token-' + 'x'.repeat(20);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function listen(server: http.Server): Promise<string> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));
}

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: nothing within ${ms} ms`)), ms);
    }),
  ]);
}

interface Res {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
  json: () => any;
}

/** A request with full control of the headers (Host included). */
function request(url: string, opts: { method?: string; headers?: Record<string, string>; body?: string } = {}): Promise<Res> {
  return new Promise((resolve, reject) => {
    // the path is sent as written (a URL object would normalise dot segments away)
    const m = /^http:\/\/([^/:]+):(\d+)(.*)$/.exec(url)!;
    const target = { hostname: m[1], port: Number(m[2]), path: m[3] || '/' };
    const req = http.request({ ...target, method: opts.method ?? 'GET', headers: opts.headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const body = Buffer.concat(chunks).toString();
        resolve({ status: res.statusCode!, headers: res.headers, body, json: () => JSON.parse(body) });
      });
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(opts.body);
  });
}

// --- the fake node agent ----------------------------------------------------------------------

interface Seen {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  body: string;
}

class FakeAgent {
  server = http.createServer((req, res) => this.handle(req, res));
  wss = new WebSocketServer({ noServer: true });
  url = '';
  seen: Seen[] = [];
  /** Per-path behaviours (the path inside the sandbox, e.g. /stream). */
  special = new Map<string, (req: IncomingMessage, res: ServerResponse) => void>();

  constructor() {
    this.server.on('upgrade', (req, socket, head) => {
      if (req.headers.authorization !== `Bearer ${AGENT_TOKEN}`) {
        socket.end('HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n');
        return;
      }
      if (!/\/ws(\?|$)/.test(req.url ?? '')) {
        socket.end('HTTP/1.1 404 Not Found\r\ncontent-type: text/plain\r\ncontent-length: 9\r\n\r\nno socket');
        return;
      }
      this.wss.handleUpgrade(req, socket, head, (ws) => {
        ws.send(JSON.stringify({ url: req.url, headers: req.headers }));
        ws.on('message', (m) => ws.send(`echo:${m.toString()}`));
      });
    });
  }

  async start() {
    this.url = await listen(this.server);
  }

  private handle(req: IncomingMessage, res: ServerResponse) {
    if (req.headers.authorization !== `Bearer ${AGENT_TOKEN}`) {
      res.writeHead(401, { 'content-type': 'application/json' }).end('{"code":401,"message":"bad node token"}');
      return;
    }
    const m = /^\/v1\/sandboxes\/([a-z0-9]+)\/(envd|ports\/\d+)(\/[^?]*)/.exec(req.url ?? '');
    const inner = m?.[3] ?? '';
    const special = this.special.get(inner);
    if (special) return special(req, res);
    if (inner === '/health') {
      res.writeHead(204).end();
      return;
    }
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const seen = { method: req.method!, url: req.url!, headers: req.headers, body: Buffer.concat(chunks).toString() };
      this.seen.push(seen);
      res.writeHead(200, { 'content-type': 'application/json', 'x-upstream': 'fake-agent' }).end(JSON.stringify(seen));
    });
  }

  async stop() {
    for (const c of this.wss.clients) c.terminate();
    this.server.closeAllConnections();
    await new Promise((r) => this.server.close(r));
  }
}

// --- the world ---------------------------------------------------------------------------------

let dir: string;
let cp: ControlPlane;
let agent: FakeAgent;
let node: FakeNode;
let proxyUrl: string;
let proxyPort: number;
let teamId: string;
let apiUrl: string;
let apiKey: string;

async function create(extra: Partial<CreateSandboxParams> = {}) {
  return cp.lifecycle.create({
    teamId, templateId: 'base', timeoutMs: 300_000, metadata: {}, envVars: {}, autoPause: false, autoPauseMemory: true,
    autoResume: false, allowInternetAccess: true, secure: false, ...extra,
  });
}

const envd = (id: string, token?: string, extra: Record<string, string> = {}) => ({
  'E2b-Sandbox-Id': id, 'E2b-Sandbox-Port': '49983', ...(token ? { 'X-Access-Token': token } : {}), ...extra,
});

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'nestbox-proxy-'));
  agent = new FakeAgent();
  await agent.start();
  node = new FakeNode('node-1');
  cp = new ControlPlane({ dataDir: dir, port: 0, proxyPort: 0, loops: false, nodeClients: [node] });
  const started = await cp.start();
  teamId = started.teamId;
  apiUrl = started.url;
  apiKey = started.createdApiKey!;
  proxyUrl = started.proxyUrl!;
  proxyPort = Number(new URL(proxyUrl).port);
  // The lifecycle talks to the in-memory node; the proxy finds the node's address in the nodes table.
  await upsertNode(cp.db, { id: 'node-1', url: agent.url, token: AGENT_TOKEN });
});

after(async () => {
  await cp?.stop();
  await agent?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('the domain given to clients', () => {
  test("unconfigured, it is the proxy's own, localhost:<its port>: getHost needs no E2B_DOMAIN", async () => {
    const sb = await create();
    const res = await fetch(`${apiUrl}/sandboxes/${sb.sandboxId}`, { headers: { 'X-API-Key': apiKey } });
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as { domain: string | null }).domain, `localhost:${proxyPort}`);
  });
});

describe('routing (pure)', () => {
  test('headers when the host is localhost, an IP or sandbox.<domain>; the host name otherwise', () => {
    const id = 'abcdefghij0123456789';
    for (const host of ['localhost', 'localhost:3002', '127.0.0.1:3002', '[::1]:3002', 'sandbox.example.com', undefined]) {
      assert.deepEqual(routeRequest({ host, 'e2b-sandbox-id': id, 'e2b-sandbox-port': '49983' }), { ok: true, sandboxId: id, port: 49983, by: 'headers' }, String(host));
    }
    assert.equal(routeRequest({ host: 'localhost' }).ok, false);
    assert.equal(routeRequest({ host: 'localhost', 'e2b-sandbox-id': id, 'e2b-sandbox-port': '70000' }).ok, false);
    for (const host of [`8000-${id}.localhost:3002`, `8000-${id}.e2b.example.com`, `8000-${id}-6532622b.e2b.dev`, `8000-${id.toUpperCase()}.x.y`]) {
      // host routing ignores the headers
      assert.deepEqual(routeRequest({ host, 'e2b-sandbox-id': 'other', 'e2b-sandbox-port': '1' }), { ok: true, sandboxId: id, port: 8000, by: 'host' }, host);
    }
    assert.equal(routeRequest({ host: 'example.com' }).ok, false);
    assert.equal(routeRequest({ host: `0-${id}.localhost` }).ok, false);
  });

  test('request targets: dot segments are refused, absolute form is accepted', () => {
    assert.equal(parseTarget('/a/b?x=1')!.path, '/a/b?x=1');
    assert.equal(parseTarget('http://h:1/files?path=/x')!.path, '/files?path=/x');
    assert.equal(parseTarget('http://h:1')!.path, '/');
    for (const bad of ['/../x', '/a/./b', '/a/%2e%2E/b', '/a/..%2fb', '/a/..\\b', '/a/.%2e']) assert.equal(parseTarget(bad), null, bad);
    assert.ok(parseTarget('/a/..b/c.d'));
  });

  test('signatures match the e2b SDK', async () => {
    const token = 'tok-123';
    for (const [p, op, user, exp] of [['/home/user/a.txt', 'read', 'user', undefined], ['', 'write', undefined, 60], ['/x', 'read', 'root', 3600]] as const) {
      const sdk = await getSignature({ path: p, operation: op, user, expirationInSeconds: exp, envdAccessToken: token });
      assert.equal(fileSignature(p, op, user ?? '', token, sdk.expiration), sdk.signature);
      const query = new URLSearchParams({ ...(p ? { path: p } : {}), ...(user ? { username: user } : {}), signature: sdk.signature });
      if (sdk.expiration) query.set('signature_expiration', String(sdk.expiration));
      const r = checkEnvdAccess({ secure: true, token, method: op === 'read' ? 'GET' : 'POST', pathname: '/files', query, accessToken: undefined, nowSeconds: Math.floor(Date.now() / 1000) });
      assert.deepEqual(r, { ok: true });
    }
  });
});

describe('sandbox proxy', () => {
  test('header routing: envd goes to the agent envd routes with the node token; Basic auth travels as X-Envd-Authorization', async () => {
    const sb = await create();
    const r = await request(`${proxyUrl}/process.Process/List?x=1&y=%2F`, {
      method: 'POST',
      headers: envd(sb.sandboxId, undefined, { authorization: 'Basic cm9vdDo=', 'content-type': 'application/json', 'x-envd-authorization': 'forged' }),
      body: '{"a":1}',
    });
    assert.equal(r.status, 200);
    assert.equal(r.headers['x-upstream'], 'fake-agent');
    const seen = r.json();
    assert.equal(seen.url, `/v1/sandboxes/${sb.sandboxId}/envd/process.Process/List?x=1&y=%2F`);
    assert.equal(seen.method, 'POST');
    assert.equal(seen.body, '{"a":1}');
    assert.equal(seen.headers.authorization, `Bearer ${AGENT_TOKEN}`);
    assert.equal(seen.headers['x-envd-authorization'], 'Basic cm9vdDo=');
    assert.equal(seen.headers['content-type'], 'application/json');
    assert.equal(seen.headers['e2b-sandbox-id'], sb.sandboxId);
    assert.equal(seen.headers['x-forwarded-host'], `127.0.0.1:${proxyPort}`);

    const noAuth = (await request(`${proxyUrl}/x`, { headers: envd(sb.sandboxId, undefined, { 'x-envd-authorization': 'forged' }) })).json();
    assert.equal(noAuth.headers['x-envd-authorization'], undefined, 'only the client Authorization is carried');
  });

  test('host routing: {port}-{id}.{domain}; other ports go to the agent port forwarding', async () => {
    const sb = await create();
    const viaHost = await request(`${proxyUrl}/files?path=/a`, { headers: { host: `49983-${sb.sandboxId}.localhost:${proxyPort}` } });
    assert.equal(viaHost.status, 200);
    assert.equal(viaHost.json().url, `/v1/sandboxes/${sb.sandboxId}/envd/files?path=/a`);

    const app = await request(`${proxyUrl}/index.html?q=1`, {
      headers: { host: `8000-${sb.sandboxId}.sandboxes.example.org`, authorization: 'Bearer app-secret', cookie: 'a=b' },
    });
    assert.equal(app.status, 200);
    const seen = app.json();
    assert.equal(seen.url, `/v1/sandboxes/${sb.sandboxId}/ports/8000/index.html?q=1`);
    assert.equal(seen.headers.authorization, `Bearer ${AGENT_TOKEN}`);
    assert.equal(seen.headers['x-forwarded-authorization'], 'Bearer app-secret');
    assert.equal(seen.headers['x-forwarded-host'], `8000-${sb.sandboxId}.sandboxes.example.org`);
    assert.equal(seen.headers.cookie, 'a=b');

    const root = await request(proxyUrl, { headers: { 'E2b-Sandbox-Id': sb.sandboxId, 'E2b-Sandbox-Port': '3000' } });
    assert.equal(root.json().url, `/v1/sandboxes/${sb.sandboxId}/ports/3000/`);
  });

  test('unknown, killed and paused sandboxes: 502 JSON; bad requests: 400', async () => {
    const expect502 = async (id: string, headers: Record<string, string>) => {
      const r = await request(`${proxyUrl}/health`, { headers });
      assert.equal(r.status, 502, id);
      assert.match(String(r.headers['content-type']), /^application\/json/);
      assert.deepEqual(r.json(), { sandboxId: id, message: 'The sandbox was not found', code: 502 });
    };
    const unknown = newSandboxId();
    await expect502(unknown, envd(unknown));
    await expect502(unknown, { host: `49983-${unknown}.localhost` });

    const killed = await create();
    await cp.lifecycle.kill(teamId, killed.sandboxId);
    await expect502(killed.sandboxId, envd(killed.sandboxId));

    const paused = await create();
    await cp.lifecycle.pause(teamId, paused.sandboxId, { memory: true });
    await expect502(paused.sandboxId, envd(paused.sandboxId));
    await expect502(paused.sandboxId, { host: `8000-${paused.sandboxId}.localhost` });
    assert.ok(!node.calls.includes(`resume ${paused.sandboxId}`), 'no autoResume: no resume');

    const missing = await request(`${proxyUrl}/health`, { headers: { host: 'localhost' } });
    assert.equal(missing.status, 400);
    assert.equal(missing.json().code, 400);
    const traversal = await request(`${proxyUrl}/a/%2e%2e/b`, { headers: envd((await create()).sandboxId) });
    assert.equal(traversal.status, 400);
  });

  test('autoResume: the first requests resume the sandbox once, then are served', async () => {
    const sb = await create({ autoResume: true, autoPause: true, timeoutMs: 120_000 });
    await cp.lifecycle.pause(teamId, sb.sandboxId, { memory: true });
    node.faults.latencyMs = 100; // a resume that takes a while, so the requests overlap
    try {
      const results = await Promise.all([1, 2, 3, 4].map((i) => request(`${proxyUrl}/r${i}`, { headers: envd(sb.sandboxId) })));
      for (const r of results) assert.equal(r.status, 200, r.body);
    } finally {
      node.faults.latencyMs = 0;
    }
    assert.equal(node.calls.filter((c) => c === `resume ${sb.sandboxId}`).length, 1);
    const now = await cp.lifecycle.get(teamId, sb.sandboxId);
    assert.equal(now.state, 'running');
    assert.ok(now.endAt!.getTime() - Date.now() > 100_000, 'resumed with the stored timeout');
  });

  test('a sandbox a drain is moving: requests wait for the move and are served (no autoResume needed)', async () => {
    const sb = await create();
    await cp.lifecycle.pauseFrom((await getSandbox(cp.db, sb.sandboxId))!, 'drain', { memory: true });
    const pending = request(`${proxyUrl}/during-move`, { headers: envd(sb.sandboxId) });
    await new Promise((r) => setTimeout(r, 300));
    await cp.lifecycle.resumeFrom((await getSandbox(cp.db, sb.sandboxId))!, 'drain', 0);
    const r = await pending;
    assert.equal(r.status, 200, r.body);
    // A sandbox its user paused is still not found without autoResume.
    await cp.lifecycle.pause(teamId, sb.sandboxId, { memory: true });
    assert.equal((await request(`${proxyUrl}/after-user-pause`, { headers: envd(sb.sandboxId) })).status, 502);
  });

  test('a request the node answers "not here" (its sandbox is being moved away) is sent again, body and all, to where it went', async () => {
    const sb = await create();
    const bodies: string[] = [];
    let refusals = 0;
    agent.special.set('/moving', (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', async () => {
        bodies.push(Buffer.concat(chunks).toString());
        if (refusals++ === 0) {
          // The drain takes the sandbox away as the request arrives: the node refuses it untouched.
          await cp.lifecycle.pauseFrom((await getSandbox(cp.db, sb.sandboxId))!, 'drain', { memory: true });
          setTimeout(() => void getSandbox(cp.db, sb.sandboxId).then((row) => cp.lifecycle.resumeFrom(row!, 'drain', 0)), 300);
          res.writeHead(502, { 'content-type': 'application/json', [NOT_HERE_HEADER]: '1' }).end(JSON.stringify({ sandboxId: sb.sandboxId, message: 'The sandbox was not found', code: 502 }));
          return;
        }
        res.writeHead(200, { 'content-type': 'text/plain' }).end(`served: ${bodies.at(-1)}`);
      });
    });
    try {
      const r = await request(`${proxyUrl}/moving`, { method: 'POST', headers: envd(sb.sandboxId), body: 'the command' });
      assert.equal(r.status, 200, r.body);
      assert.equal(r.body, 'served: the command');
      assert.deepEqual(bodies, ['the command', 'the command'], 'sent twice, the same body');
      assert.equal((await getSandbox(cp.db, sb.sandboxId))!.state, 'running');

      // A node that keeps saying "not here" while the row says the sandbox runs there: a bounded
      // number of sends, then its answer (without the node's marker).
      bodies.length = 0;
      agent.special.set('/gone', (req, res) => {
        req.resume();
        req.on('end', () => {
          bodies.push('x');
          res.writeHead(502, { 'content-type': 'application/json', [NOT_HERE_HEADER]: '1' }).end(JSON.stringify({ sandboxId: sb.sandboxId, message: 'The sandbox was not found', code: 502 }));
        });
      });
      const gone = await request(`${proxyUrl}/gone`, { method: 'POST', headers: envd(sb.sandboxId), body: 'y' });
      assert.equal(gone.status, 502);
      assert.equal(gone.json().message, 'The sandbox was not found');
      assert.equal(gone.headers[NOT_HERE_HEADER], undefined);
      assert.equal(bodies.length, 3, 'sent three times in all');

      // A body too large to keep streams through: the node's refusal is the client's answer.
      bodies.length = 0;
      const big = await request(`${proxyUrl}/gone`, { method: 'POST', headers: envd(sb.sandboxId), body: 'z'.repeat((1 << 20) + 1) });
      assert.equal(big.status, 502);
      assert.equal(bodies.length, 1, 'a streamed body is sent once');
    } finally {
      agent.special.delete('/moving');
      agent.special.delete('/gone');
    }
  });

  test('access token: required on secure sandboxes, never another sandbox’s', async () => {
    const a = await create({ secure: true });
    const b = await create({ secure: true });
    const open = await create({ secure: false });
    const status = async (id: string, token?: string, p = '/process.Process/List', method = 'POST') =>
      (await request(`${proxyUrl}${p}`, { method, headers: envd(id, token) })).status;

    assert.equal(await status(a.sandboxId, a.envdAccessToken), 200);
    const refused = await request(`${proxyUrl}/process.Process/List`, { method: 'POST', headers: envd(a.sandboxId) });
    assert.equal(refused.status, 401);
    assert.match(String(refused.headers['content-type']), /^application\/json/);
    assert.equal(refused.json().code, 401);
    assert.equal(await status(a.sandboxId, 'wrong'), 401);
    assert.equal(await status(a.sandboxId, b.envdAccessToken), 401, "b's token does not open a");
    assert.equal(await status(b.sandboxId, a.envdAccessToken), 401, "a's token does not open b");
    assert.equal(await status(a.sandboxId, undefined, '/health', 'GET'), 204, '/health needs no token');
    assert.equal(await status(a.sandboxId, undefined, '/init', 'POST'), 401);
    assert.equal(await status(a.sandboxId, undefined, '/files?path=/x', 'GET'), 401, 'files need a token or a signature');
    assert.equal(await status(a.sandboxId, a.envdAccessToken, '/files?path=/x', 'GET'), 200);
    assert.equal(await status(open.sandboxId), 200, 'secure=false: no token needed');
    // other ports: no traffic token on Nestbox
    const port = await request(`${proxyUrl}/`, { headers: { 'E2b-Sandbox-Id': a.sandboxId, 'E2b-Sandbox-Port': '8080' } });
    assert.equal(port.status, 200);
  });

  test('file signatures: valid, expired, wrong token, wrong operation', async () => {
    const a = await create({ secure: true });
    const b = await create({ secure: true });
    const url = async (op: 'read' | 'write', opts: { token?: string; exp?: number; user?: string; p?: string } = {}) => {
      const p = opts.p ?? '/home/user/f.txt';
      const sig = await getSignature({ path: p, operation: op, user: opts.user, expirationInSeconds: opts.exp, envdAccessToken: opts.token ?? a.envdAccessToken });
      const q = new URLSearchParams({ path: p, signature: sig.signature });
      if (opts.user) q.set('username', opts.user);
      if (sig.expiration) q.set('signature_expiration', String(sig.expiration));
      return `${proxyUrl}/files?${q}`;
    };
    const get = async (u: string) => (await request(u, { headers: envd(a.sandboxId) })).status;
    const post = async (u: string) => (await request(u, { method: 'POST', headers: envd(a.sandboxId, undefined, { 'content-type': 'application/octet-stream' }), body: 'data' })).status;

    assert.equal(await get(await url('read')), 200);
    assert.equal(await get(await url('read', { user: 'root', exp: 60 })), 200);
    assert.equal(await post(await url('write')), 200);
    assert.equal(await get(await url('read', { exp: -10 })), 401, 'expired');
    assert.equal(await get(await url('read', { token: b.envdAccessToken })), 401, "signed with another sandbox's token");
    assert.equal(await post(await url('read')), 401, 'a read signature does not write');
    assert.equal(await get(await url('write')), 401, 'a write signature does not read');
    const tampered = (await url('read')).replace('f.txt', 'g.txt');
    assert.equal(await get(tampered), 401, 'the path is signed');
    const withUser = new URL(await url('read', { user: 'user' }));
    withUser.searchParams.set('username', 'root');
    assert.equal(await get(withUser.toString()), 401, 'the user is signed');
    // a signature opens only /files
    const sig = (await getSignature({ path: '/x', operation: 'read', user: undefined, envdAccessToken: a.envdAccessToken })).signature;
    assert.equal((await request(`${proxyUrl}/filesystem.Filesystem/Stat?path=/x&signature=${encodeURIComponent(sig)}`, { method: 'POST', headers: envd(a.sandboxId) })).status, 401);
  });

  test('streaming: response chunks and request chunks flow before the other side finishes', async () => {
    const sb = await create();
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    agent.special.set('/stream', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/connect+json' });
      res.write('first\n');
      void released.then(() => res.end('second\n'));
    });
    const res = await within(fetch(`${proxyUrl}/stream`, { method: 'POST', headers: envd(sb.sandboxId) }), 15_000, 'headers');
    assert.equal(res.headers.get('content-type'), 'application/connect+json');
    const reader = res.body!.getReader();
    const first = await within(reader.read(), 15_000, 'first chunk');
    assert.equal(Buffer.from(first.value!).toString(), 'first\n', 'the first chunk arrives while the upstream is still open');
    release();
    let rest = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      rest += Buffer.from(value).toString();
    }
    assert.equal(rest, 'second\n');

    // upload: the agent gets the first chunk while the client is still sending
    let gotFirst!: (s: string) => void;
    const firstUp = new Promise<string>((r) => (gotFirst = r));
    agent.special.set('/upload', (req, res) => {
      let n = 0;
      req.once('data', (c: Buffer) => gotFirst(c.toString()));
      req.on('data', (c: Buffer) => (n += c.length));
      req.on('end', () => res.writeHead(200).end(String(n)));
    });
    const upload = http.request(`${proxyUrl}/upload`, { method: 'POST', headers: envd(sb.sandboxId), agent: false });
    const answered = new Promise<string>((resolve) => upload.on('response', (r) => {
      let s = '';
      r.on('data', (c) => (s += c));
      r.on('end', () => resolve(s));
    }));
    upload.write('part-1;');
    assert.equal(await within(firstUp, 15_000, 'first upload chunk'), 'part-1;');
    upload.end('part-2');
    assert.equal(await answered, String('part-1;part-2'.length));
  });

  test('a client that goes away aborts the upstream request', async () => {
    const sb = await create();
    let upstreamClosed!: () => void;
    const closed = new Promise<void>((r) => (upstreamClosed = r));
    agent.special.set('/hang', (_req, res) => {
      res.writeHead(200, { 'content-type': 'application/connect+json' });
      res.write('tick\n');
      res.on('close', () => upstreamClosed());
    });
    const ac = new AbortController();
    const res = await fetch(`${proxyUrl}/hang`, { headers: envd(sb.sandboxId), signal: ac.signal });
    const reader = res.body!.getReader();
    await within(reader.read(), 15_000, 'first chunk');
    ac.abort();
    await within(closed, 15_000, 'upstream close');
  });

  test('WebSocket round trip through the proxy (header and host routing)', async () => {
    const sb = await create();
    const roundTrip = (headers: Record<string, string>) =>
      new Promise<{ hello: any; echo: string }>((resolve, reject) => {
        const ws = new WebSocket(`ws://127.0.0.1:${proxyPort}/ws?x=1`, { headers });
        let hello: any;
        ws.on('message', (m) => {
          if (!hello) {
            hello = JSON.parse(m.toString());
            ws.send('ping ünïcode');
          } else {
            resolve({ hello, echo: m.toString() });
            ws.close();
          }
        });
        ws.on('error', reject);
        ws.on('unexpected-response', (_req, res) => reject(new Error(`unexpected ${res.statusCode}`)));
      });
    const viaHost = await within(roundTrip({ host: `8000-${sb.sandboxId}.localhost:${proxyPort}`, authorization: 'Basic abc' }), 15_000, 'ws via host');
    assert.equal(viaHost.hello.url, `/v1/sandboxes/${sb.sandboxId}/ports/8000/ws?x=1`);
    assert.equal(viaHost.hello.headers.authorization, `Bearer ${AGENT_TOKEN}`);
    assert.equal(viaHost.hello.headers['x-forwarded-authorization'], 'Basic abc');
    assert.equal(viaHost.echo, 'echo:ping ünïcode');
    const viaHeaders = await within(roundTrip({ 'E2b-Sandbox-Id': sb.sandboxId, 'E2b-Sandbox-Port': '9000' }), 15_000, 'ws via headers');
    assert.equal(viaHeaders.hello.url, `/v1/sandboxes/${sb.sandboxId}/ports/9000/ws?x=1`);

    // refusals reach the WebSocket client as HTTP responses
    const status = (url: string, headers: Record<string, string>) =>
      new Promise<{ status: number; body: string }>((resolve, reject) => {
        const ws = new WebSocket(url, { headers });
        ws.on('unexpected-response', (_req, res) => {
          let body = '';
          res.on('data', (c) => (body += c));
          res.on('end', () => resolve({ status: res.statusCode!, body }));
        });
        ws.on('open', () => reject(new Error('opened')));
        ws.on('error', () => undefined);
      });
    const unknown = newSandboxId();
    const r502 = await within(status(`ws://127.0.0.1:${proxyPort}/ws`, { host: `8000-${unknown}.localhost` }), 15_000, 'ws 502');
    assert.equal(r502.status, 502);
    assert.deepEqual(JSON.parse(r502.body), { sandboxId: unknown, message: 'The sandbox was not found', code: 502 });
    const declined = await within(status(`ws://127.0.0.1:${proxyPort}/not-a-socket`, { host: `8000-${sb.sandboxId}.localhost` }), 15_000, 'ws 404');
    assert.equal(declined.status, 404);
    assert.equal(declined.body, 'no socket');
  });

  test('a node that does not answer: 502 JSON, promptly', async () => {
    const sb = await create();
    const dead = http.createServer();
    const deadUrl = await listen(dead);
    await new Promise((r) => dead.close(r));
    await upsertNode(cp.db, { id: 'node-dead', url: deadUrl, token: 't' });
    await cp.db.query('UPDATE sandboxes SET node_id = $2 WHERE id = $1', [sb.sandboxId, 'node-dead']);
    const r = await within(request(`${proxyUrl}/health`, { headers: envd(sb.sandboxId) }), 15_000, 'refused');
    assert.equal(r.status, 502);
    assert.equal(r.json().sandboxId, sb.sandboxId);
    assert.equal(r.json().code, 502);
    assert.match(r.json().message, /node .* did not answer/);

    // a connection that never completes (SYN unanswered): the connect timeout answers
    class NeverConnects extends http.Agent {
      override createConnection(): any {
        const s = new net.Socket();
        (s as any).connecting = true; // writes queue until a 'connect' that never comes
        return s;
      }
    }
    const front = http.createServer((req, res) =>
      forwardHttp(req, res, {
        origin: 'http://127.0.0.1:9', path: '/', headers: {}, agent: new NeverConnects(), connectTimeoutMs: 300,
        onError: (err) => res.writeHead(502).end(err.message),
      }),
    );
    const frontUrl = await listen(front);
    try {
      const r2 = await within(request(frontUrl), 15_000, 'connect timeout');
      assert.equal(r2.status, 502);
      assert.match(r2.body, /no connection to http:\/\/127.0.0.1:9 within 300 ms/);
    } finally {
      front.closeAllConnections();
      await new Promise((r) => front.close(r));
    }
  });
});

// --- the whole chain: proxy -> the agent's real port forwarding -> an app --------------------------

describe('proxy -> agent port forwarding -> sandbox port', () => {
  let agentApp: ReturnType<typeof buildAgentServer>;
  let agentUrl: string;
  let appServer: http.Server;
  let appPort: number;
  let appWss: WebSocketServer;
  const sandboxId = newSandboxId();
  const appSeen: Seen[] = [];
  const paused: string[] = [];

  before(async () => {
    appServer = http.createServer((req, res) => {
      if (req.url === '/slow') {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.write('a');
        setTimeout(() => res.end('b'), 300);
        return;
      }
      let body = '';
      req.on('data', (c) => (body += c));
      req.on('end', () => {
        appSeen.push({ method: req.method!, url: req.url!, headers: req.headers, body });
        res.writeHead(200, { 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'] });
        res.end(JSON.stringify({ url: req.url, headers: req.headers, body }));
      });
    });
    appWss = new WebSocketServer({ server: appServer });
    appWss.on('connection', (ws, req) => {
      ws.send(`hello ${req.url} ${req.headers.host} ${req.headers.authorization ?? '-'}`);
      ws.on('message', (m) => ws.send(`echo:${m.toString()}`));
    });
    appPort = Number(new URL(await listen(appServer)).port);
    const runtime = {
      record: async (id: string) => {
        if (id !== sandboxId) throw new Error('not here');
        return { sandboxId: id, address: '127.0.0.1' };
      },
      pause: async (id: string) => {
        paused.push(id);
        return {};
      },
      admission: new RequestAdmission(),
    } as unknown as SandboxRuntime;
    agentApp = buildAgentServer({ runtime, nodeToken: AGENT_TOKEN, nodeId: 'chain', starts: new StartGate() });
    agentUrl = await agentApp.listen({ host: '127.0.0.1', port: 0 });
    await upsertNode(cp.db, { id: 'node-chain', url: agentUrl, token: AGENT_TOKEN });
    const sb = await create();
    await cp.db.query('UPDATE sandboxes SET id = $2, node_id = $3 WHERE id = $1', [sb.sandboxId, sandboxId, 'node-chain']);
  });

  after(async () => {
    for (const c of appWss?.clients ?? []) c.terminate();
    appServer?.closeAllConnections();
    await new Promise((r) => appServer?.close(r));
    await agentApp?.close();
  });

  const host = (port = appPort) => `${port}-${sandboxId}.localhost:${proxyPort}`;

  test('HTTP: path, query, body, headers; the node token never reaches the sandbox', async () => {
    const r = await request(`${proxyUrl}/api/items?q=%20x`, {
      method: 'PUT',
      headers: { host: host(), authorization: 'Bearer app-token', 'x-custom': 'y' },
      body: 'payload',
    });
    assert.equal(r.status, 200);
    assert.deepEqual(r.headers['set-cookie'], ['a=1', 'b=2']);
    const seen = r.json();
    assert.equal(seen.url, '/api/items?q=%20x');
    assert.equal(seen.body, 'payload');
    assert.equal(seen.headers.authorization, 'Bearer app-token', "the client's Authorization, not the node token");
    assert.equal(seen.headers.host, host(), 'the app sees the host name the client used');
    assert.equal(seen.headers['x-custom'], 'y');
    assert.equal(seen.headers['x-forwarded-authorization'], undefined);
    assert.ok(!JSON.stringify(seen.headers).includes(AGENT_TOKEN));

    const noAuth = (await request(`${proxyUrl}/`, { headers: { host: host() } })).json();
    assert.equal(noAuth.headers.authorization, undefined);
    assert.ok(!JSON.stringify(noAuth.headers).includes(AGENT_TOKEN));

    // requests without a content type (and with odd ones) stream through untouched
    const raw = await request(`${proxyUrl}/raw`, { method: 'POST', headers: { host: host(), 'content-type': 'application/x-weird' }, body: 'z'.repeat(3_000_000) });
    assert.equal(raw.status, 200);
    assert.equal(raw.json().body.length, 3_000_000);
    const none = await request(`${proxyUrl}/raw`, { method: 'POST', headers: { host: host(), 'transfer-encoding': 'chunked' }, body: 'abc' });
    assert.equal(none.json().body, 'abc');
    const chunkedDelete = await request(`${proxyUrl}/raw`, { method: 'DELETE', headers: { host: host(), 'transfer-encoding': 'chunked' }, body: 'def' });
    assert.equal(chunkedDelete.json().body, 'def', 'a chunked body stays chunked on methods that usually have none');

    const slow = await fetch(`${proxyUrl}/slow`, { headers: { 'E2b-Sandbox-Id': sandboxId, 'E2b-Sandbox-Port': String(appPort) } });
    assert.equal(await slow.text(), 'ab');
  });

  test('a closed port: 502 JSON from the agent', async () => {
    const closed = http.createServer();
    const closedPort = Number(new URL(await listen(closed)).port);
    await new Promise((r) => closed.close(r));
    const r = await request(`${proxyUrl}/`, { headers: { host: host(closedPort) } });
    assert.equal(r.status, 502);
    assert.equal(r.json().message, 'The sandbox is running but port is not open');
    assert.equal(r.json().port, closedPort);
  });

  test('the agent refuses port forwarding without the node token', async () => {
    const r = await request(`${agentUrl}/v1/sandboxes/${sandboxId}/ports/${appPort}/`);
    assert.equal(r.status, 401);
    const ws = new WebSocket(`${agentUrl.replace('http', 'ws')}/v1/sandboxes/${sandboxId}/ports/${appPort}/`);
    const status = await new Promise<number>((resolve) => {
      ws.on('unexpected-response', (_q, res) => resolve(res.statusCode!));
      ws.on('error', () => undefined);
    });
    assert.equal(status, 401);
  });

  test('WebSocket end to end; pausing the sandbox cuts its forwarded connections', async () => {
    const ws = new WebSocket(`ws://127.0.0.1:${proxyPort}/chat`, { headers: { host: host(), authorization: 'Basic dTo=' } });
    const messages: string[] = [];
    const next = () => new Promise<string>((resolve) => ws.once('message', (m) => resolve(m.toString())));
    const hello = await within(next(), 15_000, 'hello');
    assert.equal(hello, `hello /chat ${host()} Basic dTo=`);
    ws.send('one');
    assert.equal(await within(next(), 15_000, 'echo'), 'echo:one');
    ws.on('message', (m) => messages.push(m.toString()));
    const closed = new Promise<void>((resolve) => ws.once('close', () => resolve()));
    const pause = await request(`${agentUrl}/v1/sandboxes/${sandboxId}/pause`, {
      method: 'POST', headers: { authorization: `Bearer ${AGENT_TOKEN}`, 'content-type': 'application/json' }, body: '{"memory":true}',
    });
    assert.equal(pause.status, 200, pause.body);
    assert.deepEqual(paused, [sandboxId]);
    await within(closed, 15_000, 'ws closed by pause');
  });
});
