// Template builds with the official `e2b` SDK, unmodified: `Template()…` and `Template.build`
// against a live Nestbox (control plane, proxy, a node agent with real containers). A build's
// RUN, COPY, ENV, WORKDIR and USER steps and its start command are in the sandboxes of the
// template it makes; a failing step fails the build with that step's output and leaves no
// template and no sandbox behind.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Sandbox, Template } from 'e2b';
import { ControlPlane } from '../src/control-plane/control-plane.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { startTestAgent } from './helpers/agent-harness.ts';
import { dockerSaveArchive } from './helpers/image-archive.ts';
import { RUNNABLE_CONFIG, runnableLayers } from './helpers/runnable-image.ts';
import { startStack, type TestStack } from './helpers/stack.ts';

const KEY = 'e2b_' + '7c'.repeat(20);
let stack: TestStack;
let context: string;
const suffix = randomBytes(3).toString('hex');
const made: string[] = [];
const opts = { requestTimeoutMs: 120_000 };

before(async () => {
  stack = await startStack(KEY);
  context = await mkdtemp(path.join(tmpdir(), 'nestbox-build-context-'));
  await mkdir(path.join(context, 'files', 'sub'), { recursive: true });
  await writeFile(path.join(context, 'files', 'hello.txt'), 'hello from copy\n');
  await writeFile(path.join(context, 'files', 'sub', 'nested.txt'), 'nested\n');
  await writeFile(path.join(context, 'index.html'), '<p>served by the start command</p>\n');
});

after(async () => {
  for (const name of made) {
    await fetch(`${stack.apiUrl}/nestbox/v1/templates/${name}`, { method: 'DELETE', headers: { 'x-api-key': KEY } }).catch(() => undefined);
  }
  // The uploaded build files of this run's team, kept beside the (shared) templates.
  const teams = (await stack?.cp.db.query<{ team_id: string }>('SELECT DISTINCT team_id FROM template_builds').catch(() => [])) ?? [];
  for (const t of teams) await rm(path.join(runtimeConfigFromEnv().templatesDir, '.build-files', t.team_id), { recursive: true, force: true });
  await stack?.stop();
  await rm(context, { recursive: true, force: true });
});

async function api(method: string, p: string): Promise<{ status: number; json: any }> {
  const res = await fetch(stack.apiUrl + p, { method, headers: { 'x-api-key': KEY } });
  const text = await res.text();
  return { status: res.status, json: text ? JSON.parse(text) : null };
}

/** Build sandboxes still alive (running or otherwise not dead). */
async function buildSandboxes(): Promise<string[]> {
  const list = (await api('GET', '/v2/sandboxes?state=running,paused')).json as any[];
  return list.filter((s) => s.metadata?.['nestbox.templateBuild']).map((s) => s.sandboxID);
}

