// Attacks by root inside a sandbox, performed for real against real containers. Each test does
// what an attacker would do and asserts that it gets nowhere: not into a neighbour, not onto the
// host, not onto the host's networks, not past its own limits.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readdir, readFile, rm, stat, statfs, writeFile } from 'node:fs/promises';
import net from 'node:net';
import { networkInterfaces } from 'node:os';
import path from 'node:path';
import { run } from '../src/runtime/command.ts';
import { hostIfFor } from '../src/runtime/network.ts';
import { createSandbox, eventually, exec, readProcessStream, startTestAgent, type ExecResult, type TestAgent } from './helpers/agent-harness.ts';
import { startPeer, type NetPeer } from './helpers/net-peer.ts';

let a: TestAgent;
before(async () => {
  a = await startTestAgent();
});
after(async () => {
  await a?.stop();
});

const rand = () => randomBytes(4).toString('hex');
const root = (id: string, cmd: string) => exec(a, id, cmd, { user: 'root' });
const py = (id: string, script: string, user = 'root') =>
  a.api('POST', `/v1/sandboxes/${id}/processes`, { argv: ['python3', '-c', script], user }).then(readProcessStream);

/** What a call into the sandbox gets now: the output of `cat /tmp/who`, or the error. */
async function whoAnswers(id: string): Promise<{ status: number; text: string }> {
  const res = await a.api('POST', `/v1/sandboxes/${id}/processes`, { argv: ['cat', '/tmp/who'] });
  if (res.status !== 200) return { status: res.status, text: (await res.json()).message };
  const r = await readProcessStream(res);
  return { status: 200, text: r.stdout.trim() };
}

async function marked(name: string, extra: Record<string, unknown> = {}) {
  const id = await createSandbox(a, extra);
  await root(id, `echo ${name} > /tmp/who`);
  return id;
}

const pause = (id: string, memory = true) => a.json('POST', `/v1/sandboxes/${id}/pause`, { memory });
const resume = (id: string) => a.json('POST', `/v1/sandboxes/${id}/resume`);
const kill = (id: string) => a.api('DELETE', `/v1/sandboxes/${id}`).then((r) => r.text());

