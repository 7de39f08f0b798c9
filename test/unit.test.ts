// Pure pieces: no host access.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import fc from 'fast-check';
import { isSandboxId, newSandboxId } from '../src/core/ids.ts';
import { KeyedMutex } from '../src/runtime/keyed-mutex.ts';
import { Slots } from '../src/runtime/slots.ts';
import { buildOciSpec } from '../src/runtime/oci-spec.ts';
import { StartGate } from '../src/agent/start-gate.ts';
import { RequestAdmission } from '../src/runtime/request-admission.ts';
import { CommandDeadlines } from '../src/runtime/command-deadlines.ts';
import { eventually } from './helpers/agent-harness.ts';

describe('ids', () => {
  test('sandbox ids are 20 lower-case alphanumerics and unique', () => {
    const ids = new Set(Array.from({ length: 1000 }, newSandboxId));
    assert.equal(ids.size, 1000);
    for (const id of ids) assert.ok(isSandboxId(id), id);
    assert.equal(isSandboxId('ABCDEFGHIJKLMNOPQRST'), false);
    assert.equal(isSandboxId('../../../../../etc/x'), false);
  });
});

describe('KeyedMutex', () => {
  test('never runs two tasks of one key at once, and runs them in arrival order', async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(fc.tuple(fc.constantFrom('a', 'b', 'c'), fc.nat(5), fc.boolean()), { maxLength: 30 }), async (ops) => {
        const m = new KeyedMutex();
        const active = new Map<string, number>();
        const order = new Map<string, number[]>();
        let maxSeen = 0;
        await Promise.allSettled(
          ops.map(([key, delay, fail], i) =>
            m.run(key, async () => {
              active.set(key, (active.get(key) ?? 0) + 1);
              maxSeen = Math.max(maxSeen, active.get(key)!);
              order.set(key, [...(order.get(key) ?? []), i]);
              await new Promise((r) => setTimeout(r, delay));
              active.set(key, active.get(key)! - 1);
              if (fail) throw new Error('x');
            }),
          ),
        );
        assert.ok(maxSeen <= 1);
        for (const seq of order.values()) assert.deepEqual(seq, [...seq].sort((x, y) => x - y));
        for (const key of ['a', 'b', 'c']) assert.equal(m.isBusy(key), false);
      }),
      { numRuns: 50 },
    );
  });
});

describe('Slots', () => {
  test('never more holders than slots, every task runs, in the order they came, failures give their slot back', async () => {
    await fc.assert(
      fc.asyncProperty(fc.integer({ min: 1, max: 4 }), fc.array(fc.tuple(fc.nat(4), fc.boolean()), { maxLength: 30 }), async (size, ops) => {
        const slots = new Slots(size);
        let active = 0;
        let maxSeen = 0;
        const started: number[] = [];
        const results = await Promise.allSettled(
          ops.map(([delay, fail], i) =>
            slots.run(async () => {
              active++;
              maxSeen = Math.max(maxSeen, active);
              started.push(i);
              await new Promise((r) => setTimeout(r, delay));
              active--;
              if (fail) throw new Error('x');
              return i;
            }),
          ),
        );
        assert.ok(maxSeen <= size, `${maxSeen} holders at once with ${size} slots`);
        if (ops.length >= size) assert.equal(maxSeen, size, 'the slots are all used when there is work');
        assert.deepEqual(started, ops.map((_, i) => i), 'started in arrival order');
        assert.deepEqual(results.map((r) => r.status), ops.map(([, fail]) => (fail ? 'rejected' : 'fulfilled')));
        assert.equal(slots.inUse, 0);
        assert.equal(slots.queued, 0);
      }),
      { numRuns: 50 },
    );
  });

  test('a slot given back twice is given back once', async () => {
    const slots = new Slots(1);
    const release = await slots.acquire();
    const waiting = slots.acquire();
    release();
    release();
    const second = await waiting;
    assert.equal(slots.inUse, 1, 'the waiter holds the one slot');
    let third = false;
    void slots.acquire().then(() => (third = true));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(third, false, 'a second release did not open another slot');
    second();
    await new Promise((r) => setTimeout(r, 0));
    assert.equal(third, true);
  });
});

