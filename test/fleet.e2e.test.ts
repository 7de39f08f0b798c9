// A fleet on one machine: `nestbox server` and two `nestbox agent --join` processes sharing a
// snapshot store, driven through the CLI and the e2b SDK. Nodes join with a join token,
// sandboxes spread over them, and draining one moves its sandboxes to the other with their
// memory (a counter goes on where it was).
import { unmountPoolLeftovers } from './helpers/pool-leftovers.ts';
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Sandbox } from 'e2b';
import { eventually, TEST_ROOT } from './helpers/agent-harness.ts';
import { AgentProcess, freePort } from './helpers/agent-process.ts';

const BIN = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bin/nestbox');
const API_KEY = `e2b_${randomBytes(20).toString('hex')}`;
const ADMIN_KEY = `nestbox_admin_${randomBytes(20).toString('hex')}`;
const base = path.join(TEST_ROOT, `fleet-${randomBytes(4).toString('hex')}`);
let server: ChildProcess;
let apiUrl = '';
let sandboxUrl = '';
const agents: AgentProcess[] = [];

const env = () => ({ ...process.env, E2B_API_URL: apiUrl, NESTBOX_ADMIN_KEY: ADMIN_KEY, E2B_API_KEY: API_KEY });
const cli = async (...args: string[]) => JSON.parse((await promisify(execFile)(BIN, [...args, '--json'], { env: env() })).stdout);
const opts = () => ({ apiUrl, sandboxUrl, apiKey: API_KEY, requestTimeoutMs: 60_000 });
const nodeOf = async (id: string) => (await (await fetch(`${apiUrl}/sandboxes/${id}`, { headers: { 'X-API-Key': API_KEY } })).json()) as { nodeId: string; state: string };

before(async () => {
  await mkdir(base, { recursive: true });
  const [port, proxyPort] = [await freePort(), await freePort()];
  server = spawn(BIN, ['server', '--host', '127.0.0.1', '--port', String(port), '--proxy-host', '127.0.0.1', '--proxy-port', String(proxyPort)], {
    env: { ...process.env, NESTBOX_CONTROL_DIR: path.join(base, 'control'), NESTBOX_API_KEY: API_KEY, NESTBOX_ADMIN_KEY: ADMIN_KEY, NESTBOX_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  await new Promise<void>((resolve, reject) => {
    server.stdout!.on('data', (d) => {
      out += d.toString();
      const api = /^E2B_API_URL=(\S+)$/m.exec(out);
      const sbx = /^E2B_SANDBOX_URL=(\S+)$/m.exec(out);
      if (api && sbx) {
        [apiUrl, sandboxUrl] = [api[1]!, sbx[1]!];
        resolve();
      }
    });
    server.once('exit', (code) => reject(new Error(`nestbox server exited (${code}): ${out}`)));
  });
});

after(async () => {
  for (const a of agents) {
    for (const s of (await a.json('GET', '/v1/sandboxes').catch(() => ({ sandboxes: [] }))).sandboxes) {
      await a.api('DELETE', `/v1/sandboxes/${s.sandboxId}?deleteSnapshot=true`).catch(() => undefined);
    }
    a.signal('SIGKILL');
    await a.exited;
    await unmountPoolLeftovers(a.base);
    await rm(a.base, { recursive: true, force: true });
  }
  server?.kill('SIGTERM');
  await rm(base, { recursive: true, force: true });
});

test('nodes join with a join token; a wrong one is refused; sandboxes spread; a drain moves them with their memory', { timeout: 600_000 }, async () => {
  const token = (await cli('nodes', 'join-token')).token as string;
  assert.match(token, /^nbjoin_/);
  const snapshotDir = path.join(base, 'snapshots');
  const intruder = new AgentProcess({ nodeId: 'intruder', snapshotDir, args: ['--join', apiUrl, '--join-token', `nbjoin_${'0'.repeat(40)}`] });
  await assert.rejects(intruder.start(), /invalid join token/);
  await unmountPoolLeftovers(intruder.base);
  await rm(intruder.base, { recursive: true, force: true });
  for (const id of ['node-a', 'node-b']) {
    const a = new AgentProcess({ nodeId: id, snapshotDir, args: ['--join', apiUrl, '--join-token', token] });
    await a.start();
    agents.push(a);
  }
  const nodes = await eventually(() => cli('nodes', 'list'), (l: any[]) => l.filter((n) => n.state === 'ready').length === 2, 'two ready nodes');
  assert.deepEqual(nodes.map((n: any) => n.id).sort(), ['node-a', 'node-b']);
  assert.ok(nodes.every((n: any) => n.joined && n.templates.includes('base')));

  // Every replica learns of a joined node within a registry period (1 s): the first starts may
  // all land on the node that joined first; then they spread.
  const sandboxes: Sandbox[] = [];
  const placed: string[] = [];
  while (sandboxes.length < 4 || (!(placed.includes('node-a') && placed.includes('node-b')) && sandboxes.length < 10)) {
    const s = await Sandbox.create('base', { ...opts(), timeoutMs: 600_000 });
    sandboxes.push(s);
    placed.push((await nodeOf(s.sandboxId)).nodeId);
  }
  assert.ok(placed.includes('node-a') && placed.includes('node-b'), `spread over both nodes: ${placed}`);
  for (const s of sandboxes) {
    await s.commands.run('python3 -c "import os,time\ni=0\nwhile True:\n  i+=1\n  open(\'/tmp/n.new\',\'w\').write(str(i))\n  os.replace(\'/tmp/n.new\',\'/tmp/n\')\n  time.sleep(0.05)"', { background: true });
  }
  const count = async (s: Sandbox) => Number((await s.commands.run('cat /tmp/n 2>/dev/null || echo 0')).stdout);
  const before = await Promise.all(sandboxes.map((s) => eventually(() => count(s), (n) => n > 0, 'counter')));

  await cli('nodes', 'drain', 'node-a');
  await eventually(async () => Promise.all(sandboxes.map((s) => nodeOf(s.sandboxId))), (all) => all.every((x) => x.nodeId === 'node-b' && x.state === 'running'), 'every sandbox on node-b', 300_000);
  assert.equal((await agents[0]!.json('GET', '/v1/sandboxes')).sandboxes.length, 0, 'nothing left on the drained node');
  for (const [i, s] of sandboxes.entries()) {
    const again = await Sandbox.connect(s.sandboxId, opts());
    const after = await count(again);
    assert.ok(after >= before[i]!, `counter of ${s.sandboxId} went on from ${before[i]} (now ${after}): memory kept`);
    await eventually(() => count(again), (n) => n > after, 'still counting');
  }
  // Drained: a new sandbox goes to node-b; undrained: node-a takes sandboxes again.
  const late = await Sandbox.create('base', opts());
  assert.equal((await nodeOf(late.sandboxId)).nodeId, 'node-b');
  await cli('nodes', 'undrain', 'node-a');
  await eventually(() => cli('nodes', 'list'), (l: any[]) => l.find((n) => n.id === 'node-a').state === 'ready', 'node-a ready');
  for (const s of [...sandboxes, late]) await s.kill();
});
