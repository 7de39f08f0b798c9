// The bind hook (sandbox-init's nestbox-bind-hook), run as runc runs it: in a mount namespace of
// the container's, one file of the node bound over one path; anything else is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';

const HOOK = runtimeConfigFromEnv().bindHook;

test('binds the source over the target inside its own mount namespace only', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'bind-hook-'));
  try {
    const source = path.join(dir, 'source');
    const target = path.join(dir, 'target');
    writeFileSync(source, 'the sandbox boot id\n');
    writeFileSync(target, 'the host boot id\n');
    // (unshare -m: a mount namespace of its own, as runc's container has; nothing leaks out)
    const r = spawnSync('unshare', ['-m', '--propagation', 'private', 'sh', '-c', `"$0" "$1" "$2" && cat "$2"`, HOOK, source, target], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, 'the sandbox boot id\n');
    assert.equal(readFileSync(target, 'utf8'), 'the host boot id\n', "the host's mount table is untouched");
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('refuses relative paths and a wrong argument count, saying how it is used', () => {
  for (const args of [[], ['/a'], ['a', '/b'], ['/a', 'b'], ['/a', '/b', '/c']]) {
    const r = spawnSync(HOOK, args, { encoding: 'utf8' });
    assert.equal(r.status, 1, args.join(' '));
    assert.match(r.stderr, /^bind hook: usage: nestbox-bind-hook SOURCE TARGET/);
  }
  const missing = spawnSync(HOOK, ['/nonexistent/source', '/nonexistent/target'], { encoding: 'utf8' });
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /binding \/nonexistent\/source over \/nonexistent\/target: No such file or directory/);
});
