// The envd commands of the CLI (sandbox exec | shell, files ls | cp), run for real (bin/nestbox as
// a child process) against a live Nestbox: node agent with real containers, control plane on a
// temporary PGlite, sandbox proxy; configured only through E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY.
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b';
import { startStack, type TestStack } from './helpers/stack.ts';

const BIN = path.join(import.meta.dirname, '..', 'bin', 'nestbox');
const KEY = 'e2b_' + '6c'.repeat(20);
let stack: TestStack;
let dir: string;
let apiUrl: string;
let proxyUrl: string;
let sbx: Sandbox;

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs `bin/nestbox args` with the E2B_* variables of the live stack, `input` piped to stdin. */
function nestbox(args: string[], input = ''): Promise<Run> {
  const env: Record<string, string | undefined> = { ...process.env };
  for (const k of ['E2B_DOMAIN', 'NESTBOX_API_KEY']) delete env[k];
  Object.assign(env, { E2B_API_URL: apiUrl, E2B_SANDBOX_URL: proxyUrl, E2B_API_KEY: KEY });
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, { env: env as NodeJS.ProcessEnv, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(input);
  });
}

function ok(r: Run): Run {
  assert.equal(r.code, 0, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

before(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'nestbox-cli-envd-'));
  stack = await startStack(KEY);
  ({ apiUrl } = stack);
  proxyUrl = stack.proxyUrl!;
  sbx = await Sandbox.create('base', { apiUrl, apiKey: KEY, sandboxUrl: proxyUrl, timeoutMs: 300_000, requestTimeoutMs: 60_000 });
});

