// Isolation: each test asserts something a weak sandbox would get wrong.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { networkInterfaces } from 'node:os';
import { createSandbox, exec, sleep, startTestAgent, type TestAgent } from './helpers/agent-harness.ts';

let a: TestAgent;
let id: string;
before(async () => {
  // Listen on every address, so only the network isolation keeps sandboxes away from the agent.
  a = await startTestAgent({ host: '0.0.0.0' });
  id = await createSandbox(a, { pidsLimit: 128, memoryMB: 256 });
});
after(async () => {
  await a?.stop();
});

const hostAddresses = () =>
  Object.values(networkInterfaces()).flat().filter((i) => i && i.family === 'IPv4' && !i.internal).map((i) => i!.address);

describe('sandbox isolation', () => {
  test('no host processes are visible', async () => {
    const r = await exec(a, id, 'ls /proc | grep -E "^[0-9]+$" | wc -l; cat /proc/1/cmdline | tr "\\0" " "', { user: 'root' });
    const [count, pid1] = r.stdout.split('\n');
    assert.ok(Number(count) < 10, `only the sandbox's own processes (${count})`);
    assert.match(pid1!, /^\/\.nestbox\/init/);
    assert.equal((await exec(a, id, `test -e /proc/${process.pid} && echo visible || echo hidden`)).stdout, 'hidden\n');
  });

  test('root inside is not root outside, and host directories are not writable', async () => {
    const marker = `/tmp/nestbox-host-${randomBytes(4).toString('hex')}`;
    const r = await exec(a, id, `id -u; touch ${marker} && echo wrote; echo x > /proc/sys/kernel/hostname 2>&1 || echo denied; mount -t tmpfs x /mnt 2>&1 && touch /sys/fs/x 2>&1 || echo sysdenied`, { user: 'root' });
    assert.match(r.stdout, /^0\n/);
    assert.match(r.stdout, /denied/);
    // the file written to /tmp inside exists only inside
    assert.equal(await readFile(marker).then(() => true, () => false), false);
    const st = await a.agent.runtime.containerState(id);
    const status = await readFile(`/proc/${st!.pid}/status`, 'utf8');
    const uid = status.split('\n').find((l) => l.startsWith('Uid:'))!.split(/\s+/)[1];
    assert.equal(uid, '100000', 'container root is an unprivileged host uid');
  });

  test('a fork bomb is stopped by the pids limit, and the sandbox can still be killed cleanly', async () => {
    const bombed = await createSandbox(a, { pidsLimit: 64 });
    try {
      await a.api('POST', `/v1/sandboxes/${bombed}/processes`, { argv: ['/bin/bash', '-c', ':(){ :|:& };:'] }).then((r) => r.body?.cancel());
      let peak = 0;
      // Sampled for 2 s at least, and until the bomb reached the limit's region (15 s at most).
      for (let i = 0; i < 20 || (peak < 32 && i < 150); i++) {
        peak = Math.max(peak, (await a.json('GET', `/v1/sandboxes/${bombed}/metrics`)).pids);
        await sleep(100);
      }
      assert.ok(peak <= 64, `pids stay within the limit (${peak})`);
      assert.ok(peak >= 32, `the bomb did run into the limit (${peak})`);
      // the node and the other sandbox are unaffected
      assert.equal((await exec(a, id, 'echo ok')).stdout, 'ok\n');
    } finally {
      assert.equal((await a.api('DELETE', `/v1/sandboxes/${bombed}`)).status, 200);
    }
    assert.equal((await a.api('GET', `/v1/sandboxes/${bombed}`)).status, 404);
  });

  test('a memory bomb is killed inside the sandbox only', async () => {
    const r = await exec(a, id, 'python3 -c "x=[]\nwhile True: x.append(bytearray(16*1024*1024))"');
    assert.equal(r.signal, 9, 'the OOM killer took the bomb');
    assert.equal((await exec(a, id, 'echo alive')).stdout, 'alive\n', 'the init and the sandbox live on');
  });

  test("the agent's port is unreachable from inside", async () => {
    const port = new URL(a.url).port;
    const targets = [a.agent.runtime.network.gateway, ...hostAddresses()];
    const script = targets
      .map((t) => `timeout 3 bash -c "exec 3<>/dev/tcp/${t}/${port}" 2>/dev/null && echo open-${t} || echo closed-${t}`)
      .join('; ');
    const r = await exec(a, id, script);
    for (const t of targets) assert.match(r.stdout, new RegExp(`closed-${t.replace(/\./g, '\\.')}`));
  });

  test('a symlink planted in the sandbox cannot make the files API read a host file', async () => {
    const secret = `/root/nestbox-secret-${randomBytes(4).toString('hex')}`;
    await writeFile(secret, 'host secret');
    try {
      await exec(a, id, `ln -s ${secret} /home/user/link1; ln -s /etc/shadow /home/user/link2`);
      const r1 = await a.api('GET', `/v1/sandboxes/${id}/files?path=/home/user/link1&user=root`);
      assert.equal(r1.status, 404);
      const r2 = await a.api('GET', `/v1/sandboxes/${id}/files?path=/home/user/link2&user=root`);
      const body = await r2.text();
      const hostShadow = await readFile('/etc/shadow', 'utf8');
      assert.notEqual(body, hostShadow);
      assert.match(body, /^user:/m, "it is the sandbox's own /etc/shadow");
    } finally {
      await rm(secret, { force: true });
    }
  });

  test('a sandbox cannot see another sandbox, while the node reaches both', async () => {
    const other = await createSandbox(a);
    try {
      await a.api('POST', `/v1/sandboxes/${other}/processes`, { argv: ['python3', '-m', 'http.server', '8080'] }).then((r) => r.body?.cancel());
      const otherAddress = (await a.json('GET', `/v1/sandboxes/${other}`)).address;
      let reachable = false;
      for (let i = 0; i < 150 && !reachable; i++) {
        reachable = await fetch(`http://${otherAddress}:8080/`).then((r) => r.ok, () => false);
        if (!reachable) await sleep(100);
      }
      assert.ok(reachable, 'the node reaches a server in the sandbox');
      const r = await exec(a, id, `timeout 3 bash -c "exec 3<>/dev/tcp/${otherAddress}/8080" 2>/dev/null && echo open || echo closed`);
      assert.equal(r.stdout, 'closed\n');
      const ps = await exec(a, id, 'pgrep -fc "http[.]server" || true');
      assert.equal(ps.stdout.trim(), '0', "the other sandbox's processes are invisible");
    } finally {
      await a.json('DELETE', `/v1/sandboxes/${other}`);
    }
  });
});

