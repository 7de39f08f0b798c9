// An older line of the official `e2b` SDK (2.5.0, installed as the `e2b-legacy` alias) against a
// live Nestbox. SDKs before 2.6 have no `/connect` route: `Sandbox.connect` is
// `POST /sandboxes/{id}/timeout`, and when that fails `POST /sandboxes/{id}/resume`, then
// `GET /sandboxes/{id}` for the envd access token. Pausing is `betaPause` (`POST .../pause`).
//
// 2.5.0 predates E2B_SANDBOX_URL: it always talks to envd at `https://{port}-{id}.{domain}`. A real
// deployment gives that name DNS and TLS; here a wrapper around the global fetch (which the SDK
// uses both for the REST API and for envd) sends such requests to the local sandbox proxy with
// E2B's routing headers instead, and records the REST calls so the test can check the legacy routes.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { Sandbox } from 'e2b-legacy';
import type { ControlPlane } from '../src/control-plane/control-plane.ts';
import { eventually, type TestAgent } from './helpers/agent-harness.ts';
import { startStack, type TestStack } from './helpers/stack.ts';

const KEY = 'e2b_' + '6b'.repeat(20);
let stack: TestStack;
let agent: TestAgent;
let cp: ControlPlane;
let proxyUrl: string;
let apiUrl: string;
const opts = { requestTimeoutMs: 60_000 };
const realFetch = globalThis.fetch;
/** REST calls the SDK made, as `METHOD /path -> status`. */
const apiCalls: string[] = [];

function urlOf(input: Parameters<typeof fetch>[0]): string {
  return typeof input === 'string' ? input : input instanceof URL ? input.href : input.url;
}

const legacyFetch: typeof fetch = async (input, init) => {
  const url = new URL(urlOf(input));
  const m = /^(\d+)-([a-z0-9]+)\.localhost$/.exec(url.hostname);
  if (m) {
    // envd traffic for `https://{port}-{id}.localhost`: to the proxy, routed by headers.
    const req = new Request(input, init);
    const headers = new Headers(req.headers);
    headers.set('E2b-Sandbox-Port', m[1]!);
    headers.set('E2b-Sandbox-Id', m[2]!);
    const body = req.body ? await req.arrayBuffer() : undefined;
    return realFetch(new URL(url.pathname + url.search, proxyUrl), {
      method: req.method, headers, body, signal: req.signal, redirect: 'follow',
    });
  }
  const method = input instanceof Request ? input.method : (init?.method ?? 'GET');
  const res = await realFetch(input, init);
  if (url.href.startsWith(apiUrl)) apiCalls.push(`${method} ${url.pathname} -> ${res.status}`);
  return res;
};

before(async () => {
  // E2B_SANDBOX_URL is set as a user of both SDK lines would, but 2.5.0 ignores it
  stack = await startStack(KEY, { extra: { logger: process.env.LEGACY_LOG ? { level: 'error' } : false } }); // LEGACY_LOG=1: the server's errors
  ({ agent, cp, apiUrl } = stack);
  proxyUrl = stack.proxyUrl!;
  globalThis.fetch = legacyFetch;
});

after(async () => {
  globalThis.fetch = realFetch;
  await stack?.stop();
});

describe('e2b SDK 2.5.0 (before /connect) against a live Nestbox', () => {
  let sbx: Sandbox;
  after(async () => {
    await sbx?.kill().catch(() => undefined);
  });

  test('create, commands, files', async () => {
    sbx = await Sandbox.create('base', { ...opts, timeoutMs: 300_000 });
    const r = await sbx.commands.run('echo hi');
    assert.equal(r.exitCode, 0);
    assert.equal(r.stdout, 'hi\n');
    await sbx.files.write('legacy/a.txt', 'from the old sdk');
    assert.equal(await sbx.files.read('legacy/a.txt'), 'from the old sdk');
    assert.equal((await sbx.getInfo()).state, 'running');
  });

  test('betaPause, then Sandbox.connect resumes through /timeout -> /resume: files and a process survive', async () => {
    await sbx.commands.run('python3 -c "import os,time\ni=0\nwhile True:\n  i+=1\n  open(\'/tmp/n.new\',\'w\').write(str(i))\n  os.replace(\'/tmp/n.new\',\'/tmp/n\')\n  time.sleep(0.05)"', { background: true });
    const before = await eventually(async () => Number((await sbx.commands.run('cat /tmp/n 2>/dev/null || echo 0')).stdout), (n) => n > 0, 'the counter runs');

    assert.equal(await sbx.betaPause(opts), true);
    assert.equal(await Sandbox.betaPause(sbx.sandboxId, opts), false, 'pausing a paused sandbox is a 409, reported as false');
    assert.equal((await Sandbox.getInfo(sbx.sandboxId, opts)).state, 'paused');

    apiCalls.length = 0;
    const again = await Sandbox.connect(sbx.sandboxId, { ...opts, timeoutMs: 120_000 });
    const id = sbx.sandboxId;
    assert.deepEqual(apiCalls, [
      `POST /sandboxes/${id}/timeout -> 409`,
      `POST /sandboxes/${id}/resume -> 201`,
      `GET /sandboxes/${id} -> 200`,
    ]);
    assert.equal((await again.getInfo()).state, 'running');

    const after1 = Number((await again.commands.run('cat /tmp/n')).stdout);
    assert.ok(after1 >= before, `counter continued from ${before}: ${after1}`);
    await eventually(async () => Number((await again.commands.run('cat /tmp/n')).stdout), (n) => n > after1, 'the counter keeps counting');
    assert.equal(await again.files.read('legacy/a.txt'), 'from the old sdk');

    // connecting to a running sandbox only extends it: /timeout succeeds, no resume
    apiCalls.length = 0;
    await Sandbox.connect(id, opts);
    assert.deepEqual(apiCalls, [`POST /sandboxes/${id}/timeout -> 204`, `GET /sandboxes/${id} -> 200`]);
  });

  test('pausing again after the resume', async () => {
    assert.equal(await sbx.betaPause(opts), true);
    await Sandbox.connect(sbx.sandboxId, opts);
    assert.equal((await sbx.commands.run('echo again')).stdout, 'again\n');
  });

  test('kill', async () => {
    const id = sbx.sandboxId;
    await sbx.kill();
    assert.equal(await Sandbox.kill(id, opts), false, 'a killed sandbox is gone');
    await assert.rejects(Sandbox.connect(id, opts));
  });

  test('instance connect() after betaPause (/timeout -> /resume, no GET)', async () => {
    const s = await Sandbox.create('base', opts);
    try {
      assert.equal(await s.betaPause(opts), true);
      apiCalls.length = 0;
      assert.equal(await s.connect(opts), s);
      const id = s.sandboxId;
      assert.deepEqual(apiCalls, [`POST /sandboxes/${id}/timeout -> 409`, `POST /sandboxes/${id}/resume -> 201`]);
      assert.equal((await s.commands.run('echo back')).stdout, 'back\n');
      assert.equal(await s.isRunning(), true);
    } finally {
      await s.kill();
    }
  });
});
