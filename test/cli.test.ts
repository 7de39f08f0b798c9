// The `nestbox` CLI, run for real (bin/nestbox as a child process) against a real API server on
// 127.0.0.1 with an in-memory lifecycle and a real PGlite store (keys, usage).
import { execFile, spawn } from 'node:child_process';
import http from 'node:http';
import { randomUUID } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { createServer, type AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { openDatabase, type Database } from '../src/store/database.ts';
import { migrate } from '../src/store/migrate.ts';
import { ensureBootstrapAdminKey } from '../src/store/admin-keys.ts';
import { authenticateKey } from '../src/store/credentials.ts';
import { ensureBootstrapTeam } from '../src/store/teams.ts';
import { tempPgliteDataDir } from './helpers/databases.ts';
import { FakeLifecycle } from './helpers/fake-lifecycle.ts';

const BIN = path.join(import.meta.dirname, '..', 'bin', 'nestbox');
const NOW = new Date('2026-03-01T01:00:00Z');

let db: Database;
let removeDataDir: () => Promise<void>;
let app: FastifyInstance;
let fake: FakeLifecycle;
let apiUrl: string;
let teamId: string;
let apiKey: string;
let adminKey: string;
/** An empty control directory, so that no admin-key file of this host is picked up. */
let controlDir: string;

interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/**
 * Runs `bin/nestbox args` with E2B_API_URL and E2B_API_KEY set, and an empty control directory
 * (unless `env` overrides them).
 */
function nestbox(args: string[], env: Record<string, string | undefined> = {}): Promise<Run> {
  const base: Record<string, string | undefined> = { ...process.env };
  for (const k of ['E2B_API_URL', 'E2B_API_KEY', 'NESTBOX_API_KEY', 'E2B_DOMAIN', 'NESTBOX_ADMIN_KEY', 'NESTBOX_HOME']) delete base[k];
  const full: Record<string, string | undefined> = {
    ...base, E2B_API_URL: apiUrl, E2B_API_KEY: apiKey, NESTBOX_CONTROL_DIR: controlDir, ...env,
  };
  for (const [k, v] of Object.entries(full)) if (v === undefined) delete full[k];
  return new Promise((resolve) => {
    execFile(BIN, args, { env: full as NodeJS.ProcessEnv, timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

function ok(r: Run): Run {
  assert.equal(r.code, 0, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  return r;
}

const json = (r: Run) => JSON.parse(ok(r).stdout);

/** Exit 1, one line on stderr matching `re`, no stack trace, nothing on stdout. */
function fails(r: Run, re: RegExp, code = 1) {
  assert.equal(r.code, code, `exit ${r.code}\nstdout: ${r.stdout}\nstderr: ${r.stderr}`);
  assert.equal(r.stdout, '');
  const lines = r.stderr.trimEnd().split('\n');
  assert.equal(lines.length, 1, `one line of error: ${r.stderr}`);
  assert.match(lines[0]!, re);
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
  adminKey = (await ensureBootstrapAdminKey(db)).adminKey!;
  controlDir = await mkdtemp(path.join(tmpdir(), 'nestbox-cli-control-'));
  fake = new FakeLifecycle();
  app = buildApiServer({
    lifecycle: fake,
    authenticate: (k) => authenticateKey(db, k),
    envdVersion: '0.6.4',
    db,
    now: () => NOW,
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  apiUrl = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
});

after(async () => {
  await app?.close();
  await db?.close();
  await removeDataDir?.();
  if (controlDir) await rm(controlDir, { recursive: true, force: true });
});

describe('nestbox sandbox', () => {
  test('create: flags become the request; human and --json output', async () => {
    const [human, raw] = await Promise.all([
      nestbox(['sandbox', 'create']),
      nestbox([
        'sandbox', 'create', '--template', 'py', '--timeout', '60', '--metadata', 'user=ann', '--metadata', 'run=a=b',
        '--env', 'FOO=1', '--auto-pause', '--json',
      ]),
    ]);
    assert.match(ok(human).stdout, /^Created sandbox [a-z0-9]{20} from template base; it is killed after 300 s unless extended\.\n$/);
    const body = json(raw);
    assert.equal(body.templateID, 'py');
    assert.match(body.sandboxID, /^[a-z0-9]{20}$/);
    assert.equal(body.envdVersion, '0.6.4');
    const call = fake.calls.filter((c) => c.op === 'create').map((c) => c.args[0] as any).find((p) => p.templateId === 'py');
    assert.equal(call.teamId, teamId);
    assert.equal(call.timeoutMs, 60_000);
    assert.deepEqual(call.metadata, { user: 'ann', run: 'a=b' });
    assert.deepEqual(call.envVars, { FOO: '1' });
    assert.equal(call.autoPause, true);
    assert.equal(human.stderr, '', 'no spinner when stderr is not a terminal');
  });

  test('create: bad flags are refused before any request', async () => {
    const [timeout, meta, extra] = await Promise.all([
      nestbox(['sandbox', 'create', '--timeout', 'soon']),
      nestbox(['sandbox', 'create', '--metadata', 'novalue']),
      nestbox(['sandbox', 'create', 'extra']),
    ]);
    fails(timeout, /--timeout.*expected a whole number from 0 to 86400/);
    fails(meta, /--metadata.*expected KEY=VALUE/);
    assert.equal(extra.code, 1);
    // The server's own validation errors come back as one line too.
    fails(await nestbox(['sandbox', 'create', '--template', 'no such/../name!']), /^error: .*\(HTTP 400\)$/);
  });

  test('list: a table, --json, every page, filters and --limit', async () => {
    for (let i = 0; i < 105; i++) fake.seed({ teamId, metadata: { batch: 'many', i: String(i) } });
    const paused = fake.seed({ teamId, state: 'paused', endAt: null, metadata: { batch: 'one', owner: 'a b&c' } });
    fake.seed({ teamId: 'someone-else', metadata: { batch: 'one' } });
    const [table, all, limited, pausedOnly, byMeta, bad] = await Promise.all([
      nestbox(['sandbox', 'list', '--metadata', 'batch=one']),
      nestbox(['sandbox', 'list', '--json', '--metadata', 'batch=many']),
      nestbox(['sandbox', 'ls', '--json', '--limit', '3']),
      nestbox(['sandbox', 'list', '--json', '--state', 'paused']),
      nestbox(['sandbox', 'list', '--json', '--metadata', 'owner=a b&c', '--metadata', 'batch=one']),
      nestbox(['sandbox', 'list', '--state', 'frozen']),
    ]);
    const out = ok(table).stdout;
    for (const h of ['ID', 'TEMPLATE', 'STATE', 'STARTED', 'ENDS', 'CPU', 'MEMORY', 'METADATA']) assert.ok(out.includes(h), h);
    assert.ok(out.includes(paused.sandboxId));
    assert.match(out, /paused/);
    assert.match(out, /owner=a b&c/);
    assert.equal(out.split('\n').filter((l) => /[a-z0-9]{20}/.test(l)).length, 1);

    const many = json(all);
    assert.equal(many.length, 105, 'follows X-Next-Token past the first page of 100');
    assert.equal(new Set(many.map((s: any) => s.sandboxID)).size, 105);
    assert.equal(json(limited).length, 3);
    assert.deepEqual(json(pausedOnly).map((s: any) => s.sandboxID), [paused.sandboxId]);
    assert.deepEqual(json(byMeta).map((s: any) => s.sandboxID), [paused.sandboxId]);
    fails(bad, /--state.*expected running, paused or running,paused/);
    const pages = fake.calls.filter((c) => c.op === 'list' && (c.args[1] as any).metadata?.batch === 'many');
    assert.equal(pages.length, 2);
  });

  test('info, pause, resume, timeout, kill', async () => {
    const s = fake.seed({ teamId, metadata: { k: 'v' }, autoPause: true });
    const info = ok(await nestbox(['sandbox', 'info', s.sandboxId])).stdout;
    assert.match(info, new RegExp(`id\\s*│\\s*${s.sandboxId}`));
    assert.match(info, /template\s*│\s*base/);
    assert.match(info, /state\s*│\s*running/);
    assert.match(info, /on timeout\s*│\s*pause/);
    assert.match(info, /memory\s*│\s*512 MiB/);
    assert.doesNotMatch(info, new RegExp(s.envdAccessToken), 'the access token is only in --json');
    const detail = json(await nestbox(['sandbox', 'info', s.sandboxId, '--json']));
    assert.equal(detail.sandboxID, s.sandboxId);
    assert.deepEqual(detail.lifecycle, { autoResume: false, onTimeout: 'pause' });
    assert.deepEqual([detail.state, detail.nodeId], ['running', 'node-1'], 'info --json has the state and the node');
    assert.match(info, /node\s*│\s*node-1/);

    assert.equal(ok(await nestbox(['sandbox', 'pause', s.sandboxId])).stdout, `Paused sandbox ${s.sandboxId}.\n`);
    assert.deepEqual(fake.lastCall('pause')!.args, [teamId, s.sandboxId, { memory: true }]);
    fails(await nestbox(['sandbox', 'pause', s.sandboxId]), new RegExp(`^error: sandbox ${s.sandboxId} is paused \\(HTTP 409\\)$`));
    assert.equal(json(await nestbox(['sandbox', 'info', s.sandboxId, '--json'])).state, 'paused');

    const resumed = ok(await nestbox(['sandbox', 'resume', s.sandboxId, '--timeout', '120']));
    assert.equal(resumed.stdout, `Resumed sandbox ${s.sandboxId}; it ends in 120 s unless extended.\n`);
    assert.deepEqual(fake.lastCall('connect')!.args, [teamId, s.sandboxId, 120_000]);
    const again = json(await nestbox(['sandbox', 'resume', s.sandboxId, '--json']));
    assert.equal(again.sandboxID, s.sandboxId);
    assert.deepEqual(fake.lastCall('connect')!.args, [teamId, s.sandboxId, 300_000]);
    assert.match(ok(await nestbox(['sandbox', 'resume', s.sandboxId])).stdout, /is running already/);

    assert.equal(ok(await nestbox(['sandbox', 'timeout', s.sandboxId, '30'])).stdout, `Sandbox ${s.sandboxId} now ends in 30 s.\n`);
    assert.deepEqual(fake.lastCall('setTimeout')!.args, [teamId, s.sandboxId, 30_000]);
    fails(await nestbox(['sandbox', 'timeout', s.sandboxId, '-1']), /unknown option|expected a whole number/);

    const cold = fake.seed({ teamId });
    assert.deepEqual(json(await nestbox(['sandbox', 'pause', cold.sandboxId, '--no-memory', '--json'])), {
      sandboxID: cold.sandboxId, state: 'paused', memory: false,
    });
    assert.deepEqual(fake.lastCall('pause')!.args, [teamId, cold.sandboxId, { memory: false }]);

    assert.equal(ok(await nestbox(['sandbox', 'kill', s.sandboxId])).stdout, `Killed sandbox ${s.sandboxId}.\n`);
    fails(await nestbox(['sandbox', 'info', s.sandboxId]), /^error: sandbox "?[a-z0-9]{20}"? not found \(HTTP 404\)$/);
    fails(await nestbox(['sandbox', 'kill', 'zzzzzzzzzzzzzzzzzzzz', '--json']), /not found \(HTTP 404\)/);
    fails(await nestbox(['sandbox', 'info', '../../usage']), /not found \(HTTP 404\)/);
  });
});

describe('nestbox keys', () => {
  test('create (shown once), list as a table and JSON, revoke; the last key is kept', async () => {
    const created = ok(await nestbox(['keys', 'create', '--name', 'ci']));
    const lines = created.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, /^Created API key [0-9a-f-]{36} \(ci\)\. Store it now: it is not shown again\.$/);
    assert.match(lines[1]!, /^e2b_[0-9a-f]{40}$/);
    const newKey = lines[1]!;
    const newId = /key ([0-9a-f-]{36})/.exec(lines[0]!)![1]!;

    const raw = json(await nestbox(['keys', 'create', '--json']));
    assert.deepEqual(Object.keys(raw).sort(), ['id', 'key', 'mask']);

    const table = ok(await nestbox(['keys', 'list'], { E2B_API_KEY: undefined, NESTBOX_API_KEY: newKey })).stdout;
    for (const h of ['ID', 'NAME', 'KEY', 'CREATED', 'LAST USED', 'REVOKED']) assert.ok(table.includes(h), h);
    assert.ok(table.includes(newId));
    assert.ok(table.includes(`${newKey.slice(0, 6)}…${newKey.slice(-4)}`));
    assert.ok(!table.includes(newKey), 'never the whole key');
    const listed = json(await nestbox(['keys', 'list', '--json']));
    assert.deepEqual(listed.map((k: any) => k.name), ['default', 'ci', '']);

    assert.equal(ok(await nestbox(['keys', 'revoke', newId])).stdout, `Revoked API key ${newId}.\n`);
    fails(await nestbox(['keys', 'list'], { E2B_API_KEY: newKey }), /^error: invalid API key \(HTTP 401\)$/);
    assert.deepEqual(json(await nestbox(['keys', 'revoke', raw.id, '--json'])), { id: raw.id, revoked: true });
    fails(await nestbox(['keys', 'revoke', randomUUID()]), /not found \(HTTP 404\)$/);

    const active = json(await nestbox(['keys', 'list', '--json'])).filter((k: any) => k.revokedAt === null);
    assert.equal(active.length, 1);
    fails(await nestbox(['keys', 'revoke', active[0].id]), /last active API key.*\(HTTP 409\)$/);
    assert.match(ok(await nestbox(['keys', 'list'])).stdout, /default/);
  });
});

describe('nestbox webhooks', () => {
  test('create (secret shown once), list, deliveries, delete; bad input is one line', async () => {
    const created = ok(await nestbox(['webhooks', 'create', 'http://127.0.0.1:9/hook']));
    const lines = created.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, /^Created webhook (\S+) for http:\/\/127\.0\.0\.1:9\/hook\. Its signing secret \(not shown again\):$/);
    const id = /webhook (\S+) for/.exec(lines[0]!)![1]!;
    assert.ok(lines[1]!.length >= 16, 'a generated secret');
    const own = json(await nestbox(['webhooks', 'create', 'https://example.test/x', '--secret', 's'.repeat(20), '--json']));
    assert.equal(own.secret, 's'.repeat(20));
    const table = ok(await nestbox(['webhooks', 'list'])).stdout;
    for (const h of ['ID', 'URL', 'CREATED', 'DELIVERED UP TO', 'RETRYING']) assert.ok(table.includes(h), h);
    assert.ok(table.includes(id) && table.includes('https://example.test/x'));
    assert.ok(!table.includes(lines[1]!), 'never the secret');
    assert.deepEqual(json(await nestbox(['webhooks', 'list', '--json'])).map((w: any) => w.url).sort(), ['http://127.0.0.1:9/hook', 'https://example.test/x']);
    assert.equal(ok(await nestbox(['webhooks', 'deliveries', id])).stdout, 'No deliveries yet.\n');
    assert.deepEqual(json(await nestbox(['webhooks', 'deliveries', id, '--json'])), []);
    fails(await nestbox(['webhooks', 'create', 'ftp://example.test/x']), /HTTP 400\)$/);
    fails(await nestbox(['webhooks', 'create', 'https://example.test/x', '--secret', 'short']), /HTTP 400\)$/);
    fails(await nestbox(['webhooks', 'deliveries', id, '--limit', 'lots']), /HTTP 400\)$/);
    assert.equal(ok(await nestbox(['webhooks', 'delete', id])).stdout, `Deleted webhook ${id}.\n`);
    fails(await nestbox(['webhooks', 'delete', id]), /not found \(HTTP 404\)$/);
    assert.deepEqual(json(await nestbox(['webhooks', 'delete', own.id, '--json'])), { id: own.id, deleted: true });
    assert.equal(ok(await nestbox(['webhooks', 'list'])).stdout, 'No webhooks.\n');
  });
});

describe('nestbox usage', () => {
  test('totals and per-sandbox table; --json; windows; bad input', async () => {
    const open = (id: string, from: string, to: string | null, cpu: number, mem: number) =>
      db.query(
        `INSERT INTO usage_intervals (sandbox_id, team_id, opened_event_id, opened_at, closed_event_id, closed_at, cpu_count, memory_mb)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
        [id, teamId, randomUUID(), new Date(from), to ? randomUUID() : null, to ? new Date(to) : null, cpu, mem],
      );
    await open('usagesandbox00000001', '2026-03-01T00:00:00Z', '2026-03-01T00:30:00Z', 2, 1024);
    await open('usagesandbox00000002', '2026-03-01T00:50:00Z', null, 1, 512); // open: 10 min at NOW

    const [human, raw, window, bad, reversed] = await Promise.all([
      nestbox(['usage']),
      nestbox(['usage', '--json']),
      nestbox(['usage', '--json', '--from', '2026-03-01T00:20:00Z', '--to', '2026-03-01T00:55:00Z']),
      nestbox(['usage', '--from', 'last week']),
      nestbox(['usage', '--from', '2026-03-02', '--to', '2026-03-01']),
    ]);
    const out = ok(human).stdout;
    assert.match(out, /^Usage from the beginning to 2026-03-01 01:00:00Z\n/);
    assert.match(out, /Total: running 40m 00s \(2400 s\), 4200 CPU-s, 2100 GiB-s/);
    assert.match(out, /usagesandbox00000001\s*│\s*30m 00s\s*│\s*3600\s*│\s*1800\s*│\s*-/);
    assert.match(out, /usagesandbox00000002\s*│\s*10m 00s\s*│\s*600\s*│\s*300\s*│\s*running/);

    const body = json(raw);
    assert.equal(body.teamId, teamId);
    assert.deepEqual(body.totals, { runningSeconds: 2400, cpuSeconds: 4200, memoryGiBSeconds: 2100 });
    const w = json(window);
    assert.deepEqual(w.sandboxes.map((s: any) => [s.sandboxId, s.runningSeconds]), [
      ['usagesandbox00000001', 600],
      ['usagesandbox00000002', 300],
    ]);
    fails(bad, /^error: from: "last week" is not an ISO 8601 timestamp .*\(HTTP 400\)$/);
    fails(reversed, /from must not be after to \(HTTP 400\)$/);
  });
});

describe('configuration and errors', () => {
  test('API key and URL from flags and environment; one-line errors, exit 1', async () => {
    const closed = await new Promise<string>((resolve) => {
      const srv = createServer().listen(0, '127.0.0.1', () => {
        const port = (srv.address() as AddressInfo).port;
        srv.close(() => resolve(`http://127.0.0.1:${port}`));
      });
    });
    const [noKey, badKey, flagKey, nestboxKey, flagUrl, down, badUrl, unknown] = await Promise.all([
      nestbox(['sandbox', 'list'], { E2B_API_KEY: undefined }),
      nestbox(['sandbox', 'list'], { E2B_API_KEY: 'e2b_' + '1'.repeat(40) }),
      nestbox(['sandbox', 'list', '--json', '--api-key', apiKey], { E2B_API_KEY: 'wrong' }),
      nestbox(['usage', '--json'], { E2B_API_KEY: undefined, NESTBOX_API_KEY: apiKey }),
      nestbox(['keys', 'list', '--json', '--api-url', apiUrl], { E2B_API_URL: closed }),
      nestbox(['keys', 'list'], { E2B_API_URL: closed }),
      nestbox(['keys', 'list', '--api-url', 'not a url']),
      nestbox(['sandbox', 'frobnicate']),
    ]);
    fails(noKey, /^error: no API key: set E2B_API_KEY \(or NESTBOX_API_KEY\), or pass --api-key$/);
    fails(badKey, /^error: invalid API key \(HTTP 401\)$/);
    assert.ok(Array.isArray(json(flagKey)));
    assert.equal(json(nestboxKey).teamId, teamId);
    assert.ok(Array.isArray(json(flagUrl)));
    fails(down, new RegExp(`^error: cannot reach the Nestbox API at ${closed}: connection refused \\(is Nestbox running there\\?`));
    fails(badUrl, /^error: invalid API URL "not a url"/);
    assert.equal(unknown.code, 1);
    assert.match(unknown.stderr, /unknown command 'frobnicate'/);
  });
});

