// The runtime reads a container's status from runc's state file and /proc, and kills its init
// itself (Runc.status, Runc.stop): a pid that is no longer the container's init is never
// signalled, and a live init is killed and waited for.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { access, mkdir, mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Runc } from '../src/runtime/runc.ts';

const ID = 'aaaaaaaaaaaaaaaaaaaa';

async function startTime(pid: number): Promise<string> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]!;
}

async function withRoot(fn: (root: string, runc: Runc) => Promise<void>) {
  const root = await mkdtemp(path.join(tmpdir(), 'nestbox-runc-status-'));
  try {
    await fn(root, new Runc(root, '/nonexistent'));
  } finally {
    await rm(root, { recursive: true, force: true });
  }
}

async function saveState(root: string, pid: number, start: string | number) {
  await mkdir(path.join(root, ID), { recursive: true });
  await writeFile(path.join(root, ID, 'state.json'), JSON.stringify({ id: ID, init_process_pid: pid, init_process_start: start }));
}

function sleeper() {
  const child = spawn('sleep', ['1000'], { stdio: 'ignore' });
  const exited = new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, signal) => resolve(signal)));
  return { pid: child.pid!, exited, child };
}

test('no state file: no container', async () => {
  await withRoot(async (_root, runc) => assert.equal(await runc.status(ID), null));
});

test('a pid whose start time is not the init\'s (reused) is stopped, and stop() never signals it', async () => {
  await withRoot(async (root, runc) => {
    const s = sleeper();
    try {
      await saveState(root, s.pid, Number(await startTime(s.pid)) - 1);
      assert.deepEqual(await runc.status(ID), { pid: s.pid, status: 'stopped' });
      await runc.stop(ID);
      assert.equal(s.child.exitCode, null);
      assert.doesNotThrow(() => process.kill(s.pid, 0), 'the unrelated process still runs');
    } finally {
      s.child.kill('SIGKILL');
    }
  });
});

test('a live init is running (created while the exec fifo is there), and stop() kills it and waits until it is dead', async () => {
  await withRoot(async (root, runc) => {
    const s = sleeper();
    try {
      const started = await startTime(s.pid);
      await saveState(root, s.pid, started);
      assert.deepEqual(await runc.status(ID), { pid: s.pid, status: 'running', startTime: String(started) });
      await writeFile(path.join(root, ID, 'exec.fifo'), '');
      assert.deepEqual(await runc.status(ID), { pid: s.pid, status: 'created', startTime: String(started) });
      await rm(path.join(root, ID, 'exec.fifo'));
      await runc.stop(ID);
      // Dead by now: a zombie until this process reaps it, or gone.
      const stat = await readFile(`/proc/${s.pid}/stat`, 'utf8').catch(() => null);
      assert.ok(stat === null || / [ZX] /.test(stat.slice(stat.lastIndexOf(')'))), `dead after stop(): ${stat}`);
      assert.equal(await s.exited, 'SIGKILL');
      assert.deepEqual(await runc.status(ID), { pid: s.pid, status: 'stopped' });
    } finally {
      s.child.kill('SIGKILL');
    }
  });
});

test('an unreadable or odd state file is stopped or an error, never a pid to kill', async () => {
  await withRoot(async (root, runc) => {
    await saveState(root, 0, 0);
    assert.deepEqual(await runc.status(ID), { pid: 0, status: 'stopped' });
    await writeFile(path.join(root, ID, 'state.json'), JSON.stringify({ init_process_pid: '1; rm', init_process_start: 1 }));
    assert.deepEqual(await runc.status(ID), { pid: 0, status: 'stopped' });
    await writeFile(path.join(root, ID, 'state.json'), '{');
    await assert.rejects(runc.status(ID));
  });
});

test("remove() of a container whose init is dead takes its cgroups and state itself; a cgroup that is not the container's is never touched", async () => {
  const parent = `nestbox-runc-test-${process.pid}`;
  const cgroups = ['pids', 'memory'].map((c) => `/sys/fs/cgroup/${c}/${parent}/${ID}`);
  await withRoot(async (root, runc) => {
    try {
      for (const c of cgroups) await mkdir(c, { recursive: true });
      const dead = sleeper();
      dead.child.kill('SIGKILL');
      await dead.exited;
      await mkdir(path.join(root, ID), { recursive: true });
      const state = { id: ID, init_process_pid: dead.pid, init_process_start: 1, cgroup_paths: { pids: cgroups[0], memory: cgroups[1] } };
      await writeFile(path.join(root, ID, 'state.json'), JSON.stringify(state));
      await runc.remove(ID);
      for (const c of cgroups) assert.equal(await access(c).then(() => true, () => false), false, `${c} removed`);
      assert.equal(await access(path.join(root, ID)).then(() => true, () => false), false, 'state removed');

      // A state naming someone else's cgroup (not the container's name): left alone.
      const other = `/sys/fs/cgroup/pids/${parent}/other`;
      await mkdir(other, { recursive: true });
      await mkdir(path.join(root, ID), { recursive: true });
      await writeFile(path.join(root, ID, 'state.json'), JSON.stringify({ ...state, cgroup_paths: { pids: other } }));
      await runc.remove(ID).catch(() => undefined); // (runc delete is asked then; it knows no such container)
      assert.equal(await access(other).then(() => true, () => false), true, 'a foreign cgroup stays');
    } finally {
      for (const c of ['pids', 'memory']) await rm(`/sys/fs/cgroup/${c}/${parent}`, { recursive: true, force: true }).catch(() => undefined);
      for (const c of [...cgroups, `/sys/fs/cgroup/pids/${parent}/other`]) await rmdir(c).catch(() => undefined);
      for (const c of ['pids', 'memory']) await rmdir(`/sys/fs/cgroup/${c}/${parent}`).catch(() => undefined);
    }
  });
});