after(async () => {
  await sbx?.kill().catch(() => undefined);
  await stack?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe('nestbox sandbox exec', () => {
  test('streams stdout and stderr, exits 0', async () => {
    const r = ok(await nestbox(['sandbox', 'exec', sbx.sandboxId, '-c', 'echo out; echo err >&2']));
    assert.equal(r.stdout, 'out\n');
    assert.equal(r.stderr, 'err\n');
  });

  test('after --: argv as argv, no shell; --shell: a command string', async () => {
    const r = ok(await nestbox(['sandbox', 'exec', sbx.sandboxId, '--', 'echo', 'a b', 'c;d', '$HOME']));
    assert.equal(r.stdout, 'a b c;d $HOME\n');
    const py = ok(await nestbox(['sandbox', 'exec', sbx.sandboxId, '--', 'python3', '-c', 'import sys; print(sys.argv[1:])', "it's", '*']));
    assert.equal(py.stdout, `["it's", '*']\n`);
    assert.equal(ok(await nestbox(['sandbox', 'exec', sbx.sandboxId, '--shell', 'echo $HOME'])).stdout, '/home/user\n');
  });

  test("exits with the command's exit code, output kept", async () => {
    const r = await nestbox(['sandbox', 'exec', sbx.sandboxId, '-c', 'echo before; exit 7']);
    assert.equal(r.code, 7, r.stderr);
    assert.equal(r.stdout, 'before\n');
  });

  test('--json prints {stdout, stderr, exitCode} at the end, with the exit code', async () => {
    const r = await nestbox(['sandbox', 'exec', '--json', sbx.sandboxId, '-c', 'echo a; echo b >&2; exit 3']);
    assert.equal(r.code, 3, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout), { stdout: 'a\n', stderr: 'b\n', exitCode: 3 });
    assert.equal(r.stderr, '');
    const okJson = ok(await nestbox(['sandbox', 'exec', sbx.sandboxId, '--json', '--', 'true']));
    assert.deepEqual(JSON.parse(okJson.stdout), { stdout: '', stderr: '', exitCode: 0 });
  });

  test('--env (repeatable), --user, --cwd', async () => {
    const r = ok(
      await nestbox([
        'sandbox', 'exec', sbx.sandboxId, '--env', 'A=1', '--env', 'B=two words', '--user', 'root', '--cwd', '/tmp',
        '-c', 'echo "$A|$B|$(whoami)|$(pwd)"',
      ]),
    );
    assert.equal(r.stdout, '1|two words|root|/tmp\n');
    assert.equal(ok(await nestbox(['sandbox', 'exec', sbx.sandboxId, '--', 'whoami'])).stdout, 'user\n');
  });

  test('an unknown sandbox, an unreachable proxy: one line on stderr, exit 1', async () => {
    const r = await nestbox(['sandbox', 'exec', 'nosuchsandbox0000000', '--', 'true']);
    assert.equal(r.code, 1);
    assert.equal(r.stdout, '');
    assert.match(r.stderr, /^error: .*not found.*\n$/);
    const noProxy = await nestbox(['sandbox', 'exec', '--sandbox-url', 'http://127.0.0.1:9', sbx.sandboxId, '--', 'true']);
    assert.equal(noProxy.code, 1);
    assert.match(noProxy.stderr, /^error: cannot reach the sandbox proxy at http:\/\/127\.0\.0\.1:9 .*\n$/);
  });
});

describe('nestbox sandbox exec, interrupted', () => {
  test('Ctrl-C ends the command in the sandbox too, and exits 130', async () => {
    const env: Record<string, string | undefined> = { ...process.env, E2B_API_URL: apiUrl, E2B_SANDBOX_URL: proxyUrl, E2B_API_KEY: KEY };
    delete env.E2B_DOMAIN;
    const child = spawn(BIN, ['sandbox', 'exec', sbx.sandboxId, '--', 'sleep', '3600'], { env: env as NodeJS.ProcessEnv, stdio: 'ignore' });
    const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
    const sleeping = async () => (await sbx.commands.list()).some((p) => p.cmd === 'sleep' && p.args.includes('3600'));
    for (let i = 0; !(await sleeping()); i++) {
      assert.ok(i < 600, 'the command started in the sandbox');
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGINT');
    assert.equal(await closed, 130);
    // (killed before the CLI exited; its reaping in the sandbox may take a moment on a loaded host)
    for (let i = 0; await sleeping(); i++) {
      assert.ok(i < 300, 'the command is gone from the sandbox');
      await new Promise((r) => setTimeout(r, 50));
    }
  });
});

describe('nestbox sandbox shell', () => {
  test('with piped stdin: runs the input and exits with the shell', async () => {
    const r = ok(await nestbox(['sandbox', 'shell', sbx.sandboxId], 'echo hi-from-$((40+2)); exit\n'));
    assert.match(r.stdout, /hi-from-42/);
  });

  test("piped input without exit: ends at EOF; exit N is the CLI's exit code", async () => {
    ok(await nestbox(['sandbox', 'shell', sbx.sandboxId], 'true\n'));
    const r = await nestbox(['sandbox', 'shell', sbx.sandboxId], 'exit 5\n');
    assert.equal(r.code, 5, r.stderr);
  });
});

describe('nestbox files', () => {
  test('cp up and down round-trips a binary file; ls shows it', async () => {
    const data = randomBytes(3 * 1024 * 1024 + 17);
    data[0] = 0;
    data[1] = 0xff;
    const local = path.join(dir, 'blob.bin');
    await writeFile(local, data);

    const up = ok(await nestbox(['files', 'cp', local, `${sbx.sandboxId}:/home/user/up/blob.bin`]));
    assert.match(up.stdout, new RegExp(`Copied ${data.length} bytes to ${sbx.sandboxId}:/home/user/up/blob.bin`));
    assert.deepEqual(Buffer.from(await sbx.files.read('/home/user/up/blob.bin', { format: 'bytes' })), data);

    // Into a directory: the name is kept.
    ok(await nestbox(['files', 'cp', local, `${sbx.sandboxId}:/home/user/up/`]));
    ok(await nestbox(['files', 'cp', local, `${sbx.sandboxId}:up`]));

    const back = path.join(dir, 'back.bin');
    const down = ok(await nestbox(['files', 'cp', `${sbx.sandboxId}:/home/user/up/blob.bin`, back]));
    assert.match(down.stdout, new RegExp(`Copied ${data.length} bytes`));
    assert.ok((await readFile(back)).equals(data));

    const ls = ok(await nestbox(['files', 'ls', sbx.sandboxId, '/home/user/up']));
    assert.match(ls.stdout, /TYPE\s.*SIZE\s.*NAME/);
    assert.match(ls.stdout, new RegExp(`file\\s.*${data.length}\\s.*blob\\.bin`));

    const listed = JSON.parse(ok(await nestbox(['files', 'ls', sbx.sandboxId, '--json', '--depth', '2'])).stdout);
    const blob = listed.find((e: { path: string }) => e.path === '/home/user/up/blob.bin');
    assert.ok(blob, JSON.stringify(listed.map((e: { path: string }) => e.path)));
    assert.equal(blob.size, data.length);
    assert.equal(blob.type, 'file');
  });

  test('cp errors: neither or both sides remote, a missing sandbox file', async () => {
    const both = await nestbox(['files', 'cp', `${sbx.sandboxId}:/a`, `${sbx.sandboxId}:/b`]);
    assert.equal(both.code, 1);
    assert.match(both.stderr, /^error: exactly one of <src> and <dst>/);
    const neither = await nestbox(['files', 'cp', '/tmp/a', '/tmp/b']);
    assert.equal(neither.code, 1);
    const missing = await nestbox(['files', 'cp', `${sbx.sandboxId}:/home/user/nope.bin`, path.join(dir, 'nope.bin')]);
    assert.equal(missing.code, 1);
    assert.equal(missing.stderr.trimEnd().split('\n').length, 1, missing.stderr);
    assert.match(missing.stderr, /^error: /);
  });
});