describe('the channel to the init', () => {
  test("root cannot point its init socket at a neighbour's: the agent never follows it", async () => {
    const x = await marked('sandbox-x');
    const y = await marked('sandbox-y');
    try {
      const ySocket = a.agent.runtime.initClient(y).socketPath;
      await root(x, `ln -sfn ${ySocket} /run/nestbox/evil && mv -fT /run/nestbox/evil /run/nestbox/init.sock`);
      const answer = await whoAnswers(x);
      assert.notEqual(answer.text, 'sandbox-y', "a call for x must never run in y");
      assert.equal(answer.status, 503, JSON.stringify(answer));
      assert.match(answer.text, /replaced|refusing/);
      const file = await a.api('GET', `/v1/sandboxes/${x}/files?path=/tmp/who&user=root`);
      assert.notEqual((await file.text()).trim(), 'sandbox-y');
      assert.deepEqual(await whoAnswers(y), { status: 200, text: 'sandbox-y' }, 'the neighbour is untouched');
    } finally {
      await kill(x);
      await kill(y);
    }
  });

  test('root cannot point its init socket at a host socket: the agent never connects to it', async () => {
    const hostSocket = `/tmp/nestbox-host-${rand()}.sock`;
    let connections = 0;
    const server = net.createServer((c) => {
      connections++;
      c.destroy();
    });
    await new Promise<void>((r) => server.listen(hostSocket, r));
    const x = await marked('sandbox-x');
    try {
      await root(x, `ln -sfn ${hostSocket} /run/nestbox/evil && mv -fT /run/nestbox/evil /run/nestbox/init.sock`);
      for (const p of [`/v1/sandboxes/${x}/processes`, `/v1/sandboxes/${x}/files?path=/etc/passwd`]) {
        const res = await a.api('GET', p);
        assert.equal(res.status, 503, `${p}: ${await res.text()}`);
      }
      assert.equal(connections, 0, 'the host socket was never connected to');
    } finally {
      server.close();
      await rm(hostSocket, { force: true });
      await kill(x);
    }
  });

  test('a socket directory full of links survives pause and resume: the sandbox gets its own init back', async () => {
    const x = await marked('sandbox-x');
    const y = await marked('sandbox-y');
    const victim = path.join('/tmp', `victim-${rand()}`);
    await writeFile(victim, 'host file');
    try {
      const ySocket = a.agent.runtime.initClient(y).socketPath;
      await root(x, `ln -sfn ${ySocket} /run/nestbox/init.sock.y; ln -sfn / /run/nestbox/root; ln -sfn ${victim} /run/nestbox/victim; ln /etc/passwd /run/nestbox/hard 2>/dev/null; true`);
      await pause(x);
      await resume(x);
      assert.deepEqual(await whoAnswers(x), { status: 200, text: 'sandbox-x' });
      assert.equal(await readFile(victim, 'utf8'), 'host file', 'the host file a link named is untouched');
      // Now replace the socket with something that is not one, and pause/resume again.
      await root(x, 'rm -f /run/nestbox/init.sock.y; mkdir -p /run/nestbox/d && mv -fT /run/nestbox/d /run/nestbox/init.sock || true');
      await pause(x, false);
      await resume(x);
      assert.deepEqual(await whoAnswers(x), { status: 200, text: 'sandbox-x' });
      assert.deepEqual(await whoAnswers(y), { status: 200, text: 'sandbox-y' });
    } finally {
      await kill(x);
      await kill(y);
      await rm(victim, { force: true });
    }
  });

  test('an init stopped by root inside (ptrace) makes calls fail within seconds as not responding', { timeout: 120_000 }, async () => {
    const x = await marked('sandbox-x');
    const y = await marked('sandbox-y');
    try {
      // Seize every thread of PID 1 and stop it; the tracer stays alive in the background.
      const stopper = [
        'import ctypes, os, time',
        'libc = ctypes.CDLL(None, use_errno=True)',
        'PTRACE_SEIZE, PTRACE_INTERRUPT = 0x4206, 0x4207',
        'for tid in os.listdir("/proc/1/task"):',
        '    t = int(tid)',
        '    if libc.ptrace(PTRACE_SEIZE, t, 0, 0) != 0: raise SystemExit("seize %d: errno %d" % (t, ctypes.get_errno()))',
        '    libc.ptrace(PTRACE_INTERRUPT, t, 0, 0)',
        'open("/tmp/stopped", "w").write("yes")',
        'time.sleep(3600)',
      ].join('\n');
      const started = await a.api('POST', `/v1/sandboxes/${x}/processes`, { argv: ['python3', '-c', stopper], user: 'root' });
      assert.equal(started.status, 200);
      void started.body?.cancel();
      // Wait (on the host) until every thread of the init is in tracing stop.
      const initPid = (await a.agent.runtime.containerState(x))!.pid;
      await eventually(async () => {
        const tasks = await readdir(`/proc/${initPid}/task`);
        return Promise.all(tasks.map(async (t) => (await readFile(`/proc/${initPid}/task/${t}/stat`, 'utf8')).split(') ')[1]![0]));
      }, (states) => states.every((st) => st === 't'), 'the init stopped by its tracer');
      // A call (or a stream it had started) now fails as not responding, and so does every later one.
      const attempt = async (): Promise<string | null> => {
        const res = await a.api('POST', `/v1/sandboxes/${x}/processes`, { argv: ['true'] });
        if (res.status !== 200) return `${res.status} ${(await res.json()).message}`;
        try {
          await readProcessStream(res);
          return null;
        } catch (e) {
          return (e as Error).message;
        }
      };
      let failure: string | null = null;
      for (let i = 0; i < 100 && failure === null; i++) failure = await attempt();
      assert.match(failure ?? 'no failure', /not responding/);
      assert.match((await attempt()) ?? 'no failure', /^503 .*not responding/);
      // The node and the other sandbox are fine, and the stopped sandbox can still be killed.
      assert.deepEqual(await whoAnswers(y), { status: 200, text: 'sandbox-y' });
    } finally {
      await kill(x);
      await kill(y);
    }
    assert.equal((await a.api('GET', `/v1/sandboxes/${x}`)).status, 404);
  });
});

