// Graceful shutdown of a node, with real containers: a node agent (its own process) with
// sandboxes running user processes gets SIGTERM while creates are in flight. No admitted create
// fails, new ones are refused with 503 + Retry-After, every live sandbox is paused with reason
// `drain`, and after the agent starts again the control plane resumes every one of them with its
// process memory intact.
import { unmountPoolLeftovers } from './helpers/pool-leftovers.ts';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ControlPlane } from '../src/control-plane/control-plane.ts';
import { eventsOf, getSandbox } from '../src/store/sandboxes.ts';
import { AgentProcess } from './helpers/agent-process.ts';

const KEY = 'e2b_' + 'd'.repeat(40);
// A counter that lives in the process's memory: a restarted process would count from 1 again.
const COUNTER = ['python3', '-c', [
  'import time',
  'i = 0',
  'while True:',
  '    i += 1',
  "    open('/tmp/count.tmp', 'w').write(str(i))",
  "    __import__('os').replace('/tmp/count.tmp', '/tmp/count')",
  '    time.sleep(0.05)',
].join('\n')];

let agent: AgentProcess;
let cp: ControlPlane;
let apiUrl: string;
let dir: string;

const api = (method: string, p: string, body?: unknown) =>
  fetch(apiUrl + p, {
    method,
    headers: { 'x-api-key': KEY, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });

async function startCounter(id: string) {
  const ac = new AbortController();
  const res = await agent.api('POST', `/v1/sandboxes/${id}/processes`, { argv: COUNTER, user: 'user' });
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  const first = new TextDecoder().decode((await reader.read()).value);
  assert.match(first, /"type":"start"/);
  await reader.cancel();
  ac.abort();
}

async function count(id: string): Promise<number> {
  const res = await agent.api('GET', `/v1/sandboxes/${id}/files?path=/tmp/count&user=user`);
  if (res.status !== 200) return -1;
  return Number(await res.text());
}

async function until(what: string, fn: () => Promise<boolean>, ms = 30_000) {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    if (await fn()) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`timed out waiting for ${what}`);
}

before(async () => {
  agent = new AgentProcess({ env: { NESTBOX_DRAIN_TIMEOUT_S: '60', NESTBOX_DRAIN_POLICY: 'pause' } });
  await agent.start();
  dir = await mkdtemp(path.join(tmpdir(), 'nestbox-drain-'));
  cp = new ControlPlane({
    dataDir: dir, port: 0, proxyPort: null, bootstrapApiKey: KEY,
    nodes: [{ id: agent.nodeId, url: agent.url, token: agent.token }],
    timings: { drainWatchMs: 200 },
  });
  apiUrl = (await cp.start()).url;
});

after(async () => {
  const ids = await cp.db.query<{ id: string }>("SELECT id FROM sandboxes WHERE state NOT IN ('killed', 'failed')");
  for (const { id } of ids) await api('DELETE', `/sandboxes/${id}`).catch(() => undefined);
  await cp.stop();
  if (agent.proc && agent.proc.exitCode === null) {
    agent.signal('SIGTERM');
    await agent.exited;
  }
  await rm(dir, { recursive: true, force: true });
  await unmountPoolLeftovers(agent.base);
  await rm(agent.base, { recursive: true, force: true });
});

