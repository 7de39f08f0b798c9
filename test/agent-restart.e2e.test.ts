// An agent that restarts rebuilds its inventory from the host, keeps live sandboxes it did not
// start in this run, and repairs what a crash cut short. Real containers.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Agent } from '../src/agent/agent.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { sandboxPaths, snapshotPaths } from '../src/runtime/layout.ts';
import { removeTree, unmount } from '../src/runtime/fs-util.ts';
import { run } from '../src/runtime/command.ts';
import { agentClient, COUNTER, createSandbox, exec, readCount, sleep, startTestAgent, type TestAgent } from './helpers/agent-harness.ts';

let a: TestAgent;

/** The sandbox's counter (COUNTER) goes on: the sandbox still runs. */
async function assertStillCounting(id: string) {
  const n1 = await readCount(a, id);
  await counts(id, n1, 'still running');
}

/** Waits (up to 15 s, a loaded host's scheduling) until the counter of `id` is past `n`. */
async function counts(id: string, n: number, what: string) {
  for (let i = 0; (await readCount(a, id)) <= n; i++) {
    assert.ok(i < 75, what);
    await sleep(200);
  }
}

before(async () => {
  a = await startTestAgent();
});
after(async () => {
  await a.stop();
});


test('a restarted agent finds its live sandboxes and serves them; nothing is pruned', async () => {
  const id = await createSandbox(a);
  await exec(a, id, COUNTER);
  await counts(id, 0, 'the counter counts');
  const before = await readCount(a, id);
  // The agent process goes away (its API closes); the containers do not depend on it.
  await a.agent.stop();
  a = await startTestAgentOn(a);
  const inv = await a.json<{ sandboxes: Array<{ sandboxId: string; state: string; startedAt: string | null }> }>('GET', '/v1/sandboxes');
  const entry = inv.sandboxes.find((x) => x.sandboxId === id);
  assert.equal(entry?.state, 'running');
  assert.ok(entry?.startedAt, 'its start time survives the restart');
  await counts(id, before, `the process kept running through the restart (from ${before})`);
  // The journal recorded the start once, and nothing else.
  const journal = (await readFile(path.join(a.dataDir, 'journal.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l));
  assert.deepEqual(journal.filter((j) => j.sandboxId === id).map((j) => j.event), ['start']);
  await a.agent.runtime.kill(id);
});

/** A fresh agent on the same directories and token as `prev`, as after a restart. */
async function startTestAgentOn(prev: TestAgent): Promise<TestAgent> {
  const config = { ...runtimeConfigFromEnv(), dataDir: prev.dataDir, snapshotDir: prev.snapshotDir };
  const agent = new Agent({ config, port: 0, nodeToken: prev.agent.nodeToken });
  const url = await agent.start();
  const { api, json } = agentClient(url, agent.nodeToken);
  return {
    ...prev, agent, url, api, json,
    stop: async () => {
      for (const x of await agent.runtime.inventory()) await agent.runtime.kill(x.sandboxId).catch(() => undefined);
      await agent.stop();
      await rm(path.dirname(prev.dataDir), { recursive: true, force: true });
    },
  };
}

test('a resume cut short by a crash is repaired: the disk goes back and the snapshot resumes with its memory', async () => {
  const id = await createSandbox(a);
  await exec(a, id, COUNTER);
  await exec(a, id, 'echo kept > /home/user/file');
  await counts(id, 0, 'the counter counts');
  const before = await readCount(a, id);
  await a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true });
  await a.agent.runtime.idle(); // (the pause's remains go after its answer)
  // What a resume leaves when the agent dies right after moving the disk out of the snapshot
  // and mounting it.
  const cfg = a.agent.runtime.cfg;
  const p = sandboxPaths(cfg, id);
  const s = snapshotPaths(cfg, id);
  await mkdir(p.disk, { recursive: true });
  await rename(s.diskImage, p.diskImage);
  await run(['mount', '-o', 'loop', p.diskImage, p.disk]);
  const notes = await a.agent.runtime.recover();
  assert.ok(notes.some((n) => n.startsWith(id) && /resume was cut short/.test(n)), notes.join('\n'));
  assert.ok((await readdir(s.dir)).includes('disk.img'), 'the snapshot is whole again');
  // What is left of the sandbox directory is removed by a kill, which keeps the snapshot.
  await a.agent.runtime.kill(id);
  assert.ok((await readdir(s.dir)).includes('disk.img'));
  await a.json('POST', `/v1/sandboxes/${id}/resume`);
  assert.equal((await exec(a, id, 'cat /home/user/file')).stdout, 'kept\n');
  const after = await readCount(a, id);
  assert.ok(after >= before, `memory intact: the counter went on from ${before} (now ${after})`);
  await counts(id, after, 'and keeps counting');
  await a.agent.runtime.kill(id, { deleteSnapshot: true });
});

test('a resume cut short after its start was journaled, before its snapshot went: recovery drops the snapshot and journals no second start', async () => {
  const id = await createSandbox(a);
  await exec(a, id, COUNTER);
  await a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true });
  const s = snapshotPaths(a.agent.runtime.cfg, id);
  const meta = await readFile(s.meta, 'utf8');
  await a.json('POST', `/v1/sandboxes/${id}/resume`);
  const starts = async () => (await readFile(path.join(a.dataDir, 'journal.jsonl'), 'utf8')).trim().split('\n')
    .map((l) => JSON.parse(l)).filter((e) => e.sandboxId === id && e.event === 'start');
  const journaled = await starts();
  assert.equal(journaled.at(-1)?.cause, 'resume');
  // What a resume leaves when the agent dies once the sandbox runs and its start is on record,
  // before the snapshot (its disk already moved out of it) is dropped.
  await mkdir(s.dir, { recursive: true });
  await writeFile(s.meta, meta);
  const notes = await a.agent.runtime.recover();
  assert.ok(notes.some((n) => n.startsWith(id) && /resume had completed/.test(n)), notes.join('\n'));
  assert.ok(!(await readdir(a.agent.runtime.cfg.snapshotDir)).includes(id), 'the consumed snapshot is gone');
  assert.deepEqual(await starts(), journaled, 'its start is journaled once');
  await assertStillCounting(id);
  await a.agent.runtime.kill(id);
});