describe('files the node writes', () => {
  test('/etc/hosts, /etc/resolv.conf and /etc/hostname cannot be turned into links to host files', async () => {
    const victim = `/tmp/nestbox-victim-${rand()}`;
    const absent = `/tmp/nestbox-absent-${rand()}`;
    await writeFile(victim, 'host file\n');
    const x = await marked('sandbox-x');
    try {
      await root(x, `for f in hosts resolv.conf; do ln -sf ${victim} /etc/$f; done; ln -sf ${absent} /etc/hostname; true`);
      for (const memory of [true, false]) {
        await pause(x, memory);
        await resume(x);
      }
      assert.equal(await readFile(victim, 'utf8'), 'host file\n', 'the host file is untouched');
      assert.equal((await stat(victim)).uid, 0, 'and still host root\'s');
      await assert.rejects(stat(absent), 'no host file was created');
      const hosts = await root(x, 'cat /etc/hosts; cat /etc/hostname; hostname');
      assert.match(hosts.stdout, new RegExp(`\\t${x}\\n${x}\\n${x}\\n$`), "the sandbox has the node's files, and its host name through both resumes");
    } finally {
      await rm(victim, { force: true });
      await rm(absent, { force: true });
      await kill(x);
    }
  });

  test('with /etc itself moved aside and rebuilt from links, a pause and resume write nothing on the host', async () => {
    const victim = `/tmp/nestbox-victim-${rand()}`;
    await writeFile(victim, 'host file\n');
    const x = await marked('sandbox-x');
    try {
      await root(x, `mkdir /etc.new && cp -a /etc/passwd /etc/group /etc/shadow /etc.new/ && for f in hosts hostname resolv.conf; do ln -s ${victim} /etc.new/$f; done; mv /etc /etc.old && mv /etc.new /etc; true`);
      // The sandbox may well have broken itself; what matters is the host.
      await pause(x).catch(() => undefined);
      await resume(x).catch(() => undefined);
      assert.equal(await readFile(victim, 'utf8'), 'host file\n');
      assert.equal((await stat(victim)).uid, 0);
    } finally {
      await rm(victim, { force: true });
      await kill(x);
    }
  });

  test('/etc/nestbox/env.json is read-only inside; replaced by a link to a host file, a fresh boot writes nothing on the host', async () => {
    const victim = `/tmp/nestbox-victim-${rand()}`;
    await writeFile(victim, 'host file\n');
    const x = await marked('sandbox-x', { envVars: { GIVEN: 'at-create' } });
    try {
      assert.equal((await root(x, 'cat /etc/nestbox/env.json')).stdout, '{"GIVEN":"at-create"}');
      const write = await root(x, 'echo "{}" > /etc/nestbox/env.json');
      assert.notEqual(write.exitCode, 0, 'root inside cannot write the node\'s file');
      // Root moves the mount point's directory aside and puts a link to a host path in its place.
      await root(x, `mv /etc/nestbox /etc/nestbox.old && mkdir /etc/nestbox && ln -s ${victim} /etc/nestbox/env.json`);
      assert.equal((await root(x, 'readlink /etc/nestbox/env.json')).stdout, `${victim}\n`, 'the attack is in place');
      // A fresh boot (file-system pause) lays the mounts out and writes the file again: the link
      // is resolved inside the sandbox's root, never on the host.
      await pause(x, false);
      await resume(x);
      assert.equal(await readFile(victim, 'utf8'), 'host file\n');
      assert.equal((await stat(victim)).uid, 0);
      assert.equal((await root(x, 'cat /etc/nestbox/env.json')).stdout, '{"GIVEN":"at-create"}', 'the sandbox still reads its own variables');
    } finally {
      await rm(victim, { force: true });
      await kill(x);
    }
  });

  test("a user's own edits of /etc/hosts survive pause and resume", async () => {
    const x = await marked('sandbox-x');
    try {
      await root(x, 'echo "10.1.2.3 mine.internal" >> /etc/hosts');
      await pause(x, false);
      await resume(x);
      assert.match((await root(x, 'cat /etc/hosts')).stdout, /mine\.internal/);
    } finally {
      await kill(x);
    }
  });
});

