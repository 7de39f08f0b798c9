// Containers made ahead (src/runtime/root-pool.ts, container-adoption.ts), through a real node
// agent: a create that takes one gets a sandbox that is its own in every respect (name, files of
// /etc, address, priority, memory through pause and resume) and leaves nothing behind when
// killed; a create of another shape, or one that finds the made container's init dead, makes its
// own; an agent that starts over a dead agent's pool removes its containers.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Agent } from '../src/agent/agent.ts';
import { run } from '../src/runtime/command.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { cgroupNameOf } from '../src/runtime/container-adoption.ts';
import { sandboxPaths } from '../src/runtime/layout.ts';
import { hostIfFor } from '../src/runtime/network.ts';
import { Runc } from '../src/runtime/runc.ts';
import {
  agentClient, COUNTER, createSandbox, eventually, exec, readCount, sleep, startTestAgent, type TestAgent,
} from './helpers/agent-harness.ts';

let a: TestAgent;
const INTERNET = { allowInternetAccess: true, cpuCount: 2, memoryMB: 512 }; // the shape the pool starts with (the control plane's default)

before(async () => {
  a = await startTestAgent();
});
after(async () => {
  await a.stop();
});

const poolRoot = (t: TestAgent) => path.join(t.dataDir, 'runc-pool');

/** The ids of the containers the pool has made (runc's state written) and not handed out. */
async function pooled(t: TestAgent): Promise<string[]> {
  const out: string[] = [];
  for (const n of await readdir(poolRoot(t)).catch(() => [] as string[])) {
    if (n.startsWith('pool-') && (await readFile(path.join(poolRoot(t), n, 'state.json')).then(() => true, () => false))) out.push(n);
  }
  return out;
}

/** The memory limit of the sandbox's cgroup, read on the host where runc's state says it is. */
async function memoryLimit(t: TestAgent, id: string): Promise<string> {
  const paths = (await stateOf(t, id)).cgroup_paths as Record<string, string>;
  return (await readFile(path.join(paths.memory!, 'memory.limit_in_bytes'), 'utf8')).trim();
}

async function stateOf(t: TestAgent, id: string) {
  return JSON.parse(await readFile(path.join(t.dataDir, 'runc', id, 'state.json'), 'utf8')) as Record<string, unknown>;
}

/** Whether the sandbox runs in a container the pool made (its cgroups keep the pool's name). */
async function fromPool(t: TestAgent, id: string): Promise<string | null> {
  const name = cgroupNameOf(await stateOf(t, id));
  return name.startsWith('pool-') ? name : null;
}

async function cgroupsNamed(name: string): Promise<string> {
  return (await run(['find', '/sys/fs/cgroup', '-maxdepth', '3', '-name', name], { allowFailure: true })).stdout.trim();
}

async function linkExists(name: string): Promise<boolean> {
  return (await readFile('/proc/self/net/dev', 'utf8')).split('\n').some((l) => l.trimStart().startsWith(`${name}:`));
}

test('a create that takes a container made ahead gets a sandbox of its own: name, files, address, priority, memory; a kill leaves nothing', async () => {
  await eventually(() => pooled(a), (ids) => ids.length > 0, 'a container made ahead');
  const id = await createSandbox(a, { ...INTERNET, envVars: { GREETING: 'hi' } });
  const poolId = await fromPool(a, id);
  assert.ok(poolId, 'the create took the pool\'s container');
  assert.ok(!(await pooled(a)).includes(poolId), 'it left the pool\'s runc root');
  const { address } = await a.json('GET', `/v1/sandboxes/${id}`);
  const r = await exec(a, id, 'hostname; cat /etc/hostname; grep -c "$(hostname)" /etc/hosts; awk \'{print $19}\' /proc/1/stat /proc/self/stat; echo $GREETING; cat /etc/nestbox/env.json');
  assert.deepEqual(r.stdout.trim().split('\n'), [id, id, '1', '0', '0', 'hi', '{"GREETING":"hi"}'],
    'its host name and files are its own; its init and its processes run at the normal priority');
  assert.ok((await readFile(path.join(sandboxPaths(a.agent.runtime.cfg, id).etcDir, 'hosts'), 'utf8')).includes(`${address}\t${id}`));
  assert.ok(await linkExists(hostIfFor(address)), 'its link is named for its address');
  assert.deepEqual(await a.agent.runtime.network.heldBy(id), [`address claim ${address}`], 'the address is claimed by the sandbox');
  assert.deepEqual(await a.agent.runtime.network.heldBy(poolId), [], 'and no longer by the pool');
  const state = await stateOf(a, id);
  assert.equal(state.id, id);
  assert.ok(!JSON.stringify(state).includes(path.join('root-pool', poolId)), 'runc\'s state names no path of the pool');

  // Memory through pause and resume.
  await exec(a, id, COUNTER);
  await sleep(300);
  const counted = await readCount(a, id);
  await a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true });
  await a.json('POST', `/v1/sandboxes/${id}/resume`, {});
  assert.ok((await readCount(a, id)) >= counted, 'the counter went on from where it was');
  assert.equal((await exec(a, id, 'hostname')).stdout.trim(), id);
  assert.equal(await cgroupsNamed(poolId), '', 'the pool-named cgroups went with the paused container');

  // A kill leaves nothing behind (a second pooled sandbox, killed while running).
  await eventually(() => pooled(a), (ids) => ids.length > 0, 'another container made ahead');
  const id2 = await createSandbox(a, INTERNET);
  const poolId2 = (await fromPool(a, id2))!;
  assert.ok(poolId2);
  const address2 = (await a.json('GET', `/v1/sandboxes/${id2}`)).address;
  await a.json('DELETE', `/v1/sandboxes/${id2}`);
  await a.agent.runtime.idle();
  assert.equal(await cgroupsNamed(poolId2), '', 'its cgroups are gone');
  assert.equal(await linkExists(hostIfFor(address2)), false, 'its link is gone');
  assert.deepEqual(await a.agent.runtime.network.heldBy(id2), [], 'its address is free');
  await a.json('DELETE', `/v1/sandboxes/${id}`);
});

