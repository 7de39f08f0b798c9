// An imported image's entrypoint + cmd as a start command: joined as docker joins them, and
// quoted so that bash, which runs start commands, gets back exactly the image's argv.
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { hasFileInRoot, imageStartCommand } from '../src/runtime/image-start.ts';

/** The argv bash runs for a command line (as a template's start command runs: bash -c). */
function argvOf(line: string): string[] {
  const out = execFileSync('/bin/bash', ['-c', `argv() { printf '%s\\0' "$@"; }; argv ${line}`], { encoding: 'utf8' });
  return out.split('\0').slice(0, -1);
}

describe('imageStartCommand', () => {
  test('exec form with spaces, quotes, $, globs and an "=" word: bash gets the same argv back', () => {
    const entrypoint = ['/usr/bin/python3', '-c', `import sys; print("it's", sys.argv[1:])`];
    const cmd = ['a b', `'quoted'`, '$HOME', '*', 'KEY=v', '', 'tab\tand\nnewline', '--port=8000'];
    const line = imageStartCommand({ entrypoint, cmd })!;
    assert.deepEqual(argvOf(line), [...entrypoint, ...cmd]);
    // Plain words stay readable.
    assert.ok(line.startsWith('/usr/bin/python3 -c '), line);
  });

  test('a first word with "=" is quoted, so bash runs it instead of taking it as an assignment', () => {
    const line = imageStartCommand({ entrypoint: null, cmd: ['A=1', 'echo'] })!;
    assert.equal(line, `'A=1' echo`);
  });

  test('shell form: the config holds ["/bin/sh", "-c", "..."], kept as one argument', () => {
    const line = imageStartCommand({ entrypoint: null, cmd: ['/bin/sh', '-c', 'python3 -m http.server 8000 --bind "$HOST"'] })!;
    assert.equal(line, `/bin/sh -c 'python3 -m http.server 8000 --bind "$HOST"'`);
    assert.deepEqual(argvOf(line), ['/bin/sh', '-c', 'python3 -m http.server 8000 --bind "$HOST"']);
  });

  test('entrypoint then cmd; either alone; neither is null', () => {
    assert.equal(imageStartCommand({ entrypoint: ['/entry.sh'], cmd: ['serve', '--fast'] }), '/entry.sh serve --fast');
    assert.equal(imageStartCommand({ entrypoint: ['/entry.sh'], cmd: null }), '/entry.sh');
    assert.equal(imageStartCommand({ entrypoint: null, cmd: ['python3', '-m', 'http.server'] }), 'python3 -m http.server');
    assert.equal(imageStartCommand({ entrypoint: [], cmd: [] }), null);
    assert.equal(imageStartCommand({ entrypoint: null, cmd: null }), null);
  });
});

describe('hasFileInRoot', () => {
  test("follows the image's links inside its root only", async () => {
    const root = await mkdtemp(path.join(os.tmpdir(), 'nestbox-image-start-'));
    const outside = await mkdtemp(path.join(os.tmpdir(), 'nestbox-outside-'));
    try {
      await mkdir(path.join(root, 'usr/bin'), { recursive: true });
      await writeFile(path.join(root, 'usr/bin/bash'), '');
      await symlink('usr/bin', path.join(root, 'bin'));
      assert.equal(await hasFileInRoot(root, '/bin/bash'), true);
      assert.equal(await hasFileInRoot(root, '/bin/sh'), false);
      assert.equal(await hasFileInRoot(root, '/usr/bin'), false, 'a directory is not a file');
      // An absolute link is the image's own path; ".." stops at the image's root.
      await writeFile(path.join(outside, 'sh'), '');
      await symlink(path.join(outside, 'sh'), path.join(root, 'usr/bin/abs'));
      await symlink(`../../../../../..${outside}/sh`, path.join(root, 'usr/bin/up'));
      assert.equal(await hasFileInRoot(root, '/bin/abs'), false);
      assert.equal(await hasFileInRoot(root, '/bin/up'), false);
      await symlink('/usr/bin/bash', path.join(root, 'usr/bin/sh'));
      assert.equal(await hasFileInRoot(root, '/bin/sh'), true);
      await symlink('loop', path.join(root, 'loop'));
      assert.equal(await hasFileInRoot(root, '/loop'), false);
    } finally {
      await rm(root, { recursive: true, force: true });
      await rm(outside, { recursive: true, force: true });
    }
  });
});
