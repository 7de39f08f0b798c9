// Image import end to end on a real node agent: archives built here are imported through the
// agent's API, sandboxes started from them (real containers), and what runs inside is checked.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { chmod, mkdir, readdir, readFile, rm, symlink } from 'node:fs/promises';
import { newSandboxId } from '../src/core/ids.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createSandbox, exec, startTestAgent, TEST_ROOT, type TestAgent } from './helpers/agent-harness.ts';
import { dockerSaveArchive, ociLayoutArchive, tarOf } from './helpers/image-archive.ts';
import { pythonLayer, RUNNABLE_CONFIG, runnableLayers } from './helpers/runnable-image.ts';

let a: TestAgent;
let templatesDir: string;

before(async () => {
  templatesDir = path.join(TEST_ROOT, `templates-${randomBytes(4).toString('hex')}`);
  await mkdir(templatesDir, { recursive: true });
  await chmod(TEST_ROOT, 0o711);
  await chmod(templatesDir, 0o755); // the sandboxes' mapped root walks to <name>/rootfs
  // The agent's preflight wants `base`: the host's own, by a link.
  await symlink(path.join(runtimeConfigFromEnv().templatesDir, 'base'), path.join(templatesDir, 'base'));
  a = await startTestAgent({ config: { templatesDir } });
});
after(async () => {
  await a?.stop();
  await rm(templatesDir, { recursive: true, force: true });
});

