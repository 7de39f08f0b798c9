// The event stream: the outbox in order, per team, resumable, with holes in the sequence handled.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ControlPlane } from '../src/control-plane/control-plane.ts';
import { OutboxReader } from '../src/store/events.ts';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { verifyWebhookSignature } from '../src/control-plane/webhooks/signature.ts';
import { FakeNode } from './helpers/fake-node.ts';
import { forEachDatabase } from './helpers/databases.ts';

const KEY = 'e2b_' + '7e'.repeat(20);
const here = path.dirname(fileURLToPath(import.meta.url));

/** Reads SSE frames from a stream until `count` lifecycle events arrived. */
async function readEvents(res: Response, count: number) {
  const reader = res.body!.getReader();
  let buf = '';
  const events: Array<{ id: number; data: any }> = [];
  while (events.length < count) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += Buffer.from(value).toString();
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const frame = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const id = /^id: (\d+)$/m.exec(frame);
      const data = /^data: (.*)$/m.exec(frame);
      if (id && data) events.push({ id: Number(id[1]), data: JSON.parse(data[1]!) });
    }
  }
  await reader.cancel();
  return events;
}

test('GET /events streams lifecycle events live and resumes from Last-Event-ID', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-events-'));
  const cp = new ControlPlane({ dataDir: dir, port: 0, proxyPort: null, loops: false, bootstrapApiKey: KEY, nodeClients: [new FakeNode()] });
  const { url } = await cp.start();
  try {
    // The server runs in this process: the CLI must be awaited, not run synchronously.
    const runCli = (args: string[], key: string) => new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      execFile(path.join(here, '../bin/nestbox'), args, { env: { ...process.env, E2B_API_URL: url, E2B_API_KEY: key }, timeout: 60_000 },
        (err, stdout, stderr) => resolve({ status: err ? ((err as { code?: number }).code ?? null) : 0, stdout, stderr }));
    });
    const api = (m: string, p: string, body?: unknown) => fetch(url + p, {
      method: m, headers: { 'x-api-key': KEY, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined,
    });
    assert.equal((await fetch(url + '/events')).status, 401);
    const live = await api('GET', '/events');
    assert.equal(live.headers.get('content-type'), 'text/event-stream');
    const created = await (await api('POST', '/sandboxes', { templateID: 'base' })).json();
    await api('POST', `/sandboxes/${created.sandboxID}/pause`);
    const seen = await readEvents(live, 4);
    assert.deepEqual(seen.map((e) => e.data.to), ['starting', 'running', 'pausing', 'paused']);
    assert.ok(seen.every((e) => e.data.sandboxId === created.sandboxID && typeof e.data.id === 'string'));
    // resume after the second event: exactly the rest, then what happens next
    const resumed = await fetch(url + '/events', { headers: { 'x-api-key': KEY, 'last-event-id': String(seen[1]!.id) } });
    await api('DELETE', `/sandboxes/${created.sandboxID}`);
    const rest = await readEvents(resumed, 4);
    assert.deepEqual(rest.map((e) => e.data.to), ['pausing', 'paused', 'killing', 'killed']);
    assert.deepEqual(rest.slice(0, 2).map((e) => e.data.id), seen.slice(2).map((e) => e.data.id), 'stable event ids');
    const bad = await fetch(url + '/events?after=-1', { headers: { 'x-api-key': KEY } });
    assert.equal(bad.status, 400);
    // the CLI lists the history (and, with --json, one object per line)
    const cli = await runCli(['events', '--json'], KEY);
    assert.equal(cli.status, 0, cli.stderr);
    const lines = cli.stdout.trim().split('\n').map((l) => JSON.parse(l));
    assert.deepEqual(lines.map((l) => l.to), ['starting', 'running', 'pausing', 'paused', 'killing', 'killed']);
    const wrongKey = await runCli(['events'], 'e2b_' + '0'.repeat(40));
    assert.equal(wrongKey.status, 1);
    assert.match(wrongKey.stderr, /HTTP 401/);
  } finally {
    await cp.stop();
    await rm(dir, { recursive: true, force: true });
  }
});

