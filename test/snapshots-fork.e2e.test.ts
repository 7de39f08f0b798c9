// Named snapshots, fork and warm templates through the unmodified `e2b` SDK against a live
// Nestbox (real containers, real CRIU): memory and files carry over, each child is its own.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Sandbox } from 'e2b';
import { getSandbox } from '../src/store/sandboxes.ts';
import { createTeamWithKey } from '../src/store/teams.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { DirectorySnapshotStore } from '../src/runtime/directory-snapshot-store.ts';
import { COUNTER_PROCESS, eventually, TEST_ROOT } from './helpers/agent-harness.ts';
import { startStack, type TestStack } from './helpers/stack.ts';

const KEY = 'e2b_' + '5c'.repeat(20);
const opts = { requestTimeoutMs: 120_000 };
let stack: TestStack;
const templatesDir = path.join(TEST_ROOT, `templates-${process.pid}`);

// A counter whose value lives in the process's memory: a restarted process would count from 1.
// A process counting in memory into /tmp/n (started by the SDK, or as a template's start command).
const COUNTER = COUNTER_PROCESS;

before(async () => {
  // The node's templates: base, and a template whose start command is the counter.
  const base = runtimeConfigFromEnv().templatesDir;
  await rm(templatesDir, { recursive: true, force: true });
  await mkdir(path.join(templatesDir, 'warm-counter'), { recursive: true });
  await symlink(path.join(base, 'base'), path.join(templatesDir, 'base'));
  await symlink(path.join(base, 'base', 'rootfs'), path.join(templatesDir, 'warm-counter', 'rootfs'));
  await writeFile(path.join(templatesDir, 'warm-counter', 'template.json'), JSON.stringify({
    name: 'warm-counter', user: 'user', env: { FROM_TEMPLATE: 'yes' },
    startCmd: COUNTER, readyCmd: 'test "$(cat /tmp/n 2>/dev/null || echo 0)" -ge 10',
  }));
  stack = await startStack(KEY, { agentConfig: { templatesDir } });
});

after(async () => {
  await stack?.stop();
  await rm(templatesDir, { recursive: true, force: true });
});

async function count(sbx: Sandbox): Promise<number> {
  return Number((await sbx.commands.run('cat /tmp/n')).stdout);
}

/** The sandbox's host name (as its processes see it), /etc/hostname, and the address its name resolves to. */
async function identity(sbx: Sandbox): Promise<{ hostname: string; etcHostname: string; resolved: string; address: string }> {
  const r = await sbx.commands.run('hostname; cat /etc/hostname; getent hosts "$(hostname)" | cut -f1 -d" "; hostname -I');
  const [hostname = '', etcHostname = '', resolved = '', address = ''] = r.stdout.split('\n').map((l) => l.trim());
  return { hostname, etcHostname, resolved, address };
}

/** Asserts the sandbox's host name is its id, and its name resolves to its own address. */
async function assertOwnHostname(sbx: Sandbox, what: string): Promise<string> {
  const id = await identity(sbx);
  assert.equal(id.hostname, sbx.sandboxId, `${what}: its host name is its id`);
  assert.equal(id.etcHostname, sbx.sandboxId, `${what}: /etc/hostname says its id`);
  assert.match(id.address, /^\d+\.\d+\.\d+\.\d+$/, `${what}: it has an address (${id.address})`);
  assert.equal(id.resolved, id.address, `${what}: /etc/hosts maps its name to its address`);
  return id.address;
}

/** A GET of a file through the sandbox proxy, to `target`'s envd with the access token given: the status and body. */
async function envdFileWithToken(target: string, token: string): Promise<{ status: number; body: string }> {
  const res = await fetch(`${stack.proxyUrl}/files?path=/etc/hostname&username=user`, {
    headers: { 'E2b-Sandbox-Id': target, 'E2b-Sandbox-Port': '49983', 'X-Access-Token': token },
  });
  return { status: res.status, body: await res.text() };
}

async function startCounter(sbx: Sandbox) {
  await sbx.commands.run(COUNTER, { background: true });
  await eventually(() => count(sbx).catch(() => 0), (n) => n >= 5, 'counter started');
}

