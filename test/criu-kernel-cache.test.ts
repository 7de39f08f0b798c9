// CRIU's kernel cache (src/runtime/criu-kernel-cache.ts): a node makes it when it is missing or
// older than this boot, also where /run is no tmpfs and past a leftover that keeps CRIU from
// saving it; a real CRIU then loads it instead of probing the kernel.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { run } from '../src/runtime/command.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { ensureCriuKernelCache } from '../src/runtime/criu-kernel-cache.ts';

const { criuBinDir } = runtimeConfigFromEnv();

test('a stale cache and the leftover that blocks CRIU are replaced; CRIU then loads the cache', async () => {
  const dir = await mkdtemp(path.join(tmpdir(), 'nestbox-kdat-'));
  try {
    // Made before this boot (an hour before it), with CRIU's own leftover beside it.
    const uptimeS = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]);
    const beforeBoot = new Date(Date.now() - uptimeS * 1000 - 3600_000);
    await writeFile('/run/criu.kdat', 'from another boot');
    await utimes('/run/criu.kdat', beforeBoot, beforeBoot);
    await writeFile('/run/criu.kdat.tmp', '');
    assert.equal(await ensureCriuKernelCache(criuBinDir, dir), 'made');
    await assert.rejects(stat('/run/criu.kdat.tmp'), 'the leftover is gone');
    const made = await stat('/run/criu.kdat');
    assert.ok(made.size > 100 && made.mtimeMs > Date.now() - 60_000, 'a fresh cache');
    assert.equal(await ensureCriuKernelCache(criuBinDir, dir), 'kept', 'a fresh cache is kept');

    const log = path.join(dir, 'check.log');
    await run([path.join(criuBinDir, 'criu'), 'check', '-v4', '-o', log], { allowFailure: true });
    assert.match(await readFile(log, 'utf8'), /Loaded kdat cache from \/run\/criu\.kdat/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
