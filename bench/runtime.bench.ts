// `make bench`: the node runtime measured beside the raw runc / CRIU limits, in the same run.
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { newNamedSnapshotId, newSandboxId } from '../src/core/ids.ts';
import { run } from '../src/runtime/command.ts';
import { handOverImages } from '../src/runtime/criu-images.ts';
import { Runc } from '../src/runtime/runc.ts';
import { sandboxPaths } from '../src/runtime/layout.ts';
import { InitClient } from '../src/runtime/init/client.ts';
import { createSandbox, exec, startTestAgent, TEST_ROOT } from '../test/helpers/agent-harness.ts';
import { cleanStaleRaw, rawContainer } from './raw-container.ts';
import { startLoad } from './load.ts';
import { printTable, row, timed, type Row } from './stats.ts';

const N = Number(process.env.BENCH_N ?? 20);
const N_SNAPSHOT = Number(process.env.BENCH_N_SNAPSHOT ?? 8);
const DENSITY = Number(process.env.BENCH_DENSITY ?? 200);
/** BENCH_ONLY=create,pause (any of create, exec, pause, snapshot, kill, density): those parts only; kill is timed with create. */
const ONLY = process.env.BENCH_ONLY?.split(',').map((s) => s.trim()).filter(Boolean) ?? null;
const part = (name: string) => !ONLY || ONLY.includes(name) || (name === 'create' && ONLY.includes('kill'));
const WORKLOAD_100M = 'import os,time\nx=bytearray(os.urandom(1<<20)*100)\nwhile True: time.sleep(1)';

/**
 * Host memory in use, page cache excluded: caches are dropped first (they come and go with
 * whatever else the host reads), then used = total - free - reclaimable slab. What stays
 * cached after the drop is in use (mapped files such as each sandbox's own init binary, tmpfs),
 * so it counts: subtracting it made the density's difference negative.
 */
async function hostUsedKiB() {
  await run(['sync']);
  await writeFile('/proc/sys/vm/drop_caches', '3').catch(() => undefined);
  const info = await readFile('/proc/meminfo', 'utf8');
  const get = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(info)![1]);
  return get('MemTotal') - get('MemFree') - get('SReclaimable');
}