describe('fork', () => {
  test('every child continues from the parent\'s count, independently; the parent runs on', async () => {
    const parent = await Sandbox.create('base', opts);
    await parent.files.write('/home/user/note.txt', 'written before the fork');
    await startCounter(parent);
    const before = await count(parent);
    const children = await parent.fork({ count: 2, ...opts });
    assert.equal(children.length, 2);
    const forks = children.map((c) => {
      assert.ok(!(c instanceof Error), `fork failed: ${c}`);
      return c as Sandbox;
    });
    const ids = new Set([parent.sandboxId, ...forks.map((f) => f.sandboxId)]);
    assert.equal(ids.size, 3, 'each child has its own id');
    // Each its own host name and address: the parent (a cold create) and each child (restored
    // from the parent's memory, whose host name was the parent's).
    const addresses = new Set<string>();
    for (const [s, what] of [[parent, 'the parent'], [forks[0]!, 'child 0'], [forks[1]!, 'child 1']] as const) {
      addresses.add(await assertOwnHostname(s, what));
    }
    assert.equal(addresses.size, 3, 'each has its own address');
    for (const f of forks) {
      const n = await count(f);
      assert.ok(n >= before, `a child counts on from the parent's ${before} (got ${n}): its memory came along`);
      assert.equal(await f.files.read('/home/user/note.txt'), 'written before the fork');
    }
    // Independent: a file written in one child is in neither the other nor the parent.
    await forks[0]!.files.write('/home/user/only-child-0.txt', 'x');
    assert.equal(await forks[1]!.files.exists('/home/user/only-child-0.txt'), false);
    assert.equal(await parent.files.exists('/home/user/only-child-0.txt'), false);
    // All three keep counting, each its own process.
    await Promise.all([parent, ...forks].map(async (s, i) => {
      const a = await count(s);
      await eventually(() => count(s), (b) => b > a, `sandbox ${i} counts on from ${a}`);
    }));
    // Each child is a sandbox of its own: listed, running, billed on its own row.
    for (const f of forks) {
      const row = await getSandbox(stack.cp.db, f.sandboxId);
      assert.equal(row?.state, 'running');
      assert.equal(row?.templateId, 'base');
    }
    // The fork's snapshot is gone once the children started.
    assert.deepEqual(await namedSnapshotsInStore(), []);
    await Promise.all([parent, ...forks].map((s) => s.kill()));
  });

  test('forking a sandbox that is not running is refused with a clear error', async () => {
    const s = await Sandbox.create('base', opts);
    await s.pause();
    await assert.rejects(Sandbox.fork(s.sandboxId, { count: 1, ...opts }), /not running/);
    await Sandbox.kill(s.sandboxId, opts);
    await assert.rejects(Sandbox.fork('nosuchsandbox0000000', { count: 1, ...opts }), /not found/i);
  });
});

async function namedSnapshotsInStore(): Promise<string[]> {
  return (await readdir(stack.agent.snapshotDir)).filter((n) => n.startsWith('snap-'));
}