describe('nestbox teams (operator)', () => {
  const asAdmin = { NESTBOX_ADMIN_KEY: '' } as Record<string, string | undefined>;
  before(() => {
    asAdmin.NESTBOX_ADMIN_KEY = adminKey;
  });

  test('create: the team and its first key, shown once; limits from flags; --json', async () => {
    const created = ok(await nestbox(['teams', 'create', 'acme'], asAdmin));
    const lines = created.stdout.trimEnd().split('\n');
    assert.equal(lines.length, 3, created.stdout);
    const m = /^Created team acme \(([0-9a-f-]{36})\): at most 20 running sandboxes, timeouts up to 86400 s\.$/.exec(lines[0]!);
    assert.ok(m, lines[0]);
    assert.match(lines[1]!, /^Its first API key \([0-9a-f-]{36}\); store it now, it is not shown again:$/);
    assert.match(lines[2]!, /^e2b_[0-9a-f]{40}$/);
    // The new team's key is a team key of that team (and sees none of the first team's keys).
    const theirs = json(await nestbox(['keys', 'list', '--json'], { E2B_API_KEY: lines[2]! }));
    assert.deepEqual(theirs.map((k: any) => k.name), ['default']);

    const small = json(await nestbox(['teams', 'create', 'small', '--max-running', '2', '--max-timeout', '60', '--key-name', 'ci', '--json'], asAdmin));
    assert.deepEqual(Object.keys(small).sort(), ['apiKey', 'team']);
    assert.deepEqual([small.team.name, small.team.maxRunning, small.team.maxTimeoutS], ['small', 2, 60]);
    assert.match(small.apiKey.key, /^e2b_[0-9a-f]{40}$/);
  });

  test('create: bad flags are refused before any request; server refusals are one line', async () => {
    const [zero, tooLong, words, noName, taken, blank] = await Promise.all([
      nestbox(['teams', 'create', 'x', '--max-running', '0'], asAdmin),
      nestbox(['teams', 'create', 'x', '--max-timeout', '86401'], asAdmin),
      nestbox(['teams', 'create', 'x', '--max-running', 'many'], asAdmin),
      nestbox(['teams', 'create'], asAdmin),
      nestbox(['teams', 'create', 'ACME'], asAdmin),
      nestbox(['teams', 'create', '   '], asAdmin),
    ]);
    fails(zero, /--max-running.*expected a whole number from 1 to 100000/);
    fails(tooLong, /--max-timeout.*expected a whole number from 1 to 86400/);
    fails(words, /--max-running.*expected a whole number/);
    fails(noName, /missing required argument 'name'/);
    fails(taken, /^error: a team named "ACME" exists already \(.+\): choose another name \(HTTP 409\)$/);
    fails(blank, /^error: a team needs a name \(HTTP 400\)$/);
    const names = json(await nestbox(['teams', 'list', '--json'], asAdmin)).map((t: any) => t.name);
    assert.ok(!names.includes('x'));
  });

  test('list and show: tables and --json; an unknown team is one line', async () => {
    const table = ok(await nestbox(['teams', 'list'], asAdmin)).stdout;
    for (const h of ['ID', 'NAME', 'ACTIVE SANDBOXES', 'MAX RUNNING', 'MAX TIMEOUT', 'KEYS', 'CREATED']) assert.ok(table.includes(h), h);
    assert.match(table, /acme/);
    assert.match(table, /default/);
    const listed = json(await nestbox(['teams', 'ls', '--json'], asAdmin));
    const acme = listed.find((t: any) => t.name === 'acme');
    assert.deepEqual([acme.maxRunning, acme.maxTimeoutS, acme.activeKeys, acme.activeSandboxes], [20, 86400, 1, 0]);

    const shown = ok(await nestbox(['teams', 'show', acme.id], asAdmin)).stdout;
    assert.match(shown, new RegExp(`id\\s*│\\s*${acme.id}`));
    assert.match(shown, /active sandboxes\s*│\s*0 of at most 20/);
    assert.match(shown, /max timeout\s*│\s*86400 s/);
    for (const h of ['KEY ID', 'NAME', 'KEY', 'CREATED', 'LAST USED', 'REVOKED']) assert.ok(shown.includes(h), h);
    assert.match(shown, /e2b_[0-9a-f]{2}…[0-9a-f]{4}/);
    assert.doesNotMatch(shown, /e2b_[0-9a-f]{40}/, 'never a whole key');
    const detail = json(await nestbox(['teams', 'show', acme.id, '--json'], asAdmin));
    assert.equal(detail.keys.length, 1);
    fails(await nestbox(['teams', 'show', 'no-such-team'], asAdmin), /^error: team "no-such-team" not found \(HTTP 404\)$/);
    fails(await nestbox(['teams', 'show', '../keys'], asAdmin), /not found \(HTTP 404\)$/);
  });

  test("keys create: another key for a team, shown once; it is that team's", async () => {
    const acme = json(await nestbox(['teams', 'list', '--json'], asAdmin)).find((t: any) => t.name === 'acme');
    const created = ok(await nestbox(['teams', 'keys', 'create', acme.id, '--name', 'deploy'], asAdmin));
    const lines = created.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, new RegExp(`^Created API key [0-9a-f-]{36} \\(deploy\\) for team ${acme.id}\\. Store it now: it is not shown again\\.$`));
    assert.match(lines[1]!, /^e2b_[0-9a-f]{40}$/);
    assert.deepEqual(
      json(await nestbox(['keys', 'list', '--json'], { E2B_API_KEY: lines[1]! })).map((k: any) => k.name),
      ['default', 'deploy'],
    );
    const raw = json(await nestbox(['teams', 'keys', 'create', acme.id, '--json'], asAdmin));
    assert.deepEqual(Object.keys(raw).sort(), ['id', 'key', 'mask', 'teamId']);
    fails(await nestbox(['teams', 'keys', 'create', randomUUID()], asAdmin), /^error: team ".+" not found \(HTTP 404\)$/);
  });

  test('the admin key: --admin-key, NESTBOX_ADMIN_KEY, or the control directory; the wrong kind is a one-line 403', async () => {
    const keyDir = await mkdtemp(path.join(tmpdir(), 'nestbox-cli-key-'));
    try {
      await writeFile(path.join(keyDir, 'admin-key'), `${adminKey}\n`, { mode: 0o600 });
      const home = await mkdtemp(path.join(tmpdir(), 'nestbox-cli-home-'));
      await mkdir(path.join(home, 'control'));
      await writeFile(path.join(home, 'control', 'admin-key'), `${adminKey}\n`, { mode: 0o600 });
      const [none, fromFile, fromHome, fromFlag, teamKey, adminAsTeam, notAFile] = await Promise.all([
        nestbox(['teams', 'list']),
        nestbox(['teams', 'list', '--json'], { NESTBOX_CONTROL_DIR: keyDir }),
        nestbox(['teams', 'list', '--json'], { NESTBOX_CONTROL_DIR: undefined, NESTBOX_HOME: home }),
        nestbox(['teams', 'list', '--json', '--admin-key', adminKey], { NESTBOX_ADMIN_KEY: 'nestbox_admin_' + '0'.repeat(40) }),
        nestbox(['teams', 'list'], { NESTBOX_ADMIN_KEY: apiKey }),
        nestbox(['keys', 'list'], { E2B_API_KEY: adminKey }),
        nestbox(['teams', 'list'], { NESTBOX_CONTROL_DIR: path.join(keyDir, 'admin-key', 'x') }),
      ]);
      fails(none, new RegExp(`^error: no admin key: set NESTBOX_ADMIN_KEY or pass --admin-key \\(on the Nestbox host, the first start wrote it to ${controlDir}/admin-key\\)$`));
      assert.ok(Array.isArray(json(fromFile)));
      assert.ok(Array.isArray(json(fromHome)));
      assert.ok(Array.isArray(json(fromFlag)));
      fails(teamKey, /^error: this route needs an admin key \(nestbox_admin_…\), not a team API key: .*\(HTTP 403\)$/);
      fails(adminAsTeam, /^error: this route needs a team API key \(e2b_…\), not an admin key: .*nestbox teams keys create <teamId>\) \(HTTP 403\)$/);
      fails(notAFile, /^error: cannot read the admin key file .*admin-key\/x\/admin-key: .*; run as root, or set NESTBOX_ADMIN_KEY$/);
      await rm(home, { recursive: true, force: true });
    } finally {
      await rm(keyDir, { recursive: true, force: true });
    }
  });
});