describe('the disk', () => {
  test('a sandbox filling its disk gets ENOSPC at its own limit, kept across pause and resume', async () => {
    const x = await createSandbox(a, { diskMB: 64 });
    try {
      const hostBefore = await statfs(a.dataDir);
      const fill = await exec(a, x, 'dd if=/dev/zero of=/home/user/fill bs=1M count=512 2>&1; echo exit=$?');
      assert.match(fill.stdout, /No space left on device/);
      assert.match(fill.stdout, /exit=1/);
      const written = Number((await exec(a, x, 'stat -c %s /home/user/fill')).stdout);
      assert.ok(written < 64 * 1024 * 1024, `the sandbox wrote ${written} bytes, less than its 64 MiB`);
      const hostAfter = await statfs(a.dataDir);
      const hostUsed = (hostBefore.bavail - hostAfter.bavail) * hostAfter.bsize;
      assert.ok(hostUsed < 80 * 1024 * 1024, `the host lost ${hostUsed} bytes, not more than the sandbox's disk`);
      const errno = await py(x, 'import errno\ntry:\n  open("/home/user/more","wb").write(b"x"*(8<<20))\nexcept OSError as e:\n  print(errno.errorcode[e.errno])', 'user');
      assert.equal(errno.stdout.trim(), 'ENOSPC', 'a program sees the error it expects');

      await pause(x);
      await resume(x);
      const again = await exec(a, x, 'dd if=/dev/zero of=/home/user/fill2 bs=1M count=64 2>&1; echo exit=$?');
      assert.match(again.stdout, /No space left on device/, 'the limit holds after a resume');
      await exec(a, x, 'rm -f /home/user/fill /home/user/fill2 /home/user/more');
      const room = await exec(a, x, 'dd if=/dev/zero of=/home/user/ok bs=1M count=32 2>&1; echo exit=$?');
      assert.match(room.stdout, /exit=0/, 'deleting frees the space again');
    } finally {
      await kill(x);
    }
  });

  test("the disk's size moves with the sandbox to another node", async () => {
    const other = await startTestAgent({ snapshotDir: a.snapshotDir });
    const x = await createSandbox(a, { diskMB: 96 });
    try {
      await exec(a, x, 'echo kept > /home/user/note');
      await pause(x);
      await other.json('POST', `/v1/sandboxes/${x}/resume`);
      const df = await exec(other, x, 'df -m --output=size / | tail -1; cat /home/user/note');
      const [size, note] = df.stdout.trim().split('\n');
      assert.ok(Number(size) <= 96 && Number(size) > 64, `disk of ${size} MiB`);
      assert.equal(note, 'kept');
    } finally {
      await other.api('DELETE', `/v1/sandboxes/${x}?deleteSnapshot=true`);
      await other.stop();
      await kill(x);
    }
  });
});

