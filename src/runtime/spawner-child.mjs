// The Node spawner: a small process that starts host commands for the agent
// (src/runtime/spawner.ts) whose stdout is hashed here, with Node's sha256 (OpenSSL's), and every
// command where nestbox-spawner (sandbox-init/, the node's usual spawner) is not built. Starting
// a process forks its parent, and the parent is blocked for as long as that takes, which grows
// with its memory: a few ms from a process this small, 15-20 ms from an agent sharing its process
// with an embedded database. Plain JavaScript, so it starts in a few tens of milliseconds and
// stays small.
//
// Requests come over the IPC channel: { id, argv, cwd, env, input, timeoutMs, capture, digest };
// each gets { id, code, signal, stdout, stderr, digest } or { id, error: { message, code } }. With
// `digest`, stdout is hashed (sha256) and counted here instead of sent back: a snapshot's disk,
// packed by tar, is hashed without passing through the agent. When the agent
// goes (the channel closes), the spawner kills what it started and exits: commands started with
// a parent-death signal (runc under setpriv) die with it.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';

const running = new Set();

process.on('message', (req) => {
  const reply = (msg) => process.connected && process.send({ id: req.id, ...msg });
  let child;
  try {
    child = spawn(req.argv[0], req.argv.slice(1), {
      env: req.env ?? process.env,
      cwd: req.cwd,
      stdio: req.capture ? [req.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'] : 'ignore',
    });
  } catch (e) {
    reply({ error: { message: e.message, code: e.code } });
    return;
  }
  running.add(child);
  const out = [];
  const err = [];
  const digest = req.digest ? { hash: createHash('sha256'), size: 0 } : null;
  child.stdout?.on('data', (b) => {
    if (!digest) return void out.push(b);
    digest.hash.update(b);
    digest.size += b.length;
  });
  child.stderr?.on('data', (b) => err.push(b));
  const timer = req.timeoutMs ? setTimeout(() => child.kill('SIGKILL'), req.timeoutMs) : undefined;
  let failed = null;
  child.on('error', (e) => {
    failed = e;
  });
  child.on('close', (code, signal) => {
    clearTimeout(timer);
    running.delete(child);
    if (failed) reply({ error: { message: failed.message, code: failed.code } });
    else {
      const stdoutDigest = digest ? { sha256: digest.hash.digest('hex'), size: digest.size } : undefined;
      reply({ code, signal, stdout: Buffer.concat(out).toString('utf8'), stderr: Buffer.concat(err).toString('utf8'), digest: stdoutDigest });
    }
  });
  if (req.input !== undefined) child.stdin?.end(req.input);
});

process.on('disconnect', () => {
  for (const child of running) child.kill('SIGKILL');
  process.exit(0);
});