describe('nestbox admin-keys (operator)', () => {
  test('create (shown once), list, revoke; the last one is kept', async () => {
    const env = { NESTBOX_ADMIN_KEY: adminKey };
    const created = ok(await nestbox(['admin-keys', 'create', '--name', 'rotation'], env));
    const lines = created.stdout.trimEnd().split('\n');
    assert.match(lines[0]!, /^Created admin key [0-9a-f-]{36} \(rotation\)\. Store it now: it is not shown again\.$/);
    assert.match(lines[1]!, /^nestbox_admin_[0-9a-f]{40}$/);
    const id = /key ([0-9a-f-]{36})/.exec(lines[0]!)![1]!;
    const table = ok(await nestbox(['admin-keys', 'list'], { NESTBOX_ADMIN_KEY: lines[1]! })).stdout;
    for (const h of ['ID', 'NAME', 'KEY', 'CREATED', 'LAST USED', 'REVOKED']) assert.ok(table.includes(h), h);
    assert.ok(table.includes(id) && table.includes('rotation'));
    assert.ok(!table.includes(lines[1]!), 'never the whole key');
    assert.equal(ok(await nestbox(['admin-keys', 'revoke', id], env)).stdout, `Revoked admin key ${id}.\n`);
    fails(await nestbox(['teams', 'list'], { NESTBOX_ADMIN_KEY: lines[1]! }), /^error: invalid admin key \(HTTP 401\)$/);
    const active = json(await nestbox(['admin-keys', 'list', '--json'], env)).filter((k: any) => k.revokedAt === null);
    assert.equal(active.length, 1);
    fails(await nestbox(['admin-keys', 'revoke', active[0].id], env), /last active admin key.*\(HTTP 409\)$/);
  });
});

