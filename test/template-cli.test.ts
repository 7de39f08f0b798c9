// `nestbox template import | list | delete`, run for real (bin/nestbox as a child process) against
// a real API server (PGlite store) whose node is a real agent template API (the real importer on
// a private templates directory; no containers needed).
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import Fastify, { type FastifyInstance } from 'fastify';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { HttpNodeClient } from '../src/control-plane/node-client.ts';
import { NodePool } from '../src/control-plane/scheduler.ts';
import { registerTemplateRoutes } from '../src/agent/templates.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { templateStart } from '../src/runtime/template-start.ts';
import type { SandboxRuntime } from '../src/runtime/sandbox-runtime.ts';
import { openDatabase, type Database } from '../src/store/database.ts';
import { migrate } from '../src/store/migrate.ts';
import { authenticateKey } from '../src/store/credentials.ts';
import { createTeamWithKey, ensureBootstrapTeam } from '../src/store/teams.ts';
import { tempPgliteDataDir } from './helpers/databases.ts';
import { FakeLifecycle } from './helpers/fake-lifecycle.ts';
import { dockerSaveArchive, ociLayoutArchive, tarOf } from './helpers/image-archive.ts';
import { sampleLayers, SAMPLE_CONFIG } from './helpers/sample-image.ts';
import { NestboxError } from '../src/core/errors.ts';

const BIN = path.join(import.meta.dirname, '..', 'bin', 'nestbox');

let db: Database;
let removeDataDir: () => Promise<void>;
let app: FastifyInstance;
let node: FastifyInstance;
let apiUrl: string;
let teamId: string;
let apiKey: string;
let otherKey: string;
let work: string;
let templatesDir: string;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