describe('the kernel surface', () => {
  test('no new user namespace, as user or as root: no second set of capabilities inside', async () => {
    const x = await createSandbox(a);
    try {
      for (const user of ['user', 'root']) {
        const r = await exec(a, x, 'unshare -Ur sh -c "id -u; unshare -n true && echo netns" 2>&1; echo exit=$?', { user });
        assert.match(r.stdout, /Operation not permitted/, `${user}: ${r.stdout}`);
        assert.doesNotMatch(r.stdout, /netns/);
        const c = await py(x, 'import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nprint(libc.unshare(0x10000000), ctypes.get_errno())', user);
        assert.equal(c.stdout.trim(), '-1 1', `${user}: unshare(CLONE_NEWUSER) is EPERM`);
      }
      // Ordinary things still work: threads, fork and exec, a compiler-like workload.
      const ok = await py(x, 'import threading, subprocess\nt = threading.Thread(target=lambda: None); t.start(); t.join()\nprint(subprocess.run(["sh", "-c", "echo ok"], capture_output=True, text=True).stdout.strip())', 'user');
      assert.equal(ok.stdout.trim(), 'ok');
    } finally {
      await kill(x);
    }
  });

  test('no vsock (not namespaced: it would reach the hypervisor), no raw sockets, no mounts', async () => {
    const x = await createSandbox(a);
    try {
      const r = await py(x, [
        'import socket, ctypes',
        'def attempt(f):',
        '    try:',
        '        f(); return "allowed"',
        '    except OSError as e:',
        '        return "refused"',
        'print(attempt(lambda: socket.socket(40, socket.SOCK_STREAM)))',
        'print(attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)))',
        'libc = ctypes.CDLL(None, use_errno=True)',
        'print("refused" if libc.mount(b"none", b"/mnt", b"tmpfs", 0, None) != 0 else "allowed")',
      ].join('\n'));
      assert.deepEqual(r.stdout.trim().split('\n'), ['refused', 'refused', 'refused']);
      // ping still works, over an unprivileged ICMP socket
      const ping = await py(x, 'import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)\nprint("icmp socket ok")', 'user');
      assert.equal(ping.stdout.trim(), 'icmp socket ok');
    } finally {
      await kill(x);
    }
  });

  test('no x32 system calls: the filter knows no such ABI, and a call through it ends the caller (SIGSYS)', async () => {
    const x = await createSandbox(a);
    try {
      // getpid through the x32 ABI (its number with bit 30 set), as root
      const r = await py(x, 'import ctypes\nprint(ctypes.CDLL(None, use_errno=True).syscall(0x40000000 | 39), ctypes.get_errno())');
      assert.deepEqual({ stdout: r.stdout, signal: r.signal }, { stdout: '', signal: 31 });
    } finally {
      await kill(x);
    }
  });

  test('nothing inside names a host path: mountinfo, cgroup, kernel config; also after a pause and resume', async () => {
    const x = await createSandbox(a);
    try {
      const cfg = a.agent.runtime.cfg;
      const repo = path.resolve(import.meta.dirname, '..');
      for (const round of ['created', 'resumed']) {
        if (round === 'resumed') {
          await pause(x);
          await resume(x);
        }
        const r = await root(x, 'cat /proc/self/mountinfo /proc/1/mountinfo /proc/self/cgroup; zcat /proc/config.gz 2>/dev/null | head -3');
        for (const hostPath of [cfg.dataDir, cfg.templatesDir, cfg.snapshotDir, repo, '/var/lib/nestbox', '/run/nestbox-masked', a.dataDir]) {
          assert.ok(!r.stdout.includes(hostPath), `${round}: ${hostPath} appears inside:\n${r.stdout}`);
        }
        assert.doesNotMatch(r.stdout, /CONFIG_/, `${round}: the kernel configuration is masked`);
        assert.doesNotMatch(r.stdout, new RegExp(x), `${round}: the sandbox's own cgroup path is not shown`);
      }
    } finally {
      await kill(x);
    }
  });

  test('masked directories (/proc/acpi, /sys/firmware) stay empty and unwritable across pause and resume, each sandbox its own view', async () => {
    const x = await createSandbox(a);
    const y = await createSandbox(a);
    const probe = 'for d in /proc/acpi /sys/firmware; do echo "$d:$(ls -A $d | wc -l)"; touch $d/x 2>/dev/null && echo "$d writable"; mkdir $d/d 2>/dev/null && echo "$d mkdir"; done; true';
    const want = '/proc/acpi:0\n/sys/firmware:0\n';
    try {
      assert.equal((await root(x, probe)).stdout, want, 'as created');
      await pause(x);
      await resume(x);
      assert.equal((await root(x, probe)).stdout, want, 'after a resume');
      await pause(x, true);
      await resume(x);
      assert.equal((await root(x, probe)).stdout, want, 'after a second resume');
      assert.equal((await root(y, probe)).stdout, want, 'a neighbour sees nothing of it either');
      const mounts = (await root(x, 'grep -E " /(proc/acpi|sys/firmware) " /proc/self/mountinfo')).stdout;
      assert.equal(mounts.trim().split('\n').length, 2, mounts);
      for (const line of mounts.trim().split('\n')) assert.match(line, / ro,/, `mounted read-only: ${line}`);
    } finally {
      await kill(x);
      await kill(y);
    }
  });
});

