import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { criuErrors, withCriuLog } from '../src/runtime/criu-log.ts';

const LOG = [
  '(00.001157) Error (criu/util.c:1534): rlimit: Can\'t setup RLIMIT_NOFILE for self: Operation not permitted',
  '(00.010000) Restoring task 1',
  '(00.011977)      1: Error (criu/protobuf.c:72): Unexpected EOF on (empty-image)',
  '(00.013675) Error (criu/cr-restore.c:2331): Restoring FAILED.',
  '(00.014534) Error (criu/cgroup.c:2055): cg: cgroupd: recv req error: No such file or directory',
  '',
].join('\n');

test("CRIU's error lines, the first three, without their prefix (nor the one every restore logs)", () => {
  assert.deepEqual(criuErrors(LOG), [
    'Unexpected EOF on (empty-image)',
    'Restoring FAILED.',
    'cg: cgroupd: recv req error: No such file or directory',
  ]);
  assert.deepEqual(criuErrors('(00.1) all fine\n'), []);
  // A line may name what the sandbox chose, of any length: each is bounded.
  assert.equal(criuErrors(`(00.2) Error (criu/files.c:1): no such file ${'x'.repeat(10_000)}\n`)[0]!.length, 300);
});

test("a CRIU failure's error says what CRIU said and where its log is kept; any other error comes back as it was", async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'criu-log-'));
  try {
    const criuWork = path.join(dir, 'sandbox', 'criu-work');
    await (await import('node:fs/promises')).mkdir(criuWork, { recursive: true });
    await writeFile(path.join(criuWork, 'restore.log'), LOG);
    const o = { dataDir: dir, criuWork, sandboxId: 'aaaaaaaaaaaaaaaaaaaa', kind: 'restore' as const };
    const runcSaid = new Error(`criu failed: type RESTORE errno 0\nlog file: ${criuWork}/restore.log`);
    const e = (await withCriuLog(runcSaid, o)) as Error;
    assert.match(e.message, /^criu failed: type RESTORE errno 0; CRIU: Unexpected EOF on \(empty-image\) \/ Restoring FAILED\. \/ cg: .* \(its log: (\S+)\)$/);
    const kept = /its log: (\S+)\)$/.exec(e.message)![1]!;
    assert.ok(kept.startsWith(path.join(dir, 'logs', 'aaaaaaaaaaaaaaaaaaaa-restore-')));
    assert.equal(await readFile(kept, 'utf8'), LOG);
    const other = new Error('the disk could not be mounted');
    assert.equal(await withCriuLog(other, o), other, 'not CRIU: as it was');
    assert.equal(await withCriuLog(runcSaid, { ...o, criuWork: path.join(dir, 'none') }), runcSaid, 'no log: as it was');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