/**
 * A stand-in for envd behind the sandbox proxy: answers process.Process/Start (Connect JSON
 * streaming) with start, one stdout chunk and end exit 0, and keeps each Start request.
 */
function startFakeEnvd(
  answer: 'exits' | 'cut off' | 'refuses' | 'never starts' | 'starts when told' = 'exits',
): Promise<{
  url: string; starts: any[]; signals: any[]; headers: http.IncomingHttpHeaders[];
  /** 'starts when told': resolves when a Start came in; its start event goes once `release` is called. */
  startAsked: Promise<void>; release: () => void; close: () => Promise<void>;
}> {
  const headers: http.IncomingHttpHeaders[] = [];
  const starts: any[] = [];
  const signals: any[] = [];
  let asked!: () => void;
  const startAsked = new Promise<void>((r) => (asked = r));
  let release!: () => void;
  const released = new Promise<void>((r) => (release = r));
  const frame = (flags: number, msg: unknown) => {
    const body = Buffer.from(JSON.stringify(msg));
    const head = Buffer.alloc(5);
    head.writeUInt8(flags, 0);
    head.writeUInt32BE(body.length, 1);
    return Buffer.concat([head, body]);
  };
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', async () => {
      if (req.url === '/process.Process/SendSignal') {
        signals.push(JSON.parse(Buffer.concat(chunks).toString()));
        return void res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      }
      if (req.url !== '/process.Process/Start') return void res.writeHead(404).end();
      const raw = Buffer.concat(chunks);
      starts.push(JSON.parse(raw.subarray(5, 5 + raw.readUInt32BE(1)).toString()));
      headers.push(req.headers);
      res.writeHead(200, { 'content-type': 'application/connect+json' });
      if (answer === 'refuses') return void res.end(frame(2, { error: { code: 'not_found', message: 'no such program' } }));
      if (answer === 'never starts') {
        res.write(frame(0, { event: { end: { exitCode: 0, exited: true, status: 'exit status 0' } } }));
        return void res.end(frame(2, {}));
      }
      if (answer === 'starts when told') {
        res.flushHeaders();
        asked();
        await released;
        res.write(frame(0, { event: { start: { pid: 7 } } }));
        // Runs until killed (its end comes with the signal) or until the client goes.
        while (signals.length === 0 && !res.destroyed) await new Promise((r) => setTimeout(r, 10));
        if (res.destroyed) return;
        res.write(frame(0, { event: { end: { exitCode: -1, exited: false, status: 'signal: killed' } } }));
        return void res.end(frame(2, {}));
      }
      res.write(frame(0, { event: { start: { pid: 7 } } }));
      const ran = frame(0, { event: { data: { stdout: Buffer.from('ran\n').toString('base64') } } });
      if (answer === 'cut off') return void res.write(ran, () => res.destroy());
      res.write(ran);
      res.write(frame(0, { event: { end: { exitCode: 0, exited: true, status: 'exit status 0' } } }));
      res.end(frame(2, {}));
    });
  });
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({
        url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
        starts,
        signals,
        headers,
        startAsked,
        release,
        close: () => new Promise((r) => server.close(() => r())),
      }),
    ),
  );
}

