// The public REST API's HTTP layer (validation, status codes, shapes, pagination, auth), against
// an in-memory LifecycleApi, through Fastify's inject and through the real `e2b` SDK.
import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import net, { type AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { Sandbox } from 'e2b';
import fc from 'fast-check';
import { NestboxError } from '../src/core/errors.ts';
import type { CreateSandboxParams, ListSandboxesParams } from '../src/control-plane/lifecycle-types.ts';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { FakeLifecycle } from './helpers/fake-lifecycle.ts';

const KEY_A = 'e2b_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa';
const KEY_B = 'e2b_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb';
const TEAMS: Record<string, string> = { [KEY_A]: 'team-a', [KEY_B]: 'team-b' };
const ENVD_VERSION = '0.6.4';

async function authenticate(key: string) {
  const teamId = TEAMS[key];
  return teamId ? { kind: 'team' as const, teamId } : null;
}

let fake: FakeLifecycle;
let app: FastifyInstance;

function build(domain: string | null = null) {
  fake = new FakeLifecycle();
  app = buildApiServer({ lifecycle: fake, authenticate, domain, envdVersion: ENVD_VERSION });
  return app;
}

type InjectOpts = { method?: string; url: string; body?: unknown; key?: string | null; headers?: Record<string, string> };
async function call(o: InjectOpts) {
  const headers: Record<string, string> = { ...(o.headers ?? {}) };
  if (o.key !== null) headers['x-api-key'] = o.key ?? KEY_A;
  const res = await app.inject({
    method: (o.method ?? 'GET') as 'GET',
    url: o.url,
    headers,
    ...(o.body === undefined ? {} : typeof o.body === 'string' ? { payload: o.body } : { payload: o.body as object }),
  });
  let json: any;
  try {
    json = res.body ? JSON.parse(res.body) : undefined;
  } catch {
    json = undefined;
  }
  return { status: res.statusCode, headers: res.headers, json, body: res.body };
}

function assertError(r: { status: number; json: any }, status: number, re?: RegExp) {
  assert.equal(r.status, status, JSON.stringify(r.json));
  assert.equal(r.json.code, status);
  assert.equal(typeof r.json.message, 'string');
  if (re) assert.match(r.json.message, re);
  assert.equal(Object.keys(r.json).sort().join(','), 'code,message');
}

const UNKNOWN_ID = 'zzzzzzzzzzzzzzzzzzzz';

describe('public API over inject', () => {
  beforeEach(async () => {
    build();
    await app.ready();
  });
  after(async () => app?.close());

  describe('health, auth, routing, body handling', () => {
    test('GET /health needs no key', async () => {
      const r = await call({ url: '/health', key: null });
      assert.equal(r.status, 200);
    });

    test('401 for a missing, unknown or absurdly long key; the SDK header spelling works', async () => {
      assertError(await call({ url: '/v2/sandboxes', key: null }), 401, /X-API-Key/);
      assertError(await call({ url: '/v2/sandboxes', key: 'e2b_nope' }), 401, /invalid API key/);
      assertError(await call({ url: '/v2/sandboxes', key: 'e2b_' + 'a'.repeat(5000) }), 401);
      assertError(await call({ method: 'DELETE', url: `/sandboxes/${UNKNOWN_ID}`, key: null }), 401);
      const r = await call({ url: '/v2/sandboxes', key: null, headers: { 'X-API-KEY': KEY_A } });
      assert.equal(r.status, 200);
    });

    test('unknown routes are 404 {code,message}, with or without a key', async () => {
      assertError(await call({ url: '/nope' }), 404, /not found/);
      assertError(await call({ url: '/nope', key: null }), 404);
      assertError(await call({ method: 'PATCH', url: '/sandboxes' }), 404);
    });

    test('malformed JSON 400, wrong content type 415, oversized body 413', async () => {
      const headers = { 'content-type': 'application/json' };
      assertError(await call({ method: 'POST', url: '/sandboxes', body: '{"templateID":', headers }), 400);
      assertError(await call({ method: 'POST', url: '/sandboxes', body: '{"__proto__":{"x":1}}', headers }), 400);
      assertError(await call({ method: 'POST', url: '/sandboxes', body: 'templateID=base', headers: { 'content-type': 'application/x-www-form-urlencoded' } }), 415);
      assertError(await call({ method: 'POST', url: '/sandboxes', body: 'base', headers: { 'content-type': 'text/plain' } }), 415);
      const big = JSON.stringify({ templateID: 'base', metadata: { k: 'x'.repeat(1024 * 1024) } });
      assertError(await call({ method: 'POST', url: '/sandboxes', body: big, headers }), 413);
      assert.equal(fake.calls.length, 0);
    });

    test('an empty JSON body on a bodyless route is accepted', async () => {
      const v = fake.seed({ teamId: 'team-a' });
      const r = await call({ method: 'DELETE', url: `/sandboxes/${v.sandboxId}`, body: '', headers: { 'content-type': 'application/json' } });
      assert.equal(r.status, 204);
    });

    test('a bad URL is a 400, not a 500', async () => {
      const r = await call({ url: '/sandboxes/%E0%A4%A' });
      assert.ok(r.status === 400 || r.status === 404, String(r.status));
      assert.equal(r.json.code, r.status);
    });
  });

  describe('POST /sandboxes and /v2/sandboxes', () => {
    test('201 with the create body; defaults applied (legacy 15 s, v2 300 s)', async () => {
      const r = await call({ method: 'POST', url: '/sandboxes', body: { templateID: 'base' } });
      assert.equal(r.status, 201);
      assert.match(r.json.sandboxID, /^[a-z0-9]{20}$/);
      assert.equal(r.json.templateID, 'base');
      assert.equal(r.json.alias, 'base');
      assert.equal(r.json.clientID, '6532622b');
      assert.equal(r.json.envdVersion, ENVD_VERSION);
      assert.equal(typeof r.json.envdAccessToken, 'string');
      assert.equal(r.json.domain, null);
      assert.equal(r.json.trafficAccessToken, null);
      const p = fake.lastCall('create')!.args[0] as CreateSandboxParams;
      assert.deepEqual(p, {
        teamId: 'team-a', templateId: 'base', timeoutMs: 15_000, metadata: {}, envVars: {}, autoPause: false,
        autoPauseMemory: true, autoResume: false, allowInternetAccess: true, secure: true,
      });

      const r2 = await call({ method: 'POST', url: '/v2/sandboxes', body: { templateID: 'base' }, key: KEY_B });
      assert.equal(r2.status, 201);
      const p2 = fake.lastCall('create')!.args[0] as CreateSandboxParams;
      assert.equal(p2.timeoutMs, 300_000);
      assert.equal(p2.teamId, 'team-b');
    });

    test('passes every field through; autoResume as object or boolean; unknown fields ignored', async () => {
      const body = {
        templateID: 'base', timeout: 60, metadata: { user: 'u1' }, envVars: { A: '1' }, autoPause: true,
        autoPauseMemory: true, autoResume: { enabled: true }, allow_internet_access: false, secure: false,
        someFutureField: { x: 1 }, mcp: null, network: {}, volumeMounts: [], iam: { tokens: {} },
      };
      const r = await call({ method: 'POST', url: '/sandboxes', body });
      assert.equal(r.status, 201, r.body);
      assert.deepEqual(fake.lastCall('create')!.args[0], {
        teamId: 'team-a', templateId: 'base', timeoutMs: 60_000, metadata: { user: 'u1' }, envVars: { A: '1' },
        autoPause: true, autoPauseMemory: true, autoResume: true, allowInternetAccess: false, secure: false,
      });
      const r2 = await call({ method: 'POST', url: '/v2/sandboxes', body: { templateID: 'base', autoPause: true, autoResume: true } });
      assert.equal(r2.status, 201);
      assert.equal((fake.lastCall('create')!.args[0] as CreateSandboxParams).autoResume, true);
    });

    test('network denyOut 0.0.0.0/0 means no internet; the configured domain is returned', async () => {
      build('sbx.example.com');
      await app.ready();
      const r = await call({ method: 'POST', url: '/v2/sandboxes', body: { templateID: 'base', network: { denyOut: ['0.0.0.0/0'] } } });
      assert.equal(r.status, 201);
      assert.equal(r.json.domain, 'sbx.example.com');
      assert.equal((fake.lastCall('create')!.args[0] as CreateSandboxParams).allowInternetAccess, false);
    });

    test('400 for invalid bodies', async () => {
      const bad: unknown[] = [
        {},
        { templateID: '' },
        { templateID: '../etc' },
        { templateID: 'base', timeout: -1 },
        { templateID: 'base', timeout: 86_401 },
        { templateID: 'base', timeout: 1.5 },
        { templateID: 'base', metadata: { k: 1 } },
        { templateID: 'base', metadata: 'x' },
        { templateID: 'base', envVars: ['A'] },
        { templateID: 'base', autoPause: 'maybe' },
        { templateID: 'base', autoResume: { enabled: 'yes' } },
        { templateID: 'base', autoResume: { enabled: true } }, // without autoPause
        { templateID: 'base', autoPause: true, autoPauseMemory: false, autoResume: { enabled: true } },
        { templateID: 'base', network: 'none' },
        [],
        'base',
      ];
      for (const body of bad) {
        const r = await call({ method: 'POST', url: '/sandboxes', body: JSON.stringify(body), headers: { 'content-type': 'application/json' } });
        assertError(r, 400);
      }
      assertError(await call({ method: 'POST', url: '/sandboxes' }), 400); // no body at all
      assert.equal(fake.calls.length, 0);
    });

    test('501 naming the feature for extras that ask for something', async () => {
      const cases: Array<[Record<string, unknown>, RegExp]> = [
        [{ mcp: { github: {} } }, /mcp/],
        [{ network: { allowOut: ['1.1.1.1'] } }, /allowOut/],
        [{ network: { denyOut: ['10.0.0.0/8'] } }, /denyOut/],
        [{ network: { allowPublicTraffic: false } }, /allowPublicTraffic/],
        [{ network: { egressProxy: { address: 'p:1080' } } }, /egressProxy/],
        [{ volumeMounts: [{ name: 'v', path: '/data' }] }, /volume/],
        [{ iam: { tokens: { gh: { audience: 'a', tokenType: 't' } } } }, /iam/],
      ];
      for (const [extra, re] of cases) {
        assertError(await call({ method: 'POST', url: '/v2/sandboxes', body: { templateID: 'base', ...extra } }), 501, re);
      }
      assert.equal(fake.calls.length, 0);
    });

    test('domain errors map once: 404, 409, 429, 503 with Retry-After, 500 generic', async () => {
      const cases: Array<[Error, number]> = [
        [new NestboxError('invalid', 'no such template'), 400],
        [new NestboxError('not_found', 'template nope not found'), 404],
        [new NestboxError('conflict', 'busy'), 409],
        [new NestboxError('limit', 'too many sandboxes'), 429],
        [new NestboxError('unauthorized', 'no'), 401],
      ];
      for (const [err, status] of cases) {
        fake.failNext = err;
        const r = await call({ method: 'POST', url: '/v2/sandboxes', body: { templateID: 'base' } });
        assertError(r, status);
        assert.equal(r.json.message, err.message);
        assert.equal(r.headers['retry-after'], undefined);
      }
      fake.failNext = new NestboxError('unavailable', 'no node can take it');
      const r503 = await call({ method: 'POST', url: '/v2/sandboxes', body: { templateID: 'base' } });
      assertError(r503, 503, /no node/);
      assert.equal(r503.headers['retry-after'], '1');

      for (const err of [new Error('db password=hunter2 at /srv/x.ts:1'), new NestboxError('internal', 'secret detail')]) {
        fake.failNext = err;
        const r = await call({ method: 'POST', url: '/v2/sandboxes', body: { templateID: 'base' } });
        assertError(r, 500);
        assert.equal(r.json.message, 'internal error');
        assert.doesNotMatch(r.body, /hunter2|secret|\.ts/);
      }
    });

    test('an authenticate function that fails is a 500, not a crash; an unavailable one is 503', async () => {
      const failing = buildApiServer({
        lifecycle: fake, envdVersion: ENVD_VERSION,
        authenticate: async () => { throw new Error('db down'); },
      });
      const r = await failing.inject({ url: '/v2/sandboxes', headers: { 'x-api-key': KEY_A } });
      assert.equal(r.statusCode, 500);
      assert.deepEqual(r.json(), { code: 500, message: 'internal error' });
      const busy = buildApiServer({
        lifecycle: fake, envdVersion: ENVD_VERSION,
        authenticate: async () => { throw new NestboxError('unavailable', 'database starting'); },
      });
      const r2 = await busy.inject({ url: '/v2/sandboxes', headers: { 'x-api-key': KEY_A } });
      assert.equal(r2.statusCode, 503);
      assert.equal(r2.headers['retry-after'], '1');
    });
  });

  describe('GET /v2/sandboxes and GET /sandboxes', () => {
    test('lists running and paused of the caller only, with pagination headers', async () => {
      const a = Array.from({ length: 5 }, (_, i) => fake.seed({ teamId: 'team-a', metadata: { i: String(i) } }));
      fake.seed({ teamId: 'team-b' });
      a[4]!.state = 'paused';
      a[4]!.endAt = null;
      fake.seed({ teamId: 'team-a', state: 'killed' });

      const p1 = await call({ url: '/v2/sandboxes?limit=2' });
      assert.equal(p1.status, 200);
      assert.equal(p1.json.length, 2);
      assert.equal(p1.headers['x-next-token'], 'o2');
      assert.equal(p1.headers['x-total-running'], '4');
      const s = p1.json[0];
      assert.deepEqual(Object.keys(s).sort(), [
        'alias', 'clientID', 'cpuCount', 'diskSizeMB', 'endAt', 'envdVersion', 'memoryMB', 'metadata', 'sandboxID',
        'startedAt', 'state', 'templateID',
      ]);
      assert.equal(s.sandboxID, a[0]!.sandboxId);
      assert.equal(s.startedAt, a[0]!.startedAt.toISOString());
      assert.equal(s.endAt, a[0]!.endAt!.toISOString());
      assert.equal(s.state, 'running');
      assert.equal(s.clientID, '6532622b');
      assert.deepEqual(s.metadata, { i: '0' });

      const p2 = await call({ url: '/v2/sandboxes?limit=2&nextToken=o2' });
      assert.equal(p2.json.length, 2);
      const p3 = await call({ url: '/v2/sandboxes?limit=2&nextToken=o4' });
      assert.equal(p3.json.length, 1);
      assert.equal(p3.json[0].state, 'paused');
      assert.ok(!Number.isNaN(Date.parse(p3.json[0].endAt)));
      assert.equal(p3.headers['x-next-token'], undefined);

      const all = await call({ url: '/v2/sandboxes' });
      assert.equal(all.json.length, 5);
      assert.equal((fake.lastCall('list')!.args[1] as ListSandboxesParams).limit, 100);
    });

    test('state filter: comma-separated or repeated; stored states mapped', async () => {
      fake.seed({ teamId: 'team-a', state: 'running' });
      fake.seed({ teamId: 'team-a', state: 'paused', endAt: null });
      fake.seed({ teamId: 'team-a', state: 'pausing' });
      fake.seed({ teamId: 'team-a', state: 'killing' });
      const running = await call({ url: '/v2/sandboxes?state=running' });
      assert.deepEqual(running.json.map((s: any) => s.state), ['running']);
      assert.deepEqual((fake.lastCall('list')!.args[1] as ListSandboxesParams).states, ['starting', 'running', 'resuming']);
      const paused = await call({ url: '/v2/sandboxes?state=paused' });
      assert.deepEqual(paused.json.map((s: any) => s.state), ['paused', 'paused']);
      const both = await call({ url: '/v2/sandboxes?state=running,paused' });
      assert.equal(both.json.length, 3);
      const repeated = await call({ url: '/v2/sandboxes?state=running&state=paused' });
      assert.equal(repeated.json.length, 3);
      const encoded = await call({ url: '/v2/sandboxes?state=running%2Cpaused' });
      assert.equal(encoded.json.length, 3);
    });

    test('metadata filter is decoded twice, as the SDK encodes it', async () => {
      const tricky = { 'user id': 'a b&c=d', 'päth': '100%/x+y' };
      const hit = fake.seed({ teamId: 'team-a', metadata: { ...tricky, other: '1' } });
      fake.seed({ teamId: 'team-a', metadata: { 'user id': 'a b' } });
      // exactly what the SDK sends: URLSearchParams of URI-encoded pairs, URI-encoded as a query value
      const pairs = Object.fromEntries(Object.entries(tricky).map(([k, v]) => [encodeURIComponent(k), encodeURIComponent(v)]));
      const metadata = encodeURIComponent(new URLSearchParams(pairs).toString());
      const r = await call({ url: `/v2/sandboxes?metadata=${metadata}` });
      assert.equal(r.status, 200);
      assert.deepEqual((fake.lastCall('list')!.args[1] as ListSandboxesParams).metadata, tricky);
      assert.deepEqual(r.json.map((s: any) => s.sandboxID), [hit.sandboxId]);
      // and the simple hand-written form
      const simple = await call({ url: `/v2/sandboxes?metadata=${encodeURIComponent('other=1')}` });
      assert.deepEqual(simple.json.map((s: any) => s.sandboxID), [hit.sandboxId]);
      const legacy = await call({ url: `/sandboxes?metadata=${metadata}` });
      assert.deepEqual(legacy.json.map((s: any) => s.sandboxID), [hit.sandboxId]);
    });

    test('400 for bad list queries', async () => {
      for (const q of ['limit=0', 'limit=101', 'limit=x', 'state=dead', 'state=running,', 'state=', 'nextToken=bad',
        `metadata=${encodeURIComponent('k=%E0%A4%A')}`, `metadata=${'x'.repeat(17_000)}`]) {
        assertError(await call({ url: `/v2/sandboxes?${q}` }), 400);
      }
    });

    test('legacy GET /sandboxes lists running ones, across pages', async () => {
      for (let i = 0; i < 130; i++) fake.seed({ teamId: 'team-a' });
      fake.seed({ teamId: 'team-a', state: 'paused', endAt: null });
      const r = await call({ url: '/sandboxes' });
      assert.equal(r.status, 200);
      assert.equal(r.json.length, 130);
      assert.ok(r.json.every((s: any) => s.state === 'running'));
      assert.equal(r.headers['x-next-token'], undefined);
    });
  });

  describe('one sandbox', () => {
    test('GET /sandboxes/:id returns the detail; 404 for unknown, other team, dead, killing, malformed', async () => {
      const v = fake.seed({ teamId: 'team-a', autoPause: true, autoResume: true, metadata: { a: 'b' } });
      const r = await call({ url: `/sandboxes/${v.sandboxId}` });
      assert.equal(r.status, 200);
      assert.equal(r.json.sandboxID, v.sandboxId);
      assert.equal(r.json.envdAccessToken, v.envdAccessToken);
      assert.equal(r.json.domain, null);
      assert.equal(r.json.allowInternetAccess, true);
      assert.deepEqual(r.json.lifecycle, { autoResume: true, onTimeout: 'pause' });
      assert.equal(r.json.cpuCount, 2);
      assert.equal(r.json.memoryMB, 512);
      assert.equal(r.json.diskSizeMB, 1024);
      assert.deepEqual(r.json.metadata, { a: 'b' });
      // old SDKs append the client id
      assert.equal((await call({ url: `/sandboxes/${v.sandboxId}-6532622b` })).status, 200);

      assertError(await call({ url: `/sandboxes/${UNKNOWN_ID}` }), 404);
      assertError(await call({ url: `/sandboxes/${v.sandboxId}`, key: KEY_B }), 404);
      const dead = fake.seed({ teamId: 'team-a', state: 'killed' });
      assertError(await call({ url: `/sandboxes/${dead.sandboxId}` }), 404);
      const killing = fake.seed({ teamId: 'team-a', state: 'killing' });
      assertError(await call({ url: `/sandboxes/${killing.sandboxId}` }), 404);
      for (const bad of ['ABCDEFGHIJKLMNOPQRST', 'short', '..%2F..%2Fetc', 'a'.repeat(64), `${v.sandboxId}-x-y`]) {
        assertError(await call({ url: `/sandboxes/${bad}` }), 404);
      }
      assertError(await call({ url: `/sandboxes/${'a'.repeat(65)}` }), 400);
    });

    test('DELETE: 204, then 404', async () => {
      const v = fake.seed({ teamId: 'team-a' });
      assertError(await call({ method: 'DELETE', url: `/sandboxes/${v.sandboxId}`, key: KEY_B }), 404);
      const r = await call({ method: 'DELETE', url: `/sandboxes/${v.sandboxId}` });
      assert.equal(r.status, 204);
      assert.equal(r.body, '');
      assertError(await call({ method: 'DELETE', url: `/sandboxes/${v.sandboxId}` }), 404);
      assertError(await call({ method: 'DELETE', url: '/sandboxes/nope' }), 404);
    });

    test('POST /timeout: 204 with milliseconds passed on; 400; 404; 409', async () => {
      const v = fake.seed({ teamId: 'team-a' });
      const r = await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/timeout`, body: { timeout: 30 } });
      assert.equal(r.status, 204);
      assert.deepEqual(fake.lastCall('setTimeout')!.args, ['team-a', v.sandboxId, 30_000]);
      for (const body of [{}, { timeout: -5 }, { timeout: 86_401 }, { timeout: 'soon' }]) {
        assertError(await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/timeout`, body }), 400);
      }
      assertError(await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/timeout` }), 400);
      assertError(await call({ method: 'POST', url: `/sandboxes/${UNKNOWN_ID}/timeout`, body: { timeout: 30 } }), 404);
      v.state = 'paused';
      assertError(await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/timeout`, body: { timeout: 30 } }), 409);
    });

    test('POST /refreshes: body optional (default 15 s), duration <= 3600', async () => {
      const v = fake.seed({ teamId: 'team-a' });
      assert.equal((await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/refreshes` })).status, 204);
      assert.deepEqual(fake.lastCall('refresh')!.args, ['team-a', v.sandboxId, 15_000]);
      assert.equal((await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/refreshes`, body: { duration: 3600 } })).status, 204);
      assert.deepEqual(fake.lastCall('refresh')!.args, ['team-a', v.sandboxId, 3_600_000]);
      assertError(await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/refreshes`, body: { duration: 3601 } }), 400);
      assertError(await call({ method: 'POST', url: `/sandboxes/${UNKNOWN_ID}/refreshes`, body: {} }), 404);
    });

    test('POST /pause: 204 (memory default true, body optional); 409 when not running; 404', async () => {
      const v = fake.seed({ teamId: 'team-a' });
      assert.equal((await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/pause` })).status, 204);
      assert.deepEqual(fake.lastCall('pause')!.args, ['team-a', v.sandboxId, { memory: true }]);
      assertError(await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/pause`, body: {} }), 409);
      const w = fake.seed({ teamId: 'team-a' });
      assert.equal((await call({ method: 'POST', url: `/sandboxes/${w.sandboxId}/pause`, body: { memory: false } })).status, 204);
      assert.deepEqual(fake.lastCall('pause')!.args[2], { memory: false });
      assertError(await call({ method: 'POST', url: `/sandboxes/${w.sandboxId}/pause`, body: { memory: 'no' } }), 400);
      assertError(await call({ method: 'POST', url: `/sandboxes/${UNKNOWN_ID}/pause` }), 404);
      // the detail of a paused sandbox
      const d = await call({ url: `/sandboxes/${v.sandboxId}` });
      assert.equal(d.json.state, 'paused');
      assert.ok(!Number.isNaN(Date.parse(d.json.endAt)));
    });

    test('POST /connect: 200 running, 201 resumed; timeout required; 404; 409; memory=false 501', async () => {
      const v = fake.seed({ teamId: 'team-a' });
      const r = await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/connect`, body: { timeout: 60 } });
      assert.equal(r.status, 200);
      assert.equal(r.json.sandboxID, v.sandboxId);
      assert.equal(r.json.envdAccessToken, v.envdAccessToken);
      assert.equal(r.json.clientID, '6532622b');
      assert.deepEqual(fake.lastCall('connect')!.args, ['team-a', v.sandboxId, 60_000]);
      v.state = 'paused';
      assert.equal((await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/connect`, body: { timeout: 60 } })).status, 201);
      assertError(await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/connect`, body: {} }), 400);
      assertError(await call({ method: 'POST', url: `/sandboxes/${UNKNOWN_ID}/connect`, body: { timeout: 60 } }), 404);
      v.state = 'killing';
      assertError(await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/connect`, body: { timeout: 60 } }), 409);
      assertError(await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/connect`, body: { timeout: 60, memory: false } }), 501, /memory/);
    });

    test('POST /v2/sandboxes/:id/connect: body optional, default 300 s', async () => {
      const v = fake.seed({ teamId: 'team-a', state: 'paused', endAt: null });
      const r = await call({ method: 'POST', url: `/v2/sandboxes/${v.sandboxId}/connect` });
      assert.equal(r.status, 201);
      assert.deepEqual(fake.lastCall('connect')!.args, ['team-a', v.sandboxId, 300_000]);
      const r2 = await call({ method: 'POST', url: `/v2/sandboxes/${v.sandboxId}/connect`, body: { timeout: 10 } });
      assert.equal(r2.status, 200);
      assert.deepEqual(fake.lastCall('connect')!.args[2], 10_000);
    });

    test('POST /resume (legacy): 201; default 15 s; 409 when running; 404', async () => {
      const v = fake.seed({ teamId: 'team-a', state: 'paused', endAt: null });
      const r = await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/resume` });
      assert.equal(r.status, 201);
      assert.equal(r.json.sandboxID, v.sandboxId);
      assert.deepEqual(fake.lastCall('resume')!.args, ['team-a', v.sandboxId, 15_000, { autoPause: undefined }]);
      assertError(await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/resume`, body: { timeout: 5 } }), 409);
      v.state = 'paused';
      assert.equal((await call({ method: 'POST', url: `/sandboxes/${v.sandboxId}/resume`, body: { timeout: 5, autoPause: true } })).status, 201);
      assert.deepEqual(fake.lastCall('resume')!.args, ['team-a', v.sandboxId, 5_000, { autoPause: true }]);
      assertError(await call({ method: 'POST', url: `/sandboxes/${UNKNOWN_ID}/resume` }), 404);
    });

    test('GET /metrics: E2B metric shape; start/end filter; 404', async () => {
      const v = fake.seed({ teamId: 'team-a' });
      const r = await call({ url: `/sandboxes/${v.sandboxId}/metrics` });
      assert.equal(r.status, 200);
      assert.equal(r.json.length, 2);
      assert.deepEqual(r.json[0], {
        timestamp: '2026-01-01T00:00:00.000Z', timestampUnix: 1767225600, cpuCount: 2, cpuUsedPct: 12.5,
        memUsed: 104857600, memTotal: 536870912, memCache: 0, diskUsed: 10485760, diskTotal: 1073741824,
      });
      const later = await call({ url: `/sandboxes/${v.sandboxId}/metrics?start=1767225601` });
      assert.equal(later.json.length, 1);
      assertError(await call({ url: `/sandboxes/${v.sandboxId}/metrics?start=yesterday` }), 400);
      assertError(await call({ url: `/sandboxes/${UNKNOWN_ID}/metrics` }), 404);
    });
  });

  describe('hostile input', () => {
    test('nothing a client sends produces a 5xx (other than 501)', async () => {
      const running = fake.seed({ teamId: 'team-a' });
      const paused = fake.seed({ teamId: 'team-a', state: 'paused', endAt: null });
      const ids = [running.sandboxId, paused.sandboxId, UNKNOWN_ID, 'x', '%00', '..', `${running.sandboxId}-zz`, '__proto__'];
      const paths = [
        '/sandboxes', '/v2/sandboxes', '/sandboxes/:id', '/sandboxes/:id/timeout', '/sandboxes/:id/refreshes',
        '/sandboxes/:id/pause', '/sandboxes/:id/connect', '/v2/sandboxes/:id/connect', '/sandboxes/:id/resume',
        '/sandboxes/:id/metrics', '/health', '/openapi.json',
      ];
      const queryKeys = ['metadata', 'state', 'limit', 'nextToken', 'start', 'end', '__proto__', 'constructor', 'x'];
      const arb = fc.record({
        method: fc.constantFrom('GET', 'POST', 'DELETE', 'PUT', 'PATCH'),
        path: fc.constantFrom(...paths),
        id: fc.constantFrom(...ids),
        query: fc.array(fc.tuple(fc.constantFrom(...queryKeys), fc.string({ maxLength: 20 })), { maxLength: 4 }),
        body: fc.option(fc.oneof(fc.jsonValue({ maxDepth: 3 }).map((v) => JSON.stringify(v)), fc.string({ maxLength: 40 })), { nil: undefined }),
        contentType: fc.constantFrom('application/json', 'application/json; charset=utf-8', 'text/plain', 'application/octet-stream', undefined),
        key: fc.constantFrom(KEY_A, KEY_B, 'bogus', null),
      });
      await fc.assert(
        fc.asyncProperty(arb, async (r) => {
          const qs = new URLSearchParams(r.query).toString();
          const url = r.path.replace(':id', r.id) + (qs ? `?${qs}` : '');
          const headers: Record<string, string> = {};
          if (r.contentType) headers['content-type'] = r.contentType;
          if (r.key) headers['x-api-key'] = r.key;
          const res = await app.inject({ method: r.method as 'GET', url, headers, ...(r.body === undefined ? {} : { payload: r.body }) });
          assert.ok(res.statusCode < 500 || res.statusCode === 501, `${r.method} ${url} ${r.body} -> ${res.statusCode} ${res.body}`);
          if (res.statusCode >= 400) {
            const json = res.json();
            assert.equal(json.code, res.statusCode);
            assert.equal(typeof json.message, 'string');
          }
        }),
        { numRuns: 400 },
      );
    });
  });

  describe('OpenAPI', () => {
    test('GET /openapi.json lists every route, without a key', async () => {
      const r = await call({ url: '/openapi.json', key: null });
      assert.equal(r.status, 200);
      assert.match(r.json.openapi, /^3\./);
      const paths = r.json.paths as Record<string, Record<string, any>>;
      const expected: Array<[string, string]> = [
        ['/health', 'get'], ['/sandboxes', 'post'], ['/sandboxes', 'get'], ['/v2/sandboxes', 'post'], ['/v2/sandboxes', 'get'],
        ['/sandboxes/{sandboxID}', 'get'], ['/sandboxes/{sandboxID}', 'delete'], ['/sandboxes/{sandboxID}/timeout', 'post'],
        ['/sandboxes/{sandboxID}/refreshes', 'post'], ['/sandboxes/{sandboxID}/pause', 'post'],
        ['/sandboxes/{sandboxID}/connect', 'post'], ['/v2/sandboxes/{sandboxID}/connect', 'post'],
        ['/sandboxes/{sandboxID}/resume', 'post'], ['/sandboxes/{sandboxID}/metrics', 'get'],
      ];
      for (const [path, method] of expected) assert.ok(paths[path]?.[method], `${method.toUpperCase()} ${path} missing`);
      assert.equal(Object.keys(paths).length, new Set(expected.map(([p]) => p)).size);
      const create = paths['/v2/sandboxes']!.post;
      assert.ok(create.requestBody.content['application/json'].schema.properties.templateID);
      assert.ok(create.responses['201']);
      assert.equal(create.requestBody.required, true);
      assert.deepEqual(create.requestBody.content['application/json'].schema.required, ['templateID']); // defaulted fields are optional
      assert.equal(paths['/sandboxes/{sandboxID}/pause']!.post.requestBody.required, false);
      assert.equal(paths['/sandboxes/{sandboxID}/timeout']!.post.requestBody.required, true);
      const limit = paths['/v2/sandboxes']!.get.parameters.find((p: any) => p.name === 'limit');
      assert.equal(limit.required, false);
      assert.deepEqual(r.json.components.securitySchemes.apiKey, {
        type: 'apiKey', in: 'header', name: 'X-API-Key', description: "A team's API key (e2b_…)",
      });
    });
  });
});