describe('bad input', () => {
  test('malformed and oversized requests get clear errors and the agent keeps serving', async () => {
    const bad: Array<[string, string, unknown, number]> = [
      ['POST', '/v1/sandboxes', { sandboxId: 'NOT-AN-ID', template: 'base', envVars: {}, metadata: {} }, 400],
      ['POST', '/v1/sandboxes', { sandboxId: 'a'.repeat(20), template: '../etc', envVars: {}, metadata: {} }, 400],
      ['POST', '/v1/sandboxes', { sandboxId: 'b'.repeat(20), template: 'nope', envVars: {}, metadata: {} }, 404],
      ['POST', '/v1/sandboxes', { sandboxId: 'c'.repeat(20), template: 'base', envVars: {}, metadata: {}, memoryMB: -5 }, 400],
      ['POST', `/v1/sandboxes/${id}/processes`, { argv: [] }, 400],
      ['POST', `/v1/sandboxes/${id}/processes`, { argv: ['/no/such/binary'] }, 404],
      ['POST', `/v1/sandboxes/${id}/processes/99999/signal`, { signal: 9 }, 404],
      ['POST', `/v1/sandboxes/${id}/processes/1/signal`, { signal: 999 }, 400],
      ['GET', `/v1/sandboxes/${'d'.repeat(20)}`, undefined, 404],
      ['POST', `/v1/sandboxes/${'d'.repeat(20)}/pause`, { memory: true }, 404],
      ['POST', `/v1/sandboxes/${'d'.repeat(20)}/resume`, undefined, 404],
      ['GET', `/v1/sandboxes/${id}/files?path=/nonexistent`, undefined, 404],
      ['POST', '/v1/sandboxes', { huge: 'x'.repeat(3 * 1024 * 1024) }, 413],
    ];
    for (const [method, p, body, status] of bad) {
      const res = await a.api(method, p, body);
      const text = await res.text();
      assert.equal(res.status, status, `${method} ${p} -> ${res.status} ${text}`);
      const parsed = JSON.parse(text);
      assert.equal(typeof parsed.message, 'string');
      assert.doesNotMatch(parsed.message, /at .*\.ts:\d+/, 'no stack traces');
    }
    const garbage = await fetch(`${a.url}/v1/sandboxes`, {
      method: 'POST', headers: { authorization: `Bearer ${a.agent.nodeToken}`, 'content-type': 'application/json' }, body: '{"sandboxId": ',
    });
    assert.equal(garbage.status, 400);
    const noToken = await fetch(`${a.url}/v1/sandboxes`);
    assert.equal(noToken.status, 401);
    assert.equal((await exec(a, id, 'echo still-serving')).stdout, 'still-serving\n');
  });

  test('a hostile sandbox that replaces its init socket gets a clear error, others are unaffected', async () => {
    const hostile = await createSandbox(a);
    try {
      // Root inside the sandbox swaps the init's socket for a server that answers garbage.
      await a.api('POST', `/v1/sandboxes/${hostile}/processes`, {
        user: 'root',
        argv: ['python3', '-c', [
          'import os, socket',
          'p="/run/nestbox/init.sock"',
          'os.unlink(p)',
          's=socket.socket(socket.AF_UNIX); s.bind(p); s.listen(16)',
          'while True:',
          '  c,_=s.accept()',
          '  try: c.sendall(b"\\xff\\xff\\xff\\xff\\x01garbage"*100)',
          '  except Exception: pass',
          '  c.close()',
        ].join('\n')],
      }).then((r) => r.body?.cancel());
      // Until the swap the real init answers (200); while it happens the socket may be missing
      // (503); once the impostor listens, every
      // answer is a protocol error (502) and never a crash or a hang.
      let res: Response | undefined;
      for (let i = 0; i < 50; i++) {
        res = await a.api('GET', `/v1/sandboxes/${hostile}/processes`);
        assert.ok([200, 502, 503].includes(res.status), `status ${res.status}`);
        if (res.status === 502) break;
        await res.text();
        await sleep(100);
      }
      assert.equal(res!.status, 502);
      assert.match((await res!.json()).message, /protocol|frame|invalid/i);
      const ok = await exec(a, id, 'echo unaffected');
      assert.equal(ok.stdout, 'unaffected\n');
    } finally {
      await a.json('DELETE', `/v1/sandboxes/${hostile}`);
    }
  });
});