describe('the network', () => {
  let internet: NetPeer;
  before(async () => {
    // A server "on the internet", reached through the node like any other.
    internet = await startPeer({ address: '198.51.100.2', hostAddress: '203.0.113.1' });
  });
  after(async () => {
    await internet?.close();
  });

  test('root cannot forge source addresses: no raw sockets, and forged packets never leave the node', async () => {
    const log = await internet.listen(9000);
    const x = await createSandbox(a, { allowInternetAccess: true });
    const y = await createSandbox(a, { allowInternetAccess: true });
    try {
      const xAddress = (await a.json('GET', `/v1/sandboxes/${x}`)).address;
      const yAddress = (await a.json('GET', `/v1/sandboxes/${y}`)).address;
      // Root inside has no raw sockets (no CAP_NET_RAW) ...
      const inside = await py(x, 'import socket\ntry:\n  socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW); print("raw allowed")\nexcept OSError as e:\n  print("raw refused", e.errno)');
      assert.equal(inside.stdout.trim(), 'raw refused 1');
      // ... and should it ever get them back, the node still drops every packet whose source is
      // not the sandbox's own address. Host root sends them from inside x's network namespace.
      const sender = forgedUdp(9000, [[xAddress, 'legit'], ['1.2.3.4', 'spoof-internet'], [yAddress, 'spoof-neighbour'], ['10.88.0.1', 'spoof-gateway']]);
      const pid = (await a.agent.runtime.containerState(x))!.pid;
      await run(['nsenter', '-t', String(pid), '-n', 'python3', '-c', sender]);
      // The forged ones were sent after the honest one, on the same path: had they passed, they would be here.
      const lines = await linesAfter(log, 'legit');
      assert.ok(lines.includes('udp 203.0.113.1 legit'), `the honest packet arrives, from the node's address: ${lines.join(' | ')}`);
      assert.deepEqual(lines.filter((l) => l.includes('spoof')), [], 'no forged packet left the node');
    } finally {
      await kill(x);
      await kill(y);
    }
  });

  test('no IPv6 to the host: a listener on [::] is unreachable from inside', async () => {
    const server = net.createServer((c) => c.end('host secret\n'));
    await new Promise<void>((r) => server.listen({ host: '::', port: 0, ipv6Only: true }, r));
    const port = (server.address() as net.AddressInfo).port;
    const x = await createSandbox(a);
    try {
      const hostIf = hostIfFor((await a.json('GET', `/v1/sandboxes/${x}`)).address);
      const linkLocal = (await run(['ip', '-6', '-o', 'addr', 'show', 'dev', hostIf], { allowFailure: true })).stdout.match(/inet6 (\S+)\//)?.[1];
      const globals = Object.values(networkInterfaces()).flat()
        .filter((i) => i && i.family === 'IPv6' && !i.internal && !i.address.startsWith('fe80')).map((i) => i!.address);
      if (linkLocal) {
        // Link-local addresses are usable once duplicate address detection is over, on both sides.
        await eventually(async () => (await run(['ip', '-6', 'addr', 'show', 'dev', hostIf])).stdout, (o) => !/tentative/.test(o), 'host side DAD');
        await eventually(async () => (await root(x, 'ip -6 addr show dev eth0')).stdout, (o) => !/tentative/.test(o), 'sandbox side DAD');
      }
      const targets = [...globals, ...(linkLocal ? [`${linkLocal}%eth0`] : []), 'fe80::1%eth0', 'ff02::1%eth0'];
      const script = [
        'import socket',
        `for t in ${JSON.stringify(targets)}:`,
        '    try:',
        `        c = socket.create_connection((t, ${port}), timeout=2)`,
        '        print("open", t, c.recv(100))',
        '    except OSError as e:',
        '        print("closed", t)',
      ].join('\n');
      const r = await py(x, script);
      assert.doesNotMatch(r.stdout, /open/, r.stdout);
      assert.equal(linkLocal, undefined, 'the host side of the link has no IPv6 address');
      const inside = await root(x, 'ip -6 addr show dev eth0');
      assert.doesNotMatch(inside.stdout, /inet6/, 'nor the sandbox side');
    } finally {
      server.close();
      await kill(x);
    }
  });

  test('without internet access nothing leaves, also with an internet-range source forged from inside; with it, the same request passes', async () => {
    const log = await internet.listen(9001); // udp and tcp
    const closed = await createSandbox(a, { allowInternetAccess: false });
    const open = await createSandbox(a, { allowInternetAccess: true });
    try {
      const closedAddress = (await a.json('GET', `/v1/sandboxes/${closed}`)).address as string;
      const openAddress = (await a.json('GET', `/v1/sandboxes/${open}`)).address as string;
      assert.equal(a.agent.runtime.network.hasInternet(closedAddress), false);
      assert.equal(a.agent.runtime.network.hasInternet(openAddress), true);
      const probe = `timeout 5 bash -c 'exec 3<>/dev/tcp/198.51.100.2/9001 && head -1 <&3' 2>&1 | head -1 | grep -q hello && echo open || echo closed`;
      assert.equal((await exec(a, closed, probe)).stdout.trim(), 'closed');
      assert.equal((await exec(a, open, probe)).stdout.trim(), 'open');
      // Host root sends from inside the closed sandbox's namespace, as the address of an
      // internet-range sandbox (its neighbour's, and a free one): the source check drops both.
      const freeInRange = `${a.agent.runtime.cfg.subnetPrefix}.250.250`;
      const sender = forgedUdp(9001, [[closedAddress, 'closed-own'], [openAddress, 'closed-as-open'], [freeInRange, 'closed-as-free']]);
      const pid = (await a.agent.runtime.containerState(closed))!.pid;
      await run(['nsenter', '-t', String(pid), '-n', 'python3', '-c', sender]);
      // The open sandbox's own packet, sent after them on the same path, marks the end.
      await exec(a, open, `python3 -c 'import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"open-own", ("198.51.100.2", 9001))'`);
      const lines = await linesAfter(log, 'open-own');
      assert.ok(lines.some((l) => l.includes('open-own')), `the internet sandbox's packet arrives: ${lines.join(' | ')}`);
      assert.deepEqual(lines.filter((l) => l.includes('closed-')), [], 'nothing of the closed sandbox left the node');
    } finally {
      await kill(closed);
      await kill(open);
    }
  });

  test('with internet access: no cloud metadata, no LAN, unless the operator allows a range', async () => {
    const metadata = await startPeer({ address: '169.254.169.254', hostAddress: '203.0.113.3' });
    const lan = await startPeer({ address: '192.168.213.2', hostAddress: '192.168.213.1', hostPrefix: 24 });
    const allowedLan = await startPeer({ address: '192.168.214.2', hostAddress: '192.168.214.1', hostPrefix: 24 });
    // A second agent with the operator's allowance (the egress floor is host-wide: it applies to
    // both agents from its start on).
    const operator = await startTestAgent({ config: { egressAllow: ['192.168.214.0/24'] } });
    try {
      for (const p of [internet, metadata, lan, allowedLan]) await p.listen(80);
      const x = await createSandbox(operator, { allowInternetAccess: true });
      const probe = (target: string) =>
        `timeout 5 bash -c 'exec 3<>/dev/tcp/${target}/80 && head -1 <&3' 2>&1 | head -1 | grep -q hello && echo "open ${target}" || echo "closed ${target}"`;
      const r = await exec(operator, x, ['198.51.100.2', '169.254.169.254', '192.168.213.2', '192.168.214.2'].map(probe).join('; '));
      assert.deepEqual(r.stdout.trim().split('\n'), [
        'open 198.51.100.2', 'closed 169.254.169.254', 'closed 192.168.213.2', 'open 192.168.214.2',
      ]);
      // Refused at once (no route to host), not left to time out.
      const refused = await exec(operator, x, 'curl -sS -m 5 http://169.254.169.254/ 2>&1; true');
      assert.match(refused.stdout, /No route to host|Couldn't connect/);
    } finally {
      await operator.stop();
      for (const p of [metadata, lan, allowedLan]) await p.close();
      // The floor as this file's agent set it up, for the tests after this one.
      await a.agent.runtime.network.setupHost();
    }
  });

  test('the node itself stays unreachable, on every address and port, with internet access too', async () => {
    const server = net.createServer((c) => c.end('host\n'));
    await new Promise<void>((r) => server.listen({ host: '0.0.0.0', port: 0 }, r));
    const port = (server.address() as net.AddressInfo).port;
    const x = await createSandbox(a, { allowInternetAccess: true });
    try {
      const addresses = [a.agent.runtime.network.gateway, '203.0.113.1',
        ...Object.values(networkInterfaces()).flat().filter((i) => i && i.family === 'IPv4').map((i) => i!.address)];
      const r = await exec(a, x, addresses.map((t) => `timeout 3 bash -c "exec 3<>/dev/tcp/${t}/${port}" 2>/dev/null && echo "open ${t}" || echo "closed ${t}"`).join('; '));
      assert.doesNotMatch(r.stdout, /open/, r.stdout);
    } finally {
      server.close();
      await kill(x);
    }
  });
});

/** A Python script that sends UDP packets to the internet peer (198.51.100.2) from any source address, by raw socket. */
function forgedUdp(port: number, packets: Array<[source: string, payload: string]>): string {
  return [
    'import socket, struct',
    'def send(src, payload):',
    '    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)',
    `    udp = struct.pack("!HHHH", 40000, ${port}, 8 + len(payload), 0) + payload`,
    '    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, socket.inet_aton(src), socket.inet_aton("198.51.100.2"))',
    '    s.sendto(ip + udp, ("198.51.100.2", 0))',
    ...packets.map(([src, payload]) => `send(${JSON.stringify(src)}, ${JSON.stringify(payload)}.encode())`),
  ].join('\n');
}

/** The peer's log once `marker` arrived (or 10 s passed), and a second more: what was sent before the marker has arrived by then. */
async function linesAfter(log: { lines(): Promise<string[]> }, marker: string): Promise<string[]> {
  for (let i = 0; i < 200 && !(await log.lines()).some((l) => l.includes(marker)); i++) await new Promise((res) => setTimeout(res, 50));
  await new Promise((res) => setTimeout(res, 1000));
  return log.lines();
}