// --- the real e2b SDK against the server on a real socket ---------------------------------------

describe('e2b SDK against the API', () => {
  let server: FastifyInstance;
  // Configured the way a user would: through the SDK's environment variables.
  const ENV = ['E2B_API_URL', 'E2B_API_KEY', 'E2B_DOMAIN', 'E2B_SANDBOX_URL'] as const;
  const saved: Record<string, string | undefined> = {};
  const opts = { requestTimeoutMs: 10_000 };

  before(async () => {
    server = build();
    await server.listen({ host: '127.0.0.1', port: 0 });
    const { port } = server.server.address() as AddressInfo;
    for (const k of ENV) saved[k] = process.env[k];
    process.env.E2B_API_URL = `http://127.0.0.1:${port}`;
    process.env.E2B_API_KEY = KEY_A;
    process.env.E2B_DOMAIN = 'localhost';
    process.env.E2B_SANDBOX_URL = 'http://127.0.0.1:1'; // envd is not contacted by these calls
  });
  after(async () => {
    for (const k of ENV) {
      if (saved[k] === undefined) delete process.env[k];
      else process.env[k] = saved[k];
    }
    await server?.close();
  });

  test('Sandbox.create sends POST /v2/sandboxes and parses the response (no envd contact)', async () => {
    const sbx = await Sandbox.create('base', { ...opts, timeoutMs: 120_000, metadata: { who: 'sdk' }, envs: { A: '1' } });
    assert.match(sbx.sandboxId, /^[a-z0-9]{20}$/);
    const p = fake.lastCall('create')!.args[0] as CreateSandboxParams;
    assert.equal(p.templateId, 'base');
    assert.equal(p.timeoutMs, 120_000);
    assert.deepEqual(p.metadata, { who: 'sdk' });
    assert.deepEqual(p.envVars, { A: '1' });
    assert.equal(p.autoPause, false);

    await Sandbox.create('base', { ...opts, lifecycle: { onTimeout: 'pause', autoResume: true } });
    const q = fake.lastCall('create')!.args[0] as CreateSandboxParams;
    assert.equal(q.autoPause, true);
    assert.equal(q.autoResume, true);
    assert.equal(q.timeoutMs, 300_000);
  });

  test('Sandbox.list: metadata and state filters, pagination with nextItems()', async () => {
    fake.sandboxes.clear();
    const mine = Array.from({ length: 5 }, () => fake.seed({ teamId: 'team-a', metadata: { app: 'x y&z', n: '1' } }));
    fake.seed({ teamId: 'team-a', metadata: { app: 'other' } });
    mine[0]!.state = 'paused';
    mine[0]!.endAt = null;

    const pager = Sandbox.list({ ...opts, query: { metadata: { app: 'x y&z' } }, limit: 2 });
    const seen: string[] = [];
    let pages = 0;
    while (pager.hasNext) {
      const items = await pager.nextItems();
      pages++;
      for (const s of items) {
        seen.push(s.sandboxId);
        assert.equal(s.metadata.app, 'x y&z');
        assert.ok(s.startedAt instanceof Date && !Number.isNaN(s.startedAt.getTime()));
        assert.ok(s.endAt instanceof Date && !Number.isNaN(s.endAt.getTime()));
        assert.equal(s.cpuCount, 2);
        assert.equal(s.memoryMB, 512);
        assert.equal(s.envdVersion, ENVD_VERSION);
      }
    }
    assert.equal(pages, 3);
    assert.deepEqual(seen.sort(), mine.map((v) => v.sandboxId).sort());

    const running = await Sandbox.list({ ...opts, query: { state: ['running'], metadata: { n: '1' } } }).nextItems();
    assert.equal(running.length, 4);
    assert.ok(running.every((s) => s.state === 'running'));
    const paused = await Sandbox.list({ ...opts, query: { state: ['paused'] } }).nextItems();
    assert.deepEqual(paused.map((s) => s.sandboxId), [mine[0]!.sandboxId]);
    const both = await Sandbox.list({ ...opts, query: { state: ['running', 'paused'] } }).nextItems();
    assert.equal(both.length, 6);
  });

  test('Sandbox.getInfo, setTimeout, pause, connect, getMetrics, kill', async () => {
    const v = fake.seed({ teamId: 'team-a', metadata: { k: 'v' }, autoPause: true });
    const info = await Sandbox.getInfo(v.sandboxId, opts);
    assert.equal(info.sandboxId, v.sandboxId);
    assert.equal(info.templateId, 'base');
    assert.equal(info.name, 'base');
    assert.deepEqual(info.metadata, { k: 'v' });
    assert.equal(info.state, 'running');
    assert.equal(info.startedAt.getTime(), v.startedAt.getTime());
    assert.equal(info.endAt.getTime(), v.endAt!.getTime());
    assert.deepEqual(info.lifecycle, { onTimeout: 'pause', autoResume: false });
    assert.equal(info.allowInternetAccess, true);

    await Sandbox.setTimeout(v.sandboxId, 42_500, opts);
    assert.deepEqual(fake.lastCall('setTimeout')!.args, ['team-a', v.sandboxId, 43_000]); // SDK rounds up to seconds

    assert.equal(await Sandbox.pause(v.sandboxId, opts), true);
    assert.deepEqual(fake.lastCall('pause')!.args[2], { memory: true });
    assert.equal(await Sandbox.pause(v.sandboxId, opts), false); // 409 -> false
    assert.equal(await Sandbox.betaPause(v.sandboxId, opts), false);
    assert.equal((await Sandbox.getInfo(v.sandboxId, opts)).state, 'paused');

    const sbx = await Sandbox.connect(v.sandboxId, { ...opts, timeoutMs: 60_000 });
    assert.equal(sbx.sandboxId, v.sandboxId);
    assert.deepEqual(fake.lastCall('connect')!.args, ['team-a', v.sandboxId, 60_000]);

    const metrics = await Sandbox.getMetrics(v.sandboxId, opts);
    assert.equal(metrics.length, 2);
    assert.equal(metrics[0]!.cpuUsedPct, 12.5);
    assert.ok(metrics[0]!.timestamp instanceof Date);

    assert.equal(await Sandbox.kill(v.sandboxId, opts), true);
    assert.equal(await Sandbox.kill(v.sandboxId, opts), false); // 404 -> false
    await assert.rejects(Sandbox.getInfo(v.sandboxId, opts), (e: Error) => e.name === 'SandboxNotFoundError');
    await assert.rejects(Sandbox.setTimeout(v.sandboxId, 1000, opts), (e: Error) => e.name === 'SandboxNotFoundError');
    await assert.rejects(Sandbox.connect(v.sandboxId, opts), (e: Error) => e.name === 'SandboxNotFoundError');
  });

  test('SDK error mapping: bad key -> AuthenticationError, 503 -> ServiceBusyError', async () => {
    await assert.rejects(Sandbox.getInfo(UNKNOWN_ID, { ...opts, apiKey: 'e2b_0000' }), (e: Error) => e.name === 'AuthenticationError');
    fake.failNext = new NestboxError('unavailable', 'no capacity');
    await assert.rejects(Sandbox.create('base', opts), (e: Error) => e.name === 'ServiceBusyError' && /no capacity/.test(e.message));
    fake.failNext = new NestboxError('limit', 'concurrent sandbox limit reached');
    await assert.rejects(Sandbox.create('base', opts), (e: Error) => e.name === 'RateLimitError');
  });
});

