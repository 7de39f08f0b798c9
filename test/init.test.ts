// The sandbox init (sandbox-init/) and its client (src/runtime/init/), run on the host:
// the init is started as an ordinary process (it then acts as a child subreaper).
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, unlink, writeFile } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { FsEvent } from '../src/runtime/init/answers.ts';
import { InitClient } from '../src/runtime/init/client.ts';
import { InitError } from '../src/runtime/init/errors.ts';
import { MAX_FRAME } from '../src/runtime/init/frames.ts';
import type { ProcessStream } from '../src/runtime/init/streams.ts';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const CRATE = path.join(ROOT, 'sandbox-init');
const BIN = process.env.NESTBOX_INIT_BINARY ?? path.join(CRATE, 'target/release/nestbox-init');
const IS_ROOT = process.getuid?.() === 0;
const USER = IS_ROOT ? 'root' : String(process.getuid?.());
const HAS_NOBODY = IS_ROOT && /^nobody:/m.test(readFileSync('/etc/passwd', 'utf8'));

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function waitFor(cond: () => boolean | Promise<boolean>, ms = 30_000, what = 'condition') {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await cond()) return;
    await sleep(10);
  }
  throw new Error(`timed out waiting for ${what}`);
}

interface Collected {
  stdout: string;
  stderr: string;
  pty: string;
  exitCode: number | null;
  signal: number | null;
}

async function collect(ps: ProcessStream): Promise<Collected> {
  const out: Collected = { stdout: '', stderr: '', pty: '', exitCode: null, signal: null };
  for await (const c of ps) out[c.channel] += c.data.toString('utf8');
  const exit = await ps.exited;
  out.exitCode = exit.exitCode;
  out.signal = exit.signal;
  return out;
}

/** Consumes a stream in the background; `text()` is what arrived so far. */
function tap(ps: ProcessStream) {
  let text = '';
  const done = (async () => {
    for await (const c of ps) text += c.data.toString('utf8');
  })().catch(() => undefined);
  return { text: () => text, done };
}

function encode(obj: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(obj));
  const hdr = Buffer.alloc(5);
  hdr.writeUInt32BE(body.length + 1);
  hdr[4] = 1;
  return Buffer.concat([hdr, body]);
}

function rawJson(text: string): Buffer {
  const body = Buffer.from(text);
  const hdr = Buffer.alloc(5);
  hdr.writeUInt32BE(body.length + 1);
  hdr[4] = 1;
  return Buffer.concat([hdr, body]);
}

/** Sends raw bytes to a socket and returns the JSON frames answered before the close. */
function raw(sock: string, bytes: Buffer, endAfterWrite = false): Promise<any[]> {
  return new Promise((resolve) => {
    const s = net.createConnection({ path: sock });
    const chunks: Buffer[] = [];
    const finish = () => {
      const buf = Buffer.concat(chunks);
      const frames: any[] = [];
      let off = 0;
      while (off + 5 <= buf.length) {
        const len = buf.readUInt32BE(off);
        if (off + 4 + len > buf.length) break;
        if (buf[off + 4] === 1) frames.push(JSON.parse(buf.subarray(off + 5, off + 4 + len).toString()));
        off += 4 + len;
      }
      resolve(frames);
    };
    s.on('connect', () => {
      s.write(bytes);
      if (endAfterWrite) s.end();
    });
    s.on('data', (d) => chunks.push(d));
    s.on('error', () => undefined); // ECONNRESET after the init closed on unread garbage
    s.on('close', finish);
  });
}

/** The children of `ppid`: pid, state letter (Z: a zombie) and command name. */
function childrenOf(ppid: number): Array<{ pid: number; state: string; comm: string }> {
  const out: Array<{ pid: number; state: string; comm: string }> = [];
  for (const d of readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const st = readFileSync(`/proc/${d}/stat`, 'utf8');
      const fields = st.slice(st.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push({ pid: Number(d), state: fields[0]!, comm: st.slice(st.indexOf('(') + 1, st.lastIndexOf(')')) });
    } catch {
      // raced with exit
    }
  }
  return out;
}

function zombiesOf(ppid: number): number[] {
  return childrenOf(ppid).filter((c) => c.state === 'Z').map((c) => c.pid);
}

function rssKiB(pid: number): { rss: number; anon: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const get = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(status)?.[1] ?? NaN);
  return { rss: get('VmRSS'), anon: get('RssAnon') };
}

let dir: string;
let sock: string;
let init: ChildProcess;
let client: InitClient;

