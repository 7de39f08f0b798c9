// The control plane on PGlite driving a real node agent with real containers, through the real
// `e2b` SDK: what `make up` runs.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Sandbox } from 'e2b';
import type { ControlPlane } from '../src/control-plane/control-plane.ts';
import { getSandbox, eventsOf } from '../src/store/sandboxes.ts';
import { sleep, type TestAgent } from './helpers/agent-harness.ts';
import { startStack, type TestStack } from './helpers/stack.ts';

const KEY = 'e2b_' + 'c0ffee'.repeat(6) + 'abcd';

let stack: TestStack;
let agent: TestAgent;
let cp: ControlPlane;
const opts = { requestTimeoutMs: 60_000 };

before(async () => {
  stack = await startStack(KEY, { proxy: false });
  ({ agent, cp } = stack);
  assert.equal(stack.createdApiKey, KEY, 'NESTBOX_API_KEY becomes the first key');
});

after(async () => {
  await stack?.stop();
});

async function containerState(id: string) {
  return (await agent.agent.runtime.containerState(id))?.status ?? 'gone';
}

describe('control plane with a real node', () => {
  test('SDK create, list, pause, connect, kill drive real containers and snapshots', async () => {
    const sbx = await Sandbox.create('base', { ...opts, timeoutMs: 120_000, metadata: { suite: 'cp-e2e' } });
    assert.equal(await containerState(sbx.sandboxId), 'running');
    const listed = await Sandbox.list({ ...opts, query: { metadata: { suite: 'cp-e2e' } } }).nextItems();
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId]);

    assert.equal(await Sandbox.pause(sbx.sandboxId, opts), true);
    assert.equal(await containerState(sbx.sandboxId), 'gone');
    assert.equal((await agent.agent.runtime.snapshot(sbx.sandboxId)).memory, true);
    assert.equal((await Sandbox.getInfo(sbx.sandboxId, opts)).state, 'paused');

    await Sandbox.connect(sbx.sandboxId, { ...opts, timeoutMs: 60_000 });
    assert.equal(await containerState(sbx.sandboxId), 'running');
    assert.equal((await Sandbox.getInfo(sbx.sandboxId, opts)).state, 'running');

    assert.equal(await Sandbox.kill(sbx.sandboxId, opts), true);
    assert.equal(await containerState(sbx.sandboxId), 'gone');
    assert.equal(await Sandbox.kill(sbx.sandboxId, opts), false, 'a second kill is a 404');
    const events = await eventsOf(cp.db, sbx.sandboxId);
    assert.deepEqual(events.map((e) => e.to), ['starting', 'running', 'pausing', 'paused', 'resuming', 'running', 'killing', 'killed']);
  });

  test('the evictor kills, or pauses, a sandbox within a second of its end', async () => {
    const killMe = await Sandbox.create('base', { ...opts, timeoutMs: 1_000 });
    const pauseMe = await Sandbox.create('base', { ...opts, timeoutMs: 1_000, lifecycle: { onTimeout: 'pause' } });
    const deadline = Date.now() + 15_000;
    let a = '', b = '';
    while (Date.now() < deadline) {
      a = (await getSandbox(cp.db, killMe.sandboxId))!.state;
      b = (await getSandbox(cp.db, pauseMe.sandboxId))!.state;
      if (a === 'killed' && b === 'paused') break;
      await sleep(100);
    }
    assert.equal(a, 'killed');
    assert.equal(b, 'paused');
    const killed = (await getSandbox(cp.db, killMe.sandboxId))!;
    assert.equal(killed.lastReason, 'timeout');
    assert.equal(await containerState(killMe.sandboxId), 'gone');
    assert.equal(await containerState(pauseMe.sandboxId), 'gone');
    assert.ok(await agent.agent.runtime.snapshot(pauseMe.sandboxId));
    // the timeout survives the pause: resuming gives a fresh end, and the snapshot is used
    await Sandbox.connect(pauseMe.sandboxId, { ...opts, timeoutMs: 60_000 });
    assert.equal(await containerState(pauseMe.sandboxId), 'running');
    await Sandbox.kill(pauseMe.sandboxId, opts);
  });

  test('the team limit answers 429 and a bad key 401, through the SDK', async () => {
    await cp.db.query('UPDATE teams SET max_running = 1');
    const one = await Sandbox.create('base', opts);
    await assert.rejects(Sandbox.create('base', opts), (e: Error) => e.name === 'RateLimitError');
    await Sandbox.kill(one.sandboxId, opts);
    await cp.db.query('UPDATE teams SET max_running = 20');
    await assert.rejects(Sandbox.list({ ...opts, apiKey: 'e2b_' + '0'.repeat(40) }).nextItems(), (e: Error) => e.name === 'AuthenticationError');
  });

  test('usage: running time is billed, paused time is not', async () => {
    const sbx = await Sandbox.create('base', { ...opts, timeoutMs: 120_000 });
    await sleep(1000);
    await Sandbox.pause(sbx.sandboxId, opts);
    await sleep(1500);
    await Sandbox.kill(sbx.sandboxId, opts);
    const rows = await cp.db.query<{ s: number; open: number }>(
      `SELECT sum(extract(epoch FROM closed_at - opened_at))::float8 AS s, count(*) FILTER (WHERE closed_at IS NULL)::int AS open
       FROM usage_intervals WHERE sandbox_id = $1`, [sbx.sandboxId]);
    assert.equal(rows[0]!.open, 0);
    // exactly the time the container ran on the node, by the node's own journal (from the
    // moment it started to the moment the dump froze it); the paused 1.5 s are not in it
    const journal = (await agent.agent.runtime.journal.read()).filter((j) => j.sandboxId === sbx.sandboxId);
    const start = journal.find((j) => j.event === 'start' && j.cause === 'create')!;
    const stop = journal.find((j) => j.event === 'stop' && j.cause === 'pause')!;
    const ran = (Date.parse(stop.at) - Date.parse(start.at)) / 1000;
    assert.ok(Math.abs(rows[0]!.s - ran) < 0.001, `billed ${rows[0]!.s}s, ran ${ran}s on the node`);
    const ev = await eventsOf(cp.db, sbx.sandboxId);
    const pausedFor = (ev.find((e) => e.from === 'paused')!.at.getTime() - ev.find((e) => e.to === 'paused')!.at.getTime()) / 1000;
    assert.ok(pausedFor >= 1.5 && rows[0]!.s < ran + 0.001);
  });
});
