// Tenancy, on PGlite and Postgres: a team's key reaches only its own team's sandboxes, keys,
// webhooks, usage and events, on EVERY route of the API server (the routes are enumerated as
// they are registered: a new route without a case here fails the suite) and through the sandbox
// proxy; another team's sandbox answers exactly as one that does not exist. Admin keys and team
// keys each work only on their own routes. Real store, real lifecycle service, an in-memory node
// and a stand-in node agent behind the proxy.
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { SnapshotService } from '../src/control-plane/snapshots.ts';
import { LifecycleService } from '../src/control-plane/lifecycle.ts';
import { fileSignature } from '../src/control-plane/proxy/access.ts';
import { SandboxProxy } from '../src/control-plane/proxy/server.ts';
import { NodePool } from '../src/control-plane/scheduler.ts';
import { newSandboxId } from '../src/core/ids.ts';
import { ensureBootstrapAdminKey } from '../src/store/admin-keys.ts';
import { authenticateKey } from '../src/store/credentials.ts';
import type { Database } from '../src/store/database.ts';
import { eventsOf, getSandbox } from '../src/store/sandboxes.ts';
import { upsertNode } from '../src/store/nodes.ts';
import { forEachDatabase } from './helpers/databases.ts';
import { FakeNode } from './helpers/fake-node.ts';

const NODE_TOKEN = 'tenancy-node-token-0123456789';
const FILES_HASH = '0'.repeat(64);

interface Answer {
  status: number;
  json: any;
  headers: Headers;
}

interface Sbx {
  id: string;
  token: string;
}

type Auth = 'public' | 'team' | 'admin' | 'node';

interface RouteCase {
  auth: Auth;
  /** A concrete request on the first team's resources, for the checks of key kinds. */
  sample: () => { url: string; body?: unknown };
  /** Team routes: the second team's key against the first team's resources. */
  crossTeam?: () => Promise<void>;
}

/** A stand-in for the node agent behind the proxy: echoes what reached it. */
function startFakeAgent(): Promise<{ url: string; seen: string[]; close: () => Promise<void> }> {
  const seen: string[] = [];
  const server = http.createServer((req, res) => {
    if (req.headers.authorization !== `Bearer ${NODE_TOKEN}`) return void res.writeHead(401).end();
    seen.push(req.url ?? '');
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ url: req.url }));
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        seen,
        close: () => {
          server.closeAllConnections();
          return new Promise((r) => server.close(() => r()));
        },
      }),
    ),
  );
}