describe('address claims', () => {
  test('a claim appears whole, naming its sandbox; what killed agents left (drafts, empty claims) goes once a minute old, nothing else', async () => {
    const { NetworkManager } = await import('../src/runtime/network.ts');
    const dir = '/run/nestbox/addresses';
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const net = new NetworkManager({ subnetPrefix: '10.254', hookBinary: '/bin/true' });
    const id = `claimtest${Math.random().toString(36).slice(2, 10)}`;
    const { address } = await net.prepare(id, { allowInternet: false, newSandbox: true });
    assert.equal(await readFile(path.join(dir, address), 'utf8'), id, 'the claim names its sandbox');
    assert.deepEqual((await readdir(dir)).filter((n) => n.includes(id)), [], 'no draft left behind');
    const old = new Date(Date.now() - 120_000);
    const files = { emptyOld: '10.254.250.1', emptyNew: '10.254.250.2', draftOld: `.claim-${id}.0001`, draftNew: `.claim-${id}.0002` };
    for (const [what, name] of Object.entries(files)) {
      await writeFile(path.join(dir, name), what.startsWith('draft') ? id : '');
      if (what.endsWith('Old')) await utimes(path.join(dir, name), old, old);
    }
    await utimes(path.join(dir, address), old, old);
    try {
      const removed = await net.sweepClaimLeftovers();
      for (const name of [files.draftOld, files.emptyOld]) assert.ok(removed.includes(name), `${name} removed`);
      for (const name of [files.draftNew, files.emptyNew, address]) assert.ok(!removed.includes(name), `${name} not removed`);
      const left = await readdir(dir);
      for (const name of [files.emptyNew, files.draftNew, address]) assert.ok(left.includes(name), `${name} stays`);
    } finally {
      for (const name of Object.values(files)) await rm(path.join(dir, name), { force: true });
      await net.release(id);
    }
    assert.ok(!(await readdir(dir)).includes(address), 'released');
  });
});