test('a pause that answered and whose agent died before the container directory went: recovery removes it, the snapshot resumes', async () => {
  const id = await createSandbox(a);
  await exec(a, id, 'echo kept > /home/user/file');
  const cfg = a.agent.runtime.cfg;
  const p = sandboxPaths(cfg, id);
  const record = await readFile(p.record, 'utf8');
  await a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true });
  await a.agent.runtime.idle(); // (the pause's remains go after its answer)
  // What is left when the agent dies right after the answer: the directory, its disk moved
  // into the snapshot, no container.
  await mkdir(path.join(p.dir, 'criu'), { recursive: true });
  await writeFile(p.record, record);
  const notes = await a.agent.runtime.recover();
  assert.ok(notes.some((n) => n.startsWith(id) && /remains of a pause/.test(n)), notes.join('\n'));
  assert.ok(!(await readdir(path.join(cfg.dataDir, 'sandboxes'))).includes(id), 'its directory is gone');
  assert.ok(!(await a.agent.runtime.inventory()).some((e) => e.sandboxId === id), 'the inventory lists no remains');
  await a.json('POST', `/v1/sandboxes/${id}/resume`);
  assert.equal((await exec(a, id, 'cat /home/user/file')).stdout, 'kept\n');
  // The resumed sandbox (running, its snapshot consumed) and a new one are left alone.
  const other = await createSandbox(a);
  assert.ok(!(await a.agent.runtime.recover()).some((n) => n.startsWith(id) || n.startsWith(other)));
  await a.agent.runtime.kill(id, { deleteSnapshot: true });
  await a.agent.runtime.kill(other);
});

test('a pause cut short before its dump is abandoned: the partial snapshot goes, the sandbox runs on', async () => {
  const id = await createSandbox(a);
  await exec(a, id, COUNTER);
  const cfg = a.agent.runtime.cfg;
  const staging = snapshotPaths(cfg, id, `.${id}.partial-0badf00d`);
  await mkdir(path.join(staging.dir, 'checkpoint'), { recursive: true });
  const notes = await a.agent.runtime.recover();
  assert.ok(notes.some((n) => n.startsWith(id) && /before its dump completed/.test(n)), notes.join('\n'));
  assert.ok(!(await readdir(cfg.snapshotDir)).some((n) => n.includes(id)), 'no partial snapshot left');
  await assertStillCounting(id);
  await a.agent.runtime.kill(id);
});

test('a snapshot from before sandboxes had disks (its upper layer a directory, no manifest) resumes with its files', async () => {
  const id = await createSandbox(a);
  await exec(a, id, 'echo old-format > /home/user/kept');
  await a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: false });
  // Turn the snapshot into the old layout: the disk's upper layer as a directory beside snapshot.json.
  const s = snapshotPaths(a.agent.runtime.cfg, id);
  const mnt = `${s.dir}.mnt`;
  await mkdir(mnt);
  await run(['mount', '-o', 'loop', s.diskImage, mnt]);
  await run(['cp', '-a', `${mnt}/upper`, s.legacyUpper]);
  await unmount(mnt);
  await rm(mnt, { recursive: true });
  await rm(s.diskImage);
  await rm(path.join(s.dir, 'manifest.json'), { force: true });
  assert.deepEqual((await readdir(s.dir)).sort(), ['snapshot.json', 'upper']);
  await a.agent.runtime.store.prepare(); // what an agent start does with such a snapshot
  await a.json('POST', `/v1/sandboxes/${id}/resume`);
  assert.equal((await exec(a, id, 'cat /home/user/kept')).stdout, 'old-format\n');
  assert.equal((await exec(a, id, 'touch /home/user/new && echo ok')).stdout, 'ok\n', 'on a disk of its own');
  await a.agent.runtime.kill(id, { deleteSnapshot: true });
});

test('removing a sandbox directory never deletes through a mount left in it', async () => {
  const dir = path.join(path.dirname(a.dataDir), 'mount-guard');
  const inner = path.join(dir, 'rootfs');
  await mkdir(inner, { recursive: true });
  await run(['mount', '-t', 'tmpfs', 'tmpfs', inner]);
  try {
    await writeFile(path.join(inner, 'precious'), 'x');
    await assert.rejects(removeTree(dir), /still mounted under it: .*rootfs/);
    assert.equal(await readFile(path.join(inner, 'precious'), 'utf8'), 'x', 'nothing was deleted through the mount');
  } finally {
    await unmount(inner);
  }
  await removeTree(dir);
  await assert.rejects(readdir(dir));
});