test('Template.build: RUN, COPY, ENV, WORKDIR, USER and a start command make a template its sandboxes start from', async () => {
  const name = `my-tpl-${suffix}`;
  made.push(name);
  const template = Template({ fileContextPath: context })
    .fromTemplate('base')
    .runCmd('echo "ran as $(whoami)" > /home/user/run.txt && echo run-step-output-marker')
    .copy('files', '/dest')
    .copy('index.html', '/srv/site/')
    .setEnvs({ GREETING: 'hi there', SECOND: 'two' })
    .setWorkdir('/work')
    .setUser('user')
    .runCmd('pwd > where.txt && echo "$GREETING" > env.txt')
    .setStartCmd('cd /srv/site && python3 -m http.server 8123', 'curl -sf http://127.0.0.1:8123/index.html');

  const logs: string[] = [];
  const built = await Template.build(template, { alias: name, onBuildLogs: (l) => logs.push(l.message), ...opts });
  assert.equal(built.templateId, name);
  assert.ok(logs.some((l) => l.includes('run-step-output-marker')), `the RUN step's output is in the logs:\n${logs.join('\n')}`);
  assert.ok(logs.some((l) => /\[3\/7\] COPY index\.html \/srv\/site\//.test(l)), 'each step is announced');
  assert.ok(await Template.exists(name, opts));
  assert.deepEqual(await buildSandboxes(), [], 'the build sandbox is gone');

  // template.json holds the process defaults and the start and ready commands.
  const t = (await api('GET', `/nestbox/v1/templates/${name}`)).json;
  assert.equal(t.source, 'build');
  assert.deepEqual([t.env.GREETING, t.env.SECOND, t.workdir, t.user], ['hi there', 'two', '/work', 'user']);

  const sbx = await Sandbox.create(name, { ...opts, timeoutMs: 120_000 });
  try {
    const run = async (cmd: string) => (await sbx.commands.run(cmd)).stdout.trim();
    assert.equal(await run('cat /dest/hello.txt'), 'hello from copy');
    assert.equal(await run('cat /dest/sub/nested.txt'), 'nested');
    assert.equal(await run('stat -c %U /dest/hello.txt'), 'user', 'copied files belong to the current user');
    assert.equal(await run('echo "$GREETING/$SECOND"'), 'hi there/two');
    assert.equal(await run('pwd'), '/work');
    assert.equal(await run('whoami'), 'user');
    assert.equal(await run('cat /home/user/run.txt'), 'ran as user');
    assert.equal(await run('cat /work/where.txt /work/env.txt'), '/work\nhi there');
    // The start command runs in every sandbox of the template, ready before the create returns.
    assert.match(await run('curl -s http://127.0.0.1:8123/index.html'), /served by the start command/);
  } finally {
    await sbx.kill();
  }
});

test('a failing RUN step fails the build with its output; no template and no sandbox are left', async () => {
  const name = `my-broken-${suffix}`;
  made.push(name);
  const template = Template({ fileContextPath: context })
    .fromTemplate('base')
    .runCmd('echo first-step-fine')
    .runCmd('echo output-before-failure; echo to-stderr >&2; exit 3');
  const logs: string[] = [];
  await assert.rejects(Template.build(template, { alias: name, onBuildLogs: (l) => logs.push(l.message), ...opts }), (e: Error) => {
    assert.equal(e.name, 'BuildError');
    assert.match(e.message, /step 2 exited with code 3/);
    assert.match(e.message, /output-before-failure/);
    assert.match(e.message, /to-stderr/);
    return true;
  });
  assert.ok(logs.some((l) => l.includes('output-before-failure')));
  assert.equal(await Template.exists(name, opts), false);
  assert.equal((await api('GET', `/nestbox/v1/templates/${name}`)).status, 404);
  assert.deepEqual(await buildSandboxes(), []);
  await assert.rejects(Sandbox.create(name, opts));
});

test('fromImage: an imported image (found by its repo tag) is the base, with its user, workdir and env', async () => {
  const image = `img-${suffix}`;
  made.push(image);
  const archive = await dockerSaveArchive({ layers: await runnableLayers(), ...RUNNABLE_CONFIG }); // tagged test/image:latest
  const imported = await fetch(`${stack.apiUrl}/nestbox/v1/templates?name=${image}`, {
    method: 'POST', headers: { 'x-api-key': KEY, 'content-type': 'application/x-tar' }, body: new Uint8Array(archive),
  });
  assert.equal(imported.status, 201, await imported.text());

  const name = `my-from-image-${suffix}`;
  made.push(name);
  const template = Template({ fileContextPath: context })
    .fromImage('test/image')
    .runCmd('echo "$(id -un) in $(pwd): $GREETING" > made-by-run.txt')
    .setEnvs({ EXTRA: 'added' });
  await Template.build(template, { alias: name, ...opts });
  const t = (await api('GET', `/nestbox/v1/templates/${name}`)).json;
  assert.deepEqual([t.user, t.workdir, t.env.GREETING, t.env.EXTRA], ['app', '/srv/data', 'hello from the image', 'added']);
  const sbx = await Sandbox.create(name, { ...opts, timeoutMs: 60_000 });
  try {
    assert.equal((await sbx.commands.run('cat /srv/data/made-by-run.txt', { user: 'app' })).stdout.trim(), 'app in /srv/data: hello from the image');
  } finally {
    await sbx.kill();
  }
});

test('fromImage: an image no one imported is refused with a clear error (no registry is reached)', async () => {
  const name = `my-image-${suffix}`;
  const template = Template({ fileContextPath: context }).fromImage('python:3.99-nonexistent').runCmd('true');
  await assert.rejects(Template.build(template, { alias: name, ...opts }), /image "python:3\.99-nonexistent" is not imported on this server, and no registry is reached/);
  assert.equal(await Template.exists(name, opts), false);
});

test('a control plane that stops mid-build fails the build with the reason; after its restart the build is an error and its sandbox is gone', async () => {
  const agent = await startTestAgent();
  const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-build-restart-'));
  const key = 'e2b_' + '3d'.repeat(20);
  const options = { dataDir: dir, port: 0, proxyPort: null, bootstrapApiKey: key, nodes: [{ id: 'local', url: agent.url, token: agent.agent.nodeToken }] };
  let cp = new ControlPlane(options);
  try {
    let url = (await cp.start()).url;
    const call = async (method: string, p: string, body?: unknown) => {
      const res = await fetch(url + p, {
        method, headers: { 'x-api-key': key, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined,
      });
      const text = await res.text();
      return { status: res.status, json: text ? JSON.parse(text) : null };
    };
    const name = `my-restart-${suffix}`;
    const asked = await call('POST', '/v3/templates', { name });
    assert.equal(asked.status, 202);
    const { templateID, buildID } = asked.json;
    const started = await call('POST', `/v2/templates/${templateID}/builds/${buildID}`, {
      fromTemplate: 'base', steps: [{ type: 'RUN', args: ['echo long-step-started; sleep 600'] }],
    });
    assert.equal(started.status, 202, JSON.stringify(started.json));
    const status = () => call('GET', `/templates/${templateID}/builds/${buildID}/status`);
    for (let i = 0; i < 600; i++) {
      const s = await status();
      if (s.json.logEntries.some((l: any) => l.message === 'long-step-started')) break;
      assert.equal(s.json.status, 'building');
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal((await agent.agent.runtime.inventory()).length, 1, 'the build runs in a sandbox');

    await cp.stop();
    cp = new ControlPlane(options);
    url = (await cp.start()).url;
    const after = await status();
    assert.equal(after.json.status, 'error');
    assert.match(after.json.reason.message, /the control plane running it stopped/);
    assert.equal((await call('GET', `/templates/aliases/${name}`)).status, 404, 'no template');
    assert.deepEqual(await agent.agent.runtime.inventory(), [], 'no sandbox');
  } finally {
    await cp.stop();
    await agent.stop();
    await rm(dir, { recursive: true, force: true });
  }
});