describe('a client that aborts mid-body', () => {
  test('is a client error (400, logged as such), never "database unavailable"', async () => {
    const lines: string[] = [];
    const statuses: number[] = [];
    const server = buildApiServer({
      lifecycle: new FakeLifecycle(), authenticate, envdVersion: ENVD_VERSION,
      logger: { level: 'info', stream: { write: (l: string) => void lines.push(l) } },
    });
    server.addHook('onResponse', async (_req, reply) => void statuses.push(reply.statusCode));
    let seen!: () => void;
    const requestSeen = new Promise<void>((r) => (seen = r));
    server.addHook('onRequest', async () => seen());
    await server.listen({ host: '127.0.0.1', port: 0 });
    try {
      const { port } = server.server.address() as AddressInfo;
      const socket = net.connect(port, '127.0.0.1');
      await new Promise((r) => socket.once('connect', r));
      socket.write(`POST /v2/sandboxes HTTP/1.1\r\nHost: x\r\nx-api-key: ${KEY_A}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"templateID":`);
      await requestSeen; // cut while the server reads the body
      socket.destroy();
      for (let i = 0; i < 500 && !lines.some((l) => /client closed|database unavailable/.test(l)); i++) await new Promise((r) => setTimeout(r, 20));
      const log = lines.join('');
      assert.doesNotMatch(log, /database unavailable/);
      assert.match(log, /client closed the request before sending all of it/);
      assert.ok(!statuses.some((s) => s >= 500), `statuses ${statuses}`);
    } finally {
      await server.close();
    }
  });
});
