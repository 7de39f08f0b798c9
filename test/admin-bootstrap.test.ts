// The operator's first admin key: made by the first start of a control plane (NESTBOX_ADMIN_KEY, or
// generated), printed in the start banner once, kept in <control dir>/admin-key with mode 0600,
// and usable at once on the admin routes.
import { chmod, mkdtemp, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { upBanner } from '../src/cli/up-banner.ts';
import { adminKeyFilePath, controlDirFromEnv, readAdminKeyFile, writeAdminKeyFile } from '../src/control-plane/admin-key-file.ts';
import { ControlPlane, type ControlPlaneOptions, type StartedControlPlane } from '../src/control-plane/control-plane.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

async function tempDir(): Promise<string> {
  const d = await mkdtemp(path.join(tmpdir(), 'nestbox-admin-boot-'));
  dirs.push(d);
  return d;
}

/** Starts a control plane (no node, no proxy, no loops), runs `fn`, stops it. */
async function withStart<T>(opts: Partial<ControlPlaneOptions> & { dataDir: string }, fn: (s: StartedControlPlane) => Promise<T>): Promise<T> {
  const cp = new ControlPlane({ port: 0, proxyPort: null, loops: false, nodeClients: [], ...opts });
  try {
    return await fn(await cp.start());
  } finally {
    await cp.stop();
  }
}

const banner = (s: StartedControlPlane, dir: string) =>
  upBanner(s, { store: 'PGlite', agentUrl: 'http://127.0.0.1:3001', adminKeyFile: adminKeyFilePath(dir) }).join('\n');

async function adminGet(url: string, key: string) {
  return fetch(`${url}/nestbox/v1/admin/teams`, { headers: { 'x-api-key': key } });
}

test('the first start of an empty database makes an admin key, prints it once and keeps it in admin-key (0600)', async () => {
  const dir = await tempDir();
  const file = path.join(dir, 'admin-key');
  const key = await withStart({ dataDir: dir }, async (s) => {
    assert.match(s.createdAdminKey ?? '', /^nestbox_admin_[0-9a-f]{40}$/);
    assert.equal(s.adminKeyFile, file);
    assert.equal(s.adminKeyFileError, null);
    const printed = banner(s, dir);
    assert.match(printed, new RegExp(`^NESTBOX_ADMIN_KEY=${s.createdAdminKey}$`, 'm'));
    assert.ok(printed.includes(`kept in ${file}, readable by root only`));
    assert.match(printed, new RegExp(`^E2B_API_KEY=e2b_[0-9a-f]{40}$`, 'm'));
    assert.equal((await adminGet(s.url, s.createdAdminKey!)).status, 200, 'the key works at once');
    return s.createdAdminKey!;
  });
  assert.equal(await readFile(file, 'utf8'), `${key}\n`);
  assert.equal((await stat(file)).mode & 0o777, 0o600);
  assert.equal(readAdminKeyFile(file), key);

  // Later starts show no key, say where it is, and leave the file alone.
  await withStart({ dataDir: dir }, async (s) => {
    assert.equal(s.createdAdminKey, null);
    assert.equal(s.adminKeyFile, null);
    const printed = banner(s, dir);
    assert.doesNotMatch(printed, /nestbox_admin_[0-9a-f]/);
    assert.match(printed, new RegExp(`^# NESTBOX_ADMIN_KEY: printed at the first start; root finds it in ${file}`, 'm'));
    assert.equal((await adminGet(s.url, key)).status, 200);
  });
  assert.equal(await readFile(file, 'utf8'), `${key}\n`);
});

test('NESTBOX_ADMIN_KEY chooses the key; a malformed one stops the start with the reason', async () => {
  const chosen = `nestbox_admin_${'5a'.repeat(20)}`;
  const dir = await tempDir();
  await withStart({ dataDir: dir, bootstrapAdminKey: chosen }, async (s) => {
    assert.equal(s.createdAdminKey, chosen);
    assert.equal((await adminGet(s.url, chosen)).status, 200);
  });
  assert.equal(readAdminKeyFile(path.join(dir, 'admin-key')), chosen);
  // Given again: known, so nothing new to show.
  await withStart({ dataDir: dir, bootstrapAdminKey: chosen }, async (s) => assert.equal(s.createdAdminKey, null));

  const other = await tempDir();
  await assert.rejects(
    withStart({ dataDir: other, bootstrapAdminKey: 'e2b_' + 'a'.repeat(40) }, async () => undefined),
    /NESTBOX_ADMIN_KEY must be "nestbox_admin_" followed by 40 lower-case hexadecimal characters/,
  );
});

test('a key file that cannot be written: the start goes on, the key is still printed, the reason is reported', async () => {
  const dir = await tempDir();
  await withStart({ dataDir: dir, adminKeyFile: '/dev/null/admin-key' }, async (s) => {
    assert.match(s.createdAdminKey ?? '', /^nestbox_admin_/);
    assert.equal(s.adminKeyFile, null);
    assert.match(s.adminKeyFileError ?? '', /^cannot write the admin key to \/dev\/null\/admin-key: /);
    const printed = banner(s, dir);
    assert.ok(printed.includes(`NESTBOX_ADMIN_KEY=${s.createdAdminKey}`));
    assert.ok(!printed.includes('kept in'));
  });
  // adminKeyFile: null writes nothing.
  const quiet = await tempDir();
  await withStart({ dataDir: quiet, adminKeyFile: null }, async (s) => {
    assert.ok(s.createdAdminKey);
    assert.deepEqual([s.adminKeyFile, s.adminKeyFileError], [null, null]);
  });
  assert.equal(readAdminKeyFile(path.join(quiet, 'admin-key')), null);
});

test('writeAdminKeyFile replaces a stale file, 0600 whatever the umask; a symlink at the temporary name is not followed', async () => {
  const dir = await tempDir();
  const file = path.join(dir, 'control', 'admin-key');
  await writeAdminKeyFile(file, 'first'); // creates the directory
  await chmod(file, 0o644);
  const umask = process.umask(0);
  try {
    await writeAdminKeyFile(file, 'second');
  } finally {
    process.umask(umask);
  }
  assert.equal(await readFile(file, 'utf8'), 'second\n');
  assert.equal((await stat(file)).mode & 0o777, 0o600);
  assert.equal((await stat(path.dirname(file))).mode & 0o777, 0o700);

  const victim = path.join(dir, 'victim');
  await writeFile(victim, 'untouched');
  await symlink(victim, `${file}.${process.pid}.tmp`);
  await writeAdminKeyFile(file, 'third'); // the planted link is removed, not written through
  assert.equal(await readFile(victim, 'utf8'), 'untouched');
  assert.equal(await readFile(file, 'utf8'), 'third\n');
});

test('the control directory: NESTBOX_CONTROL_DIR, else $NESTBOX_HOME/control, else /var/lib/nestbox/control', () => {
  assert.equal(controlDirFromEnv({ NESTBOX_CONTROL_DIR: '/srv/c', NESTBOX_HOME: '/h' }), '/srv/c');
  assert.equal(controlDirFromEnv({ NESTBOX_HOME: '/h' }), '/h/control');
  assert.equal(controlDirFromEnv({}), '/var/lib/nestbox/control');
  assert.equal(adminKeyFilePath('/srv/c'), '/srv/c/admin-key');
});