describe('nestbox sandbox exec', () => {
  test('the program and its arguments are passed as argv (no shell); --shell / -c runs a string through bash -l -c', async () => {
    const envd = await startFakeEnvd();
    try {
      const s = fake.seed({ teamId });
      const env = { E2B_SANDBOX_URL: envd.url };
      const argv = ok(await nestbox(['sandbox', 'exec', s.sandboxId, '--', 'echo', 'a b', 'c;d', '$HOME', '-c'], env));
      assert.equal(argv.stdout, 'ran\n');
      assert.deepEqual([envd.starts[0].process.cmd, envd.starts[0].process.args], ['echo', ['a b', 'c;d', '$HOME', '-c']]);

      ok(await nestbox(['sandbox', 'exec', s.sandboxId, '--shell', 'echo $HOME | wc -c'], env));
      ok(await nestbox(['sandbox', 'exec', s.sandboxId, '-c', 'true; true'], env));
      assert.deepEqual(envd.starts.slice(1).map((x) => [x.process.cmd, x.process.args]), [
        ['/bin/bash', ['-l', '-c', 'echo $HOME | wc -c']],
        ['/bin/bash', ['-l', '-c', 'true; true']],
      ]);

      fails(await nestbox(['sandbox', 'exec', s.sandboxId, '-c', 'true', '--', 'echo'], env), /either a command string.*not both/);
      fails(await nestbox(['sandbox', 'exec', s.sandboxId], env), /no command/);
      assert.equal(envd.starts.length, 3, 'refused invocations start nothing');
      // Routed and authorized as the SDK does it; --user as envd's Basic user; --env and --cwd.
      ok(await nestbox(['sandbox', 'exec', s.sandboxId, '--user', 'root', '--env', 'A=1', '--cwd', '/tmp', '--', 'true'], env));
      const h = envd.headers.at(-1)!;
      assert.equal(h['e2b-sandbox-id'], s.sandboxId);
      assert.equal(h['e2b-sandbox-port'], '49983');
      assert.equal(h.authorization, `Basic ${Buffer.from('root:').toString('base64')}`);
      assert.deepEqual([envd.starts.at(-1).process.envs, envd.starts.at(-1).process.cwd], [{ A: '1' }, '/tmp']);
      assert.equal(envd.headers[0]!.authorization, undefined, "no --user: envd's default user");
    } finally {
      await envd.close();
    }
  });

  test('a stream cut off before the exit, refused by envd, or ended before a start: one line on stderr, exit 1', async () => {
    for (const [answer, re] of [
      ['cut off', /^error: the connection to the sandbox closed before the command ended/],
      ['refuses', /^error: envd: no such program$/],
      ['never starts', /^error: envd: envd ended the command without starting it$/],
    ] as const) {
      const envd = await startFakeEnvd(answer);
      try {
        const s = fake.seed({ teamId });
        const r = await nestbox(['sandbox', 'exec', s.sandboxId, '--', 'true'], { E2B_SANDBOX_URL: envd.url });
        assert.equal(r.code, 1, `${answer}: ${r.stderr}`);
        assert.match(r.stderr.trimEnd().split('\n').at(-1)!, re);
      } finally {
        await envd.close();
      }
    }
  });

  test('Ctrl-C after the start was asked for and before envd named the process: the process, once named, is killed; exit 130', async () => {
    const envd = await startFakeEnvd('starts when told');
    try {
      const s = fake.seed({ teamId });
      const env: Record<string, string | undefined> = { ...process.env, E2B_API_URL: apiUrl, E2B_API_KEY: apiKey, E2B_SANDBOX_URL: envd.url, NESTBOX_CONTROL_DIR: controlDir };
      delete env.E2B_DOMAIN;
      const child = spawn(BIN, ['sandbox', 'exec', s.sandboxId, '--', 'sleep', '3600'], { env: env as NodeJS.ProcessEnv, stdio: 'ignore' });
      const closed = new Promise<[number | null, string | null]>((resolve) => child.on('close', (code, signal) => resolve([code, signal])));
      await envd.startAsked;
      child.kill('SIGINT');
      await new Promise((r) => setTimeout(r, 200)); // the signal is handled before the start event comes
      envd.release();
      assert.deepEqual(await closed, [130, null]);
      assert.deepEqual(envd.signals, [{ process: { pid: 7 }, signal: 'SIGNAL_SIGKILL' }]);
    } finally {
      envd.release();
      await envd.close();
    }
  });
});