describe('OCI spec', () => {
  const spec = buildOciSpec({
    sandboxId: 'a'.repeat(20), rootfs: '/r', initBinary: '/i', socketDir: '/s', etcDir: '/e',
    networkHook: { path: '/hook', args: ['hook', 'nbhx', '10.88.1.2', '10.88.0.1'], timeout: 10 }, bindHook: '/bind-hook', criuConfig: '/b/criu.conf',
    resources: { cpuCount: 0.5, memoryMB: 256, pidsLimit: 100 }, uidShift: 100000, uidRange: 65536,
  });

  test('a sandbox gets every namespace, its limits, a seccomp filter, setuid allowed (sudo) and masked /proc', () => {
    assert.deepEqual(spec.linux.namespaces.map((n) => n.type).sort(), ['cgroup', 'ipc', 'mount', 'network', 'pid', 'user', 'uts']);
    assert.equal(spec.hostname, 'a'.repeat(20), "its host name is its id, each sandbox's own");
    assert.equal(spec.hooks.createRuntime[0]!.path, '/hook', 'the network is wired by the hook');
    // The sandbox's boot id over the host's, a mount CRIU is told about through the container's own configuration.
    assert.equal(spec.hooks.createContainer[0]!.path, '/bind-hook');
    assert.deepEqual(spec.hooks.createContainer[0]!.args.slice(-2), ['/e/boot_id', '/r/proc/sys/kernel/random/boot_id']);
    assert.equal(spec.annotations['org.criu.config'], '/b/criu.conf');
    assert.equal(spec.linux.uidMappings[0]!.hostID, 100000);
    assert.equal(spec.linux.resources.memory.limit, 256 * 1024 * 1024);
    assert.equal(spec.linux.resources.cpu.quota, 50_000);
    assert.equal(spec.linux.resources.pids.limit, 100);
    // setuid (sudo) works; the seccomp filter holds across it (see e2b-compat.e2e)
    assert.equal(spec.process.noNewPrivileges, false);
    assert.ok(spec.linux.seccomp, 'a seccomp filter');
    for (const p of ['/proc/kcore', '/proc/config.gz', '/proc/keys']) assert.ok(spec.linux.maskedPaths.includes(p), p);
    for (const cap of ['CAP_SYS_ADMIN', 'CAP_NET_RAW', 'CAP_NET_ADMIN', 'CAP_SYS_PTRACE']) {
      assert.ok(!spec.process.capabilities.bounding.includes(cap), cap);
    }
  });

  test("the node's files are bound from its own directory, the socket directory from the sandbox's disk", () => {
    const binds = Object.fromEntries(spec.mounts.filter((m) => m.type === 'bind').map((m) => [m.destination, m.source]));
    assert.deepEqual(binds, {
      '/.nestbox/init': '/i', '/run/nestbox': '/s', '/etc/hosts': '/e/hosts', '/etc/hostname': '/e/hostname', '/etc/resolv.conf': '/e/resolv.conf',
      '/etc/nestbox/env.json': '/e/env.json',
    });
    const env = spec.mounts.find((m) => m.destination === '/etc/nestbox/env.json')!;
    assert.ok(env.options?.includes('ro'), 'the sandbox reads its variables, never writes them');
  });

  test('seccomp is an allow-list: what it does not name is refused; namespaces and vsock are refused', () => {
    const profile = spec.linux.seccomp;
    assert.equal(profile.defaultAction, 'SCMP_ACT_ERRNO');
    const unconditional = new Set(profile.syscalls.filter((r) => r.action === 'SCMP_ACT_ALLOW' && !r.args).flatMap((r) => r.names));
    for (const denied of ['mount', 'umount2', 'setns', 'unshare', 'clone', 'clone3', 'bpf', 'perf_event_open', 'kexec_load', 'init_module',
      'keyctl', 'add_key', 'userfaultfd', 'io_uring_setup', 'open_by_handle_at', 'pivot_root', 'fsopen', 'move_mount', 'socket', 'personality', 'syslog']) {
      assert.ok(!unconditional.has(denied), `${denied} is not allowed unconditionally`);
    }
    for (const allowed of ['read', 'execve', 'openat', 'futex', 'epoll_wait', 'ptrace', 'setfsuid', 'inotify_add_watch', 'statx', 'getrandom']) {
      assert.ok(unconditional.has(allowed), `${allowed} is allowed`);
    }
    const rule = (name: string) => profile.syscalls.filter((r) => r.names.includes(name));
    const NEWUSER = 0x10000000;
    for (const name of ['clone', 'unshare']) {
      const [r] = rule(name);
      assert.equal(r!.args![0]!.op, 'SCMP_CMP_MASKED_EQ');
      assert.ok((r!.args![0]!.value & NEWUSER) !== 0 && r!.args![0]!.valueTwo === 0, `${name} with CLONE_NEWUSER is not allowed`);
    }
    assert.equal(rule('clone3')[0]!.errnoRet, 38, 'clone3 says ENOSYS, so C libraries fall back to clone');
    assert.deepEqual(rule('socket')[0]!.args, [{ index: 0, value: 40, op: 'SCMP_CMP_NE' }], 'every socket family but AF_VSOCK');
  });
});