describe('named snapshots', () => {
  test('a snapshot keeps its sandbox running; a sandbox created from it has the snapshot\'s memory and files', async () => {
    const sbx = await Sandbox.create('base', opts);
    await sbx.files.write('/home/user/state.txt', 'at snapshot time');
    await startCounter(sbx);
    const snap = await sbx.createSnapshot({ name: 'counter-snap', ...opts });
    assert.match(snap.snapshotId, /^snap-[a-z0-9]{20}$/);
    assert.deepEqual(snap.names, ['counter-snap']);
    // Its manifest lists the very images stored (listed again from the files here).
    const store = stack.agent.agent.runtime.store;
    assert.ok(store instanceof DirectorySnapshotStore);
    const manifest = (await store.manifest(snap.snapshotId))!;
    assert.equal(manifest.objects.find((o) => o.name === 'checkpoint')?.digest, 'sizes');
    await store.verify(snap.snapshotId, store.dir(snap.snapshotId), manifest);
    const atSnapshot = await count(sbx);
    // The sandbox went on, and changes after the snapshot are not in it.
    await sbx.files.write('/home/user/state.txt', 'after the snapshot');
    assert.equal((await Sandbox.getInfo(sbx.sandboxId, opts)).state, 'running');

    const listed = await Sandbox.listSnapshots({ sandboxId: sbx.sandboxId, ...opts }).nextItems();
    assert.deepEqual(listed.map((s) => s.snapshotId), [snap.snapshotId]);

    for (const ref of [snap.snapshotId, 'counter-snap']) {
      const copy = await Sandbox.create(ref, opts);
      assert.notEqual(copy.sandboxId, sbx.sandboxId);
      assert.equal(await copy.files.read('/home/user/state.txt'), 'at snapshot time');
      const n = await count(copy);
      assert.ok(n >= 5 && n <= atSnapshot + 5, `the copy's counter continues from the snapshot (${n}, snapshot ~${atSnapshot})`);
      await assertOwnHostname(copy, `the sandbox from ${ref}`);
      await copy.kill();
    }
    // A second snapshot of the same name is refused; delete works by name and then 404s.
    await assert.rejects(sbx.createSnapshot({ name: 'counter-snap', ...opts }), /exists already/);
    assert.equal(await Sandbox.deleteSnapshot('counter-snap', opts), true);
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, opts), false);
    await assert.rejects(Sandbox.create(snap.snapshotId, opts), /not found/i);
    assert.deepEqual(await namedSnapshotsInStore(), []);
    await sbx.kill();
  });

  test('another team cannot see, use or delete a snapshot', async () => {
    const sbx = await Sandbox.create('base', opts);
    const snap = await sbx.createSnapshot(opts);
    const other = (await createTeamWithKey(stack.cp.db, { name: `other-${process.pid}` })).apiKey.key;
    const as = { ...opts, apiKey: other };
    assert.deepEqual(await Sandbox.listSnapshots(as).nextItems(), []);
    await assert.rejects(Sandbox.create(snap.snapshotId, as), /not found/i);
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, as), false);
    assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, opts), true);
    await sbx.kill();
  });
});

describe('warm templates', () => {
  test('a sandbox of a template with a start command starts with that process running, warm', async () => {
    const first = await Sandbox.create('warm-counter', { ...opts, envs: { REQUEST_ENV: 'one' } });
    const second = await Sandbox.create('warm-counter', { ...opts, envs: { REQUEST_ENV: 'two' } });
    for (const [sbx, env] of [[first, 'one'], [second, 'two']] as const) {
      // Ready meant >= 10 at capture: a restored counter starts there, a cold start at 1.
      const n = await count(sbx);
      assert.ok(n >= 10, `the start command was already running (count ${n})`);
      const r = await sbx.commands.run('echo $REQUEST_ENV $FROM_TEMPLATE; pgrep -c -f "open\\(./tmp/n"');
      assert.equal(r.stdout.split('\n')[0], `${env} yes`, 'each sandbox has its own request env and the template env');
    }
    // Separate sandboxes: separate counters, host names and addresses, though both were
    // restored from the one capture (whose host name and address were the capture's).
    await first.files.write('/tmp/mine', '1');
    assert.equal(await second.files.exists('/tmp/mine'), false);
    const firstAddress = await assertOwnHostname(first, 'the first warm sandbox');
    const secondAddress = await assertOwnHostname(second, 'the second warm sandbox');
    assert.notEqual(firstAddress, secondAddress, 'each has its own address');
    // Each its own envd access token: one's token opens the other's envd for nobody.
    const tokens = await Promise.all([first, second].map(async (s) => {
      const row = await getSandbox(stack.cp.db, s.sandboxId);
      assert.equal(row?.secure, true, 'the SDK creates secure sandboxes');
      return row!.envdAccessToken;
    }));
    assert.notEqual(tokens[0], tokens[1]);
    assert.deepEqual(await envdFileWithToken(second.sandboxId, tokens[1]!), { status: 200, body: `${second.sandboxId}\n` }, "its own token opens the second's envd");
    const crossed = await envdFileWithToken(second.sandboxId, tokens[0]!);
    assert.equal(crossed.status, 401, `the first's token is refused by the second's envd (${crossed.body})`);
    assert.equal((await envdFileWithToken(first.sandboxId, tokens[1]!)).status, 401, "and the second's by the first's");
    await Promise.all([first.kill(), second.kill()]);
  });
});