async function main() {
  const load = startLoad();
  const a = await startTestAgent();
  const cfg = a.agent.runtime.cfg;
  const rawRuncRoot = path.join(TEST_ROOT, 'raw-runc');
  const runc = new Runc(rawRuncRoot, cfg.criuBinDir);
  await cleanStaleRaw(runc);
  const rows: Row[] = [];
  const extra: Record<string, number> = {};
  try {
    // --- create: request to first exec possible, beside raw `runc run -d` ----------------------
    const rawRun: number[] = [];
    const create: number[] = [];
    const kill: number[] = [];
    if (part('create')) {
      for (let i = 0; i < N; i++) {
        const id = `rawrun${i}`;
        const c = await rawContainer(a.agent.runtime.cfg, id, ['/.nestbox/init', '--socket', '/run/nestbox/init.sock']);
        const [ms] = await timed(() => runc.runDetached(id, c.dir, path.join(c.dir, 'runc.log')));
        rawRun.push(ms);
        await c.cleanup(runc);
      }
      // As creates come to a node that had a moment since the last one: the pool is full.
      for (let i = 0; i < N; i++) {
        await a.agent.runtime.poolFilled();
        const [ms, id] = await timed(() => createSandbox(a));
        create.push(ms);
        const [kms] = await timed(() => a.json('DELETE', `/v1/sandboxes/${id}`));
        kill.push(kms);
      }
      rows.push(row('create (request -> init answers)', create, rawRun, 'runc run -d'));
      // Back to back, each right after the last one's kill: the pool is empty most of the time
      // and its refills compete with the creates.
      const burst: number[] = [];
      for (let i = 0; i < N; i++) {
        const [ms, id] = await timed(() => createSandbox(a));
        burst.push(ms);
        await a.json('DELETE', `/v1/sandboxes/${id}`);
      }
      rows.push(row('create, back to back (pool drained)', burst, rawRun, 'runc run -d'));
    }

    // --- exec round trip of `true`, beside nsenter into the same sandbox ------------------------
    if (part('exec')) {
      const id = await createSandbox(a);
      const state = await a.agent.runtime.containerState(id);
      const pid = state!.pid;
      const rawExec: number[] = [];
      const apiExec: number[] = [];
      const socketExec: number[] = [];
      const client = new InitClient(sandboxPaths(cfg, id).socket, { socketOwner: cfg.uidShift });
      for (let i = 0; i < N * 2; i++) {
        rawExec.push((await timed(() => run(['nsenter', '-t', String(pid), '-U', '-m', '-p', '-n', '-i', '-u', '--preserve-credentials', '/bin/true'])))[0]);
        apiExec.push((await timed(() => exec(a, id, 'true').then(() => undefined)))[0]);
        socketExec.push((await timed(async () => {
          const s = await client.start({ argv: ['/bin/true'], env: {}, user: 'user', pty: null, stdin: false });
          for await (const _ of s) { /* drain */ }
          await s.exited;
        }))[0]);
    }
    client.closeAll();
    rows.push(row('exec `true` via agent API', apiExec, rawExec, 'nsenter true'));
    rows.push(row('exec `true` via init socket', socketExec, rawExec, 'nsenter true'));
    await a.json('DELETE', `/v1/sandboxes/${id}`);
    }

    // --- pause / resume with a 100 MiB process, beside runc checkpoint / restore (CRIU) ---------
    // Each of ours right after a raw one, in turns: the host's speed drifts over a run (the raw
    // limits moved by 20% between runs minutes apart), and a limit measured in one block before
    // the rows made their ratios swing with it.
    if (part('pause') || part('snapshot')) {
      const rawId = 'rawcriu';
      const raw = await rawContainer(a.agent.runtime.cfg, rawId, ['/usr/bin/python3', '-c', WORKLOAD_100M]);
      await runc.runDetached(rawId, raw.dir, path.join(raw.dir, 'runc.log'));
      const sid = await createSandbox(a, { memoryMB: 1024 });
      await a.api('POST', `/v1/sandboxes/${sid}/processes`, { argv: ['/usr/bin/python3', '-c', WORKLOAD_100M] }).then((r) => r.body?.cancel());
      await new Promise((r) => setTimeout(r, 1500));
      const rawDump: number[] = [];
      const rawDurableDump: number[] = []; // the dump, then its images on disk (a pause answers only then)
      const rawRestore: number[] = [];
      let cycle = 0;
      /** What the last operation left to do in the background (ours or raw) is over first. */
      const settle = async () => {
        await a.agent.runtime.idle();
        await new Promise((r) => setTimeout(r, 300));
      };
      /** One raw dump of the raw container and its restore, timed. */
      const rawDumpAndRestore = async () => {
        await settle();
        const images = path.join(raw.dir, `images${cycle++}`);
        await mkdir(images, { mode: 0o700 });
        const dumped = (await timed(() => runc.checkpoint(rawId, images, path.join(raw.dir, 'criu'), path.join(raw.dir, 'runc.log'))))[0];
        rawDump.push(dumped);
        rawDurableDump.push(dumped + (await timed(() => run(['sync', '-f', images])))[0]);
        await runc.destroy(rawId);
        await handOverImages(images, cfg.uidShift);
        rawRestore.push((await timed(() => runc.restore(rawId, raw.dir, images, path.join(raw.dir, 'criu'), path.join(raw.dir, 'runc.log'))))[0]);
        await rm(images, { recursive: true, force: true });
      };
      const pause: number[] = [];
      const resume: number[] = [];
      for (let i = 0; i < N_SNAPSHOT && part('pause'); i++) {
        await rawDumpAndRestore();
        await settle();
        pause.push((await timed(() => a.json('POST', `/v1/sandboxes/${sid}/pause`, { memory: true })))[0]);
        resume.push((await timed(() => a.json('POST', `/v1/sandboxes/${sid}/resume`)))[0]);
      }
      if (part('pause')) {
        rows.push(row('pause, 100 MiB process', pause, rawDump, 'runc checkpoint (criu dump)'));
        rows.push(row('pause, 100 MiB process (durable)', pause, rawDurableDump, 'criu dump + sync of its images'));
        rows.push(row('resume, 100 MiB process', resume, rawRestore, 'runc restore (criu restore)'));
      }
      const rss = await run(['sh', '-c', `grep VmRSS /proc/${(await runc.state(rawId))!.pid}/status`]);
      extra.raw_workload_rss_kib = Number(rss.stdout.replace(/\D+/g, ''));

      // --- live snapshot (the sandbox runs on) and a fork child from it, same workload ------------
      rawDump.length = 0;
      rawRestore.length = 0;
      const snapshot: number[] = [];
      const forkChild: number[] = [];
      for (let i = 0; i < N_SNAPSHOT && part('snapshot'); i++) {
        await rawDumpAndRestore();
        await settle();
        const snapshotId = newNamedSnapshotId();
        snapshot.push((await timed(() => a.json('POST', `/v1/sandboxes/${sid}/snapshots`, { snapshotId })))[0]);
        const child = newSandboxId();
        forkChild.push((await timed(() => a.json('POST', '/v1/sandboxes', {
          sandboxId: child, template: 'base', memoryMB: 1024, envVars: {}, metadata: {}, allowInternetAccess: false, fromSnapshot: snapshotId,
        })))[0]);
        await a.json('DELETE', `/v1/sandboxes/${child}`);
        await a.api('DELETE', `/v1/snapshots/${snapshotId}`);
      }
      if (part('snapshot')) {
        rows.push(row('snapshot (live), 100 MiB process', snapshot, rawDump, 'runc checkpoint (criu dump)'));
        rows.push(row('fork child from it, 100 MiB process', forkChild, rawRestore, 'runc restore (criu restore)'));
      }
      await raw.cleanup(runc);
      await a.json('DELETE', `/v1/sandboxes/${sid}`);
    }

    // --- kill, beside raw runc kill + delete -----------------------------------------------------
    const rawKill: number[] = [];
    for (let i = 0; i < N && part('kill'); i++) {
      const rid = `rawkill${i}`;
      const c = await rawContainer(a.agent.runtime.cfg, rid, ['/bin/sleep', 'infinity']);
      await runc.runDetached(rid, c.dir, path.join(c.dir, 'runc.log'));
      // runc's own way: kill, then delete (the runtime kills the init itself: see Runc.stop)
      rawKill.push((await timed(async () => {
        await run(['runc', '--root', rawRuncRoot, 'kill', rid, 'KILL']);
        await run(['runc', '--root', rawRuncRoot, 'delete', '--force', rid]);
      }))[0]);
      await c.cleanup(runc);
    }
    if (part('kill')) rows.push(row('kill (processes dead)', kill, rawKill, 'runc kill + delete'));

    // --- density: host memory per idle sandbox beyond its own processes --------------------------
    if (part('density')) {
      // What the parts above left is released first (a kill's trailing work, the kernel's
      // namespace cleanup): measured under way, it made the difference negative.
      await a.agent.runtime.idle();
      await new Promise((r) => setTimeout(r, 2000));
      const before = await hostUsedKiB();
      const ids: string[] = [];
      for (let i = 0; i < DENSITY; i++) ids.push(await createSandbox(a, { memoryMB: 64 }));
      await new Promise((r) => setTimeout(r, 2000));
      const afterKiB = await hostUsedKiB();
      let ownKiB = 0;
      for (const s of ids) ownKiB += (await a.agent.runtime.metrics(s)).memoryBytes / 1024;
      extra.density_sandboxes = ids.length;
      extra.density_host_kib_per_sandbox = Math.round((afterKiB - before) / ids.length);
      extra.density_own_kib_per_sandbox = Math.round(ownKiB / ids.length);
      extra.density_overhead_kib_per_sandbox = Math.round((afterKiB - before - ownKiB) / ids.length);
      for (const s of ids) await a.json('DELETE', `/v1/sandboxes/${s}`);
    }
  } finally {
    load.stop();
    await a.stop();
    await rm(path.join(TEST_ROOT, 'raw-runc'), { recursive: true, force: true });
  }

  console.log(load.description);
  printTable(rows);
  console.log('');
  for (const [k, v] of Object.entries(extra)) console.log(`${k}: ${v}`);
  const out = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results.json');
  const density = {
    name: 'density: host memory per idle sandbox beyond its processes (KiB, not ms)',
    p50_ms: extra.density_overhead_kib_per_sandbox ?? NaN,
    p99_ms: extra.density_overhead_kib_per_sandbox ?? NaN,
    limit_p50_ms: null,
  };
  await writeFile(out, JSON.stringify([...rows.map(({ name, p50_ms, p99_ms, limit_p50_ms }) => ({ name, p50_ms, p99_ms, limit_p50_ms })), density], null, 2));
  console.log(`\nwrote ${out}`);
}

await main();
