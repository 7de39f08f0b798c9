// @e2b/code-interpreter, unmodified, against a live Nestbox: Sandbox.create() starts the
// code-interpreter-v1 template (its default), whose server answers on port 49999 through the
// sandbox proxy (E2B_SANDBOX_URL), as it would on E2B.
//
// The template is built by scripts/setup.sh (make test runs it first). Outside CI, a machine
// that has not built it skips this suite; in CI it must run.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { Sandbox, TimeoutError } from '@e2b/code-interpreter';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { startStack, type TestStack } from './helpers/stack.ts';

const TEMPLATE = 'code-interpreter-v1';
const KEY = 'e2b_' + 'c1'.repeat(20);
// The first create of the template on a node captures it warm (its kernel started): give it time.
const opts = { requestTimeoutMs: 180_000 };

const built = existsSync(path.join(runtimeConfigFromEnv().templatesDir, TEMPLATE, '.complete'));
const skip = !built && process.env.CI !== 'true'
  ? `template ${TEMPLATE} is not built on this machine (scripts/build-template.sh ${TEMPLATE}, or scripts/setup.sh)`
  : false;

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

describe('@e2b/code-interpreter against a live Nestbox', { skip }, () => {
  let stack: TestStack;
  let sbx: Sandbox;

  before(async () => {
    stack = await startStack(KEY);
    sbx = await Sandbox.create({ ...opts, timeoutMs: 600_000, envs: { GIVEN_AT_CREATE: 'at-create', ONLY_NOW: 'at-create' } });
  });
  after(async () => {
    await sbx?.kill().catch(() => undefined);
    await stack?.stop();
  });

  test('Sandbox.create() is the code-interpreter-v1 template; runCode keeps state across calls', async () => {
    assert.equal((await Sandbox.getInfo(sbx.sandboxId, opts)).templateId, TEMPLATE);
    const first = await sbx.runCode('x = 1\nprint("hello")');
    assert.deepEqual(first.logs.stdout, ['hello\n']);
    assert.equal(first.error, undefined);
    const second = await sbx.runCode('x += 1\nx');
    assert.equal(second.text, '2');
    assert.ok(second.executionCount! > first.executionCount!, `execution count ${first.executionCount} then ${second.executionCount}`);
    const streamed: string[] = [];
    await sbx.runCode('import sys\nprint("to stderr", file=sys.stderr)\nprint("to stdout")', {
      onStdout: (m) => void streamed.push(`out:${m.line}`),
      onStderr: (m) => void streamed.push(`err:${m.line}`),
    });
    assert.deepEqual(streamed.sort(), ['err:to stderr\n', 'out:to stdout\n']);
  });

  test('a Python exception is the execution error, with its traceback', async () => {
    const errors: string[] = [];
    const ex = await sbx.runCode('def f():\n    return 1 / 0\nf()', { onError: (e) => void errors.push(e.name) });
    assert.equal(ex.error?.name, 'ZeroDivisionError');
    assert.equal(ex.error?.value, 'division by zero');
    // Colored as IPython prints it (E2B's are too).
    const traceback = ex.error!.traceback.replace(/\x1b\[[0-9;]*m/g, '');
    assert.match(traceback, /ZeroDivisionError/);
    assert.match(traceback, /----> 2 +return 1 \/ 0/);
    assert.deepEqual(errors, ['ZeroDivisionError']);
    assert.equal((await sbx.runCode('x')).text, '2', 'the context lives on after an error');
  });

  test('a matplotlib chart comes back as a PNG; rich values keep their MIME types', async () => {
    const ex = await sbx.runCode([
      'import matplotlib.pyplot as plt',
      'plt.plot([1, 2, 3], [1, 4, 9])',
      'plt.title("squares")',
      'plt.show()',
    ].join('\n'));
    assert.equal(ex.error, undefined, ex.error?.traceback);
    const chart = ex.results.find((r) => r.png);
    assert.ok(chart, `a PNG result among ${JSON.stringify(ex.results.map((r) => r.formats()))}`);
    assert.ok(Buffer.from(chart.png!, 'base64').subarray(0, 8).equals(PNG_MAGIC), 'the PNG decodes');
    assert.equal(chart.isMainResult, false);

    const df = await sbx.runCode('import pandas as pd\npd.DataFrame({"a": [1, 2], "b": [3, 4]})');
    assert.match(df.results[0]?.html ?? '', /<table/);
    assert.equal(df.results[0]?.isMainResult, true);
  });

  test('JSON comes back as JSON: a displayed value and the cell\'s value', async () => {
    const ex = await sbx.runCode('from IPython.display import JSON, display\ndisplay(JSON({"b": [1, 2]}))\nJSON({"a": 1, "s": "x"})');
    assert.equal(ex.error, undefined, ex.error?.traceback);
    assert.deepEqual(ex.results.map((r) => [r.json as unknown, r.isMainResult]), [[{ b: [1, 2] }, false], [{ a: 1, s: 'x' }, true]]);
    assert.ok(ex.results[1]!.formats().includes('json'), `formats ${ex.results[1]!.formats()}`);
  });

  test('per-execution environment variables hold for that execution only', async () => {
    const ex = await sbx.runCode('import os\nos.environ.get("ONLY_NOW")', { envs: { ONLY_NOW: 'yes' } });
    assert.equal(ex.text, 'yes');
    // Afterwards the sandbox's own value (given at create) again.
    assert.equal((await sbx.runCode('os.environ.get("ONLY_NOW")')).text, 'at-create');
  });

  test('per-execution environment variables in bash hold for that execution only', async () => {
    await sbx.runCode('FOO=mine', { language: 'bash' });
    const once = await sbx.runCode('echo "$FOO"; printenv FOO', { language: 'bash', envs: { FOO: 'bar baz' } });
    assert.deepEqual(once.logs.stdout, ['bar baz\nbar baz\n'], 'the value given, exported to what the code runs');
    const afterwards = await sbx.runCode('echo "[$FOO]"; printenv FOO || echo unexported', { language: 'bash' });
    assert.deepEqual(afterwards.logs.stdout, ['[mine]\nunexported\n'], "the context's own value again");
    const ctx = await sbx.createCodeContext({ language: 'bash' });
    const inCtx = await sbx.runCode('echo "$FOO"', { context: ctx, envs: { FOO: 'in-context' } });
    assert.deepEqual(inCtx.logs.stdout, ['in-context\n']);
    await sbx.removeCodeContext(ctx);
  });

  test('the variables given at create reach the code of a warm-started sandbox, python and bash', async () => {
    assert.equal((await sbx.runCode('import os\nos.environ.get("GIVEN_AT_CREATE")')).text, 'at-create');
    const bash = await sbx.runCode('echo "$GIVEN_AT_CREATE"', { language: 'bash' });
    assert.deepEqual(bash.logs.stdout, ['at-create\n']);
    // Another sandbox of the same (warm) template has its own.
    const askedAt = Date.now() / 1000;
    const other = await Sandbox.create({ ...opts, envs: { GIVEN_AT_CREATE: 'other' } });
    try {
      assert.equal((await other.runCode('import os\nos.environ.get("GIVEN_AT_CREATE")')).text, 'other');
      // Restored warm: its default kernel started (IPython's session began) before this create
      // was asked for, when the template was captured; a cold start would start it after.
      const kernelStart = Number((await other.runCode('get_ipython().history_manager.get_session_info()[1].timestamp()')).text);
      assert.ok(kernelStart > 0 && kernelStart < askedAt, `the kernel started at ${kernelStart}, before the create at ${askedAt}`);
    } finally {
      await other.kill();
    }
  });

  test('a second context is isolated from the first; contexts are listed and removed', async () => {
    const ctx = await sbx.createCodeContext({ language: 'python', cwd: '/tmp' });
    assert.equal(ctx.language, 'python');
    assert.equal(ctx.cwd, '/tmp');
    const missing = await sbx.runCode('x', { context: ctx });
    assert.equal(missing.error?.name, 'NameError');
    await sbx.runCode('x = 100', { context: ctx });
    assert.equal((await sbx.runCode('x', { context: ctx })).text, '100');
    assert.equal((await sbx.runCode('import os\nos.getcwd()', { context: ctx })).text, '/tmp');
    assert.equal((await sbx.runCode('x')).text, '2', 'the default context kept its own x');
    assert.ok((await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
    await sbx.removeCodeContext(ctx);
    assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
    // requestTimeoutMs 0: the SDK leaves its request timer running when the server answers an
    // error status, which would hold this process open for the whole request timeout.
    await assert.rejects(sbx.runCode('1', { context: ctx, requestTimeoutMs: 0 }), /not found/i);
    await assert.rejects(sbx.createCodeContext({ language: 'cobol' }), /400/, 'only python and bash');
  });

  test('bash: the default bash context and a created one keep their state', async () => {
    await sbx.runCode('cd /tmp && export GREETING=hi && n=1', { language: 'bash' });
    const ex = await sbx.runCode('n=$((n + 1)); echo "$GREETING $(pwd) $n"; echo oops >&2', { language: 'bash' });
    assert.deepEqual(ex.logs.stdout, ['hi /tmp 2\n']);
    assert.deepEqual(ex.logs.stderr, ['oops\n']);
    const failed = await sbx.runCode('false', { language: 'bash' });
    assert.equal(failed.error?.value, 'exit status 1');

    const ctx = await sbx.createCodeContext({ language: 'bash' });
    const own = await sbx.runCode('echo "[$GREETING]" && whoami', { context: ctx });
    assert.deepEqual(own.logs.stdout, ['[]\nuser\n'], 'a new bash context shares nothing with the default one');
    await sbx.removeCodeContext(ctx);
  });

  test('bash contexts are listed, restarted (state cleared, still usable) and removed', async () => {
    const ctx = await sbx.createCodeContext({ language: 'bash', cwd: '/tmp' });
    const listed = (await sbx.listCodeContexts()).find((c) => c.id === ctx.id);
    assert.deepEqual(listed && { language: listed.language, cwd: listed.cwd }, { language: 'bash', cwd: '/tmp' });
    await sbx.runCode('kept=1; cd /', { context: ctx });
    assert.deepEqual((await sbx.runCode('echo "[$kept] $(pwd)"', { context: ctx })).logs.stdout, ['[1] /\n']);
    await sbx.restartCodeContext(ctx);
    const fresh = await sbx.runCode('echo "[$kept] $(pwd)"', { context: ctx });
    assert.equal(fresh.error, undefined);
    assert.deepEqual(fresh.logs.stdout, ['[] /tmp\n'], 'a fresh shell in the context\'s directory');
    assert.ok((await sbx.listCodeContexts()).some((c) => c.id === ctx.id), 'still listed after the restart');
    await sbx.removeCodeContext(ctx.id);
    assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id), 'gone once removed');
    await assert.rejects(sbx.runCode('echo hi', { context: ctx, requestTimeoutMs: 0 }), /not found/i);
  });

  test('a timeout interrupts the code; the context keeps its state', async () => {
    await assert.rejects(
      sbx.runCode('import time\ny = 1\ntime.sleep(60)\ny = 2', { timeoutMs: 1500 }),
      (e: unknown) => e instanceof TimeoutError,
    );
    // Had the sleep not been interrupted, this would wait for it and see y == 2.
    assert.equal((await sbx.runCode('y')).text, '1');
  });

  test('a dead kernel is reported as an error; a restart brings the context back', async () => {
    const ctx = await sbx.createCodeContext();
    await sbx.runCode('z = 5', { context: ctx });
    const died = await sbx.runCode('import os\nos._exit(3)', { context: ctx });
    assert.equal(died.error?.name, 'ContextDied');
    assert.equal((await sbx.runCode('z', { context: ctx })).error?.name, 'ContextDied', 'still dead until restarted');
    await sbx.restartCodeContext(ctx);
    assert.equal((await sbx.runCode('z', { context: ctx })).error?.name, 'NameError', 'a fresh kernel');
    assert.equal((await sbx.runCode('1 + 1', { context: ctx })).text, '2');
    await sbx.removeCodeContext(ctx);
  });

  test('pause, then connect: the variables of both contexts are still there', async () => {
    await sbx.runCode('kept = 41');
    await sbx.runCode('bash_kept=yes', { language: 'bash' });
    assert.equal(await sbx.pause(), true);
    assert.equal((await Sandbox.getInfo(sbx.sandboxId, opts)).state, 'paused');
    const again = await Sandbox.connect(sbx.sandboxId, opts);
    assert.equal((await again.runCode('kept + 1')).text, '42');
    assert.deepEqual((await again.runCode('echo $bash_kept', { language: 'bash' })).logs.stdout, ['yes\n']);
  });
});
