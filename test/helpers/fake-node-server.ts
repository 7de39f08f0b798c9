import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { NodeCallError } from '../../src/control-plane/node-client.ts';
import { FakeNode } from './fake-node.ts';

/**
 * A FakeNode behind the node agent's HTTP API (the subset the control plane calls), so that
 * several control-plane processes can share one in-memory node that a test inspects.
 */
export async function startFakeNodeServer(token = 'fake-token') {
  const node = new FakeNode('fake-http-node');
  const server = http.createServer(async (req, res) => {
    const send = (status: number, body?: unknown) => {
      res.writeHead(status, body === undefined ? {} : { 'content-type': 'application/json' });
      res.end(body === undefined ? undefined : JSON.stringify(body));
    };
    if (req.headers.authorization !== `Bearer ${token}`) return send(401, { code: 401, message: 'bad token' });
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = chunks.length ? JSON.parse(Buffer.concat(chunks).toString()) : undefined;
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/v1/node') return send(200, await node.status());
    const m = /^\/v1\/(sandboxes|snapshots)(?:\/([a-z0-9]{20}))?(?:\/(pause|resume|metrics))?$/.exec(url.pathname);
    try {
      if (!m) return send(404, { code: 404, message: 'no route' });
      const [, kind, id, action] = m;
      if (kind === 'snapshots' && id && req.method === 'DELETE') {
        await node.deleteSnapshot(id);
        return send(204);
      }
      if (!id && req.method === 'POST') {
        await node.create(body);
        return send(201, {});
      }
      if (!id && req.method === 'GET') return send(200, await node.inventory());
      if (id && !action && req.method === 'DELETE') {
        await node.kill(id, { deleteSnapshot: url.searchParams.get('deleteSnapshot') === 'true' });
        return send(204);
      }
      if (id && !action && req.method === 'GET') {
        if (!node.containers.has(id)) return send(404, { code: 404, message: 'not here' });
        return send(200, { state: 'running' });
      }
      if (id && action === 'pause') {
        await node.pause(id, { memory: body?.memory ?? true });
        return send(200, {});
      }
      if (id && action === 'resume') {
        await node.resume(id);
        return send(201, {});
      }
      if (id && action === 'metrics') return send(200, await node.metrics(id));
      return send(404, { code: 404, message: 'no route' });
    } catch (e) {
      const err = e as NodeCallError;
      const status = err.code === 'not_found' ? 404 : err.code === 'conflict' ? 409 : err.code === 'unavailable' ? 503 : 500;
      return send(status, { code: status, message: err.message, retryable: err.retryable });
    }
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { node, url, token, close: () => new Promise<void>((r) => server.close(() => r())) };
}