describe('RequestAdmission', () => {
  test('a closed sandbox admits nothing new; idle waits for the requests in progress, at most the time given', async () => {
    const a = new RequestAdmission();
    const first = a.enter('s1')!;
    const second = a.enter('s1')!;
    assert.equal(a.count('s1'), 2);
    a.close('s1');
    assert.equal(a.enter('s1'), null, 'closed: refused');
    assert.ok(a.enter('s2'), 'another sandbox is not affected');
    let idle = false;
    const waiting = a.idle('s1', 60_000).then(() => (idle = true));
    first();
    first(); // released twice counts once
    await new Promise((r) => setImmediate(r));
    assert.equal(idle, false, 'one request is still in progress');
    second();
    await waiting;
    assert.equal(a.count('s1'), 0);
    // A request that stays (a background command's stream): the wait ends at its bound.
    a.open('s1');
    a.enter('s1');
    const t0 = Date.now();
    await a.idle('s1', 50);
    assert.ok(Date.now() - t0 >= 45);
    a.forget('s1');
    assert.ok(a.enter('s1'), 'forgotten: a sandbox of that id takes requests again');
  });
});

describe('CommandDeadlines', () => {
  test('a passed deadline kills; one the sandbox cannot take now is tried again; a pause keeps what is left, a resume arms it', async () => {
    const killed: string[] = [];
    let reachable = false;
    const d = new CommandDeadlines(async (id, pid, argv0) => {
      if (!reachable) throw new Error('paused');
      killed.push(`${id}:${pid}:${argv0}`);
    });
    d.arm('s1', 10, 'sleep', 40_000);
    d.arm('s1', 11, 'python3', 20);
    d.arm('s2', 12, 'sleep', 60_000);
    // Stopped (paused) 10 s in: what is left of each, exactly; the sandbox's clock stops there.
    const stoppedAt = new Date(Date.now() + 10_000);
    const left = d.remaining('s1', stoppedAt);
    assert.equal(left.length, 2);
    const long = left.find((x) => x.pid === 10)!;
    assert.ok(long.remainingMs > 29_000 && long.remainingMs <= 30_000, String(long.remainingMs));
    assert.equal(left.find((x) => x.pid === 11)!.remainingMs, 0, 'passed: nothing left');
    // pid 11's deadline passes while the sandbox cannot be reached: not dropped, tried again.
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(killed, []);
    reachable = true;
    await new Promise((r) => setTimeout(r, 1_200));
    assert.deepEqual(killed, ['s1:11:python3']);
    assert.deepEqual(d.remaining('s1', new Date()).map((x) => x.pid), [10], 'the killed one is gone');
    // The sandbox leaves the node; its snapshot's deadlines are armed where it resumes.
    d.forget('s1');
    assert.deepEqual(d.remaining('s1', new Date()), []);
    d.restore('s3', [{ pid: 7, argv0: 'node', remainingMs: 10 }, { pid: -1, argv0: 'x', remainingMs: 5 }, { pid: 8, argv0: 'y', remainingMs: Number.NaN }] as never);
    assert.deepEqual(d.remaining('s3', new Date(0)).map((x) => x.pid), [7], 'nonsense is left out');
    await new Promise((r) => setTimeout(r, 50));
    assert.deepEqual(killed, ['s1:11:python3', 's3:7:node']);
    d.disarm('s2', 12);
    assert.deepEqual(d.remaining('s2', new Date()), [], 'ended: disarmed');
  });
});