function nestbox(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const full: Record<string, string | undefined> = { ...process.env, E2B_API_URL: apiUrl, E2B_API_KEY: apiKey, NESTBOX_CONTROL_DIR: work, ...env };
  delete full.NESTBOX_API_KEY;
  return new Promise((resolve) => {
    execFile(BIN, args, { env: full as NodeJS.ProcessEnv, timeout: 60_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

function ok(r: Run): Run {
  assert.equal(r.code, 0, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

/** Exit 1, one line on stderr matching `re`, nothing on stdout, no stack trace. */
function fails(r: Run, re: RegExp) {
  assert.equal(r.code, 1, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.match(lines.at(-1)!, re);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
}

before(async () => {
  const dir = await tempPgliteDataDir();
  removeDataDir = dir.remove;
  db = await openDatabase({ dataDir: dir.dataDir });
  await migrate(db);
  const boot = await ensureBootstrapTeam(db);
  teamId = boot.teamId;
  apiKey = boot.apiKey!;
  otherKey = (await createTeamWithKey(db, { name: 'other-team' })).apiKey.key;
  work = await mkdtemp(path.join(tmpdir(), 'nestbox-template-cli-'));
  templatesDir = path.join(work, 'templates');
  await mkdir(path.join(templatesDir, 'base', 'rootfs'), { recursive: true });

  // The node: the agent's template routes over the real importer.
  const cfg = { ...runtimeConfigFromEnv(), templatesDir };
  const runtime = { cfg, inventory: async () => [], snapshots: async () => [], forgetWarmCaptures: async () => undefined } as unknown as SandboxRuntime;
  node = Fastify();
  // As the agent's own error handler does: domain errors keep their status.
  node.setErrorHandler((err, _req, reply) => {
    const status = err instanceof NestboxError ? ({ invalid: 400, not_found: 404, conflict: 409 } as Record<string, number>)[err.code] ?? 500 : 500;
    return reply.code(status).send({ code: status, message: (err as Error).message });
  });
  node.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));
  registerTemplateRoutes(node, { runtime });
  await node.listen({ host: '127.0.0.1', port: 0 });
  const pool = new NodePool();
  pool.add(new HttpNodeClient('n1', `http://127.0.0.1:${(node.server.address() as AddressInfo).port}`, 'token'));

  app = buildApiServer({ lifecycle: new FakeLifecycle(), authenticate: (k) => authenticateKey(db, k), envdVersion: '0.6.4', db, nodes: pool });
  await app.listen({ host: '127.0.0.1', port: 0 });
  apiUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;

  await writeFile(path.join(work, 'image.tar'), await dockerSaveArchive({ layers: await sampleLayers(), ...SAMPLE_CONFIG }));
  await writeFile(path.join(work, 'oci.tar'), await ociLayoutArchive({ layers: await sampleLayers(), ...SAMPLE_CONFIG, user: '', workdir: '' }));
  // Images to start: bash in it (a stand-in file: the import only checks it is there).
  const withBash = [...(await sampleLayers()), await tarOf([{ name: 'usr/bin/bash', content: '#!stand-in\n', mode: 0o755 }])];
  await writeFile(path.join(work, 'server.tar'), await dockerSaveArchive({
    layers: withBash, ...SAMPLE_CONFIG, entrypoint: ['/bin/sh', '-c'], cmd: [`echo "it's $GREETING" && exec python3 -m http.server 8000`],
  }));
  await writeFile(path.join(work, 'nocmd.tar'), await dockerSaveArchive({ layers: withBash, ...SAMPLE_CONFIG, cmd: undefined }));
  await writeFile(path.join(work, 'evil.tar'), await dockerSaveArchive({ layers: [await tarOf([{ name: 'evil', type: 'symlink', linkname: '/tmp' }, { name: 'evil/pwned', content: 'x' }])] }));
});

after(async () => {
  await app?.close();
  await node?.close();
  await db?.close();
  await removeDataDir?.();
  if (work) await rm(work, { recursive: true, force: true });
});

describe('nestbox template', () => {
  test('import: progress on stderr, a summary on stdout', async () => {
    const r = ok(await nestbox(['template', 'import', path.join(work, 'image.tar'), '--name', 'img']));
    assert.match(r.stdout, /^Imported template img: 3 layers, [\d.]+ MB of files, in [\d.]+ s \([\d.]+ MB\/s\)\.\n/);
    assert.match(r.stdout, /Defaults: user app, workdir \/srv\/data, 2 env vars\./);
    assert.match(r.stderr, /received [\d.]+ MB: docker save archive, 3 layers/);
    assert.match(r.stderr, /layer 1\/3 applied \(\d+ entries\)\nlayer 2\/3 applied .*\nlayer 3\/3 applied/);
    assert.ok(existsSync(path.join(templatesDir, 'img', 'rootfs', 'srv', 'data', 'hello')));
  });

  test('import --json: the template', async () => {
    const t = JSON.parse(ok(await nestbox(['template', 'import', path.join(work, 'oci.tar'), '--name', 'img-oci', '--json'])).stdout);
    assert.equal(t.name, 'img-oci');
    assert.equal(t.source, 'oci');
    assert.equal(t.user, null);
    assert.equal(t.env.GREETING, 'hello from the image');
  });

  test('list: the team sees base and its own templates with their defaults; another team does not see them', async () => {
    const r = ok(await nestbox(['template', 'list']));
    const lines = r.stdout.split('\n');
    assert.match(lines.find((l) => /\bimg\b/.test(l) && !l.includes('img-oci'))!, /img[\s│]+docker[\s│]+3[\s│]+[\d.]+ MB[\s│]+app[\s│]+\/srv\/data[\s│]+PATH=\/usr\/local\/bin:\/usr\/bin:\/bin GREETING=hello from the image/);
    assert.match(lines.find((l) => l.includes('base'))!, /base[\s│]+builtin[\s│]+-[\s│]+-[\s│]+user/);
    const list = JSON.parse(ok(await nestbox(['template', 'list', '--json'])).stdout);
    assert.deepEqual(list.map((t: any) => t.name), ['base', 'img', 'img-oci']);
    const other = JSON.parse(ok(await nestbox(['template', 'list', '--json'], { E2B_API_KEY: otherKey })).stdout);
    assert.deepEqual(other.map((t: any) => t.name), ['base']);
    fails(await nestbox(['template', 'delete', 'img'], { E2B_API_KEY: otherKey }), /^error: template "img" not found \(HTTP 404\)$/);
    // Nor can it start sandboxes of them; the owner can.
    const create = (key: string, template: string) => fetch(`${apiUrl}/sandboxes`, {
      method: 'POST', headers: { 'X-API-Key': key, 'Content-Type': 'application/json' }, body: JSON.stringify({ templateID: template }),
    });
    const refused = await create(otherKey, 'img');
    assert.equal(refused.status, 404);
    assert.equal((await refused.json()).message, 'template "img" not found');
    assert.equal((await create(apiKey, 'img')).status, 201);
    assert.equal((await create(otherKey, 'base')).status, 201);
  });

  test('import refused: a hostile archive (the entry named, nothing left), a name taken, a bad name, a missing file', async () => {
    fails(await nestbox(['template', 'import', path.join(work, 'evil.tar'), '--name', 'evil']),
      /^error: layer 1 of 1 .*entry "evil\/pwned": "evil" is a symbolic link: nothing is written through a link \(HTTP 400\)$/);
    assert.equal(existsSync('/tmp/pwned'), false);
    assert.deepEqual((await readdir(templatesDir)).sort(), ['base', 'img', 'img-oci']);
    fails(await nestbox(['template', 'import', path.join(work, 'image.tar'), '--name', 'img']), /^error: template "img" already exists \(HTTP 409\)$/);
    fails(await nestbox(['template', 'import', path.join(work, 'image.tar'), '--name', 'Bad/Name']), /\(HTTP 400\)$/);
    fails(await nestbox(['template', 'import', path.join(work, 'nope.tar'), '--name', 'x']), /^error: cannot read .*nope\.tar: no such file$/);
  });

  test("import --start: the image's entrypoint + cmd become the template's start command, with its ready check", async () => {
    const r = ok(await nestbox(['template', 'import', path.join(work, 'server.tar'), '--name', 'srv', '--start', '--ready-cmd', ': > /dev/tcp/127.0.0.1/8000']));
    const startCmd = `/bin/sh -c 'echo "it'\\''s $GREETING" && exec python3 -m http.server 8000'`;
    assert.ok(r.stdout.includes(`Start command: ${startCmd} (ready when: : > /dev/tcp/127.0.0.1/8000)\n`), r.stdout);
    // As a built template records its setStartCmd: what a sandbox's start reads.
    const meta = JSON.parse(await readFile(path.join(templatesDir, 'srv', 'template.json'), 'utf8'));
    assert.equal(meta.startCmd, startCmd);
    assert.equal(meta.readyCmd, ': > /dev/tcp/127.0.0.1/8000');
    const start = await templateStart({ templatesDir }, 'srv');
    assert.deepEqual({ ...start, version: undefined }, {
      startCmd, readyCmd: ': > /dev/tcp/127.0.0.1/8000', env: { PATH: '/usr/local/bin:/usr/bin:/bin', GREETING: 'hello from the image' },
      cwd: '/srv/data', user: 'app', version: undefined,
    });
    const listed = JSON.parse(ok(await nestbox(['template', 'list', '--json'])).stdout).find((t: any) => t.name === 'srv');
    assert.equal(listed.startCmd, startCmd);
    const table = ok(await nestbox(['template', 'list'])).stdout.split('\n');
    assert.ok(table.find((l) => /^[\s│]*srv\s/.test(l))!.includes(`${startCmd.slice(0, 37)}...`), table.join('\n'));
    // Without --start the image's command is only recorded: no start command, and the list says so.
    assert.equal(await templateStart({ templatesDir }, 'img'), null);
    assert.match(table.find((l) => /\bimg\b/.test(l) && !l.includes('img-oci'))!, /\(not run\) \/bin\/sh/);
  });

  test('import --start refused: an image with neither entrypoint nor cmd, or without bash; --ready-cmd without --start', async () => {
    fails(await nestbox(['template', 'import', path.join(work, 'nocmd.tar'), '--name', 'nocmd', '--start']),
      /^error: the image has neither an Entrypoint nor a Cmd, so there is nothing to start: import it without --start .*\(HTTP 400\)$/);
    fails(await nestbox(['template', 'import', path.join(work, 'image.tar'), '--name', 'nobash', '--start']),
      /^error: the image has no \/bin\/bash, which runs a template's start command \(\/bin\/sh\).* \(HTTP 400\)$/);
    fails(await nestbox(['template', 'import', path.join(work, 'server.tar'), '--name', 'noready', '--ready-cmd', 'true']), /^error: --ready-cmd needs --start/);
    const res = await fetch(`${apiUrl}/nestbox/v1/templates?name=noready&readyCmd=true`, {
      method: 'POST', headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/x-tar' }, body: new Uint8Array(await readFile(path.join(work, 'server.tar'))),
    });
    assert.equal(res.status, 400);
    assert.match((await res.json()).message, /a ready command \(readyCmd\) needs start=true/);
    assert.deepEqual((await readdir(templatesDir)).filter((n) => /nocmd|nobash|noready/.test(n)), [], 'nothing left of them');
  });

  test('REST without NDJSON: 201 with the template at the end', async () => {
    const res = await fetch(`${apiUrl}/nestbox/v1/templates?name=plain`, {
      method: 'POST', headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/x-tar' }, body: new Uint8Array(await readFile(path.join(work, 'image.tar'))),
    });
    assert.equal(res.status, 201);
    const t = await res.json();
    assert.equal(t.workdir, '/srv/data');
    const got = await fetch(`${apiUrl}/nestbox/v1/templates/plain`, { headers: { 'X-API-Key': apiKey } });
    assert.equal(got.status, 200);
    assert.equal((await got.json()).user, 'app');
    assert.equal((await fetch(`${apiUrl}/nestbox/v1/templates/plain`, { headers: { 'X-API-Key': otherKey } })).status, 404);
    assert.equal((await fetch(`${apiUrl}/nestbox/v1/templates/plain`)).status, 401);
    const evil = await fetch(`${apiUrl}/nestbox/v1/templates?name=evil2`, {
      method: 'POST', headers: { 'X-API-Key': apiKey, 'Content-Type': 'application/x-tar' }, body: new Uint8Array(await readFile(path.join(work, 'evil.tar'))),
    });
    assert.equal(evil.status, 400);
    assert.match((await evil.json()).message, /entry "evil\/pwned"/);
  });

  test('delete: refused while a sandbox uses it, base refused, then deleted', async () => {
    const at = new Date();
    await db.query(
      `INSERT INTO sandboxes (id, team_id, template_id, state, cpu_count, memory_mb, disk_mb, envd_access_token, timeout_ms, started_at, state_changed_at, last_reason)
       VALUES ('aaaaaaaaaaaaaaaaaaaa', $1, 'img', 'paused', 1, 512, 2048, 't', 1000, $2, $2, 'requested')`,
      [teamId, at],
    );
    fails(await nestbox(['template', 'delete', 'img']), /^error: template "img" is in use by 1 sandbox: kill them first \(HTTP 409\)$/);
    await db.query(`UPDATE sandboxes SET state = 'killed' WHERE id = 'aaaaaaaaaaaaaaaaaaaa'`);
    assert.equal(ok(await nestbox(['template', 'delete', 'img'])).stdout, 'Deleted template img.\n');
    assert.equal(existsSync(path.join(templatesDir, 'img')), false);
    fails(await nestbox(['template', 'delete', 'base']), /^error: template "base" is built in and cannot be deleted \(HTTP 409\)$/);
    fails(await nestbox(['template', 'delete', 'img']), /^error: template "img" not found \(HTTP 404\)$/);
  });
});
