// A node's membership of a fleet, both sides for real: the agent's FleetMembership against the
// control plane's API (listening, on PGlite and Postgres). A join token joins a free id only; a
// restarted agent comes back with the credential it keeps; a removed node's credential is void.
import { describe, test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { FastifyInstance } from 'fastify';
import { Value } from 'typebox/value';
import { FleetMembership } from '../src/agent/fleet-membership.ts';
import { nodeIdOfHost } from '../src/agent/node-id.ts';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { JoinBody, NODE_ID_PATTERN, NodeReport } from '../src/node-api/membership.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { createAdminKey } from '../src/store/admin-keys.ts';
import { authenticateKey } from '../src/store/credentials.ts';
import type { Database } from '../src/store/database.ts';
import { upsertNode } from '../src/store/nodes.ts';
import { apiCaller, assertApiError } from './helpers/api-inject.ts';
import { forEachDatabase } from './helpers/databases.ts';

const report = { url: 'http://127.0.0.1:1', cpuCount: 2, memoryMB: 4096, diskMB: 10_000, maxSandboxes: 50, templates: ['base'], version: 't' };

forEachDatabase('fleet membership', (t) => {
  async function controlPlane(db: Database, tc: TestContext) {
    const admin = await createAdminKey(db, { name: 'membership' });
    const app: FastifyInstance = buildApiServer({
      lifecycle: {} as never, db, envdVersion: '0.6.1', authenticate: (k) => authenticateKey(db, k),
      fleet: { heartbeatMs: 60_000, unhealthyAfterMs: 120_000 },
    });
    const url = await app.listen({ host: '127.0.0.1', port: 0 });
    tc.after(() => app.close());
    const call = apiCaller(() => app, () => admin.key);
    const joinToken = async () => (await call({ method: 'POST', url: '/nestbox/v1/nodes/join-tokens', body: {} })).json.token as string;
    const join = (token: string, nodeId: string, over: Partial<typeof report> = {}) =>
      call({ method: 'POST', url: '/nestbox/v1/nodes/join', key: null, body: { joinToken: token, nodeId, nodeToken: 'n'.repeat(32), ...report, ...over } });
    const heartbeat = (nodeId: string, credential: string) =>
      app.inject({ method: 'POST', url: `/nestbox/v1/nodes/${nodeId}/heartbeat`, headers: { authorization: `Bearer ${credential}` }, payload: report })
        .then((r) => ({ status: r.statusCode, json: JSON.parse(r.body) }));
    const node = async (id: string) => (await call({ url: '/nestbox/v1/nodes' })).json.find((n: any) => n.id === id);
    return { app, url, call, joinToken, join, heartbeat, node };
  }

  /** An agent's data directory with one template, as a host has them. */
  async function host(tc: TestContext) {
    const home = await mkdtemp(path.join(tmpdir(), 'nestbox-membership-'));
    tc.after(() => rm(home, { recursive: true, force: true }));
    const config = runtimeConfigFromEnv({ NESTBOX_HOME: home });
    await mkdir(config.dataDir, { recursive: true });
    await mkdir(path.join(config.templatesDir, 'base', 'rootfs'), { recursive: true });
    return config;
  }

  function agent(controlPlaneUrl: string, config: Awaited<ReturnType<typeof host>>, nodeId: string, joinToken?: string) {
    const log: string[] = [];
    const m = new FleetMembership({
      controlPlaneUrl, joinToken, nodeId, nodeToken: 'a'.repeat(32), advertiseUrl: 'http://127.0.0.1:3001', config,
      maxSandboxes: 10, version: 'test', log: (msg) => log.push(msg),
    });
    return { m, log, credential: () => readFile(path.join(config.dataDir, 'node-credential'), 'utf8').then((s) => s.trim()) };
  }

  test("a join under a member's id is refused 409 and changes nothing: the member's credential still works", async (tc) => {
    const db = await t.db();
    const f = await controlPlane(db, tc);
    const token = await f.joinToken();
    const first = await f.join(token, 'taken');
    assert.equal(first.status, 201, JSON.stringify(first.json));
    assertApiError(await f.join(token, 'taken', { url: 'http://10.9.9.9:3001' }), 409,
      /^node taken is already a member; remove it first, or restart the agent with its own credential/);
    assert.equal((await f.heartbeat('taken', first.json.credential)).status, 200, 'the member keeps its credential');
    assert.equal((await f.node('taken')).url, report.url, 'the refused join did not move the node');
    // Drained, it is still a member; down (silent for long) too: only a removal frees the id.
    assert.equal((await f.call({ method: 'POST', url: '/nestbox/v1/nodes/taken/drain' })).status, 204);
    await db.query("UPDATE nodes SET state = 'down' WHERE id = 'taken'");
    assertApiError(await f.join(token, 'taken'), 409, /already a member/);
    // A node configured at start (no join) is no free id either.
    await upsertNode(db, { id: 'static-node', url: 'http://127.0.0.1:2', token: 's'.repeat(32) });
    assertApiError(await f.join(token, 'static-node'), 409, /node static-node is already a member/);
    assert.equal((await f.node('static-node')).joined, false);
    // Removed, the id is free: it joins again, undrained, with a new credential; the old is void.
    assert.equal((await f.call({ method: 'DELETE', url: '/nestbox/v1/nodes/taken' })).status, 204);
    const again = await f.join(token, 'taken');
    assert.equal(again.status, 201, JSON.stringify(again.json));
    assert.deepEqual([(await f.node('taken')).state, (await f.node('taken')).cordoned], ['ready', false]);
    assert.equal((await f.heartbeat('taken', first.json.credential)).status, 401);
    assert.equal((await f.heartbeat('taken', again.json.credential)).status, 200);
  });

  test('an agent joins once and keeps its credential (0600): restarted, it comes back with it; removed, its credential is refused', async (tc) => {
    const db = await t.db();
    const f = await controlPlane(db, tc);
    const token = await f.joinToken();
    const config = await host(tc);

    const a = agent(f.url, config, 'keeper', token);
    // The agent's report fits the shared schema, bounds included (what the control plane checks).
    const sent = await a.m.report();
    assert.ok(Value.Check(NodeReport, sent), JSON.stringify([...Value.Errors(NodeReport, sent)]));
    assert.ok(Value.Check(JoinBody, { joinToken: token, nodeId: 'keeper', nodeToken: 'a'.repeat(32), ...sent }));
    assert.deepEqual(sent.templates, ['base']);
    await a.m.start();
    a.m.stop();
    const credential = await a.credential();
    assert.match(credential, /^nbnode_/);
    assert.equal((await stat(path.join(config.dataDir, 'node-credential'))).mode & 0o777, 0o600);
    assert.deepEqual(a.log, [`joined ${f.url} as node keeper`]);

    // Restarted, with the join token or without: it heartbeats with its credential, joins no more.
    for (const withToken of [true, false]) {
      await db.query("UPDATE nodes SET last_seen_at = now() - interval '1 hour', state = 'down' WHERE id = 'keeper'");
      const restarted = agent(f.url, config, 'keeper', withToken ? token : undefined);
      await restarted.m.start();
      restarted.m.stop();
      assert.deepEqual(restarted.log, [], 'no join');
      assert.equal(await restarted.credential(), credential);
      const seen = await f.node('keeper');
      assert.equal(seen.state, 'ready', 'heard from again');
      assert.equal((await f.heartbeat('keeper', credential)).status, 200);
    }

    // Another host under the same id, with a valid token: refused, and the member is untouched.
    const impostor = agent(f.url, await host(tc), 'keeper', token);
    await assert.rejects(impostor.m.start(), /joining .* failed: 409 node keeper is already a member/);
    assert.equal((await f.heartbeat('keeper', credential)).status, 200);

    // Removed: its kept credential is refused; with a join token it joins again as new.
    assert.equal((await f.call({ method: 'DELETE', url: '/nestbox/v1/nodes/keeper' })).status, 204);
    await assert.rejects(agent(f.url, config, 'keeper').m.start(), /401 invalid node credential/);
    const back = agent(f.url, config, 'keeper', token);
    await back.m.start();
    back.m.stop();
    assert.notEqual(await back.credential(), credential);
    assert.equal((await f.heartbeat('keeper', credential)).status, 401);
    assert.equal((await f.heartbeat('keeper', await back.credential())).status, 200);
  });
});

describe('node id of a host joining a fleet', () => {
  test("the host's name, made a valid id; its machine id when the name says nothing; null when neither does", () => {
    const re = new RegExp(NODE_ID_PATTERN);
    assert.equal(nodeIdOfHost('Web-01.Example.COM', null), 'web-01.example.com');
    assert.equal(nodeIdOfHost('_rack 4/host#7', null), 'rack-4-host-7');
    assert.equal(nodeIdOfHost('h'.repeat(80), null), 'h'.repeat(63));
    const mid = '0123456789abcdef0123456789abcdef\n';
    assert.equal(nodeIdOfHost('localhost', mid), 'node-0123456789ab');
    assert.equal(nodeIdOfHost('', mid), 'node-0123456789ab');
    assert.equal(nodeIdOfHost('---', mid), 'node-0123456789ab');
    assert.equal(nodeIdOfHost('localhost', null), null);
    assert.equal(nodeIdOfHost('', 'not hex'), null);
    for (const name of ['Web-01.Example.COM', '_rack 4/host#7', 'h'.repeat(80), 'ÄÖÜ-box', '9lives']) {
      const id = nodeIdOfHost(name, mid);
      assert.ok(id && re.test(id), `${name} -> ${id}`);
    }
  });
});
