// The whole chain: `nestbox template import` to the control plane, which streams the archive to
// a real node agent; then the unmodified `e2b` SDK starts a sandbox of that template (a real
// container) and runs commands and file calls in it, which get the image's defaults.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Sandbox } from 'e2b';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { startStack, type TestStack } from './helpers/stack.ts';
import { dockerSaveArchive } from './helpers/image-archive.ts';
import { RUNNABLE_CONFIG, runnableLayers } from './helpers/runnable-image.ts';

const KEY = 'e2b_' + 'b0a710'.repeat(6) + 'abcd';
const BIN = path.join(import.meta.dirname, '..', 'bin', 'nestbox');
const NAME = `e2e-${randomBytes(3).toString('hex')}`;
const opts = { requestTimeoutMs: 60_000 };

let stack: TestStack;
let work: string;

before(async () => {
  stack = await startStack(KEY);
  work = await mkdtemp(path.join(tmpdir(), 'nestbox-template-stack-'));
  await writeFile(path.join(work, 'image.tar'), await dockerSaveArchive({ layers: await runnableLayers(), ...RUNNABLE_CONFIG }));
});

after(async () => {
  await stack?.stop();
  // The agent used the host's templates directory: leave it as it was.
  await rm(path.join(runtimeConfigFromEnv().templatesDir, NAME), { recursive: true, force: true });
  if (work) await rm(work, { recursive: true, force: true });
});

function nestbox(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(BIN, args, { env: { ...process.env, E2B_API_URL: stack.apiUrl, E2B_API_KEY: KEY }, timeout: 120_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr }));
  });
}

describe('imported template through the control plane', () => {
  test('CLI import, SDK sandbox with the image defaults, delete refused while in use', async () => {
    const imp = await nestbox(['template', 'import', path.join(work, 'image.tar'), '--name', NAME]);
    assert.equal(imp.code, 0, imp.stderr);
    assert.match(imp.stdout, new RegExp(`^Imported template ${NAME}: 3 layers`));
    assert.match(imp.stderr, /layer 3\/3 applied/);

    const sbx = await Sandbox.create(NAME, { ...opts, timeoutMs: 120_000 });
    try {
      // No user given: the image's (app), in its WorkingDir, with its Env.
      const r = await sbx.commands.run('echo "$(id -un) $(pwd) $GREETING"');
      assert.equal(r.stdout.trim(), 'app /srv/data hello from the image');
      // The request's values win.
      const root = await sbx.commands.run('echo "$(id -u) $(pwd) $GREETING"', { user: 'root', cwd: '/tmp', envs: { GREETING: 'mine' } });
      assert.equal(root.stdout.trim(), '0 /tmp mine');
      // File calls default to the image's user too.
      assert.equal(await sbx.files.read('/srv/data/hello'), 'hi');
      await sbx.files.write('/srv/data/new.txt', 'written');
      const owner = await sbx.commands.run('stat -c %U /srv/data/new.txt; ls -A /opq; ls /old');
      assert.equal(owner.stdout, 'app\nupper\nkept.txt\n');

      const list = await nestbox(['template', 'list', '--json']);
      assert.ok(JSON.parse(list.stdout).some((t: any) => t.name === NAME && t.user === 'app'));
      const refused = await nestbox(['template', 'delete', NAME]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /in use by 1 sandbox.*\(HTTP 409\)/);
      // A named snapshot lies on the template too: it holds the template after the sandbox is gone.
      const snap = await sbx.createSnapshot(opts);
      await sbx.kill();
      const held = await nestbox(['template', 'delete', NAME]);
      assert.equal(held.code, 1);
      assert.match(held.stderr, new RegExp(`holds 1 snapshot \\(${snap.snapshotId}\\).*\\(HTTP 409\\)`));
      assert.equal(await Sandbox.deleteSnapshot(snap.snapshotId, opts), true);
    } finally {
      await sbx.kill();
    }
    const del = await nestbox(['template', 'delete', NAME]);
    assert.equal(del.code, 0, del.stderr);
    assert.equal(existsSync(path.join(runtimeConfigFromEnv().templatesDir, NAME)), false);
  });
});
