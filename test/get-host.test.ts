// `sandbox.getHost(port)` with the defaults of `nestbox up` (no NESTBOX_DOMAIN): the real `e2b`
// SDK against the API, then a request the way a browser on the same machine sends it (to
// loopback, with that name as Host) through the real sandbox proxy to a stand-in node agent.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { Sandbox } from 'e2b';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { LifecycleService } from '../src/control-plane/lifecycle.ts';
import { SandboxProxy } from '../src/control-plane/proxy/server.ts';
import { upSandboxDomain } from '../src/cli/up.ts';
import { NodePool } from '../src/control-plane/scheduler.ts';
import { authenticateKey } from '../src/store/credentials.ts';
import type { Database } from '../src/store/database.ts';
import { upsertNode } from '../src/store/nodes.ts';
import { createTeamWithKey } from '../src/store/teams.ts';
import { forEachDatabase } from './helpers/databases.ts';
import { FakeNode } from './helpers/fake-node.ts';

const NODE_TOKEN = 'get-host-node-token-0123456789';

/** A stand-in for the node agent: answers with the path the proxy forwarded. */
function startFakeAgent(): Promise<{ url: string; close: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    if (req.headers.authorization !== `Bearer ${NODE_TOKEN}`) return void res.writeHead(401).end();
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ url: req.url }));
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        close: () => {
          server.closeAllConnections();
          return new Promise((r) => server.close(() => r()));
        },
      }),
    ),
  );
}

/** GET http://<host>/<path> as a browser on this machine does: *.localhost is loopback. */
function browserGet(hostWithPort: string, p: string): Promise<{ status: number; body: string }> {
  const url = new URL(`http://${hostWithPort}${p}`);
  assert.match(url.hostname, /\.localhost$/);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: url.port || 80, path: url.pathname, headers: { host: url.host } }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

forEachDatabase('getHost', (t) => {
  let db: Database;
  let app: FastifyInstance;
  let lifecycle: LifecycleService;
  let proxy: SandboxProxy;
  let agent: Awaited<ReturnType<typeof startFakeAgent>>;
  let proxyPort: number;

  before(async () => {
    db = await t.db();
    agent = await startFakeAgent();
    const pool = new NodePool();
    pool.add(new FakeNode('node-1'));
    await upsertNode(db, { id: 'node-1', url: agent.url, token: NODE_TOKEN });
    lifecycle = new LifecycleService({ db, nodes: pool });
    proxy = new SandboxProxy({ db, lifecycle });
    proxyPort = Number(new URL(await proxy.listen('127.0.0.1', 0)).port);
    // As `nestbox up` configures it without NESTBOX_DOMAIN.
    app = buildApiServer({
      lifecycle, db, authenticate: (k) => authenticateKey(db, k), envdVersion: '0.6.1', domain: upSandboxDomain({}, proxyPort),
    });
    await app.listen({ host: '127.0.0.1', port: 0 });
  });

  after(async () => {
    await proxy?.close();
    await app?.close();
    await lifecycle?.waitForInFlight();
    await agent?.close();
  });

  test('getHost(port) names the local proxy, which routes that name to the port of the sandbox', async () => {
    const { apiKey } = await createTeamWithKey(db, { name: 'hosts' });
    const apiUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    const saved = process.env.E2B_DOMAIN;
    delete process.env.E2B_DOMAIN; // the SDK's own fallback would be E2B's cloud (e2b.app)
    try {
      const sbx = await Sandbox.create('base', { apiKey: apiKey.key, apiUrl, sandboxUrl: `http://127.0.0.1:${proxyPort}`, requestTimeoutMs: 10_000 });
      const host = sbx.getHost(8080);
      assert.equal(host, `8080-${sbx.sandboxId}.localhost:${proxyPort}`);
      const r = await browserGet(host, '/hello');
      assert.equal(r.status, 200, r.body);
      assert.deepEqual(JSON.parse(r.body), { url: `/v1/sandboxes/${sbx.sandboxId}/ports/8080/hello` });
      await sbx.kill();
      assert.equal(upSandboxDomain({ NESTBOX_DOMAIN: 'sbx.example.com' }, 3002), 'sbx.example.com', 'production: its own domain');
    } finally {
      if (saved !== undefined) process.env.E2B_DOMAIN = saved;
    }
  });
});