test('SIGTERM with creates in flight: admitted creates finish, live sandboxes pause, and all resume after restart with memory intact', async () => {
  // Two sandboxes with a process counting in memory.
  const running: string[] = [];
  for (let i = 0; i < 2; i++) {
    const res = await api('POST', '/sandboxes', { templateID: 'base', timeout: 600 });
    assert.equal(res.status, 201, await res.clone().text());
    const id = (await res.json()).sandboxID as string;
    running.push(id);
    await startCounter(id);
  }
  for (const id of running) await until(`${id} counts`, async () => (await count(id)) > 10);

  // Creates in flight when the signal arrives: batches are sent until the node is seen working
  // on one, and the signal goes out at that moment (a batch that finishes first just adds
  // running sandboxes).
  const before = new Map<string, number>();
  for (const id of running) before.set(id, await count(id));
  const creates: Array<Promise<Response>> = [];
  let signalled = false;
  for (let round = 0; round < 20 && !signalled; round++) {
    let settled = false;
    const batch = Array.from({ length: 3 }, () => api('POST', '/sandboxes', { templateID: 'base', timeout: 600 }));
    void Promise.allSettled(batch).then(() => (settled = true));
    creates.push(...batch);
    while (!settled && !signalled) {
      if ((await agent.json('GET', '/v1/node')).inFlightStarts > 0) {
        agent.signal('SIGTERM');
        signalled = true;
      }
    }
  }
  assert.ok(signalled, 'a create was seen in flight on the node');

  const answers = await Promise.all(creates);
  const created: string[] = [];
  for (const res of answers) {
    const body = await res.json();
    assert.ok(res.status === 201 || res.status === 503, `create answered ${res.status}: ${JSON.stringify(body)}`);
    if (res.status === 201) created.push(body.sandboxID);
    else assert.equal(res.headers.get('retry-after'), '1', 'a refused start says when to retry');
  }
  assert.ok(created.length >= 1, 'the admitted create finished');

  // While draining, new starts are refused as retryable: 503 with Retry-After.
  await until('the control plane sees the drain', async () => {
    const res = await api('POST', '/sandboxes', { templateID: 'base', timeout: 600 });
    if (res.status === 201) {
      created.push((await res.json()).sandboxID); // placed before the drain was seen: it is paused too
      return false;
    }
    assert.equal(res.status, 503);
    assert.equal(res.headers.get('retry-after'), '1');
    return true;
  });

  const code = await agent.exited;
  assert.equal(code, 0, `agent exit: ${agent.stderr}`);
  assert.match(agent.stderr, /drained: (\d+) of \1 live sandboxes left the node in time/);
  for (const id of [...running, ...created]) {
    const row = (await getSandbox(cp.db, id))!;
    assert.equal(row.state, 'paused', `${id} paused by the drain`);
    assert.equal(row.lastReason, 'drain');
    const events = await eventsOf(cp.db, id);
    assert.deepEqual(events.slice(-2).map((e) => `${e.to}:${e.reason}`), ['pausing:drain', 'paused:drain']);
    const open = await cp.db.query('SELECT 1 FROM usage_intervals WHERE sandbox_id = $1 AND closed_at IS NULL', [id]);
    assert.equal(open.length, 0, 'a paused sandbox bills nothing');
  }

  // The node comes back: the control plane resumes every sandbox the drain paused (reason
  // drain), its process still counting from where it was (memory intact), the same process.
  await agent.start();
  await until('the node takes starts again', async () => !cp.lifecycle['nodes'].isDraining(agent.nodeId));
  for (const id of [...running, ...created]) {
    await until(`${id} resumed by the drainer`, async () => (await getSandbox(cp.db, id))!.state === 'running');
    const events = await eventsOf(cp.db, id);
    assert.deepEqual(events.slice(-2).map((e) => `${e.to}:${e.reason}`), ['resuming:drain', 'running:resumed']);
    const res = await api('POST', `/sandboxes/${id}/connect`, { timeout: 600 });
    assert.equal(res.status, 200, `${id} is running: ${await res.clone().text()}`);
  }
  for (const id of running) {
    const was = before.get(id)!;
    const now = await count(id);
    assert.ok(now >= was, `${id}: counter continued from ${was} (now ${now}), not restarted`);
    await until(`${id} still counting`, async () => (await count(id)) > now);
  }
});

test('the drain deadline is honoured: with nobody to pause them, the node stops its sandboxes itself and says so', async (t) => {
  const lonely = new AgentProcess({ env: { NESTBOX_DRAIN_TIMEOUT_S: '1', NESTBOX_DRAIN_POLICY: 'pause' } });
  await lonely.start();
  try {
    const id = 'drainalone' + Math.random().toString(36).slice(2, 12).padEnd(10, '0');
    await lonely.json('POST', '/v1/sandboxes', { sandboxId: id, template: 'base', envVars: {}, metadata: {}, allowInternetAccess: false });
    const started = Date.now();
    lonely.signal('SIGTERM');
    const code = await lonely.exited;
    t.diagnostic(`drain with a 1 s deadline ended after ${Date.now() - started} ms`);
    assert.equal(code, 1, 'a drain that had to force-stop sandboxes is reported as a failure');
    assert.match(lonely.stderr, new RegExp(`still running at the deadline and were stopped by the node \\(${id}\\)`));
    assert.match(lonely.stderr, /drained: 0 of 1 live sandboxes left the node in time/);
    // Nothing is left running: the node holds no container after a restart.
    await lonely.start();
    const inv = await lonely.json<{ sandboxes: unknown[] }>('GET', '/v1/sandboxes');
    assert.deepEqual(inv.sandboxes, []);
  } finally {
    lonely.signal('SIGKILL');
    await lonely.exited;
    await unmountPoolLeftovers(lonely.base);
    await rm(lonely.base, { recursive: true, force: true });
  }
});