test('a create of another shape makes its own container, and the pool makes its next ones in that shape', async () => {
  await eventually(() => pooled(a), (ids) => ids.length > 0, 'a container made ahead');
  const other = { allowInternetAccess: false, memoryMB: 768 };
  const id = await createSandbox(a, other);
  assert.equal(await fromPool(a, id), null, 'not the pool\'s: made for this create');
  assert.equal(await memoryLimit(a, id), String(768 * 1024 * 1024));
  // The pool's next containers have the new shape: a create of it takes one.
  const next = await eventually(async () => {
    const x = await createSandbox(a, other);
    const hit = await fromPool(a, x);
    if (!hit) await a.json('DELETE', `/v1/sandboxes/${x}`);
    return hit ? x : null;
  }, (x) => x !== null, 'a create of the new shape taking a pooled container');
  assert.equal(await memoryLimit(a, next!), String(768 * 1024 * 1024), 'the pool made it with the limits asked');
  assert.equal(a.agent.runtime.network.hasInternet((await a.json('GET', `/v1/sandboxes/${next}`)).address), false);
  for (const x of [id, next!]) await a.json('DELETE', `/v1/sandboxes/${x}`);
});

test('a container made ahead whose init was killed is never started: the create makes its own', async () => {
  // Back to the first shape, and every container of the pool's killed from outside.
  const shape = INTERNET;
  const warm = await createSandbox(a, shape);
  await a.json('DELETE', `/v1/sandboxes/${warm}`);
  // The pool full and done (no refill waiting to make more): every container it holds is killed.
  await a.agent.runtime.poolFilled();
  const ids = await pooled(a);
  assert.ok(ids.length > 0, 'containers made ahead');
  for (const poolId of ids) {
    const st = JSON.parse(await readFile(path.join(poolRoot(a), poolId, 'state.json'), 'utf8'));
    process.kill(st.init_process_pid, 'SIGKILL');
  }
  // A start of such a container (without runc, through its exec fifo) fails; it does not wait forever.
  await assert.rejects(new Runc(poolRoot(a), a.agent.runtime.cfg.criuBinDir).start(ids[0]!), /init is gone/);
  const id = await createSandbox(a, shape);
  assert.equal(await fromPool(a, id), null, 'the dead container was not taken');
  assert.equal((await exec(a, id, 'hostname')).stdout.trim(), id);
  await a.json('DELETE', `/v1/sandboxes/${id}`);
});

test('an agent that starts over a dead agent\'s pool removes its containers, their cgroups and address claims', async () => {
  const b = await startTestAgent();
  let restarted: Agent | null = null;
  try {
    await eventually(() => pooled(b), (x) => x.length > 0, 'a container made ahead');
    await b.agent.runtime.poolFilled(); // none is being made while the agent "dies"
    const left = await pooled(b);
    const pids = await Promise.all(left.map(async (poolId) => JSON.parse(await readFile(path.join(poolRoot(b), poolId, 'state.json'), 'utf8')).init_process_pid as number));
    // The agent dies: its pool is never stopped.
    (b.agent.runtime as unknown as { roots: { stop(): Promise<void> } }).roots.stop = async () => undefined;
    await b.agent.stop();
    assert.deepEqual(await pooled(b), left, 'the dead agent left its containers');
    restarted = new Agent({ config: { ...runtimeConfigFromEnv(), dataDir: b.dataDir, snapshotDir: b.snapshotDir }, port: 0, nodeToken: b.agent.nodeToken });
    const url = await restarted.start();
    const now = await pooled(b);
    assert.ok(left.every((x) => !now.includes(x)), 'none of the dead agent\'s containers is in the pool');
    for (const poolId of left) {
      assert.equal(await cgroupsNamed(poolId), '', `${poolId}'s cgroups are gone`);
      assert.deepEqual(await restarted.runtime.network.heldBy(poolId), [], `${poolId}'s address is free`);
    }
    for (const pid of pids) {
      const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => null);
      assert.ok(stat === null || /^[ZX]$/.test(stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3)), `its init ${pid} is dead`);
    }
    const { json } = agentClient(url, restarted.nodeToken);
    const inv = await json<{ sandboxes: unknown[] }>('GET', '/v1/sandboxes');
    assert.deepEqual(inv.sandboxes, [], 'the pool\'s containers are no sandboxes');
  } finally {
    await restarted?.stop();
    await b.stop().catch(() => undefined);
  }
});