/** POST /v1/templates with the archive as the body; the NDJSON lines it answered. */
async function importVia(name: string, archive: Buffer): Promise<any[]> {
  const res = await a.api('POST', `/v1/templates?name=${name}`, new Uint8Array(archive), { 'content-type': 'application/octet-stream' });
  const text = await res.text();
  if (!res.ok) return [{ type: 'error', status: res.status, ...JSON.parse(text) }];
  return text.split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

describe('imported templates run', () => {
  test('docker save: files, ownership, env, user and workdir inside a sandbox', async () => {
    const archive = await dockerSaveArchive({ layers: await runnableLayers(), ...RUNNABLE_CONFIG });
    const lines = await importVia('imgdock', archive);
    const done = lines.at(-1);
    assert.equal(done.type, 'done', JSON.stringify(done));
    assert.equal(done.template.meta.user, 'app');
    assert.ok(lines.some((l) => l.type === 'layer_done' && l.layer === 3));

    const id = await createSandbox(a, { template: 'imgdock' });
    // The image's defaults: user app (1000), working directory /srv/data, its env.
    const who = await exec(a, id, 'echo "$(id -un) $(id -u) $(pwd) $GREETING"');
    assert.equal(who.exitCode, 0, who.stderr);
    assert.equal(who.stdout.trim(), 'app 1000 /srv/data hello from the image');
    // The request's values win.
    const root = await exec(a, id, 'echo "$(id -u) $GREETING"', { user: 'root', env: { GREETING: 'mine' } });
    assert.equal(root.stdout.trim(), '0 mine');
    const cwd = await a.api('POST', `/v1/sandboxes/${id}/processes`, { argv: ['/bin/pwd'], cwd: '/tmp' }).then((r) => r.text());
    assert.match(cwd, /"exit"/);
    assert.ok(cwd.includes(Buffer.from('/tmp\n').toString('base64')), cwd);

    // Files: the whiteout removed the lower file, the opaque directory hides the lower contents.
    const files = await exec(a, id, 'ls /old; echo --; ls -A /opq; echo --; cat /srv/data/hello', { user: 'root' });
    assert.equal(files.stdout, 'kept.txt\n--\nupper\n--\nhi');
    // Ownership and modes as in the image, seen from inside.
    const own = await exec(a, id, 'stat -c "%u:%g %a %n" /home/app/owned /usr/bin/su-like /srv/data /', { user: 'root' });
    assert.equal(own.stdout, '1000:1000 640 /home/app/owned\n0:0 4755 /usr/bin/su-like\n1000:1000 755 /srv/data\n0:0 755 /\n');
    // The file owned by 1000 is app's: app reads it, and writes in its own directories.
    const mine = await exec(a, id, 'cat /home/app/owned && echo new > /srv/data/x && stat -c %U /srv/data/x');
    assert.equal(mine.stdout, 'mineapp\n', mine.stderr);

    // In use: not deleted. Killed: deleted.
    const refused = await a.api('DELETE', '/v1/templates/imgdock');
    assert.equal(refused.status, 409);
    assert.match((await refused.json()).message, /in use by 1 sandbox/);
    await a.json('DELETE', `/v1/sandboxes/${id}`);
    assert.equal((await a.api('DELETE', '/v1/templates/imgdock')).status, 204);
    assert.equal(existsSync(path.join(templatesDir, 'imgdock')), false);
  });

  test("--start: the image's entrypoint + cmd run as the template's start command (its user, workdir, env); without it, they do not run", async () => {
    // Exec form with an argument that has a space: the server's directory listing title shows it.
    const layers = [...(await runnableLayers()), await pythonLayer()];
    const image = { ...RUNNABLE_CONFIG, entrypoint: ['/usr/bin/python3', '-m', 'http.server'], cmd: ['8000', '--bind', '127.0.0.1'] };
    const archive = await dockerSaveArchive({ layers, ...image });
    const q = new URLSearchParams({ name: 'imgserve', start: 'true', readyCmd: ': > /dev/tcp/127.0.0.1/8000' });
    const res = await a.api('POST', `/v1/templates?${q}`, new Uint8Array(archive), { 'content-type': 'application/octet-stream' });
    const done = (await res.text()).trim().split('\n').map((l) => JSON.parse(l)).at(-1);
    assert.equal(done.type, 'done', JSON.stringify(done));
    assert.equal(done.template.meta.startCmd, '/usr/bin/python3 -m http.server 8000 --bind 127.0.0.1');

    const id = await createSandbox(a, { template: 'imgserve' });
    // The server answers at once (the ready command passed before the sandbox was handed out),
    // serving the image's workdir.
    const get = await exec(a, id, `exec 3<>/dev/tcp/127.0.0.1/8000 && printf 'GET /hello HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3`);
    assert.equal(get.exitCode, 0, get.stderr);
    assert.match(get.stdout, /^HTTP\/1\.0 200 OK/);
    assert.match(get.stdout, /\r\n\r\nhi$/);
    // It runs as the image's user, in its workdir, with its env (read by the same user: only
    // it, or a tracer, may read the process's environment).
    const server = await exec(a, id, [
      'for p in /proc/[0-9]*; do',
      '  mapfile -d "" argv < $p/cmdline 2>/dev/null || continue',
      '  [[ ${argv[0]} == /usr/bin/python3 && ${argv[2]} == http.server ]] || continue',
      '  mapfile -d "" envs < $p/environ',
      '  printf "%s %s " "$(stat -c %U $p)" "$(cd $p/cwd && pwd -P)"; printf "%s\\n" "${envs[@]}" | while read -r e; do [[ $e == GREETING=* ]] && echo "$e"; done',
      'done',
    ].join('\n'));
    assert.equal(server.stdout, 'app /srv/data GREETING=hello from the image\n', server.stderr);
    await a.json('DELETE', `/v1/sandboxes/${id}`);

    // The same image imported without --start: its command is recorded, not run.
    const plain = await importVia('imgserveplain', archive);
    assert.equal(plain.at(-1).type, 'done', JSON.stringify(plain.at(-1)));
    assert.equal(plain.at(-1).template.meta.startCmd, undefined);
    assert.deepEqual(plain.at(-1).template.meta.entrypoint, image.entrypoint);
    const idle = await createSandbox(a, { template: 'imgserveplain' });
    const refused = await exec(a, idle, ': > /dev/tcp/127.0.0.1/8000');
    assert.notEqual(refused.exitCode, 0, 'nothing listens on 8000');
    await a.json('DELETE', `/v1/sandboxes/${idle}`);
  });

  test('OCI layout tarball, numeric user', async () => {
    const archive = await ociLayoutArchive({ layers: await runnableLayers(), ...RUNNABLE_CONFIG, user: '1000:1000', workdir: '/home/app' });
    const lines = await importVia('imgoci', archive);
    assert.equal(lines.at(-1).type, 'done', JSON.stringify(lines.at(-1)));
    const list = await a.json('GET', '/v1/templates');
    assert.ok(list.templates.some((t: any) => t.name === 'imgoci' && t.meta.source === 'oci'));
    const id = await createSandbox(a, { template: 'imgoci' });
    const who = await exec(a, id, 'echo "$(id -un) $(pwd)"; ls -A /opq');
    assert.equal(who.stdout, 'app /home/app\nupper\n', who.stderr);
    await a.json('DELETE', `/v1/sandboxes/${id}`);
  });

  test("an image whose /proc is a link: no sandbox starts from it, and the boot id's bind lands nowhere", async () => {
    // The node binds the sandbox's boot id over <rootfs>/proc/sys/kernel/random/boot_id before
    // the container's root is entered: that path must never lead anywhere but the procfs runc
    // mounted there. runc refuses a /proc that is not a directory, so no bind is made at all.
    const layers = [...(await runnableLayers()), await tarOf([{ name: 'tmp/', type: 'directory' }, { name: 'tmp/sys/kernel/random/boot_id', content: 'bait\n' }, { name: 'proc', type: 'symlink', linkname: 'tmp' }])];
    const lines = await importVia('imgproc', await dockerSaveArchive({ layers, ...RUNNABLE_CONFIG }));
    if (lines.at(-1).type === 'done') {
      const res = await a.api('POST', '/v1/sandboxes', { sandboxId: newSandboxId(), template: 'imgproc', envVars: {}, metadata: {}, allowInternetAccess: false });
      const body = await res.text();
      assert.ok(res.status >= 400, `refused: ${res.status} ${body}`);
      assert.match(body, /proc/);
    } else {
      assert.equal(lines.at(-1).type, 'error', JSON.stringify(lines.at(-1)));
    }
    const mounts = await readFile('/proc/self/mountinfo', 'utf8');
    assert.deepEqual(mounts.split('\n').filter((l) => l.includes('kernel/random/boot_id')), [], 'no boot id bound anywhere in the host\'s mounts');
    assert.deepEqual((await a.json('GET', '/v1/sandboxes')).sandboxes.filter((s: any) => s.template === 'imgproc'), [], 'nothing left of it');
  });

  test('hostile archive through the API: refused with the entry named, nothing left, host untouched', async () => {
    await rm('/tmp/pwned', { force: true });
    const archive = await dockerSaveArchive({ layers: [await tarOf([{ name: 'evil', type: 'symlink', linkname: '/tmp' }, { name: 'evil/pwned', content: 'x' }])] });
    const lines = await importVia('imgevil', archive);
    const last = lines.at(-1);
    assert.equal(last.type, 'error');
    assert.equal(last.code, 'invalid');
    assert.match(last.message, /entry "evil\/pwned": "evil" is a symbolic link/);
    assert.equal(existsSync('/tmp/pwned'), false);
    assert.deepEqual((await readdir(templatesDir)).filter((n) => n.includes('imgevil')), []);
    // A name taken is refused before the body is read.
    await importVia('imgoci', await tarOf([{ name: 'x', content: 'y' }])).then((l) => assert.equal(l[0].status, 409));
  });
});

describe('imported templates reach the other nodes', () => {
  test('a node sharing only the snapshot directory starts a sandbox of a template imported on another', async () => {
    // Node b: its own data and templates directories (only base), a's snapshot directory.
    const own = path.join(TEST_ROOT, `templates-b-${randomBytes(4).toString('hex')}`);
    await mkdir(own, { recursive: true });
    await chmod(own, 0o755);
    await symlink(path.join(runtimeConfigFromEnv().templatesDir, 'base'), path.join(own, 'base'));
    const b = await startTestAgent({ snapshotDir: a.snapshotDir, config: { templatesDir: own } });
    try {
      const done = (await importVia('imgmoved', await dockerSaveArchive({ layers: await runnableLayers(), ...RUNNABLE_CONFIG }))).at(-1);
      assert.equal(done.type, 'done', JSON.stringify(done));
      assert.ok((await b.agent.runtime.templates.list()).includes('imgmoved'), 'b sees it in the store');
      assert.equal(existsSync(path.join(own, 'imgmoved')), false);

      const id = await createSandbox(b, { template: 'imgmoved' });
      const r = await exec(b, id, 'echo "$(id -un) $(pwd) $GREETING"; cat /srv/data/hello');
      assert.equal(r.exitCode, 0, r.stderr);
      assert.equal(r.stdout, 'app /srv/data hello from the image\nhi', 'fetched whole: its files, owners and defaults');
      assert.deepEqual((await readdir(own)).sort(), ['base', 'imgmoved'], 'no fetch staging left');
      await b.json('DELETE', `/v1/sandboxes/${id}`);

      assert.equal((await a.api('DELETE', '/v1/templates/imgmoved')).status, 204);
      assert.ok(!(await b.agent.runtime.templates.list()).includes('imgmoved'), 'a deleted template leaves the store');
    } finally {
      await b.stop();
      await rm(own, { recursive: true, force: true });
    }
  });
});
