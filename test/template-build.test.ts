// Template builds without containers: the steps E2B's SDK sends, checked (pure), and the build
// records on PGlite and Postgres (one unfinished build per template, ordered logs, a build
// whose control plane stopped failed with a clear reason instead of building forever).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { baseOf, imageRefVariants, parseSteps, resolveIn } from '../src/control-plane/template-builds/steps.ts';
import { createTeam } from '../src/store/teams.ts';
import {
  appendBuildLog, beatTemplateBuild, buildLogs, createTemplateBuild, failStaleBuilds, finishTemplateBuild, getTemplateBuild,
  startTemplateBuild, STOPPED_RUNNER_REASON,
} from '../src/store/template-builds.ts';
import { forEachDatabase } from './helpers/databases.ts';

const HASH = 'a'.repeat(64);

test('steps: the SDK\'s RUN, COPY, ENV, WORKDIR and USER become what the runner does', () => {
  assert.deepEqual(
    parseSteps([
      { type: 'RUN', args: ['apt-get update && echo ok'] },
      { type: 'RUN', args: ['id', 'root'], force: false },
      { type: 'COPY', args: ['files', '/dest', '', ''], filesHash: HASH },
      { type: 'COPY', args: ['app/*.py', 'app/', 'user', '0755'], filesHash: HASH },
      { type: 'ENV', args: ['A', '1', 'B_2', 'two words'] },
      { type: 'WORKDIR', args: ['/work'] },
      { type: 'USER', args: ['user'] },
    ]),
    [
      { kind: 'run', command: 'apt-get update && echo ok', user: null },
      { kind: 'run', command: 'id', user: 'root' },
      { kind: 'copy', src: 'files', dest: '/dest', user: null, mode: null, filesHash: HASH },
      { kind: 'copy', src: 'app/*.py', dest: 'app/', user: 'user', mode: '0755', filesHash: HASH },
      { kind: 'env', vars: { A: '1', B_2: 'two words' } },
      { kind: 'workdir', path: '/work' },
      { kind: 'user', user: 'user' },
    ],
  );
});

test('steps: malformed ones are refused, naming the step', () => {
  const refused = (steps: any[], re: RegExp) => assert.throws(() => parseSteps(steps), (e: Error) => re.test(e.message));
  refused([{ type: 'RUN', args: [] }], /step 1 \(RUN\): needs a command/);
  refused([{ type: 'RUN', args: ['true'] }, { type: 'HEALTHCHECK', args: ['x'] }], /step 2 \(HEALTHCHECK\): unknown step type/);
  refused([{ type: 'COPY', args: ['a', '/b'] }], /needs the filesHash/);
  refused([{ type: 'COPY', args: ['../etc', '/b'], filesHash: HASH }], /inside the build context/);
  refused([{ type: 'COPY', args: ['/etc', '/b'], filesHash: HASH }], /inside the build context/);
  refused([{ type: 'COPY', args: ['a', '/b', '', 'rwx'], filesHash: HASH }], /not an octal file mode/);
  refused([{ type: 'ENV', args: ['A'] }], /name and value pairs/);
  refused([{ type: 'ENV', args: ['1A', 'x'] }], /not an environment variable name/);
  refused([{ type: 'USER', args: ['bad user'] }], /not a user name/);
  refused([{ type: 'RUN', args: ['true', 'a;b'] }], /not a user name/);
});