forEachDatabase('outbox reader', (t) => {
  test('stops at a hole in the sequence until it is old, then skips it', async () => {
    const db = await t.db();
    const insert = (seq: number) => db.query(
      `INSERT INTO lifecycle_events (seq, id, sandbox_id, team_id, from_state, to_state, reason, generation, at)
       VALUES ($1, gen_random_uuid(), 's', 't', NULL, 'starting', 'requested', 1, now())`, [seq]);
    await insert(1);
    await insert(3); // 2 is still being written (or was rolled back)
    let clock = 0;
    const r = new OutboxReader(db, 0, 1000, () => clock);
    assert.deepEqual((await r.next()).map((e) => e.seq), [1]);
    assert.deepEqual(await r.next(), [], 'waits at the hole');
    await insert(2); // the late writer commits
    assert.deepEqual((await r.next()).map((e) => e.seq), [2, 3], 'nothing lost');
    await insert(5);
    assert.deepEqual(await r.next(), []);
    clock = 1500; // the hole at 4 is old: a rolled-back write
    assert.deepEqual((await r.next()).map((e) => e.seq), [5]);
  });
});

test('shutdown lets an eviction in flight finish: no sandbox is left half killed', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-shutdown-'));
  const node = new FakeNode();
  node.faults.latencyMs = 400; // the node takes its time to kill
  const cp = new ControlPlane({ dataDir: dir, port: 0, proxyPort: null, loops: true, bootstrapApiKey: KEY, nodeClients: [node] });
  const { url } = await cp.start();
  try {
    const res = await fetch(url + '/sandboxes', {
      method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify({ templateID: 'base', timeout: 1 }),
    });
    const { sandboxID } = (await res.json()) as { sandboxID: string };
    // wait until the evictor has started the kill, then stop the control plane at once
    for (let i = 0; i < 100; i++) {
      const rows = await cp.db.query<{ state: string }>('SELECT state FROM sandboxes WHERE id = $1', [sandboxID]);
      if (rows[0]!.state === 'killing') break;
      await new Promise((r) => setTimeout(r, 20));
    }
    await cp.stop();
    assert.equal(node.containers.has(sandboxID), false, 'the node call completed');
    const again = new ControlPlane({ dataDir: dir, port: 0, proxyPort: null, loops: false, nodeClients: [node] });
    await again.start();
    const rows = await again.db.query<{ state: string; last_reason: string }>('SELECT state, last_reason FROM sandboxes WHERE id = $1', [sandboxID]);
    await again.stop();
    assert.deepEqual(rows[0], { state: 'killed', last_reason: 'timeout' });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('webhooks through a running control plane: a registered URL receives the sandbox\'s events, signed, in order', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-webhook-'));
  const received: Array<{ body: string; signature: string; eventId: string }> = [];
  const server = http.createServer((req, res) => {
    let body = '';
    req.on('data', (c) => (body += c));
    req.on('end', () => {
      received.push({ body, signature: String(req.headers['nestbox-signature']), eventId: String(req.headers['nestbox-event-id']) });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const hookUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/hook`;
  const cp = new ControlPlane({ dataDir: dir, port: 0, proxyPort: null, loops: true, bootstrapApiKey: KEY, nodeClients: [new FakeNode()] });
  const { url } = await cp.start();
  const call = (method: string, p: string, body?: unknown) => fetch(url + p, {
    method, headers: { 'x-api-key': KEY, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined,
  });
  try {
    const reg = await call('POST', '/nestbox/v1/webhooks', { url: hookUrl });
    assert.equal(reg.status, 201);
    const { secret, id: webhookId } = (await reg.json()) as { secret: string; id: string };
    const { sandboxID } = (await (await call('POST', '/sandboxes', { templateID: 'base', timeout: 60 })).json()) as { sandboxID: string };
    assert.equal((await call('POST', `/sandboxes/${sandboxID}/pause`)).status, 204);
    assert.equal((await call('DELETE', `/sandboxes/${sandboxID}`)).status, 204);
    const want = ['starting', 'running', 'pausing', 'paused', 'killing', 'killed'];
    for (let i = 0; i < 200 && received.length < want.length; i++) await new Promise((r) => setTimeout(r, 50));
    const bodies = received.map((r) => JSON.parse(r.body));
    assert.deepEqual(bodies.map((b) => `${b.sandboxId === sandboxID}:${b.to}`), want.map((s) => `true:${s}`));
    for (const r of received) {
      assert.ok(verifyWebhookSignature(secret, r.signature, r.body), 'signed with the secret');
      assert.equal(r.eventId, JSON.parse(r.body).id, 'the event id is stable and in the header');
    }
    const log = (await (await call('GET', `/nestbox/v1/webhooks/${webhookId}/deliveries`)).json()) as Array<{ outcome: string }>;
    assert.equal(log.filter((d) => d.outcome === 'delivered').length, want.length);
  } finally {
    await cp.stop();
    server.close();
    await rm(dir, { recursive: true, force: true });
  }
});