forEachDatabase('tenancy', (t) => {
  let db: Database;
  let app: FastifyInstance;
  let lifecycle: LifecycleService;
  let proxy: SandboxProxy;
  let agent: Awaited<ReturnType<typeof startFakeAgent>>;
  let api: string;
  let proxyUrl: string;
  const registered: string[] = [];

  let adminKey: string;
  const a = { teamId: '', key: '', keyId: '', running: { id: '', token: '' } as Sbx, paused: { id: '', token: '' } as Sbx, webhookId: '' };
  const b = { teamId: '', key: '', sandbox: { id: '', token: '' } as Sbx };

  async function call(method: string, url: string, key: string | null, body?: unknown): Promise<Answer> {
    const headers: Record<string, string> = {};
    if (key !== null) headers['x-api-key'] = key;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const res = await fetch(api + url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    return { status: res.status, json: text ? JSON.parse(text) : undefined, headers: res.headers };
  }

  async function ok(method: string, url: string, key: string, body?: unknown): Promise<any> {
    const r = await call(method, url, key, body);
    assert.ok(r.status >= 200 && r.status < 300, `${method} ${url}: ${r.status} ${JSON.stringify(r.json)}`);
    return r.json;
  }

  async function newTeam(body: Record<string, unknown>) {
    const created = await ok('POST', '/nestbox/v1/admin/teams', adminKey, body);
    return { teamId: created.team.id as string, key: created.apiKey.key as string, keyId: created.apiKey.id as string };
  }

  async function newSandbox(key: string, body: Record<string, unknown> = {}): Promise<Sbx> {
    const s = await ok('POST', '/v2/sandboxes', key, { templateID: 'base', timeout: 600, ...body });
    return { id: s.sandboxID, token: s.envdAccessToken };
  }

  before(async () => {
    db = await t.db();
    adminKey = (await ensureBootstrapAdminKey(db)).adminKey!;
    agent = await startFakeAgent();
    const node = new FakeNode('node-1');
    const pool = new NodePool();
    pool.add(node);
    await upsertNode(db, { id: 'node-1', url: agent.url, token: NODE_TOKEN });
    lifecycle = new LifecycleService({ db, nodes: pool });
    app = buildApiServer({
      lifecycle, db, authenticate: (k) => authenticateKey(db, k), envdVersion: '0.6.1',
      snapshots: new SnapshotService({ db, nodes: pool, lifecycle }),
    });
    app.addHook('onRoute', (r) => {
      for (const m of [r.method].flat()) registered.push(`${m} ${r.url}`);
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
    api = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    proxy = new SandboxProxy({ db, lifecycle });
    proxyUrl = await proxy.listen('127.0.0.1', 0);

    Object.assign(a, await newTeam({ name: 'alpha' }));
    Object.assign(b, await newTeam({ name: 'beta', maxRunning: 5 }));
    a.running = await newSandbox(a.key, { metadata: { owner: 'alpha' } });
    a.paused = await newSandbox(a.key, { autoPause: true, autoResume: { enabled: true } });
    await ok('POST', `/sandboxes/${a.paused.id}/pause`, a.key);
    a.webhookId = (await ok('POST', '/nestbox/v1/webhooks', a.key, { url: 'http://127.0.0.1:9/alpha' })).id;
    b.sandbox = await newSandbox(b.key, { metadata: { owner: 'beta' } });
  });

  after(async () => {
    await proxy?.close();
    await app?.close();
    await lifecycle?.waitForInFlight();
    await agent?.close();
  });

  /** The first team's state as its own key sees it (what no other team may change). */
  async function alphaAsItSeesItself() {
    const sandboxes = (await ok('GET', '/v2/sandboxes?state=running,paused', a.key)) as any[];
    const keys = (await ok('GET', '/nestbox/v1/keys', a.key)) as any[];
    const hooks = (await ok('GET', '/nestbox/v1/webhooks', a.key)) as any[];
    return {
      // A paused sandbox's endAt is rendered as "now": its clock is stopped.
      sandboxes: sandboxes.map((s) => [s.sandboxID, s.state, s.state === 'running' ? s.endAt : null]).sort(),
      keys: keys.map((k) => [k.id, k.revokedAt]).sort(),
      webhooks: hooks.map((h) => h.id).sort(),
    };
  }

  const alphaSandboxes = () => [a.running.id, a.paused.id];

  /** The first team's named snapshot (of its running sandbox), taken once. */
  let alphaSnapshotId: string | null = null;
  async function alphaSnapshot() {
    alphaSnapshotId ??= (await ok('POST', `/sandboxes/${a.running.id}/snapshots`, a.key, { name: 'alpha-snap' })).snapshotID as string;
    return alphaSnapshotId;
  }

  /** The first team's template build: asked for once (there is no node to run it). */
  let alphaBuildIds: { template: string; buildId: string } | null = null;
  async function alphaBuild() {
    if (!alphaBuildIds) {
      const r = await ok('POST', '/v3/templates', a.key, { name: 'tenancy-alpha-tpl' });
      alphaBuildIds = { template: r.templateID, buildId: r.buildID };
    }
    return alphaBuildIds;
  }

  /**
   * The second team's key on the first team's resources answers exactly as on ids that do not
   * exist: same status (404), same body but for the id, same content type.
   */
  async function looksMissing(method: string, url: (id: string) => string, theirs: string[], missing: string, body?: unknown) {
    const none = await call(method, url(missing), b.key, body);
    assert.equal(none.status, 404, `${method} ${url(missing)}: ${JSON.stringify(none.json)}`);
    const shape = (r: Answer, id: string) => ({
      status: r.status, body: JSON.stringify(r.json).replaceAll(id, '<id>'), type: r.headers.get('content-type'),
    });
    for (const id of theirs) {
      const r = await call(method, url(id), b.key, body);
      assert.deepEqual(shape(r, id), shape(none, missing), `${method} ${url(id)} with another team's key`);
    }
  }

  const sandboxMissing = (method: string, path: (id: string) => string, body?: unknown) =>
    looksMissing(method, path, alphaSandboxes(), newSandboxId(), body);

  /** Reads the event stream with `key` from after `after` until `enough` says so (or 5 s pass). */
  async function readEvents(key: string, after: number, enough: (events: any[]) => boolean): Promise<any[]> {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), 5_000);
    const events: any[] = [];
    try {
      const res = await fetch(`${api}/events?after=${after}`, { headers: { 'x-api-key': key }, signal: ctrl.signal });
      assert.equal(res.status, 200);
      const decoder = new TextDecoder();
      let buffer = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buffer += decoder.decode(chunk, { stream: true });
        let end: number;
        while ((end = buffer.indexOf('\n\n')) !== -1) {
          const data = buffer.slice(0, end).split('\n').find((l) => l.startsWith('data: '));
          buffer = buffer.slice(end + 2);
          if (data) events.push(JSON.parse(data.slice(6)));
        }
        if (enough(events)) break;
      }
    } catch (e) {
      if ((e as Error).name !== 'AbortError') throw e;
    } finally {
      clearTimeout(timer);
      ctrl.abort();
    }
    return events;
  }

  /** Every route of the API server: what it needs, and what the second team's key gets from it. */
  function routeTable(): Record<string, RouteCase> {
    const sbx = (suffix = '', body?: object) => () => ({ url: `/sandboxes/${a.running.id}${suffix}`, body });
    return {
      'GET /health': { auth: 'public', sample: () => ({ url: '/health' }) },
      'GET /openapi.json': { auth: 'public', sample: () => ({ url: '/openapi.json' }) },

      // --- sandboxes ---------------------------------------------------------------------------
      'POST /sandboxes': {
        auth: 'team',
        sample: () => ({ url: '/sandboxes', body: { templateID: 'base' } }),
        crossTeam: async () => {
          const created = await ok('POST', '/sandboxes', b.key, { templateID: 'base', timeout: 60 });
          assert.equal((await getSandbox(db, created.sandboxID))!.teamId, b.teamId, "created in the caller's team");
          assert.equal((await call('GET', `/sandboxes/${created.sandboxID}`, a.key)).status, 404);
          await ok('DELETE', `/sandboxes/${created.sandboxID}`, b.key);
        },
      },
      'POST /v2/sandboxes': {
        auth: 'team',
        sample: () => ({ url: '/v2/sandboxes', body: { templateID: 'base' } }),
        crossTeam: async () => {
          const created = await ok('POST', '/v2/sandboxes', b.key, { templateID: 'base', timeout: 60, metadata: { owner: 'alpha' } });
          assert.equal((await getSandbox(db, created.sandboxID))!.teamId, b.teamId);
          const alphaView = (await ok('GET', '/v2/sandboxes?metadata=owner%3Dalpha', a.key)) as any[];
          assert.ok(!alphaView.some((s) => s.sandboxID === created.sandboxID), 'never in the other team\'s list');
          await ok('DELETE', `/sandboxes/${created.sandboxID}`, b.key);
        },
      },
      'GET /v2/sandboxes': {
        auth: 'team',
        sample: () => ({ url: '/v2/sandboxes' }),
        crossTeam: async () => {
          for (const q of ['', '?state=running,paused', '?metadata=owner%3Dalpha', '?state=paused&limit=100']) {
            const r = await call('GET', `/v2/sandboxes${q}`, b.key);
            assert.equal(r.status, 200);
            const ids = (r.json as any[]).map((s) => s.sandboxID);
            for (const id of ids) assert.equal((await getSandbox(db, id))!.teamId, b.teamId, `${q}: ${id} is not the team's`);
            const running = await db.query<{ n: number }>(
              "SELECT count(*)::int AS n FROM sandboxes WHERE team_id = $1 AND state = 'running'", [b.teamId]);
            assert.equal(r.headers.get('x-total-running'), String(running[0]!.n), 'X-Total-Running counts the team only');
          }
        },
      },
      'GET /sandboxes': {
        auth: 'team',
        sample: () => ({ url: '/sandboxes' }),
        crossTeam: async () => {
          const ids = ((await ok('GET', '/sandboxes', b.key)) as any[]).map((s) => s.sandboxID);
          assert.ok(ids.includes(b.sandbox.id));
          for (const id of ids) assert.equal((await getSandbox(db, id))!.teamId, b.teamId);
          assert.deepEqual(((await ok('GET', '/sandboxes?metadata=owner%3Dalpha', b.key)) as any[]), []);
        },
      },
      'GET /sandboxes/:sandboxID': { auth: 'team', sample: sbx(), crossTeam: () => sandboxMissing('GET', (id) => `/sandboxes/${id}`) },
      'DELETE /sandboxes/:sandboxID': { auth: 'team', sample: sbx(), crossTeam: () => sandboxMissing('DELETE', (id) => `/sandboxes/${id}`) },
      'POST /sandboxes/:sandboxID/timeout': {
        auth: 'team',
        sample: () => ({ url: `/sandboxes/${a.running.id}/timeout`, body: { timeout: 1 } }),
        crossTeam: () => sandboxMissing('POST', (id) => `/sandboxes/${id}/timeout`, { timeout: 1 }),
      },
      'POST /sandboxes/:sandboxID/refreshes': {
        auth: 'team',
        sample: sbx('/refreshes', {}),
        crossTeam: () => sandboxMissing('POST', (id) => `/sandboxes/${id}/refreshes`, { duration: 3600 }),
      },
      'POST /sandboxes/:sandboxID/pause': {
        auth: 'team', sample: sbx('/pause', {}), crossTeam: () => sandboxMissing('POST', (id) => `/sandboxes/${id}/pause`, {}),
      },
      'POST /sandboxes/:sandboxID/connect': {
        auth: 'team',
        sample: () => ({ url: `/sandboxes/${a.paused.id}/connect`, body: { timeout: 60 } }),
        crossTeam: () => sandboxMissing('POST', (id) => `/sandboxes/${id}/connect`, { timeout: 60 }),
      },
      'POST /v2/sandboxes/:sandboxID/connect': {
        auth: 'team',
        sample: () => ({ url: `/v2/sandboxes/${a.paused.id}/connect`, body: {} }),
        crossTeam: () => sandboxMissing('POST', (id) => `/v2/sandboxes/${id}/connect`, {}),
      },
      'POST /sandboxes/:sandboxID/resume': {
        auth: 'team',
        sample: () => ({ url: `/sandboxes/${a.paused.id}/resume`, body: {} }),
        crossTeam: () => sandboxMissing('POST', (id) => `/sandboxes/${id}/resume`, {}),
      },
      'GET /sandboxes/:sandboxID/metrics': {
        auth: 'team', sample: sbx('/metrics'), crossTeam: () => sandboxMissing('GET', (id) => `/sandboxes/${id}/metrics`),
      },

      // --- usage and events --------------------------------------------------------------------
      'GET /usage': {
        auth: 'team',
        sample: () => ({ url: '/usage' }),
        crossTeam: async () => {
          const alpha = await ok('GET', '/usage', a.key);
          assert.ok(alpha.sandboxes.some((s: any) => s.sandboxId === a.running.id), 'the first team has usage');
          const beta = await ok('GET', '/usage', b.key);
          assert.equal(beta.teamId, b.teamId);
          for (const s of beta.sandboxes) assert.equal((await getSandbox(db, s.sandboxId))!.teamId, b.teamId);
          assert.ok(!beta.sandboxes.some((s: any) => alphaSandboxes().includes(s.sandboxId)));
        },
      },
      'GET /events': {
        auth: 'team',
        sample: () => ({ url: '/events?after=0' }),
        crossTeam: async () => {
          // A replay from the very start: the first team's events come first in the outbox.
          const seen = await readEvents(b.key, 0, (evs) => evs.some((e) => e.sandboxId === b.sandbox.id && e.to === 'running'));
          assert.ok(seen.some((e) => e.sandboxId === b.sandbox.id), 'the team sees its own events');
          for (const e of seen) assert.equal((await getSandbox(db, e.sandboxId))!.teamId, b.teamId, `event of ${e.sandboxId}`);
          const alphaEvents = (await eventsOf(db, a.running.id)).length + (await eventsOf(db, a.paused.id)).length;
          assert.ok(alphaEvents >= 4, 'the first team does have events to leak');
        },
      },

      // --- keys --------------------------------------------------------------------------------
      'GET /nestbox/v1/keys': {
        auth: 'team',
        sample: () => ({ url: '/nestbox/v1/keys' }),
        crossTeam: async () => {
          const listed = (await ok('GET', '/nestbox/v1/keys', b.key)) as any[];
          assert.ok(listed.length >= 1);
          assert.ok(!listed.some((k) => k.id === a.keyId));
          const alphaMasks = ((await ok('GET', '/nestbox/v1/keys', a.key)) as any[]).map((k) => k.mask);
          assert.ok(!listed.some((k) => alphaMasks.includes(k.mask)));
        },
      },
      'POST /nestbox/v1/keys': {
        auth: 'team',
        sample: () => ({ url: '/nestbox/v1/keys', body: {} }),
        crossTeam: async () => {
          const created = await ok('POST', '/nestbox/v1/keys', b.key, { name: 'beta-ci' });
          const who = await authenticateKey(db, created.key);
          assert.deepEqual(who && who.kind === 'team' ? who.teamId : null, b.teamId);
        },
      },
      'DELETE /nestbox/v1/keys/:id': {
        auth: 'team',
        sample: () => ({ url: `/nestbox/v1/keys/${a.keyId}` }),
        crossTeam: () => looksMissing('DELETE', (id) => `/nestbox/v1/keys/${id}`, [a.keyId], randomUUID()),
      },

      // --- webhooks ----------------------------------------------------------------------------
      'POST /nestbox/v1/webhooks': {
        auth: 'team',
        sample: () => ({ url: '/nestbox/v1/webhooks', body: { url: 'http://127.0.0.1:9/x' } }),
        crossTeam: async () => {
          const created = await ok('POST', '/nestbox/v1/webhooks', b.key, { url: 'http://127.0.0.1:9/beta' });
          assert.equal((await call('GET', `/nestbox/v1/webhooks/${created.id}`, a.key)).status, 404);
          await ok('DELETE', `/nestbox/v1/webhooks/${created.id}`, b.key);
        },
      },
      'GET /nestbox/v1/webhooks': {
        auth: 'team',
        sample: () => ({ url: '/nestbox/v1/webhooks' }),
        crossTeam: async () => {
          const listed = (await ok('GET', '/nestbox/v1/webhooks', b.key)) as any[];
          assert.ok(!listed.some((w) => w.id === a.webhookId || w.url.includes('alpha')));
        },
      },
      'GET /nestbox/v1/webhooks/:id': {
        auth: 'team',
        sample: () => ({ url: `/nestbox/v1/webhooks/${a.webhookId}` }),
        crossTeam: () => looksMissing('GET', (id) => `/nestbox/v1/webhooks/${id}`, [a.webhookId], `wh_${'0'.repeat(20)}`),
      },
      'DELETE /nestbox/v1/webhooks/:id': {
        auth: 'team',
        sample: () => ({ url: `/nestbox/v1/webhooks/${a.webhookId}` }),
        crossTeam: () => looksMissing('DELETE', (id) => `/nestbox/v1/webhooks/${id}`, [a.webhookId], `wh_${'0'.repeat(20)}`),
      },
      'GET /nestbox/v1/webhooks/:id/deliveries': {
        auth: 'team',
        sample: () => ({ url: `/nestbox/v1/webhooks/${a.webhookId}/deliveries` }),
        crossTeam: () =>
          looksMissing('GET', (id) => `/nestbox/v1/webhooks/${id}/deliveries`, [a.webhookId], `wh_${'0'.repeat(20)}`),
      },

      // --- template builds (no node here: a build is asked for, never run) ----------------------
      'POST /v3/templates': {
        auth: 'team',
        sample: () => ({ url: '/v3/templates', body: { name: 'tenancy-sample' } }),
        crossTeam: async () => {
          const mine = await alphaBuild();
          // Template names are one namespace: the name is refused, the first team's build untouched.
          assert.equal((await call('POST', '/v3/templates', b.key, { name: mine.template })).status, 409);
          assert.equal((await ok('GET', `/templates/${mine.template}/builds/${mine.buildId}/status`, a.key)).status, 'waiting');
        },
      },
      'GET /templates/:templateID/files/:hash': {
        auth: 'team',
        sample: () => ({ url: `/templates/tenancy-alpha-tpl/files/${FILES_HASH}` }),
        crossTeam: async () => looksMissing('GET', (id) => `/templates/${id}/files/${FILES_HASH}`, [(await alphaBuild()).template], 'tenancy-no-tpl'),
      },
      'PUT /templates/:templateID/files/:hash': {
        auth: 'team',
        sample: () => ({ url: `/templates/tenancy-alpha-tpl/files/${FILES_HASH}` }),
        crossTeam: async () => looksMissing('PUT', (id) => `/templates/${id}/files/${FILES_HASH}`, [(await alphaBuild()).template], 'tenancy-no-tpl'),
      },
      'POST /v2/templates/:templateID/builds/:buildID': {
        auth: 'team',
        sample: () => ({ url: `/v2/templates/tenancy-alpha-tpl/builds/${randomUUID()}`, body: { fromTemplate: 'base' } }),
        crossTeam: async () => {
          const mine = await alphaBuild();
          await looksMissing('POST', (id) => `/v2/templates/${mine.template}/builds/${id}`, [mine.buildId], randomUUID(), { fromTemplate: 'base', steps: [] });
          assert.equal((await ok('GET', `/templates/${mine.template}/builds/${mine.buildId}/status`, a.key)).status, 'waiting');
        },
      },
      'GET /templates/:templateID/builds/:buildID/status': {
        auth: 'team',
        sample: () => ({ url: `/templates/tenancy-alpha-tpl/builds/${randomUUID()}/status` }),
        crossTeam: async () => {
          const mine = await alphaBuild();
          await looksMissing('GET', (id) => `/templates/${mine.template}/builds/${id}/status`, [mine.buildId], randomUUID());
        },
      },
      'GET /templates/aliases/:alias': {
        auth: 'team',
        sample: () => ({ url: '/templates/aliases/tenancy-alpha-tpl' }),
        crossTeam: async () => looksMissing('GET', (id) => `/templates/aliases/${id}`, [(await alphaBuild()).template], 'tenancy-no-tpl'),
      },

      // --- snapshots and fork (a fake node: the snapshot is a name in its store) -------------------
      'POST /sandboxes/:sandboxID/snapshots': {
        auth: 'team',
        sample: () => ({ url: `/sandboxes/${a.running.id}/snapshots`, body: {} }),
        crossTeam: () => sandboxMissing('POST', (id) => `/sandboxes/${id}/snapshots`, {}),
      },
      'GET /snapshots': {
        auth: 'team',
        sample: () => ({ url: '/snapshots' }),
        crossTeam: async () => {
          const mine = await alphaSnapshot();
          const theirs = (await ok('GET', '/snapshots', b.key)) as any[];
          assert.ok(!theirs.some((s) => s.snapshotID === mine), 'another team\'s snapshot is not listed');
          assert.deepEqual(await ok('GET', `/snapshots?sandboxID=${a.running.id}`, b.key), []);
        },
      },
      'DELETE /templates/:templateID': {
        auth: 'team',
        sample: () => ({ url: '/templates/tenancy-no-such-snapshot' }),
        crossTeam: async () => {
          const mine = await alphaSnapshot();
          await looksMissing('DELETE', (id) => `/templates/${id}`, [mine, 'alpha-snap'], `snap-${newSandboxId()}`);
          // and it cannot start from it either
          assert.equal((await call('POST', '/v2/sandboxes', b.key, { templateID: mine })).status, 404);
          assert.ok((await ok('GET', '/snapshots', a.key) as any[]).some((s) => s.snapshotID === mine), 'still there for its team');
        },
      },
      'POST /sandboxes/:sandboxID/fork': {
        auth: 'team',
        sample: () => ({ url: `/sandboxes/${a.running.id}/fork`, body: { count: 1 } }),
        crossTeam: () => sandboxMissing('POST', (id) => `/sandboxes/${id}/fork`, { count: 1 }),
      },

      // --- admin: not reachable with any team's key (see the key-kind test) ------------------------
      'POST /nestbox/v1/admin/teams': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/admin/teams', body: { name: 'x' } }) },
      'GET /nestbox/v1/admin/teams': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/admin/teams' }) },
      'GET /nestbox/v1/admin/teams/:id': { auth: 'admin', sample: () => ({ url: `/nestbox/v1/admin/teams/${a.teamId}` }) },
      'POST /nestbox/v1/admin/teams/:id/keys': {
        auth: 'admin', sample: () => ({ url: `/nestbox/v1/admin/teams/${a.teamId}/keys`, body: {} }),
      },
      'GET /nestbox/v1/admin/keys': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/admin/keys' }) },
      'POST /nestbox/v1/admin/keys': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/admin/keys', body: {} }) },
      'DELETE /nestbox/v1/admin/keys/:id': { auth: 'admin', sample: () => ({ url: `/nestbox/v1/admin/keys/${randomUUID()}` }) },
      'GET /nestbox/v1/nodes': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/nodes' }) },
      'POST /nestbox/v1/nodes/:id/drain': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/nodes/nope/drain' }) },
      'POST /nestbox/v1/nodes/:id/undrain': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/nodes/nope/undrain' }) },
      'DELETE /nestbox/v1/nodes/:id': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/nodes/nope' }) },
      'POST /nestbox/v1/nodes/join-tokens': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/nodes/join-tokens', body: {} }) },
      'GET /nestbox/v1/nodes/join-tokens': { auth: 'admin', sample: () => ({ url: '/nestbox/v1/nodes/join-tokens' }) },
      'DELETE /nestbox/v1/nodes/join-tokens/:id': { auth: 'admin', sample: () => ({ url: `/nestbox/v1/nodes/join-tokens/${randomUUID()}` }) },

      // --- nodes: their own tokens (a join token, a node credential); no API key opens them -------
      'POST /nestbox/v1/nodes/join': {
        auth: 'node',
        sample: () => ({
          url: '/nestbox/v1/nodes/join',
          body: {
            joinToken: `nbjoin_${'0'.repeat(40)}`, nodeId: 'n1', nodeToken: 'x'.repeat(32), url: 'http://127.0.0.1:1',
            cpuCount: 1, memoryMB: 1, diskMB: 1, maxSandboxes: 1, templates: [], version: 'x',
          },
        }),
      },
      'POST /nestbox/v1/nodes/:id/heartbeat': {
        auth: 'node',
        sample: () => ({
          url: '/nestbox/v1/nodes/n1/heartbeat',
          body: { url: 'http://127.0.0.1:1', cpuCount: 1, memoryMB: 1, diskMB: 1, maxSandboxes: 1, templates: [], version: 'x' },
        }),
      },
    };
  }

  const methodOf = (route: string) => route.slice(0, route.indexOf(' '));

  test('every registered route has a case in this table, and every case a route', async () => {
    const table = routeTable();
    const routes = registered.filter((r) => !r.startsWith('HEAD '));
    const uncovered = routes.filter((r) => !(r in table));
    assert.deepEqual(uncovered, [], `routes without a tenancy case (add one to routeTable): ${uncovered.join(', ')}`);
    const stale = Object.keys(table).filter((r) => !routes.includes(r));
    assert.deepEqual(stale, [], `cases for routes that no longer exist: ${stale.join(', ')}`);
    // HEAD routes are Fastify's copies of GET routes: same hooks, same auth.
    for (const r of registered.filter((x) => x.startsWith('HEAD '))) assert.ok(`GET ${r.slice(5)}` in table, r);
    // The OpenAPI document shows the same routes (a route added outside the plugins would show here).
    const doc = (await call('GET', '/openapi.json', null)).json;
    for (const [p, item] of Object.entries(doc.paths as Record<string, object>)) {
      for (const m of Object.keys(item)) {
        const route = `${m.toUpperCase()} ${p.replace(/\{([^}]+)\}/g, ':$1')}`;
        assert.ok(route in table, `documented route ${route} has no case`);
      }
    }
    // What each route needs is what it documents.
    for (const [route, c] of Object.entries(table)) {
      if (c.auth === 'public' || c.auth === 'node') continue; // their own tokens: see test/fleet.test.ts
      const [m, u] = [methodOf(route).toLowerCase(), route.slice(route.indexOf(' ') + 1).replace(/:(\w+)/g, '{$1}')];
      const security = doc.paths[u]?.[m]?.security;
      assert.deepEqual(security, [{ [c.auth === 'admin' ? 'adminKey' : 'apiKey']: [] }], `${route} documents its key kind`);
    }
  });

  test("another team's key sees, signs for and touches nothing of the first team's, on every route", async () => {
    const before = await alphaAsItSeesItself();
    const cases = Object.entries(routeTable()).filter(([, c]) => c.auth === 'team');
    for (const [route, c] of cases) {
      assert.ok(c.crossTeam, `${route}: a team route needs a cross-team case`);
      await c.crossTeam().catch((e: Error) => {
        e.message = `${route}: ${e.message}`;
        throw e;
      });
    }
    assert.deepEqual(await alphaAsItSeesItself(), before, "the first team's sandboxes, keys and webhooks are as they were");
    assert.equal((await getSandbox(db, a.running.id))!.state, 'running');
    assert.equal((await getSandbox(db, a.paused.id))!.state, 'paused');
  });

  test('admin keys only on admin routes, team keys only on team routes: 403 saying which kind is needed', async () => {
    for (const [route, c] of Object.entries(routeTable())) {
      const method = methodOf(route);
      const { url, body } = c.sample();
      if (c.auth === 'public') {
        assert.equal((await call(method, url, null)).status, 200, route);
        continue;
      }
      if (c.auth === 'node') {
        // Only a valid join token or node credential opens these; an API key of any kind does not.
        for (const key of [null, a.key, adminKey]) assert.equal((await call(method, url, key, body)).status, 401, `${route} with ${key ?? 'no key'}`);
        continue;
      }
      const none = await call(method, url, null, body);
      assert.equal(none.status, 401, `${route} without a key`);
      const wrong = await call(method, url, c.auth === 'admin' ? a.key : adminKey, body);
      assert.equal(wrong.status, 403, `${route} with the wrong kind of key: ${JSON.stringify(wrong.json)}`);
      assert.deepEqual(Object.keys(wrong.json).sort(), ['code', 'message']);
      assert.match(wrong.json.message, c.auth === 'admin' ? /needs an admin key \(nestbox_admin_…\)/ : /needs a team API key \(e2b_…\)/);
    }
    // Nothing was done by the refused calls.
    assert.equal((await getSandbox(db, a.running.id))!.state, 'running');
    assert.equal((await getSandbox(db, a.paused.id))!.state, 'paused');
    assert.equal(((await ok('GET', '/nestbox/v1/admin/teams', adminKey)) as any[]).filter((x) => x.name === 'x').length, 0);
  });

  test('revoked keys are refused (401), team and admin alike; the last admin key stays', async () => {
    const second = await ok('POST', `/nestbox/v1/admin/teams/${b.teamId}/keys`, adminKey, { name: 'temp' });
    assert.equal(second.teamId, b.teamId);
    await ok('GET', '/v2/sandboxes', second.key);
    await ok('DELETE', `/nestbox/v1/keys/${second.id}`, b.key);
    for (const url of ['/v2/sandboxes', '/nestbox/v1/admin/teams']) {
      const r = await call('GET', url, second.key);
      assert.equal(r.status, 401, url);
      assert.equal(r.json.message, 'invalid API key');
    }

    const extra = await ok('POST', '/nestbox/v1/admin/keys', adminKey, { name: 'rotation' });
    assert.match(extra.key, /^nestbox_admin_[0-9a-f]{40}$/);
    await ok('GET', '/nestbox/v1/admin/teams', extra.key);
    await ok('DELETE', `/nestbox/v1/admin/keys/${extra.id}`, adminKey);
    for (const url of ['/nestbox/v1/admin/teams', '/v2/sandboxes']) {
      const r = await call('GET', url, extra.key);
      assert.equal(r.status, 401, url);
      assert.equal(r.json.message, 'invalid admin key');
    }
    const active = ((await ok('GET', '/nestbox/v1/admin/keys', adminKey)) as any[]).filter((k) => k.revokedAt === null);
    assert.equal(active.length, 1);
    const last = await call('DELETE', `/nestbox/v1/admin/keys/${active[0].id}`, adminKey);
    assert.equal(last.status, 409);
    assert.match(last.json.message, /last active admin key: create another one before revoking it/);
  });

  test("a team's limits apply to that team only", async () => {
    const small = await newTeam({ name: 'gamma', maxRunning: 1, maxTimeoutS: 60 });
    const first = await newSandbox(small.key, { timeout: 30 });
    const refused = await call('POST', '/v2/sandboxes', small.key, { templateID: 'base', timeout: 30 });
    assert.equal(refused.status, 429);
    assert.match(refused.json.message, /limit of 1 concurrent sandboxes/);
    // Other teams are not held back by it, nor counted in it.
    const alphaExtra = await newSandbox(a.key, { timeout: 120 });
    const betaExtra = await newSandbox(b.key, { timeout: 120 });
    const tooLong = await call('POST', '/v2/sandboxes', small.key, { templateID: 'base', timeout: 120 });
    assert.equal(tooLong.status, 400);
    assert.match(tooLong.json.message, /timeout exceeds the team maximum of 60 s/);
    const connectTooLong = await call('POST', `/sandboxes/${first.id}/connect`, small.key, { timeout: 120 });
    assert.equal(connectTooLong.status, 400);
    assert.match(connectTooLong.json.message, /team maximum of 60 s/);
    assert.equal((await call('POST', `/sandboxes/${first.id}/timeout`, small.key, { timeout: 61 })).status, 400);
    assert.equal((await call('POST', `/sandboxes/${first.id}/connect`, small.key, { timeout: 60 })).status, 200);

    const teams = (await ok('GET', '/nestbox/v1/admin/teams', adminKey)) as any[];
    const gamma = teams.find((x) => x.id === small.teamId);
    assert.deepEqual([gamma.maxRunning, gamma.maxTimeoutS, gamma.activeSandboxes], [1, 60, 1]);
    await ok('DELETE', `/sandboxes/${first.id}`, small.key);
    await newSandbox(small.key, { timeout: 30 }); // room again once its own sandbox is gone
    await ok('DELETE', `/sandboxes/${alphaExtra.id}`, a.key);
    await ok('DELETE', `/sandboxes/${betaExtra.id}`, b.key);
  });

  test('sandbox proxy: no other sandbox\'s token or signature opens a sandbox; auto-resume runs as its own team', async () => {
    const envd = (id: string, headers: Record<string, string> = {}, path = '/health?x=1') =>
      fetch(proxyUrl + path, { headers: { 'E2b-Sandbox-Id': id, 'E2b-Sandbox-Port': '49983', ...headers } });
    const alpha = a.running;

    const own = await envd(alpha.id, { 'X-Access-Token': alpha.token }, '/files?path=/etc/hostname');
    assert.equal(own.status, 200);
    assert.equal((await own.json()).url, `/v1/sandboxes/${alpha.id}/envd/files?path=/etc/hostname`);

    const foreignToken = await envd(alpha.id, { 'X-Access-Token': b.sandbox.token }, '/files?path=/etc/hostname');
    assert.equal(foreignToken.status, 401);
    assert.match((await foreignToken.json()).message, /invalid access token/);
    const teamKeyOnly = await envd(alpha.id, { 'X-API-Key': a.key }, '/process.Process/List');
    assert.equal(teamKeyOnly.status, 401, "a team's API key is not an envd credential");

    const signed = (token: string) =>
      `/files?path=%2Fhome%2Fuser%2Fx&username=user&signature=${encodeURIComponent(fileSignature('/home/user/x', 'read', 'user', token))}`;
    assert.equal((await envd(alpha.id, {}, signed(alpha.token))).status, 200);
    const foreignSignature = await envd(alpha.id, {}, signed(b.sandbox.token));
    assert.equal(foreignSignature.status, 401);
    assert.match((await foreignSignature.json()).message, /invalid signature/);
    assert.ok(!agent.seen.some((u) => u.includes('/process.Process/List')), 'refused requests never reach the node');

    // Traffic to the first team's auto-resume sandbox resumes it as that team's, whoever sends it.
    const before = await ok('GET', '/usage', b.key);
    const resumed = await fetch(proxyUrl + '/', { headers: { 'E2b-Sandbox-Id': a.paused.id, 'E2b-Sandbox-Port': '8080' } });
    assert.equal(resumed.status, 200);
    const row = (await getSandbox(db, a.paused.id))!;
    assert.deepEqual([row.state, row.teamId], ['running', a.teamId]);
    const events = await eventsOf(db, a.paused.id);
    assert.deepEqual(events.slice(-2).map((e) => [e.to, e.teamId]), [['resuming', a.teamId], ['running', a.teamId]]);
    const after = await ok('GET', '/usage', b.key);
    assert.deepEqual(after.sandboxes.map((s: any) => s.sandboxId), before.sandboxes.map((s: any) => s.sandboxId));
  });
});