test('base: a template, the E2B base image, an image to be found among imports; registries refused', () => {
  assert.deepEqual(baseOf({ fromTemplate: 'base' }), { kind: 'template', name: 'base' });
  assert.deepEqual(baseOf({ fromImage: 'e2bdev/base' }), { kind: 'template', name: 'base' });
  assert.deepEqual(baseOf({ fromImage: 'e2bdev/base:latest' }), { kind: 'template', name: 'base' });
  assert.deepEqual(baseOf({ fromImage: 'python:3' }), { kind: 'image', ref: 'python:3' });
  assert.throws(() => baseOf({ fromImage: 'python:3', fromImageRegistry: { type: 'registry', username: 'u', password: 'p' } }), /pulls no images/);
  assert.throws(() => baseOf({}), /needs fromTemplate or fromImage/);
  assert.throws(() => baseOf({ fromTemplate: 'Bad/Name' }), /not a template name/);
  assert.ok(imageRefVariants('python').includes('python:latest'));
  assert.ok(imageRefVariants('python:3').includes('docker.io/library/python:3'));
  assert.ok(imageRefVariants('docker.io/library/alpine:3.20').includes('alpine:3.20'));
  assert.equal(resolveIn(null, 'app'), '/app');
  assert.equal(resolveIn('/work', 'app/'), '/work/app/');
  assert.equal(resolveIn('/work', '/abs'), '/abs');
});

forEachDatabase('template builds', (t) => {
  test('one unfinished build per template; logs in order from an offset; ready or error once', async () => {
    const db = await t.db();
    const team = await createTeam(db, { name: 'builders' });
    const other = await createTeam(db, { name: 'others' });
    const b = await createTemplateBuild(db, { teamId: team.id, templateName: 'tpl-a', cpuCount: 2, memoryMB: 1024 });
    assert.equal(b.status, 'waiting');
    // The same team asking again supersedes its waiting build; another team is refused the name.
    const b2 = await createTemplateBuild(db, { teamId: team.id, templateName: 'tpl-a', cpuCount: null, memoryMB: null });
    assert.equal((await getTemplateBuild(db, team.id, b.id))!.status, 'error');
    await assert.rejects(createTemplateBuild(db, { teamId: other.id, templateName: 'tpl-a', cpuCount: null, memoryMB: null }), /being built already/);
    assert.equal(await getTemplateBuild(db, other.id, b2.id), null, "another team's build is not found");

    assert.ok(await startTemplateBuild(db, b2.id, { steps: [] }));
    assert.equal(await startTemplateBuild(db, b2.id, { steps: [] }), false, 'started once');
    for (const m of ['one', 'two', 'three']) await appendBuildLog(db, b2.id, { level: 'info', step: '1', message: m });
    assert.deepEqual((await buildLogs(db, b2.id, 1, 10)).map((l) => [l.n, l.message]), [[1, 'two'], [2, 'three']]);
    assert.ok(await finishTemplateBuild(db, b2.id, { status: 'error', reason: 'step 1 exited with code 1', step: '1' }));
    assert.equal(await finishTemplateBuild(db, b2.id, { status: 'ready' }), false, 'finished once');
    const done = (await getTemplateBuild(db, team.id, b2.id))!;
    assert.deepEqual([done.status, done.reason, done.reasonStep], ['error', 'step 1 exited with code 1', '1']);
    // Finished: the name may be built again.
    await createTemplateBuild(db, { teamId: other.id, templateName: 'tpl-a', cpuCount: null, memoryMB: null });
  });

  test('a build whose runner stopped beating is failed with the reason, not left building', async () => {
    const db = await t.db();
    const team = await createTeam(db, { name: 'restarts' });
    const b = await createTemplateBuild(db, { teamId: team.id, templateName: 'tpl-restart', cpuCount: null, memoryMB: null });
    await startTemplateBuild(db, b.id, { steps: [] });
    assert.ok(await beatTemplateBuild(db, b.id, 'abcdefghij0123456789'));
    assert.deepEqual(await failStaleBuilds(db), [], 'a beating build is alive');
    await db.query(`UPDATE template_builds SET heartbeat_at = now() - interval '5 minutes' WHERE id = $1`, [b.id]);
    const failed = await failStaleBuilds(db);
    assert.deepEqual(failed.map((x) => [x.id, x.sandboxId]), [[b.id, 'abcdefghij0123456789']], 'its sandbox is named for the kill');
    const row = (await getTemplateBuild(db, team.id, b.id))!;
    assert.deepEqual([row.status, row.reason], ['error', STOPPED_RUNNER_REASON]);
    assert.equal(await beatTemplateBuild(db, b.id), false, 'its runner, if alive after all, learns it is no longer building');
  });
});