before(async () => {
  if (existsSync(path.join(CRATE, 'Cargo.toml')) && !process.env.NESTBOX_INIT_BINARY) {
    try {
      execFileSync('cargo', ['build', '--release', '--quiet'], { cwd: CRATE, stdio: 'inherit' });
    } catch (e) {
      if (!existsSync(BIN)) throw e;
    }
  }
  dir = await mkdtemp(path.join(os.tmpdir(), 'nestbox-init-test-'));
  await chmod(dir, 0o755);
  sock = path.join(dir, 'run/init.sock');
  init = spawn(BIN, ['--socket', sock, '--exit-with-parent'], { stdio: ['ignore', 'inherit', 'inherit'] });
  client = new InitClient(sock, { connectTimeoutMs: 1000, requestTimeoutMs: 10_000 });
  await waitFor(() => client.ping().then(() => true, () => false), 30_000, 'the init to answer');
});

after(async () => {
  init?.kill('SIGKILL');
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('init: basics', () => {
  test('--version and ping', async () => {
    const v = execFileSync(BIN, ['--version']).toString();
    assert.match(v, /^nestbox-init \d+\.\d+\.\d+/);
    const pong = await client.ping();
    assert.equal(pong.pid, init.pid);
    assert.ok(v.includes(pong.version));
    const st = await stat(sock);
    assert.equal(st.mode & 0o777, 0o600, 'the socket is private to root');
  });

  test('the binary is static', () => {
    const out = execFileSync('file', [BIN]).toString();
    assert.match(out, /static(-pie)? linked|statically linked/);
  });

  test('SIGTERM and SIGINT are ignored; SIGHUP rebinds the socket', async () => {
    init.kill('SIGTERM');
    init.kill('SIGINT');
    await sleep(50);
    assert.equal(init.exitCode, null);
    await unlink(sock);
    await assert.rejects(client.ping(), (e: InitError) => e instanceof InitError && e.code === 'unavailable');
    init.kill('SIGHUP');
    await waitFor(() => client.ping().then(() => true, () => false), 30_000, 'the rebound socket');
    // Twice: the old listener is retired each time. Wait for the new socket (a new inode at the
    // path) before pinging, or the ping may reach the listener about to be retired.
    const before = (await stat(sock)).ino;
    init.kill('SIGHUP');
    await waitFor(() => stat(sock).then((st) => st.ino !== before, () => false), 30_000, 'the socket bound again');
    await waitFor(() => client.ping().then(() => true, () => false), 30_000, 'the rebound socket');
  });

  test('idle memory is small', async () => {
    const { rss, anon } = rssKiB(init.pid!);
    console.log(`# init VmRSS ${rss} KiB (anonymous ${anon} KiB)`);
    assert.ok(anon < 4096, `anonymous RSS ${anon} KiB`);
  });
});

describe('init: processes', () => {
  test('streams stdout and stderr and reports the exit code', async () => {
    const ps = await client.start({ argv: ['sh', '-c', 'echo out; echo err >&2; echo "$HOME|$USER|$FOO|$PWD"; exit 7'], user: USER, env: { FOO: 'bar' }, cwd: '/tmp' });
    assert.ok(ps.pid > 1);
    const r = await collect(ps);
    assert.equal(r.exitCode, 7);
    assert.equal(r.signal, null);
    assert.equal(r.stderr, 'err\n');
    const [first, second] = r.stdout.split('\n');
    assert.equal(first, 'out');
    assert.match(second!, new RegExp(`^${IS_ROOT ? '/root|root' : '.*'}\\|.*bar\\|/tmp$`));
  });

  test('large output arrives complete and in order', async () => {
    const ps = await client.start({ argv: ['sh', '-c', 'seq 1 200000'], user: USER });
    const r = await collect(ps);
    const lines = r.stdout.trimEnd().split('\n');
    assert.equal(lines.length, 200000);
    assert.equal(lines[0], '1');
    assert.equal(lines[199999], '200000');
    assert.equal(r.exitCode, 0);
  });

  test('signals: the exit signal is reported, the whole group is signalled', async () => {
    const ps = await client.start({ argv: ['sleep', '30'], user: USER });
    await client.signal(ps.pid, 15);
    const r = await collect(ps);
    assert.equal(r.exitCode, null);
    assert.equal(r.signal, 15);

    const group = await client.start({ argv: ['sh', '-c', 'sleep 30 & echo $!; wait'], user: USER });
    const t = tap(group);
    await waitFor(() => t.text().includes('\n'), 30_000, 'the background pid');
    const bg = Number(t.text().trim());
    await client.signal(group.pid, 9);
    const exit = await group.exited;
    assert.equal(exit.signal, 9);
    await waitFor(() => !existsSync(`/proc/${bg}`) || readFileSync(`/proc/${bg}/stat`, 'utf8').includes(') Z'), 30_000, 'the group member to die');
    await assert.rejects(client.signal(group.pid, 9), (e: InitError) => e.code === 'not_found');
  });

  test('stdin: input and close', async () => {
    const ps = await client.start({ argv: ['cat'], user: USER, stdin: true });
    await client.input(ps.pid, Buffer.from('hello\n'));
    await client.input(ps.pid, Buffer.from([0, 1, 2, 255]));
    await client.closeStdin(ps.pid);
    const chunks: Buffer[] = [];
    for await (const c of ps) chunks.push(c.data);
    assert.deepEqual(Buffer.concat(chunks), Buffer.concat([Buffer.from('hello\n'), Buffer.from([0, 1, 2, 255])]));
    assert.equal((await ps.exited).exitCode, 0);
  });

  test('large input is split into several requests', async () => {
    const ps = await client.start({ argv: ['sh', '-c', 'wc -c'], user: USER, stdin: true });
    const t = tap(ps);
    await client.input(ps.pid, randomBytes(1536 * 1024 + 7));
    await client.closeStdin(ps.pid);
    await ps.exited;
    await t.done;
    assert.equal(t.text().trim(), String(1536 * 1024 + 7));
  });

  test('without stdin the child reads /dev/null; input is refused', async () => {
    const ps = await client.start({ argv: ['sh', '-c', 'cat; echo done'], user: USER });
    const r = await collect(ps);
    assert.equal(r.stdout, 'done\n');
    const sleeper = await client.start({ argv: ['sleep', '30'], user: USER });
    await assert.rejects(client.input(sleeper.pid, Buffer.from('x')), (e: InitError) => e.code === 'invalid');
    await client.signal(sleeper.pid, 9);
    await sleeper.exited;
  });

  test('pty: controlling terminal, size and resize', async () => {
    const ps = await client.start({
      argv: ['sh', '-c', 'tty; stty size; echo "TERM=$TERM"; read x; stty size'],
      user: USER,
      pty: { cols: 80, rows: 24 },
    });
    const t = tap(ps);
    // (the three lines may come in separate chunks: wait for the last)
    await waitFor(() => /TERM=\S*\r?\n/.test(t.text()), 30_000, 'the initial size and TERM');
    assert.match(t.text(), /24 80/);
    assert.match(t.text(), /\/dev\/pts\/\d+/);
    assert.match(t.text(), /TERM=xterm-256color/);
    await client.resize(ps.pid, 120, 40);
    await client.input(ps.pid, Buffer.from('go\n'));
    const exit = await ps.exited;
    await t.done;
    assert.equal(exit.exitCode, 0);
    assert.match(t.text(), /40 120/);
    const list = await client.list();
    assert.ok(!list.some((p) => p.pid === ps.pid), 'exited processes are not listed');
    // resize of a process without a pty is invalid
    const plain = await client.start({ argv: ['sleep', '30'], user: USER });
    await assert.rejects(client.resize(plain.pid, 10, 10), (e: InitError) => e.code === 'invalid');
    await client.signal(plain.pid, 9);
    await plain.exited;
  });

  test('pty: close_stdin sends EOT', async () => {
    const ps = await client.start({ argv: ['cat'], user: USER, pty: { cols: 80, rows: 24 } });
    await client.closeStdin(ps.pid);
    const exit = await ps.exited;
    assert.equal(exit.exitCode, 0);
  });

  test('two readers see the same output', async () => {
    const ps = await client.start({ argv: ['cat'], user: USER, stdin: true });
    const second = await client.attach(ps.pid);
    assert.equal(second.pid, ps.pid);
    const a = collect(ps);
    const b = collect(second);
    for (let i = 0; i < 50; i++) await client.input(ps.pid, Buffer.from(`line ${i}\n`));
    await client.closeStdin(ps.pid);
    const [ra, rb] = await Promise.all([a, b]);
    const expected = Array.from({ length: 50 }, (_, i) => `line ${i}\n`).join('');
    assert.equal(ra.stdout, expected);
    assert.equal(rb.stdout, expected);
    assert.equal(ra.exitCode, 0);
    assert.equal(rb.exitCode, 0);
  });

  test('reattach by pid gets the output buffered while detached', async () => {
    const ps = await client.start({ argv: ['cat'], user: USER, stdin: true });
    await client.input(ps.pid, Buffer.from('before\n'));
    const t = tap(ps);
    await waitFor(() => t.text() === 'before\n', 30_000, 'live output');
    ps.detach();
    await t.done;
    await assert.rejects(ps.exited, (e: InitError) => e.code === 'unavailable');
    await sleep(100); // the init notices the detach
    await client.input(ps.pid, Buffer.from('while detached\n'));
    await sleep(200);
    const again = await client.attach(ps.pid);
    const t2 = tap(again);
    await waitFor(() => t2.text() === 'while detached\n', 30_000, 'buffered output');
    await client.closeStdin(ps.pid);
    assert.equal((await again.exited).exitCode, 0);
  });

  test('an exit nobody saw is delivered on attach, then forgotten', async () => {
    const ps = await client.start({ argv: ['sh', '-c', 'read x; echo bye; exit 4'], user: USER, stdin: true });
    ps.detach();
    await sleep(100);
    await client.input(ps.pid, Buffer.from('\n'));
    await waitFor(async () => !(await client.list()).some((p) => p.pid === ps.pid), 30_000, 'the exit');
    const again = await client.attach(ps.pid);
    const r = await collect(again);
    assert.equal(r.stdout, 'bye\n');
    assert.equal(r.exitCode, 4);
    await assert.rejects(client.attach(ps.pid), (e: InitError) => e.code === 'not_found');
  });

  test('list shows running processes with argv, env, cwd, tag and pty', async () => {
    const ps = await client.start({ argv: ['sleep', '30'], user: USER, env: { A: '1' }, cwd: '/', tag: 'my-tag' });
    const list = await client.list();
    const me = list.find((p) => p.pid === ps.pid);
    assert.ok(me);
    assert.deepEqual(me.argv, ['sleep', '30']);
    assert.equal(me.env.A, '1');
    assert.equal(me.cwd, '/');
    assert.equal(me.tag, 'my-tag');
    assert.equal(me.pty, false);
    await client.signal(ps.pid, 9);
    await ps.exited;
  });

  test('exec failures are clean errors', async () => {
    await assert.rejects(client.start({ argv: ['/no/such/binary'], user: USER }), (e: InitError) => e instanceof InitError && e.code === 'not_found');
    await assert.rejects(client.start({ argv: ['no-such-command-anywhere'], user: USER }), (e: InitError) => e.code === 'not_found');
    const notExec = path.join(dir, 'not-executable');
    await writeFile(notExec, '#!/bin/sh\necho hi\n', { mode: 0o644 });
    if (IS_ROOT) await chmod(notExec, 0o644);
    await assert.rejects(client.start({ argv: [notExec], user: USER }), (e: InitError) => e.code === 'permission');
    await assert.rejects(client.start({ argv: ['true'], user: USER, cwd: '/no/such/dir' }), (e: InitError) => e.code === 'not_found');
    await assert.rejects(client.start({ argv: ['true'], user: USER, cwd: notExec }), (e: InitError) => e.code === 'not_dir');
    await assert.rejects(client.start({ argv: ['true'], user: 'no-such-user-xyz' }), (e: InitError) => e.code === 'not_found');
    await assert.rejects(client.start({ argv: [], user: USER }), (e: InitError) => e.code === 'invalid');
    await assert.rejects(client.signal(999999, 9), (e: InitError) => e.code === 'invalid' || e.code === 'not_found');
    await assert.rejects(client.signal(1, 999), (e: InitError) => e.code === 'invalid');
    assert.ok((await client.ping()).pid > 0);
  });

  test('processes run as the requested user', { skip: !HAS_NOBODY && 'needs root and a nobody user' }, async () => {
    const ps = await client.start({ argv: ['sh', '-c', 'id -u; echo $HOME; cat /proc/self/oom_score_adj'], user: 'nobody', cwd: '/' });
    const r = await collect(ps);
    const [uid, , oom] = r.stdout.split('\n');
    assert.equal(uid, '65534');
    assert.equal(oom, '0');
  });

  test('orphans are reaped', async () => {
    const ps = await client.start({ argv: ['sh', '-c', 'sleep 0.2 & exit 0'], user: USER });
    const r = await collect(ps);
    assert.equal(r.exitCode, 0);
    // The orphan (sleep 0.2) ends, and no zombie of it stays: it may take a moment on a busy host.
    for (let i = 0; i < 150 && childrenOf(init.pid!).some((c) => c.state === 'Z' || c.comm === 'sleep'); i++) await sleep(100);
    assert.deepEqual(zombiesOf(init.pid!), []);
  });

  test('closeAll ends every stream of the client but not the processes', async () => {
    const other = new InitClient(sock);
    const ps = await other.start({ argv: ['sleep', '30'], user: USER });
    const t = tap(ps);
    assert.equal(other.openConnections, 1);
    other.closeAll();
    await t.done;
    await assert.rejects(ps.exited, (e: InitError) => e.code === 'unavailable');
    assert.equal(other.openConnections, 0);
    assert.ok((await client.list()).some((p) => p.pid === ps.pid), 'the process still runs');
    const back = await client.attach(ps.pid);
    await client.signal(ps.pid, 9);
    assert.equal((await back.exited).signal, 9);
  });
});

describe('init: files', () => {
  test('write/read round trip of a 50 MiB binary file', async () => {
    const src = path.join(dir, 'big.src');
    const data = randomBytes(50 * 1024 * 1024 + 12345);
    await writeFile(src, data);
    const want = createHash('sha256').update(data).digest('hex');
    const target = path.join(dir, 'files/deep/big.bin');
    const t0 = Date.now();
    const entry = await client.writeFile(target, createReadStream(src), { user: USER, mode: 0o600 });
    const tWrite = Date.now() - t0;
    assert.equal(entry.size, data.length);
    assert.equal(entry.type, 'file');
    assert.equal(entry.mode, 0o600);
    assert.equal(entry.permissions, '-rw-------');
    assert.equal(createHash('sha256').update(await readFile(target)).digest('hex'), want);
    const t1 = Date.now();
    const file = await client.readFile(target, USER);
    assert.equal(file.size, data.length);
    const h = createHash('sha256');
    for await (const c of file.stream) h.update(c as Buffer);
    const tRead = Date.now() - t1;
    assert.equal(h.digest('hex'), want);
    console.log(`# 50 MiB: write ${tWrite} ms, read ${tRead} ms; init RSS after: ${JSON.stringify(rssKiB(init.pid!))} KiB`);
    assert.ok(rssKiB(init.pid!).anon < 32 * 1024, 'the init does not buffer whole files');
    // no temporary files are left behind
    assert.deepEqual((await client.listDir(path.dirname(target), 1, USER)).map((e) => e.name), ['big.bin']);
  });

  test('writeFile overwrites atomically, appends, and takes Buffers and async iterables', async () => {
    const p = path.join(dir, 'files/small.txt');
    await client.writeFile(p, Buffer.from('one\n'), { user: USER });
    await client.writeFile(p, Buffer.from('two\n'), { user: USER });
    async function* gen() {
      yield Buffer.from('three');
      yield Buffer.from('\n');
    }
    const e = await client.writeFile(p, gen(), { user: USER, append: true });
    assert.equal(e.size, 'two\nthree\n'.length);
    assert.equal(await readFile(p, 'utf8'), 'two\nthree\n');
    const empty = await client.writeFile(path.join(dir, 'files/empty'), Buffer.alloc(0), { user: USER });
    assert.equal(empty.size, 0);
    const f = await client.readFile(path.join(dir, 'files/empty'), USER);
    const chunks: Buffer[] = [];
    for await (const c of f.stream) chunks.push(c as Buffer);
    assert.equal(Buffer.concat(chunks).length, 0);
    await assert.rejects(client.writeFile(path.join(dir, 'files'), Buffer.from('x'), { user: USER }), (err: InitError) => err.code === 'is_dir');
  });

  test('readFile errors', async () => {
    await assert.rejects(client.readFile(path.join(dir, 'nope'), USER), (e: InitError) => e.code === 'not_found');
    await assert.rejects(client.readFile(dir, USER), (e: InitError) => e.code === 'is_dir');
  });

  test('stat, list_dir with depth 2, mkdir, move, remove', async () => {
    const base = path.join(dir, 'tree');
    assert.equal(await client.mkdir(path.join(base, 'a/b'), USER), true);
    assert.equal(await client.mkdir(path.join(base, 'a/b'), USER), false);
    await client.writeFile(path.join(base, 'a/f1'), Buffer.from('12345'), { user: USER });
    await client.writeFile(path.join(base, 'a/b/deep'), Buffer.from('x'), { user: USER });
    await client.writeFile(path.join(base, 'top'), Buffer.from('t'), { user: USER });
    await assert.rejects(client.mkdir(path.join(base, 'top'), USER), (e: InitError) => e.code === 'exists');

    const st = await client.stat(path.join(base, 'a/f1'), USER);
    assert.equal(st.name, 'f1');
    assert.equal(st.size, 5);
    assert.equal(st.type, 'file');
    assert.equal(st.path, path.join(base, 'a/f1'));
    assert.equal(st.owner, IS_ROOT ? 'root' : os.userInfo().username);
    assert.equal(st.symlink_target, null);
    assert.ok(Math.abs(st.mtime_ms - Date.now()) < 60_000);

    const one = await client.listDir(base, 1, USER);
    assert.deepEqual(one.map((e) => e.name), ['a', 'top']);
    const two = await client.listDir(base, 2, USER);
    assert.deepEqual(two.map((e) => path.relative(base, e.path)).sort(), ['a', 'a/b', 'a/f1', 'top']);
    assert.equal(two.find((e) => e.name === 'b')?.type, 'dir');

    const moved = await client.move(path.join(base, 'a/f1'), path.join(base, 'moved'), USER);
    assert.equal(moved.name, 'moved');
    assert.equal(moved.size, 5);
    await assert.rejects(client.stat(path.join(base, 'a/f1'), USER), (e: InitError) => e.code === 'not_found');

    const { symlink } = await import('node:fs/promises');
    await symlink('moved', path.join(base, 'link'));
    const ls = await client.stat(path.join(base, 'link'), USER);
    assert.equal(ls.type, 'symlink');
    assert.equal(ls.symlink_target, 'moved');

    await client.remove(path.join(base, 'a'), USER);
    await client.remove(path.join(base, 'link'), USER);
    assert.deepEqual((await client.listDir(base, 3, USER)).map((e) => e.name).sort(), ['moved', 'top']);
    await assert.rejects(client.remove(path.join(base, 'a'), USER), (e: InitError) => e.code === 'not_found');
    await assert.rejects(client.listDir(path.join(base, 'top'), 1, USER), (e: InitError) => e.code === 'not_dir');
  });

  test('relative paths resolve against the home of the user', async () => {
    const home = IS_ROOT ? '/root' : os.homedir();
    const name = `.nestbox-init-test-${randomBytes(4).toString('hex')}`;
    try {
      const e = await client.writeFile(name, Buffer.from('hi'), { user: USER });
      assert.equal(e.path, path.join(home, name));
    } finally {
      await rm(path.join(home, name), { force: true });
    }
  });

  test('file operations use the permissions of the user', { skip: !HAS_NOBODY && 'needs root and a nobody user' }, async () => {
    const shared = path.join(dir, 'shared');
    await mkdir(shared, { mode: 0o777 });
    await chmod(shared, 0o777);
    const e = await client.writeFile(path.join(shared, 'sub/mine'), Buffer.from('x'), { user: 'nobody' });
    assert.equal(e.owner, 'nobody');
    assert.equal((await client.stat(path.join(shared, 'sub'), 'nobody')).owner, 'nobody');
    await writeFile(path.join(dir, 'root-only'), 'secret', { mode: 0o600 });
    await assert.rejects(client.readFile(path.join(dir, 'root-only'), 'nobody'), (err: InitError) => err.code === 'permission');
    await assert.rejects(client.writeFile(path.join(dir, 'x'), Buffer.from('x'), { user: 'nobody' }), (err: InitError) => err.code === 'permission');
    await assert.rejects(client.mkdir('/root/nestbox-nope', 'nobody'), (err: InitError) => err.code === 'permission');
  });

  test('watch reports create, write, remove (recursively)', async () => {
    const wdir = path.join(dir, 'watched');
    await mkdir(path.join(wdir, 'pre'), { recursive: true });
    const w = await client.watch(wdir, { recursive: true, user: USER });
    const events: FsEvent[] = [];
    const done = (async () => {
      for await (const e of w) events.push(e);
    })();
    const has = (name: string, op: string) => events.some((e) => e.name === name && e.op === op);
    await writeFile(path.join(wdir, 'f'), 'x');
    await waitFor(() => has('f', 'create'), 30_000, 'create');
    await writeFile(path.join(wdir, 'f'), 'more', { flag: 'a' });
    await waitFor(() => has('f', 'write'), 30_000, 'write');
    await writeFile(path.join(wdir, 'pre/g'), 'x');
    await waitFor(() => has('pre/g', 'create'), 30_000, 'create in an existing subdirectory');
    await mkdir(path.join(wdir, 'new'));
    await waitFor(() => has('new', 'create'), 30_000, 'mkdir');
    await sleep(50);
    await writeFile(path.join(wdir, 'new/h'), 'x');
    await waitFor(() => has('new/h', 'create'), 30_000, 'create in a new subdirectory');
    await unlink(path.join(wdir, 'f'));
    await waitFor(() => has('f', 'remove'), 30_000, 'remove');
    await chmod(path.join(wdir, 'new/h'), 0o600);
    await waitFor(() => has('new/h', 'chmod'), 30_000, 'chmod');
    w.close();
    await done;
    await assert.rejects(client.watch(path.join(dir, 'nope'), { user: USER }), (e: InitError) => e.code === 'not_found');
  });
});

describe('init: bad input', () => {
  test('oversized frames, garbage and unknown ops get invalid; the init keeps serving', async () => {
    const huge = Buffer.alloc(5);
    huge.writeUInt32BE(MAX_FRAME + 1);
    huge[4] = 1;
    const cases: Buffer[] = [
      huge,
      Buffer.concat([Buffer.from([0, 0, 0, 0])]),
      Buffer.from([0, 0, 0, 3, 9, 1, 2]), // unknown kind
      Buffer.concat([Buffer.from([0, 0, 0, 6, 1]), Buffer.from('{oops')]),
      Buffer.concat([Buffer.from([0, 0, 0, 5, 1]), Buffer.from([0xff, 0xfe, 0x22, 0x22])]),
      encode([1, 2, 3]),
      encode({ op: 'frobnicate' }),
      encode({ op: 42 }),
      encode({ nop: 'ping' }),
      encode({ op: 'start', argv: 'ls' }),
      encode({ op: 'start', argv: ['ls', 5] }),
      encode({ op: 'start', argv: ['ls'], user: USER, env: { A: 1 } }),
      encode({ op: 'start', argv: ['ls'], user: USER, pty: { cols: -1, rows: 5 } }),
      encode({ op: 'start', argv: ['l\u0000s'], user: USER }),
      encode({ op: 'signal', pid: 'x', signal: 9 }),
      encode({ op: 'signal', pid: 1.5, signal: 9 }),
      encode({ op: 'input', pid: 1, data: '***' }),
      encode({ op: 'list_dir', path: '/', depth: 0, user: USER }),
      encode({ op: 'stat', user: USER }),
      encode({ op: 'stat', path: 5, user: USER }),
      Buffer.concat([Buffer.from([0, 0, 0, 3, 2, 1]), Buffer.from('x')]), // DATA instead of a request
      Buffer.concat([encode({ op: 'write_file', path: path.join(dir, 'w'), user: USER }), Buffer.from([0, 0, 0, 3, 2, 1, 0x41]), encode({ op: 'bogus' })]),
      rawJson(`{"op":"ping","x":${'['.repeat(200)}${']'.repeat(200)}}`), // nested too deeply
      rawJson('{"op":"ping"} trailing'),
      rawJson('{"op":"ping","op":"ping","s":"\\ud800"}'), // lone surrogate
    ];
    for (const c of cases) {
      const frames = await raw(sock, c);
      assert.equal(frames.length, 1, `one answer to ${c.subarray(0, 40).toString('hex')}`);
      assert.equal(frames[0].type, 'error');
      assert.equal(frames[0].code, 'invalid', JSON.stringify(frames[0]));
    }
    // a truncated request (client closes early) gets an error or nothing, never a crash
    await raw(sock, Buffer.from([0, 0, 1, 0, 1, 0x7b]), true);
    // a request far beyond the limit
    const big = await raw(sock, encode({ op: 'ping', pad: 'x'.repeat(MAX_FRAME) }));
    assert.equal(big[0]?.code, 'invalid');
    assert.ok((await client.ping()).pid > 0);
    assert.equal(init.exitCode, null);
  });

  test('many concurrent connections', async () => {
    const results = await Promise.all(Array.from({ length: 100 }, () => client.ping()));
    assert.equal(results.length, 100);
  });
});

describe('client: a hostile init', () => {
  type Behaviour = (s: net.Socket) => void;
  let fakeDir: string;
  let fakeSock: string;
  let server: net.Server;
  let behaviour: Behaviour = (s) => s.end();
  const sockets = new Set<net.Socket>();
  const uncaught: unknown[] = [];
  const onUncaught = (e: unknown) => uncaught.push(e);

  before(async () => {
    process.on('uncaughtException', onUncaught);
    process.on('unhandledRejection', onUncaught);
    fakeDir = await mkdtemp(path.join(os.tmpdir(), 'nestbox-fake-init-'));
    fakeSock = path.join(fakeDir, 'init.sock');
    server = net.createServer((s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
      s.once('data', () => behaviour(s));
    });
    await new Promise<void>((r) => server.listen(fakeSock, r));
  });

  after(async () => {
    process.off('uncaughtException', onUncaught);
    process.off('unhandledRejection', onUncaught);
    for (const s of sockets) s.destroy();
    await new Promise((r) => server.close(r));
    await rm(fakeDir, { recursive: true, force: true });
  });

  const frame = (kind: number, payload: Buffer) => {
    const h = Buffer.alloc(5);
    h.writeUInt32BE(payload.length + 1);
    h[4] = kind;
    return Buffer.concat([h, payload]);
  };
  const json = (o: unknown) => frame(1, Buffer.from(JSON.stringify(o)));
  const isProtocol = (e: unknown) => e instanceof InitError && e.code === 'protocol';

  test('garbage answers reject with protocol and nothing throws', async () => {
    const fake = new InitClient(fakeSock, { requestTimeoutMs: 2000 });
    const cases: Array<[string, Behaviour]> = [
      ['oversized length prefix', (s) => s.end(Buffer.from([0xff, 0xff, 0xff, 0xff, 1]))],
      ['length just over the limit', (s) => { const b = Buffer.alloc(5); b.writeUInt32BE(MAX_FRAME + 1); b[4] = 1; s.end(b); }],
      ['zero length', (s) => s.end(Buffer.from([0, 0, 0, 0, 1]))],
      ['unknown kind', (s) => s.end(frame(7, Buffer.from('{}')))],
      ['truncated frame', (s) => s.end(Buffer.concat([Buffer.from([0, 0, 0, 100, 1]), Buffer.from('{"type":')]))],
      ['truncated header', (s) => s.end(Buffer.from([0, 0]))],
      ['not JSON', (s) => s.end(frame(1, Buffer.from('hello')))],
      ['invalid UTF-8', (s) => s.end(frame(1, Buffer.from([0x22, 0xff, 0x22])))],
      ['JSON array', (s) => s.end(json([1]))],
      ['wrong type', (s) => s.end(json({ type: 'entries', entries: [] }))],
      ['wrong field type', (s) => s.end(json({ type: 'pong', version: 5, pid: 1 }))],
      ['negative pid', (s) => s.end(json({ type: 'pong', version: '1', pid: -1 }))],
      ['unknown error code', (s) => s.end(json({ type: 'error', code: 'kaboom', message: 'x' }))],
      ['error without message', (s) => s.end(json({ type: 'error', code: 'invalid' }))],
      ['DATA instead of an answer', (s) => s.end(frame(2, Buffer.from([1, 65])))],
      ['closes without answering', (s) => s.end()],
    ];
    for (const [name, b] of cases) {
      behaviour = b;
      await assert.rejects(fake.ping(), isProtocol, name);
    }
    behaviour = (s) => s.end(json({ type: 'pong', version: '9.9', pid: 1, extra: true }));
    assert.deepEqual(await fake.ping(), { version: '9.9', pid: 1 });

    const badEntries: Array<[string, unknown]> = [
      ['stat missing fields', { type: 'entry', entry: { name: 'x' } }],
      ['stat bad type', { type: 'entry', entry: { name: 'x', type: 'blob', path: '/x', size: 1, mode: 1, permissions: '', owner: '', group: '', mtime_ms: 1, symlink_target: null } }],
      ['stat fractional size', { type: 'entry', entry: { name: 'x', type: 'file', path: '/x', size: 1.5, mode: 1, permissions: '', owner: '', group: '', mtime_ms: 1, symlink_target: null } }],
    ];
    for (const [name, answer] of badEntries) {
      behaviour = (s) => s.end(json(answer));
      await assert.rejects(fake.stat('/x'), isProtocol, name);
    }
    behaviour = (s) => s.end(json({ type: 'list', processes: [{ pid: 2, argv: ['a'], env: { A: 5 }, cwd: '/', tag: null, pty: false }] }));
    await assert.rejects(fake.list(), isProtocol);
    behaviour = (s) => s.end(json({ type: 'mkdir', created: 'yes' }));
    await assert.rejects(fake.mkdir('/x'), isProtocol);
    behaviour = (s) => s.end(json({ ok: 1 }));
    await assert.rejects(fake.signal(2, 9), isProtocol);

    // a stream that turns into garbage: the stream fails, nothing else
    behaviour = (s) => s.end(Buffer.concat([json({ type: 'started', pid: 5 }), frame(2, Buffer.from([1, 65])), frame(2, Buffer.from([9, 65]))]));
    const ps = await fake.start({ argv: ['x'] });
    await assert.rejects(collect(ps), isProtocol);
    await assert.rejects(ps.exited, isProtocol);
    behaviour = (s) => s.end(Buffer.concat([json({ type: 'started', pid: 5 }), json({ type: 'exit', pid: 6, exit_code: 0, signal: null })]));
    await assert.rejects(fake.start({ argv: ['x'] }).then(collect), isProtocol);
    behaviour = (s) => s.end(Buffer.concat([json({ type: 'started', pid: 5 }), frame(1, Buffer.from('{"type":"exit"'))]));
    await assert.rejects(fake.start({ argv: ['x'] }).then((p) => p.exited), isProtocol);
    behaviour = (s) => s.end(json({ type: 'started', pid: 5 })); // closes before the exit
    await assert.rejects(fake.start({ argv: ['x'] }).then((p) => p.exited), isProtocol);

    // a file stream longer than announced
    behaviour = (s) => s.end(Buffer.concat([json({ type: 'file', size: 1 }), frame(2, Buffer.from([4, 1, 2, 3]))]));
    const f = await fake.readFile('/x');
    await assert.rejects(async () => {
      for await (const _ of f.stream) void _;
    }, isProtocol);
    // a watch sending bad events
    behaviour = (s) => s.end(Buffer.concat([json({ type: 'watching' }), json({ type: 'fs_event', name: 'a', op: 'explode' })]));
    const w = await fake.watch('/x');
    await assert.rejects(async () => {
      for await (const _ of w) void _;
    }, isProtocol);
    // write_file answered before the upload finished
    behaviour = (s) => s.end(json({ type: 'entry', entry: {} }));
    await assert.rejects(fake.writeFile('/x', Buffer.alloc(10)), (e: unknown) => e instanceof InitError);

    await sleep(50);
    assert.deepEqual(uncaught, []);
    assert.equal(fake.openConnections, 0);
  });

  test('silence times out and a missing socket is unavailable', async () => {
    const fake = new InitClient(fakeSock, { requestTimeoutMs: 200 });
    behaviour = () => undefined;
    await assert.rejects(fake.ping(), (e: unknown) => e instanceof InitError && e.code === 'unavailable');
    behaviour = (s) => s.pause(); // stops reading the upload
    await assert.rejects(fake.writeFile('/x', Buffer.alloc(16 * 1024 * 1024)), (e: unknown) => e instanceof InitError && e.code === 'unavailable');
    const missing = new InitClient(path.join(fakeDir, 'nope.sock'));
    await assert.rejects(missing.ping(), (e: unknown) => e instanceof InitError && e.code === 'unavailable');
    assert.deepEqual(uncaught, []);
  });
});