describe('host commands through the spawner', () => {
  test('output, exit codes, input, timeouts, a missing program, many at once; a spawner that dies fails what it ran and is started again', async () => {
    const { run, CommandError } = await import('../src/runtime/command.ts');
    assert.deepEqual(await run(['sh', '-c', 'echo out; echo err >&2']), { stdout: 'out\n', stderr: 'err\n', code: 0 });
    await assert.rejects(run(['sh', '-c', 'echo nope >&2; exit 3']), (e: Error) => e instanceof CommandError && /exited 3: nope/.test(e.message));
    assert.equal((await run(['sh', '-c', 'exit 4'], { allowFailure: true })).code, 4);
    assert.equal((await run(['cat'], { input: 'fed' })).stdout, 'fed');
    assert.equal((await run(['pwd'], { cwd: '/tmp' })).stdout, '/tmp\n');
    assert.equal((await run(['sh', '-c', 'echo $X'], { env: { X: 'given', PATH: process.env.PATH } })).stdout, 'given\n');
    const slow = await run(['sleep', '10'], { timeoutMs: 100, allowFailure: true });
    assert.match(slow.stderr, /killed by SIGKILL/);
    assert.deepEqual(await run(['sh', '-c', 'echo hidden'], { capture: false }), { stdout: '', stderr: '', code: 0 });
    await assert.rejects(run(['/nonexistent/program']), (e: NodeJS.ErrnoException) => e.code === 'ENOENT');
    const many = await Promise.all(Array.from({ length: 40 }, (_, i) => run(['echo', String(i)])));
    assert.deepEqual(many.map((r) => r.stdout), Array.from({ length: 40 }, (_, i) => `${i}\n`));
    // The spawner is killed while a command runs: that command fails, the next one works.
    const pid = Number((await run(['sh', '-c', 'echo $PPID'])).stdout);
    const cut = run(['sleep', '30']);
    await new Promise((r) => setTimeout(r, 100));
    process.kill(pid, 'SIGKILL');
    await assert.rejects(cut, /spawner exited/);
    assert.equal((await run(['echo', 'again'])).stdout, 'again\n');
    assert.notEqual(Number((await run(['sh', '-c', 'echo $PPID'])).stdout), pid, 'a new spawner');
  });

  test('started with posix_spawn by nestbox-spawner: many at once, each from a thread of its own', async () => {
    const { run } = await import('../src/runtime/command.ts');
    const spawner = (await run(['sh', '-c', 'cat /proc/$PPID/comm'])).stdout.trim();
    assert.equal(spawner, 'nestbox-spawner', 'the native spawner starts the commands');
    // Ten commands that each wait for all ten: they must run at the same time.
    const dir = await mkdtemp(path.join(tmpdir(), 'spawner-'));
    try {
      const all = await Promise.all(Array.from({ length: 10 }, (_, i) => run(
        ['sh', '-c', `touch ${dir}/${i}; while [ $(ls ${dir} | wc -l) -lt 10 ]; do sleep 0.01; done; echo ${i}`], { timeoutMs: 30_000 },
      )));
      assert.deepEqual(all.map((r) => r.stdout), Array.from({ length: 10 }, (_, i) => `${i}\n`));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("an agent's commands die with it: its spawner kills what still runs", async () => {
    const marker = `${300 + Math.floor(Math.random() * 1e6)}.5`;
    const command = new URL('../src/runtime/command.ts', import.meta.url).href;
    const agent = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e',
      `const { run } = await import(${JSON.stringify(command)}); run(['sleep', '${marker}']).catch(() => {}); setInterval(() => {}, 1000);`,
    ], { stdio: 'ignore' });
    const sleeping = async () => (await runHere(['pgrep', '-f', `^sleep ${marker}$`])).trim();
    try {
      await eventually(sleeping, (pids) => pids !== '', 'the command runs');
      agent.kill('SIGKILL');
      await eventually(sleeping, (pids) => pids === '', 'the command is gone with its agent');
    } finally {
      agent.kill('SIGKILL');
    }
  });
});

/** A command run from the test itself (pgrep exits 1 when nothing matches). */
async function runHere(argv: string[]): Promise<string> {
  return new Promise((resolve) => execFile(argv[0]!, argv.slice(1), (_e, stdout) => resolve(String(stdout))));
}

describe('StartGate', () => {
  test('admitted starts finish; later ones are refused as retryable', async () => {
    const gate = new StartGate();
    let release!: () => void;
    const admitted = gate.admit(() => new Promise<string>((r) => (release = () => r('done'))));
    const drained = gate.closeAndWait();
    await assert.rejects(gate.admit(async () => 'late'), (e: any) => e.code === 'unavailable' && e.retryable === true);
    let drainedYet = false;
    void drained.then(() => (drainedYet = true));
    await new Promise((r) => setTimeout(r, 10));
    assert.equal(drainedYet, false, 'drain waits for the admitted start');
    release();
    assert.equal(await admitted, 'done');
    await drained;
  });
});

describe('host preflight', () => {
  test('a host that cannot run sandboxes gets one sentence per problem, with what to do', async () => {
    const { preflight, formatProblems } = await import('../src/agent/preflight.ts');
    const { runtimeConfigFromEnv } = await import('../src/runtime/config.ts');
    const cfg = {
      ...runtimeConfigFromEnv(), criuBinDir: '/nonexistent/bin', initBinary: '/nonexistent/init', networkHook: '/nonexistent/net-hook', bindHook: '/nonexistent/bind-hook', templatesDir: '/nonexistent/templates',
    };
    const problems = await preflight(cfg);
    const text = formatProblems(problems);
    assert.match(text, /^This host cannot run Nestbox sandboxes yet:/);
    assert.match(text, /CRIU is not installed at \/nonexistent\/bin\/criu: run `make setup`/);
    assert.match(text, /the sandbox init is not built .*: run `make setup`/);
    assert.match(text, /the network hook is not built \(\/nonexistent\/net-hook\): run `make setup`/);
    assert.match(text, /the bind hook is not built \(\/nonexistent\/bind-hook\): run `make setup`/);
    assert.match(text, /template "base" is not built in \/nonexistent\/templates/);
    assert.doesNotMatch(text, /\n\s+at /, 'no stack trace');
    // and a host that has everything has nothing to say
    assert.deepEqual(await preflight(runtimeConfigFromEnv()), []);
  });

  test("a data directory the sandboxes' root cannot traverse (a 0700 parent, as mktemp -d makes) is found at start", async () => {
    const { preflight, formatProblems } = await import('../src/agent/preflight.ts');
    const { runtimeConfigFromEnv } = await import('../src/runtime/config.ts');
    const { mkdtemp, mkdir, rm, stat } = await import('node:fs/promises');
    const { tmpdir } = await import('node:os');
    const closed = await mkdtemp(path.join(tmpdir(), 'nestbox-0700-'));
    try {
      assert.equal((await stat(closed)).mode & 0o777, 0o700);
      await mkdir(path.join(closed, 'node'));
      const text = formatProblems(await preflight({ ...runtimeConfigFromEnv(), dataDir: path.join(closed, 'node', 'not-yet') }));
      assert.match(text, new RegExp(`the data directory ${closed}/node/not-yet is out of reach of the sandboxes' root \\(host uid 100000\\): ${closed} is mode 0700`));
      assert.match(text, new RegExp(`chmod o\\+x ${closed}\`\\), or set NESTBOX_DATA_DIR`));
      await import('node:fs/promises').then((fs) => fs.chmod(closed, 0o711));
      assert.deepEqual(await preflight({ ...runtimeConfigFromEnv(), dataDir: path.join(closed, 'node') }), []);
    } finally {
      await rm(closed, { recursive: true, force: true });
    }
  });
});

test('API errors: a dropped database connection is a retryable 503, anything unknown a bare 500', async () => {
  const { default: Fastify } = await import('fastify');
  const { installErrorHandling } = await import('../src/control-plane/api/errors.ts');
  const app = Fastify();
  installErrorHandling(app);
  app.get('/dropped', async () => {
    throw Object.assign(new Error('terminating connection due to administrator command'), { code: '57P01' });
  });
  app.get('/terminated', async () => {
    throw new Error('Connection terminated unexpectedly');
  });
  app.get('/bug', async () => {
    throw new Error('secret detail');
  });
  for (const url of ['/dropped', '/terminated']) {
    const res = await app.inject({ url });
    assert.equal(res.statusCode, 503, url);
    assert.equal(res.headers['retry-after'], '1');
    assert.deepEqual(res.json(), { code: 503, message: 'the database is unavailable; retry shortly' });
  }
  const bug = await app.inject({ url: '/bug' });
  assert.equal(bug.statusCode, 500);
  assert.deepEqual(bug.json(), { code: 500, message: 'internal error' });
  await app.close();
});

test("a create that fails on the node: the API client gets the node's cause in E2B's shape, not 'internal error'", async () => {
  const { default: Fastify } = await import('fastify');
  const { installErrorHandling } = await import('../src/control-plane/api/errors.ts');
  const { NodeCallError } = await import('../src/control-plane/node-client.ts');
  const { buildAgentServer } = await import('../src/agent/server.ts');
  // The node: whatever its runtime throws, its answer names the cause.
  const runtime = { create: async () => { throw new Error("EACCES: permission denied, mkdir '/data/node/sandboxes/x'"); } };
  const agent = buildAgentServer({ runtime: runtime as never, nodeToken: 'tok', nodeId: 'n1', starts: new StartGate() });
  const body = { sandboxId: 'abcdefghij0123456789', template: 'base', cpuCount: 1, memoryMB: 256, diskMB: 512, envVars: {}, metadata: {}, allowInternetAccess: false };
  const fromNode = await agent.inject({ method: 'POST', url: '/v1/sandboxes', headers: { authorization: 'Bearer tok' }, payload: body });
  assert.equal(fromNode.statusCode, 500);
  assert.match(fromNode.json().message, /^create failed: EACCES: permission denied/);
  await agent.close();
  // The control plane: a node's failure is passed on with its cause.
  const app = Fastify();
  installErrorHandling(app);
  app.post('/v2/sandboxes', async () => {
    throw new NodeCallError('internal', `node n1: ${fromNode.json().message}`, { uncertain: false });
  });
  const res = await app.inject({ method: 'POST', url: '/v2/sandboxes' });
  assert.equal(res.statusCode, 500);
  assert.deepEqual(Object.keys(res.json()).sort(), ['code', 'message']);
  assert.match(res.json().message, /^node n1: create failed: EACCES: permission denied/);
  await app.close();
});

test('KeyedMutex tells which keys finished work after a mark (the inventory flags them busy)', async () => {
  const m = new KeyedMutex();
  await m.run('a', async () => undefined);
  const mark = m.mark();
  assert.deepEqual(m.changedSince(mark), []);
  let release!: () => void;
  const b = m.run('b', () => new Promise<void>((r) => (release = r)));
  assert.deepEqual(m.busyKeys(), ['b']);
  assert.deepEqual(m.changedSince(mark), [], 'still running: busy, not finished');
  await new Promise((r) => setImmediate(r)); // the work starts on a later tick
  release();
  await b;
  await m.run('a', async () => undefined);
  assert.deepEqual(m.changedSince(mark).sort(), ['a', 'b']);
  assert.deepEqual(m.busyKeys(), []);
});

test('KeyedMutex.idle waits for all work, also work queued while it waits (a graceful stop waits for what follows a kill\'s answer)', async () => {
  const m = new KeyedMutex();
  await m.idle(); // nothing to wait for
  const order: string[] = [];
  let releaseA!: () => void;
  void m.run('a', () => new Promise<void>((r) => (releaseA = r))).then(() => order.push('a'));
  const idle = m.idle().then(() => order.push('idle'));
  await new Promise((r) => setImmediate(r));
  void m.run('b', async () => {
    await new Promise((r) => setTimeout(r, 5));
    order.push('b');
  });
  releaseA();
  await idle;
  assert.deepEqual(order, ['a', 'b', 'idle']);
  assert.deepEqual(m.busyKeys(), []);
});
