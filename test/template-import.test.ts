// The image importer on its own (no containers): layers, whiteouts, opaque directories,
// ownership, metadata, and hostile archives refused with nothing left behind.
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { lstat, mkdtemp, readdir, readFile, readlink, rm, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { TemplateStore, templateProcessDefaults } from '../src/runtime/templates.ts';
import { runtimeConfigFromEnv, type RuntimeConfig } from '../src/runtime/config.ts';
import { dockerSaveArchive, gzip, ociLayoutArchive, tarOf } from './helpers/image-archive.ts';
import { sampleLayers, SAMPLE_CONFIG } from './helpers/sample-image.ts';

let dir: string;
let cfg: RuntimeConfig;
let store: TemplateStore;
const SHIFT = 100000;

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'nestbox-templates-'));
  cfg = { ...runtimeConfigFromEnv(), templatesDir: dir };
  store = new TemplateStore(cfg);
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

const fromBuffer = (b: Buffer) => Readable.from([b]);

describe('template import', () => {
  test('docker save archive: layers in order, whiteouts, opaque directories, ownership, modes, links, metadata', async () => {
    const events: string[] = [];
    const archive = await dockerSaveArchive({ layers: await sampleLayers(), ...SAMPLE_CONFIG });
    const info = await store.import('dock', fromBuffer(archive), { onEvent: (e) => events.push(e.type) });
    const root = path.join(dir, 'dock', 'rootfs');
    assert.equal(existsSync(path.join(root, 'old/gone.txt')), false, 'whiteout removed the lower file');
    assert.equal(await readFile(path.join(root, 'old/kept.txt'), 'utf8'), 'kept');
    assert.deepEqual((await readdir(path.join(root, 'opq'))).sort(), ['upper'], 'opaque dir hides the lower contents');
    const owned = await stat(path.join(root, 'home/app/owned'));
    assert.equal(owned.uid, SHIFT + 1000);
    assert.equal(owned.gid, SHIFT + 1000);
    assert.equal(owned.mode & 0o7777, 0o640);
    const suid = await stat(path.join(root, 'usr/bin/su-like'));
    assert.equal(suid.mode & 0o7777, 0o4755, 'setuid kept');
    assert.equal(suid.uid, SHIFT);
    assert.equal((await stat(path.join(root, 'usr/bin/alias'))).ino, suid.ino, 'hard link within the image');
    assert.equal(await readlink(path.join(root, 'bin')), 'usr/bin');
    assert.equal(await readlink(path.join(root, 'usr/bin/python3')), '/usr/bin/python3.11', 'an absolute link is kept as it is');
    assert.equal(await readlink(path.join(root, 'usr/bin/sh-link')), '../../bin/su-like', 'a relative link that stays inside is kept');
    assert.equal((await lstat(path.join(root, 'home/app'))).mode & 0o7777, 0o750);
    assert.equal((await stat(root)).uid, SHIFT);
    assert.equal(info.meta?.user, 'app');
    assert.equal(info.meta?.workdir, '/srv/data');
    assert.equal(info.meta?.env.GREETING, 'hello from the image');
    assert.deepEqual(info.meta?.cmd, ['/bin/sh']);
    assert.equal(info.meta?.layers, 3);
    assert.ok(events.includes('received') && events.includes('layer_done'));
    const meta = JSON.parse(await readFile(path.join(dir, 'dock', 'template.json'), 'utf8'));
    assert.equal(meta.source, 'docker');
    const d = await templateProcessDefaults(cfg, 'dock');
    assert.deepEqual(d, { env: { PATH: '/usr/local/bin:/usr/bin:/bin', GREETING: 'hello from the image' }, cwd: '/srv/data', user: 'app' });
    assert.deepEqual((await store.list()).map((t) => t.name), ['dock']);
    assert.equal(await leftovers(), 0);
  });

  test('OCI layout tarball (gzip layers, digests checked)', async () => {
    const archive = await ociLayoutArchive({ layers: (await sampleLayers()).map((l) => (l[0] === 0x1f ? l : gzip(l))), ...SAMPLE_CONFIG, user: '1000:1000' });
    const info = await store.import('oci', fromBuffer(archive));
    const root = path.join(dir, 'oci', 'rootfs');
    assert.equal(info.meta?.source, 'oci');
    assert.equal(existsSync(path.join(root, 'old/gone.txt')), false);
    assert.deepEqual(await readdir(path.join(root, 'opq')), ['upper']);
    assert.equal((await stat(path.join(root, 'srv/data'))).uid, SHIFT + 1000);
    assert.equal((await templateProcessDefaults(cfg, 'oci')).user, '1000');
  });

  test('an entry over a link replaces the link, never writes through it', async () => {
    await rm('/tmp/nestbox-link-target', { recursive: true, force: true });
    const archive = await dockerSaveArchive({
      layers: [
        await tarOf([{ name: 'f', type: 'symlink', linkname: '/tmp/nestbox-link-target' }, { name: 'd', type: 'symlink', linkname: '/tmp' }]),
        await tarOf([{ name: 'f', content: 'inside' }, { name: 'd/', type: 'directory' }, { name: 'd/x', content: 'x' }]),
      ],
    });
    await store.import('relink', fromBuffer(archive));
    const root = path.join(dir, 'relink', 'rootfs');
    assert.equal(await readFile(path.join(root, 'f'), 'utf8'), 'inside');
    assert.ok((await lstat(path.join(root, 'd'))).isDirectory());
    assert.equal(await readFile(path.join(root, 'd/x'), 'utf8'), 'x');
    assert.equal(existsSync('/tmp/nestbox-link-target'), false);
    assert.equal(existsSync('/tmp/x'), false);
    await store.delete('relink', async () => []);
  });

  test('a name that exists, or base, is refused before anything is read', async () => {
    await assert.rejects(store.import('dock', fromBuffer(Buffer.alloc(0))), /already exists/);
    await assert.rejects(store.import('base', fromBuffer(Buffer.alloc(0))), /built in/);
    await assert.rejects(store.import('../x', fromBuffer(Buffer.alloc(0))), /invalid template name/);
  });

  test('two imports of one name at once: one wins, the other is refused, nothing left over', async () => {
    const archive = await dockerSaveArchive({ layers: await sampleLayers(), ...SAMPLE_CONFIG });
    const results = await Promise.allSettled([store.import('twice', fromBuffer(archive)), store.import('twice', fromBuffer(archive))]);
    assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
    assert.match(String((results.find((r) => r.status === 'rejected') as PromiseRejectedResult).reason), /being imported/);
    assert.equal(await leftovers(), 0);
    await store.delete('twice', async () => []);
  });

  test('delete: refused while in use, then removed', async () => {
    await assert.rejects(store.delete('oci', async () => ['abc']), /in use by 1 sandbox/);
    await store.delete('oci', async () => []);
    assert.equal(existsSync(path.join(dir, 'oci')), false);
    await assert.rejects(store.delete('oci', async () => []), /not on this node/);
    await assert.rejects(store.delete('base', async () => []), /built in/);
  });

  test('staging left by a dead agent is removed; a live one is not', async () => {
    const { mkdir, writeFile } = await import('node:fs/promises');
    const dead = path.join(dir, '.import-x-dead');
    const live = path.join(dir, '.import-y-live');
    // A fetch from the snapshot store cut short by the agent's death.
    const deadFetch = path.join(dir, '.fetch-z-0badcafe');
    for (const [d, pid] of [[dead, 2 ** 22 + 1], [live, process.pid], [deadFetch, 2 ** 22 + 1]] as const) {
      await mkdir(path.join(d, 'rootfs'), { recursive: true });
      await writeFile(path.join(d, '.nestbox-owner.json'), JSON.stringify({ host: os.hostname(), pid }));
    }
    assert.deepEqual((await store.removeAbandoned()).sort(), ['.fetch-z-0badcafe', '.import-x-dead']);
    assert.equal(existsSync(dead), false);
    assert.equal(existsSync(deadFetch), false);
    assert.equal(existsSync(live), true);
    await rm(live, { recursive: true });
  });

  describe('hostile archives are refused, naming the entry, with nothing left behind', () => {
    const hostile = async (name: string, layers: Buffer[], pattern: RegExp, archiveOpts: { omitLayer?: number } = {}) => {
      const archive = await dockerSaveArchive({ layers }, archiveOpts);
      await assert.rejects(store.import(name, fromBuffer(archive)), (e: Error) => {
        assert.match(e.message, pattern);
        return true;
      });
      assert.equal(existsSync(path.join(dir, name)), false, 'no template under the name');
      assert.equal(await leftovers(), 0, 'no staging directory left');
    };

    test('../ path', async () => {
      await hostile('h1', [await tarOf([{ name: '../../../../tmp/nestbox-pwned-dotdot', content: 'x' }])], /entry "..\/..\/..\/..\/tmp\/nestbox-pwned-dotdot": ".." in its path/);
      assert.equal(existsSync('/tmp/nestbox-pwned-dotdot'), false);
    });

    test('absolute path', async () => {
      await hostile('h2', [await tarOf([{ name: '/tmp/nestbox-pwned-abs', content: 'x' }])], /entry "\/tmp\/nestbox-pwned-abs": absolute path/);
      assert.equal(existsSync('/tmp/nestbox-pwned-abs'), false);
    });

    test('a symlink to /tmp, then a file written through it (same layer and next layer)', async () => {
      await rm('/tmp/pwned', { force: true });
      await hostile('h3', [await tarOf([{ name: 'evil', type: 'symlink', linkname: '/tmp' }, { name: 'evil/pwned', content: 'x' }])],
        /entry "evil\/pwned": "evil" is a symbolic link/);
      await hostile('h3b', [await tarOf([{ name: 'evil', type: 'symlink', linkname: '/tmp' }]), await tarOf([{ name: 'evil/pwned', content: 'x' }])],
        /layer 2 .*entry "evil\/pwned": "evil" is a symbolic link/);
      // A directory replaced by a link in a later layer.
      await hostile('h3c', [await tarOf([{ name: 'd/', type: 'directory' }]), await tarOf([{ name: 'd', type: 'symlink', linkname: '/tmp' }, { name: 'd/pwned', content: 'x' }])],
        /layer 2 .*entry "d\/pwned": "d" is a symbolic link/);
      assert.equal(existsSync('/tmp/pwned'), false);
    });

    test('a symbolic link whose relative target climbs above the root', async () => {
      await hostile('h12', [await tarOf([{ name: 'a/', type: 'directory' }, { name: 'a/b', type: 'symlink', linkname: '../../../etc/shadow' }])],
        /entry "a\/b": symbolic link to "..\/..\/..\/etc\/shadow" points out of the image/);
      // At the root, one ".." is already out; climbing out and back in is out on the way.
      await hostile('h12b', [await tarOf([{ name: 'up', type: 'symlink', linkname: '../etc' }])], /entry "up": symbolic link to "..\/etc" points out/);
      await hostile('h12c', [await tarOf([{ name: 'a/', type: 'directory' }, { name: 'a/b', type: 'symlink', linkname: 'x/../../../a' }])], /entry "a\/b": symbolic link .* points out/);
      // In a later layer, after good ones: the whole import goes.
      await hostile('h12d', [await tarOf([{ name: 'ok', content: 'x' }]), await tarOf([{ name: 'usr/lib/', type: 'directory' }, { name: 'usr/lib/l', type: 'symlink', linkname: './../../../tmp' }])],
        /layer 2 .*entry "usr\/lib\/l": symbolic link to ".\/..\/..\/..\/tmp" points out/);
    });

    test('a hard link to /etc/shadow, or to a file not extracted yet', async () => {
      const before = await stat('/etc/shadow');
      await hostile('h4', [await tarOf([{ name: 'shadow', type: 'link', linkname: '/etc/shadow' }])], /entry "shadow": hard link to "\/etc\/shadow", outside the image/);
      await hostile('h4b', [await tarOf([{ name: 'shadow', type: 'link', linkname: '../../../../etc/shadow' }])], /outside the image/);
      await hostile('h4c', [await tarOf([{ name: 'a', type: 'link', linkname: 'later' }, { name: 'later', content: 'x' }])], /not in the image \(yet\)/);
      await hostile('h4d', [await tarOf([{ name: 'l', type: 'symlink', linkname: '/etc' }, { name: 'shadow', type: 'link', linkname: 'l/shadow' }])], /"l" is a symbolic link/);
      const afterSt = await stat('/etc/shadow');
      assert.equal(afterSt.nlink, before.nlink, '/etc/shadow got no new link');
      assert.equal(afterSt.mtimeMs, before.mtimeMs);
    });

    test('a whiteout or an opaque marker through a link never removes anything outside', async () => {
      const { mkdtemp, writeFile } = await import('node:fs/promises');
      const outside = await mkdtemp(path.join(os.tmpdir(), 'nestbox-canary-'));
      await writeFile(path.join(outside, 'canary'), 'alive');
      try {
        await hostile('h10', [await tarOf([{ name: 'l', type: 'symlink', linkname: outside }, { name: 'l/.wh.canary' }])], /entry "l\/.wh.canary": "l" is a symbolic link/);
        await hostile('h10b', [await tarOf([{ name: 'l', type: 'symlink', linkname: outside }]), await tarOf([{ name: 'l/.wh..wh..opq' }])], /entry "l\/.wh..wh..opq": "l" is a symbolic link/);
        assert.equal(await readFile(path.join(outside, 'canary'), 'utf8'), 'alive');
      } finally {
        await rm(outside, { recursive: true, force: true });
      }
    });

    test('a whiteout or an opaque marker over a link removes the link, not what it points at', async () => {
      const { mkdtemp, writeFile } = await import('node:fs/promises');
      const outside = await mkdtemp(path.join(os.tmpdir(), 'nestbox-canary-'));
      await writeFile(path.join(outside, 'canary'), 'alive');
      try {
        const archive = await dockerSaveArchive({
          layers: [
            await tarOf([{ name: 'f', type: 'symlink', linkname: path.join(outside, 'canary') }, { name: 'd/', type: 'directory' }, { name: 'd/l', type: 'symlink', linkname: outside }]),
            await tarOf([{ name: '.wh.f' }, { name: 'd/', type: 'directory' }, { name: 'd/.wh..wh..opq' }]),
          ],
        });
        await store.import('wlinks', fromBuffer(archive));
        const root = path.join(dir, 'wlinks', 'rootfs');
        assert.equal(existsSync(path.join(root, 'f')), false);
        assert.deepEqual(await readdir(path.join(root, 'd')), []);
        assert.deepEqual(await readdir(outside), ['canary']);
        assert.equal(await readFile(path.join(outside, 'canary'), 'utf8'), 'alive');
        await store.delete('wlinks', async () => []);
      } finally {
        await rm(outside, { recursive: true, force: true });
      }
    });

    test('a decompression bomb, or an archive, past the import limits', async () => {
      const small = new TemplateStore(cfg, { archiveBytes: 2_000_000, imageBytes: 10_000_000, entries: 1000 });
      const bomb = gzip(await tarOf([{ name: 'zeros', content: Buffer.alloc(50_000_000) }]));
      assert.ok(bomb.length < 1_000_000);
      await assert.rejects(small.import('h11', fromBuffer(await dockerSaveArchive({ layers: [bomb] }))), /entry "zeros": the image is larger than the import limit allows/);
      const many = await tarOf(Array.from({ length: 1001 }, (_, i) => ({ name: `f${i}` })));
      await assert.rejects(small.import('h11b', fromBuffer(await dockerSaveArchive({ layers: [many] }))), /entry "f1000": the image has more entries than the import limit allows/);
      const big = await dockerSaveArchive({ layers: [await tarOf([{ name: 'r', content: randomBytes(3_000_000) }])] });
      await assert.rejects(small.import('h11c', fromBuffer(big)), /the archive is larger than the import limit \(2 MB\)/);
      assert.equal(await leftovers(), 0);
      assert.deepEqual((await readdir(dir)).filter((n) => n.startsWith('h11')), []);
    });

    test('device nodes and FIFOs', async () => {
      await hostile('h5', [await tarOf([{ name: 'dev/', type: 'directory' }, { name: 'dev/mem', type: 'character-device' }])], /entry "dev\/mem": device nodes are not allowed/);
      await hostile('h5b', [await tarOf([{ name: 'sda', type: 'block-device' }])], /device nodes are not allowed/);
      await hostile('h5c', [await tarOf([{ name: 'pipe', type: 'fifo' }])], /FIFOs are not allowed/);
    });

    test('owner ids outside the mapped range', async () => {
      await hostile('h6', [await tarOf([{ name: 'f', content: 'x', uid: 65536 }])], /entry "f": owner uid 65536 is outside/);
    });

    test('a truncated or corrupt gzip layer', async () => {
      const good = gzip(await tarOf([{ name: 'big', content: randomBytes(200_000) }]));
      await hostile('h7', [good.subarray(0, good.length - 100)], /layer 1 of 1 .* is not a valid gzip-compressed tar/);
      const corrupt = Buffer.from(good);
      corrupt.fill(0x55, 40, 400);
      await hostile('h7b', [corrupt], /layer 1 of 1 .* (is not a valid gzip-compressed tar|entry)/);
      await hostile('h7c', [Buffer.from('this is not a tar file at all, just text that goes on'.repeat(20))], /layer 1 of 1 .* is not a valid tar/);
    });

    test('a manifest naming a missing layer', async () => {
      await hostile('h8', [await tarOf([{ name: 'a', content: 'x' }]), await tarOf([{ name: 'b', content: 'y' }])], /layer 2 ".*layer\.tar" named by manifest\.json is missing/, { omitLayer: 1 });
    });

    test('not an image, and a truncated archive', async () => {
      await assert.rejects(store.import('h9', fromBuffer(await tarOf([{ name: 'hello', content: 'x' }]))), /not an image archive/);
      const archive = await dockerSaveArchive({ layers: [await tarOf([{ name: 'a', content: 'x'.repeat(10000) }])] });
      await assert.rejects(store.import('h9b', fromBuffer(archive.subarray(0, 5000))), /not a valid tar stream|not an image archive/);
      assert.equal(await leftovers(), 0);
    });
  });
});

async function leftovers() {
  return (await readdir(dir)).filter((n) => n.startsWith('.')).length;
}
