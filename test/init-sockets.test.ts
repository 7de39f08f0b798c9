// A dump waits until the sandbox's init has let go of the host's connections (src/runtime/
// init-sockets.ts): a process in a network namespace of its own accepts a connection from this
// (the host's) namespace; while it holds it, the wait ends false; once the host side closed and
// the process closed its end, true.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { initLetGoOfHostSockets } from '../src/runtime/init-sockets.ts';

// Its progress is marked by files (its stdio is no socket: Node's pipes are socketpairs of
// this namespace, which would count as foreign).
const SERVER = `
import os, socket, sys, time
d = sys.argv[1]
mark = lambda name: open(os.path.join(d, name), "w").close()
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(os.path.join(d, "s.sock")); s.listen(1)
mark("ready")
c, _ = s.accept()
mark("accepted")
while c.recv(100): pass
c.close()
mark("closed")
time.sleep(60)
`;

test("the wait ends only once the process closed its end of a connection from the host's namespace", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-init-sockets-'));
  const sock = path.join(dir, 's.sock');
  const child = spawn('unshare', ['-n', 'python3', '-c', SERVER, dir], { stdio: 'ignore' });
  const saw = async (name: string) => {
    for (let i = 0; i < 500 && !existsSync(path.join(dir, name)); i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(existsSync(path.join(dir, name)), `the process got to "${name}"`);
  };
  try {
    await saw('ready');
    assert.equal(await initLetGoOfHostSockets(child.pid!, 50), true, 'its own listening socket is no foreign one');
    const client = net.connect(sock);
    await saw('accepted');
    assert.equal(await initLetGoOfHostSockets(child.pid!, 100), false, 'an accepted connection from the host is foreign');
    client.end();
    assert.equal(await initLetGoOfHostSockets(child.pid!, 5_000), true, 'let go once it closed its end');
    await saw('closed');
  } finally {
    child.kill('SIGKILL');
    await rm(dir, { recursive: true, force: true });
  }
});
