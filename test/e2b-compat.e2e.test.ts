// The compatibility suite: the official `e2b` SDK, unmodified, against a live Nestbox (control
// plane + sandbox proxy + node agent with real containers), configured only through
// E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY, as a user would.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { CommandExitError, Sandbox } from 'e2b';
import type { ControlPlane } from '../src/control-plane/control-plane.ts';
import { eventually, sleep, type TestAgent } from './helpers/agent-harness.ts';
import { startStack, type TestStack } from './helpers/stack.ts';

const KEY = 'e2b_' + '5a'.repeat(20);
let stack: TestStack;
let agent: TestAgent;
let cp: ControlPlane;
let proxyUrl: string;
let apiUrl: string;
const opts = { requestTimeoutMs: 60_000 };

before(async () => {
  stack = await startStack(KEY);
  ({ agent, cp, apiUrl } = stack);
  proxyUrl = stack.proxyUrl!;
});

after(async () => {
  await stack?.stop();
});

/** GET through the proxy by host name, as `getHost(port)` gives it (`<port>-<id>.localhost:<proxy port>`). */
function getByHost(host: string, p = '/'): Promise<{ status: number; body: string }> {
  const u = new URL(proxyUrl);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: p, headers: { host } }, (res) => {
      let body = '';
      res.on('data', (c) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('the e2b SDK against a live Nestbox', () => {
  let sbx: Sandbox;
  before(async () => {
    sbx = await Sandbox.create('base', { ...opts, timeoutMs: 300_000, envs: { FROM_CREATE: 'yes' }, metadata: { suite: 'compat' } });
  });
  after(async () => {
    await sbx?.kill().catch(() => undefined);
  });

  test('commands: stdout, stderr, exit codes, CommandExitError, env vars at create and per command', async () => {
    const r = await sbx.commands.run('echo out; echo err >&2; echo $FROM_CREATE-$PER_CMD', { envs: { PER_CMD: 'also' } });
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'out\nyes-also\n');
    assert.equal(r.stderr, 'err\n');
    await assert.rejects(sbx.commands.run('exit 7'), (e: unknown) => e instanceof CommandExitError && e.exitCode === 7);
    assert.equal((await sbx.commands.run('whoami')).stdout.trim(), 'user');
    assert.equal((await sbx.commands.run('whoami', { user: 'root' })).stdout.trim(), 'root');
    assert.equal((await sbx.commands.run('pwd')).stdout.trim(), '/home/user');
  });

  test('background commands: connect, sendStdin, list, kill', async () => {
    const bg = await sbx.commands.run('cat', { background: true, stdin: true });
    const listed = await sbx.commands.list();
    assert.ok(listed.some((p) => p.pid === bg.pid));
    let seen = '';
    const again = await sbx.commands.connect(bg.pid, { onStdout: (d) => { seen += d; } });
    await sbx.commands.sendStdin(bg.pid, 'hello stdin\n');
    for (let i = 0; i < 300 && !seen.includes('hello stdin'); i++) await sleep(50);
    assert.match(seen, /hello stdin/);
    assert.equal(await sbx.commands.kill(bg.pid), true);
    await assert.rejects(again.wait());
    assert.ok(!(await sbx.commands.list()).some((p) => p.pid === bg.pid));
  });

  test('pty: create, send input, resize, kill', async () => {
    let out = '';
    const pty = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { out += Buffer.from(d).toString(); } });
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size\n'));
    for (let i = 0; i < 300 && !out.includes('24 80'); i++) await sleep(50);
    assert.match(out, /24 80/);
    await sbx.pty.resize(pty.pid, { cols: 100, rows: 30 });
    await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size\n'));
    for (let i = 0; i < 300 && !out.includes('30 100'); i++) await sleep(50);
    assert.match(out, /30 100/);
    assert.equal(await sbx.pty.kill(pty.pid), true);
  });

  test('files: write (string, bytes, stream, many), read (text, bytes, stream), list, exists, info, mkdir, rename, remove', async () => {
    await sbx.files.write('notes/a.txt', 'alpha');
    const bytes = new Uint8Array([0, 1, 2, 255, 254]);
    await sbx.files.write('/home/user/notes/b.bin', bytes.buffer as ArrayBuffer);
    await sbx.files.write('notes/c.txt', new Blob(['from a stream']).stream() as unknown as Blob);
    await sbx.files.write([{ path: 'many/1.txt', data: 'one' }, { path: 'many/2.txt', data: 'two' }]);
    assert.equal(await sbx.files.read('notes/a.txt'), 'alpha');
    assert.deepEqual(await sbx.files.read('notes/b.bin', { format: 'bytes' }), bytes);
    const stream = await sbx.files.read('notes/c.txt', { format: 'stream' });
    assert.equal(await new Response(stream).text(), 'from a stream');
    assert.equal(await sbx.files.read('many/2.txt'), 'two');
    const listed = await sbx.files.list('/home/user', { depth: 2 });
    const names = listed.map((e) => e.path);
    for (const p of ['/home/user/notes', '/home/user/notes/a.txt', '/home/user/many/1.txt']) assert.ok(names.includes(p), p);
    assert.equal(await sbx.files.exists('notes/a.txt'), true);
    assert.equal(await sbx.files.exists('notes/zzz'), false);
    const info = await sbx.files.getInfo('notes/b.bin');
    assert.equal(info.size, 5);
    assert.equal(info.type, 'file');
    assert.equal(await sbx.files.makeDir('made/deep'), true);
    assert.equal(await sbx.files.makeDir('made/deep'), false);
    await sbx.files.rename('notes/a.txt', 'notes/renamed.txt');
    assert.equal(await sbx.files.exists('notes/renamed.txt'), true);
    await sbx.files.remove('many');
    assert.equal(await sbx.files.exists('many'), false);
  });

  test('watchDir reports events', async () => {
    await sbx.files.makeDir('watched');
    const events: string[] = [];
    const handle = await sbx.files.watchDir('watched', (e) => { events.push(`${e.type}:${e.name}`); }, { recursive: true });
    await sbx.files.write('watched/x.txt', 'x');
    await sbx.files.remove('watched/x.txt');
    for (let i = 0; i < 300 && !events.some((e) => e.startsWith('remove')); i++) await sleep(50);
    await handle.stop();
    assert.ok(events.some((e) => e === 'create:x.txt' || e === 'write:x.txt'), events.join(','));
    assert.ok(events.some((e) => e === 'remove:x.txt'), events.join(','));
  });

  test('getHost(port) reaches a server started in the sandbox', async () => {
    await sbx.files.write('site/index.html', 'served from the sandbox');
    await sbx.commands.run('cd site && python3 -m http.server 8000', { background: true });
    const host = sbx.getHost(8000);
    // The create answer's domain, the proxy's own (E2B_DOMAIN is not set): as `make up` gives it.
    assert.equal(host, `8000-${sbx.sandboxId}.localhost:${new URL(proxyUrl).port}`);
    let r = { status: 0, body: '' };
    for (let i = 0; i < 150 && r.status !== 200; i++) {
      r = await getByHost(host, '/index.html').catch(() => r);
      if (r.status !== 200) await sleep(100);
    }
    assert.equal(r.status, 200);
    assert.equal(r.body, 'served from the sandbox');
  });

  test('setTimeout, getInfo, list with filters', async () => {
    await sbx.setTimeout(200_000);
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { suite: 'compat' });
    const listed = await Sandbox.list({ ...opts, query: { metadata: { suite: 'compat' }, state: ['running'] } }).nextItems();
    assert.deepEqual(listed.map((s) => s.sandboxId), [sbx.sandboxId]);
  });

  test('pause, then connect: a running process still runs, files are intact, memory kept', async () => {
    await sbx.files.write('before-pause.txt', 'kept');
    await sbx.commands.run('python3 -c "import os,time\ni=0\nwhile True:\n  i+=1\n  open(\'/tmp/n.new\',\'w\').write(str(i))\n  os.replace(\'/tmp/n.new\',\'/tmp/n\')\n  time.sleep(0.05)"', { background: true });
    const before = await eventually(async () => Number((await sbx.commands.run('cat /tmp/n 2>/dev/null || echo 0')).stdout), (n) => n > 0, 'the counter runs');
    assert.equal(await sbx.pause(), true);
    assert.equal((await Sandbox.getInfo(sbx.sandboxId, opts)).state, 'paused');
    const again = await Sandbox.connect(sbx.sandboxId, opts);
    const after1 = Number((await again.commands.run('cat /tmp/n')).stdout);
    assert.ok(after1 >= before, `counter continued from ${before}: ${after1}`);
    await eventually(async () => Number((await again.commands.run('cat /tmp/n')).stdout), (n) => n > after1, 'the counter keeps counting');
    assert.equal(await again.files.read('before-pause.txt'), 'kept');
  });

  test('boot id: each sandbox has its own; kept by a pause with memory, new after a file-system-only pause (a reboot); read-only', async () => {
    const s = await Sandbox.create('base', opts);
    try {
      const bootId = async (x: Sandbox) => (await x.commands.run('cat /proc/sys/kernel/random/boot_id')).stdout;
      const first = await bootId(s);
      assert.match(first, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\n$/);
      assert.notEqual(first, await readFile('/proc/sys/kernel/random/boot_id', 'utf8'), 'not the host\'s');
      assert.notEqual(first, await bootId(sbx), 'not another sandbox\'s');
      const write = await s.commands.run('echo 00000000-0000-4000-8000-000000000000 | sudo -n tee /proc/sys/kernel/random/boot_id; sudo -n umount /proc/sys/kernel/random/boot_id; echo rc=$?', { user: 'root' }).catch((e: CommandExitError) => e);
      assert.match(write.stdout + write.stderr, /rc=[1-9]/, 'root cannot unmount it');
      assert.equal(await bootId(s), first, 'nor write it');
      assert.equal(await s.pause(), true);
      const resumed = await Sandbox.connect(s.sandboxId, opts);
      assert.equal(await bootId(resumed), first, 'memory kept: the same boot goes on');
      assert.equal(await resumed.pause({ keepMemory: false }), true);
      const rebooted = await Sandbox.connect(s.sandboxId, opts);
      const second = await bootId(rebooted);
      assert.match(second, /^[0-9a-f-]{36}\n$/);
      assert.notEqual(second, first, 'a file-system-only pause resumes as a new boot');
    } finally {
      await Sandbox.kill(s.sandboxId, opts);
    }
  });

  test('a command\'s timeout goes with its sandbox: passed while paused, it still kills the command after the resume', async () => {
    const s = await Sandbox.create('base', opts);
    try {
      const h = await s.commands.run('sleep 600', { background: true, timeoutMs: 2_000 });
      assert.equal(await s.pause(), true);
      await sleep(3_000); // the deadline passes on the wall clock while nothing runs
      const again = await Sandbox.connect(s.sandboxId, opts);
      await eventually(async () => (await again.commands.run(`kill -0 ${h.pid} 2>/dev/null; echo $?`)).stdout, (o) => o === '1\n', 'the command killed by its timeout', 60_000);
    } finally {
      await Sandbox.kill(s.sandboxId, opts);
    }
  });

  test('sudo: password-less for user, as in E2B; the seccomp filter still holds after it', async () => {
    assert.equal((await sbx.commands.run('sudo -n true && sudo -n id -u')).stdout, '0\n');
    assert.equal((await sbx.commands.run('whoami')).stdout, 'user\n', 'commands still run as user by default');
    // A new user namespace would give a second set of capabilities: refused by seccomp, root or not.
    const r = await sbx.commands.run('sudo -n unshare -U true 2>&1; echo "rc=$?"');
    assert.match(r.stdout, /unshare failed: Operation not permitted\nrc=1\n$/);
    const status = await sbx.commands.run('sudo -n grep -E "^(NoNewPrivs|Seccomp):" /proc/self/status');
    assert.match(status.stdout, /Seccomp:\s+2/, 'filter mode after setuid');
  });

  test('files: several files at once into new directories; remove of a missing path; symlink targets resolved', async () => {
    const written = await sbx.files.write([
      { path: 'batch/one/a.txt', data: 'a' },
      { path: '/home/user/batch/two/deeper/b.txt', data: 'b' },
      { path: 'batch/one/c.txt', data: 'c' },
      { path: '/tmp/batch-new/d.txt', data: 'd' },
    ]);
    assert.deepEqual(written.map((w) => w.path), [
      '/home/user/batch/one/a.txt', '/home/user/batch/two/deeper/b.txt', '/home/user/batch/one/c.txt', '/tmp/batch-new/d.txt',
    ]);
    assert.equal(await sbx.files.read('batch/two/deeper/b.txt'), 'b');
    const owners = await sbx.commands.run('stat -c %U /home/user/batch/two /home/user/batch/two/deeper/b.txt');
    assert.equal(owners.stdout, 'user\nuser\n');

    await sbx.files.remove('batch/nothing-here'); // as E2B: done, not an error
    await sbx.files.remove('/tmp/no/such/dir');

    await sbx.commands.run('mkdir -p links/real && echo hi > links/real/f && ln -s real links/dir && ln -s dir/f links/viadir && ln -s /home/user/links/viadir links/abs && ln -s missing links/dangling');
    assert.equal((await sbx.files.getInfo('links/viadir')).symlinkTarget, '/home/user/links/real/f');
    assert.equal((await sbx.files.getInfo('links/abs')).symlinkTarget, '/home/user/links/real/f');
    assert.equal((await sbx.files.getInfo('links/dangling')).symlinkTarget, '/home/user/links/missing');
    const listed = Object.fromEntries((await sbx.files.list('links')).map((e) => [e.name, e.symlinkTarget]));
    assert.equal(listed.dir, '/home/user/links/real');
    assert.equal(listed.real, undefined);
  });

  test('a command running while its sandbox is killed: "killed or reached its end of life"', async () => {
    const doomed = await Sandbox.create('base', { ...opts, timeoutMs: 120_000 });
    // Its answer may come before kill() returns: caught from the start.
    const outcome = doomed.commands.run('sleep 60', { timeoutMs: 0 }).then(() => null, (e: Error) => e);
    await sleep(500);
    await doomed.kill();
    const e = await outcome;
    assert.ok(e, 'the command did not end with an error');
    assert.equal(e.name, 'TimeoutError', `${e.name}: ${e.message}`);
    assert.match(e.message, /The sandbox was killed or reached its end of life while the request was in flight/);
  });

  test('an unknown sandbox is a clear error, a killed one too', async () => {
    const other = await Sandbox.create('base', opts);
    assert.equal(await other.isRunning(), true);
    await other.kill();
    assert.equal(await other.isRunning(), false);
    await assert.rejects(other.commands.run('true'));
  });
});

describe('older SDKs: the legacy resume path', () => {
  test('POST /sandboxes/{id}/resume resumes a paused sandbox (SDK < 2.6)', async () => {
    const s = await Sandbox.create('base', opts);
    await s.pause();
    const res = await fetch(`${apiUrl}/sandboxes/${s.sandboxId}/resume`, {
      method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify({ timeout: 60 }),
    });
    assert.equal(res.status, 201);
    assert.equal((await s.commands.run('echo back')).stdout, 'back\n');
    const again = await fetch(`${apiUrl}/sandboxes/${s.sandboxId}/resume`, {
      method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/json' }, body: JSON.stringify({ timeout: 60 }),
    });
    assert.equal(again.status, 409);
    await s.kill();
  });
});