describe('the built CLI', () => {
  test('scripts/build-cli.mjs builds dist/cli, which runs the commands as the sources do (exec and files included)', async () => {
    const root = path.join(import.meta.dirname, '..');
    const run = (cmd: string, args: string[]) =>
      new Promise<Run>((resolve) => {
        execFile(cmd, args, { cwd: root, env: { ...process.env, E2B_API_URL: apiUrl, E2B_API_KEY: apiKey, NESTBOX_CONTROL_DIR: controlDir }, timeout: 60_000 },
          (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }));
      });
    ok(await run(process.execPath, ['scripts/build-cli.mjs']));
    const built = path.join(root, 'dist', 'cli', 'main.mjs');
    const s = fake.seed({ teamId, metadata: { built: 'yes' } });
    const listed = JSON.parse(ok(await run(process.execPath, [built, 'sandbox', 'list', '--metadata', 'built=yes', '--json'])).stdout);
    assert.deepEqual(listed.map((x: any) => x.sandboxID), [s.sandboxId]);
    assert.match(ok(await run(process.execPath, [built, '--help'])).stdout, /^Usage: nestbox/);
    // exec speaks to envd itself; the files commands load the bundled e2b SDK. Each fails only for
    // want of a sandbox proxy.
    const exec = await run(process.execPath, [built, 'sandbox', 'exec', '--sandbox-url', 'http://127.0.0.1:9', s.sandboxId, '--', 'true']);
    assert.equal(exec.code, 1);
    assert.match(exec.stderr, /^error: cannot reach the sandbox proxy at http:\/\/127\.0\.0\.1:9/);
    const files = await run(process.execPath, [built, 'files', 'ls', '--sandbox-url', 'http://127.0.0.1:9', s.sandboxId, '/']);
    assert.equal(files.code, 1);
    assert.match(files.stderr, /^error: cannot reach the sandbox proxy at http:\/\/127\.0\.0\.1:9/);
    // Fresh: --if-stale (what setup runs) leaves it as it is.
    ok(await run(process.execPath, ['scripts/build-cli.mjs', '--if-stale']));
  });

  test('bin/nestbox gives the built CLI NODE_EXTRA_CA_CERTS only when it may connect with TLS', async () => {
    const root = path.join(import.meta.dirname, '..');
    await new Promise<void>((resolve, reject) => execFile(process.execPath, ['scripts/build-cli.mjs', '--if-stale'], { cwd: root }, (e) => (e ? reject(e) : resolve())));
    // Node warns as it starts when the file named there cannot be loaded: the sign it was given.
    const missing = path.join(controlDir, 'no-such-ca.pem');
    const warned = (r: Run) => r.stderr.includes(`Ignoring extra certs from \`${missing}\``);
    const plain = await nestbox(['sandbox', 'list', '--json'], { NODE_EXTRA_CA_CERTS: missing });
    ok(plain);
    assert.equal(warned(plain), false, `an http API: not given\n${plain.stderr}`);
    for (const [args, env] of [
      [['sandbox', 'list', '--api-url', 'https://127.0.0.1:9'], {}],
      [['sandbox', 'list', '--api-url=HTTPS://127.0.0.1:9'], {}],
      [['sandbox', 'list'], { E2B_API_URL: 'https://127.0.0.1:9' }],
      [['sandbox', 'exec', 'x', '--', 'true'], { E2B_SANDBOX_URL: 'https://127.0.0.1:9' }],
      [['sandbox', 'exec', 'x', '--', 'true'], { E2B_DOMAIN: 'sandboxes.example' }],
    ] as const) {
      const r = await nestbox([...args], { ...env, NODE_EXTRA_CA_CERTS: missing });
      assert.equal(warned(r), true, `${args.join(' ')} ${JSON.stringify(env)}: given\n${r.stderr}`);
    }
  });
});
