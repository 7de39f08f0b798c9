// `make bench` (third part): what a user of the E2B SDKs waits for, end to end through the
// control plane, the sandbox proxy and the node, beside the physical limit measured in the
// same run: time to the first command (sequential, back to back, and 20 at once) beside raw
// `runc run -d` + `nsenter true`; the code interpreter's first result from its warm template beside a cold
// start of the same template; pause and resume through the object store beside the directory
// store (same workload); OCI import throughput beside tar; a drain of 10 sandboxes beside raw
// criu dump + restore; fork time per child (a 100 MiB process) beside raw criu restore.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, rm, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sandbox } from 'e2b';
import { Sandbox as CodeInterpreter } from '@e2b/code-interpreter';
import { ControlPlane } from '../src/control-plane/control-plane.ts';
import { run } from '../src/runtime/command.ts';
import { handOverImages } from '../src/runtime/criu-images.ts';
import { setCordoned } from '../src/store/nodes.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import { Runc } from '../src/runtime/runc.ts';
import { templateRootfs } from '../src/runtime/layout.ts';
import { COUNTER, createSandbox, exec, startTestAgent, TEST_ROOT } from '../test/helpers/agent-harness.ts';
import { dockerSaveArchive, tarOf, type LayerEntry } from '../test/helpers/image-archive.ts';
import { startS3Server } from '../test/helpers/s3-server.ts';
import { startStack } from '../test/helpers/stack.ts';
import { startLoad } from './load.ts';
import { cleanStaleRaw, rawContainer } from './raw-container.ts';
import { printTable, row, timed, type Row } from './stats.ts';

const N = Number(process.env.BENCH_N ?? 20);
const CONCURRENT = Number(process.env.BENCH_CONCURRENT ?? 20);
const N_CI = Number(process.env.BENCH_N_CI ?? 5);
const N_STORE = Number(process.env.BENCH_N_STORE ?? 5);
const N_IMPORT = Number(process.env.BENCH_N_IMPORT ?? 3);
const N_DRAIN = Number(process.env.BENCH_N_DRAIN ?? 5);
const N_FORK = Number(process.env.BENCH_N_FORK ?? 5);
const FORK_COUNT = 4;
/** BENCH_ONLY=drain,import: only those parts (first-command, code-interpreter, stores, import, drain, fork). */
const ONLY = process.env.BENCH_ONLY ? process.env.BENCH_ONLY.split(',') : null;
const opts = { requestTimeoutMs: 300_000 };

async function rawFirstCommand(runc: Runc): Promise<number[]> {
  const cfg = runtimeConfigFromEnv();
  const out: number[] = [];
  for (let i = 0; i < N; i++) {
    const id = `rawfirst${i}`;
    const c = await rawContainer(cfg, id, ['/bin/sleep', 'infinity']);
    const [ms] = await timed(async () => {
      await runc.runDetached(id, c.dir, path.join(c.dir, 'runc.log'));
      const pid = (await runc.state(id))!.pid;
      await run(['nsenter', '-t', String(pid), '-U', '-m', '-p', '-n', '-i', '-u', '--preserve-credentials', '/bin/true']);
    });
    out.push(ms);
    await c.cleanup(runc);
  }
  return out;
}

async function firstCommandRows(rows: Row[], raw: number[]) {
  const stack = await startStack('e2b_' + randomBytes(20).toString('hex'));
  try {
    const firstCommand = () => timed(async () => {
      const s = await Sandbox.create('base', opts);
      await s.commands.run('true');
      return s;
    });
    // As creates come to a node that had a moment since the last one: the node's pool of
    // containers made ahead is full.
    const apart: number[] = [];
    for (let i = 0; i < N; i++) {
      await stack.agent.agent.runtime.poolFilled();
      const [ms, sbx] = await firstCommand();
      apart.push(ms);
      await sbx.kill();
    }
    rows.push(row('SDK create + commands.run(true), sequential', apart, raw, 'runc run -d + nsenter true'));
    // Back to back, each right after the last one's kill: the pool is empty most of the time
    // (each sandbox takes longer to make ahead than this loop takes to use it) and its refills
    // compete with the creates.
    const seq: number[] = [];
    for (let i = 0; i < N; i++) {
      const [ms, sbx] = await firstCommand();
      seq.push(ms);
      await sbx.kill();
    }
    rows.push(row('SDK create + commands.run(true), back to back', seq, raw, 'runc run -d + nsenter true'));
    await stack.agent.agent.runtime.poolFilled();
    const [, burst] = await timed(() => Promise.all(Array.from({ length: CONCURRENT }, firstCommand)));
    rows.push(row(`SDK create + commands.run(true), ${CONCURRENT} at once`, burst.map(([ms]) => ms), raw, 'runc run -d + nsenter true'));
    await Promise.all(burst.map(([, s]) => s.kill()));
  } finally {
    await stack.stop();
  }
}

async function codeInterpreterRows(rows: Row[]) {
  if (!existsSync(templateRootfs(runtimeConfigFromEnv(), 'code-interpreter-v1'))) {
    console.log('# code-interpreter-v1 is not built (scripts/build-template.sh code-interpreter-v1): its rows are skipped');
    return;
  }
  const restores: number[] = [];
  const measure = async (warm: boolean) => {
    const stack = await startStack('e2b_' + randomBytes(20).toString('hex'), { agentConfig: { warmTemplates: warm } });
    // The physical limit of a warm start: runc restore (CRIU) of the capture's images, timed
    // inside the same creates.
    const runc = (stack.agent.agent.runtime as unknown as { runc: Runc }).runc;
    const restore = runc.restore.bind(runc);
    runc.restore = async (...args: Parameters<Runc['restore']>) => {
      const [ms] = await timed(() => restore(...args));
      restores.push(ms);
    };
    try {
      // The first create of a warm template captures it: not counted (one per node and version).
      if (warm) await (await CodeInterpreter.create(opts)).kill();
      restores.length = 0;
      const out: number[] = [];
      for (let i = 0; i < N_CI; i++) {
        const [ms, sbx] = await timed(async () => {
          const s = await CodeInterpreter.create(opts);
          const r = await s.runCode('1 + 1');
          if (r.text !== '2') throw new Error(`runCode answered ${JSON.stringify(r.text)}`);
          return s;
        });
        out.push(ms);
        await sbx.kill();
      }
      return out;
    } finally {
      await stack.stop();
    }
  };
  const warm = await measure(true);
  const raw = [...restores];
  const cold = await measure(false);
  rows.push(row('code interpreter: create -> first runCode, warm', warm, cold, 'same template started cold'));
  rows.push(row('code interpreter: create -> first runCode, warm', warm, raw, 'runc restore of its capture (criu)'));
}

/** Pause and resume of a 64 MiB process with 32 MiB of files, through each store. */
async function storeRows(rows: Row[]) {
  const s3 = await startS3Server();
  const workload = async (a: Awaited<ReturnType<typeof startTestAgent>>) => {
    const id = await createSandbox(a, { memoryMB: 512 });
    await exec(a, id, COUNTER);
    await exec(a, id, 'python3 -c "import os,time; x=bytearray(os.urandom(1<<20)*64); open(\'/tmp/ready\',\'w\').write(\'1\'); time.sleep(1e9)" >/dev/null 2>&1 & head -c 33554432 /dev/urandom > /home/user/files; while [ ! -e /tmp/ready ]; do sleep 0.1; done');
    return id;
  };
  const measure = async (config: Parameters<typeof startTestAgent>[0]) => {
    const a = await startTestAgent(config);
    try {
      const id = await workload(a);
      const pause: number[] = [];
      const resume: number[] = [];
      for (let i = 0; i < N_STORE; i++) {
        pause.push((await timed(() => a.json('POST', `/v1/sandboxes/${id}/pause`, { memory: true })))[0]);
        resume.push((await timed(() => a.json('POST', `/v1/sandboxes/${id}/resume`)))[0]);
      }
      await a.json('DELETE', `/v1/sandboxes/${id}`);
      return { pause, resume };
    } finally {
      await a.stop();
    }
  };
  try {
    const dir = await measure({});
    const obj = await measure({ config: { s3: s3.storeConfig(`nestbox-bench-${randomBytes(3).toString('hex')}`, 'snapshots/') } });
    rows.push(row('pause through the S3 store, 64 MiB + 32 MiB files', obj.pause, dir.pause, 'directory store'));
    rows.push(row('resume from the S3 store', obj.resume, dir.resume, 'directory store'));
  } finally {
    await s3.stop();
  }
}

/**
 * OCI import throughput: a docker-save archive of 4 layers x 32 MiB (files of 1 MiB) through the
 * agent's import, beside plain `tar -x` of the same layers into a scratch directory.
 */
async function importRows(rows: Row[]) {
  const layers: Buffer[] = [];
  for (let l = 0; l < 4; l++) {
    const entries: LayerEntry[] = [{ name: `data${l}/`, type: 'directory' }];
    for (let f = 0; f < 32; f++) entries.push({ name: `data${l}/f${f}`, content: randomBytes(1 << 20) });
    layers.push(await tarOf(entries));
  }
  const archive = await dockerSaveArchive({ layers });
  const mib = archive.length / (1 << 20);
  // Its own templates directory (imports land there), holding base as the agent requires.
  const scratch = path.join(TEST_ROOT, `import-bench-${randomBytes(3).toString('hex')}`);
  await mkdir(scratch, { recursive: true });
  await symlink(path.join(runtimeConfigFromEnv().templatesDir, 'base'), path.join(scratch, 'base'));
  const a = await startTestAgent({ config: { templatesDir: scratch } });
  try {
    const imports: number[] = [];
    const raw: number[] = [];
    for (let i = 0; i < N_IMPORT; i++) {
      const [ms] = await timed(async () => {
        const res = await a.api('POST', `/v1/templates?name=bench-import-${i}`, new Uint8Array(archive), { 'content-type': 'application/octet-stream' });
        const last = (await res.text()).trim().split('\n').at(-1)!;
        if (JSON.parse(last).type !== 'done') throw new Error(`import failed: ${last}`);
      });
      imports.push((mib / ms) * 1000);
      await a.api('DELETE', `/v1/templates/bench-import-${i}`);
      const dir = path.join(scratch, `.raw-${i}`);
      await mkdir(dir, { recursive: true });
      const files = await Promise.all(layers.map(async (layer, l) => {
        const f = path.join(scratch, `.layer-${i}-${l}.tar`);
        await writeFile(f, layer);
        return f;
      }));
      const [rms] = await timed(async () => {
        for (const f of files) await run(['tar', '-x', '-C', dir, '-f', f]);
      });
      await Promise.all(files.map((f) => rm(f, { force: true })));
      raw.push((mib / rms) * 1000);
      await rm(dir, { recursive: true, force: true });
    }
    // MiB/s, not ms: higher is better (the ratio is the share of tar's speed).
    rows.push({ ...row(`OCI import throughput, MiB/s (${mib.toFixed(0)} MiB archive)`, imports, raw, 'tar -x of the same layers, MiB/s'), unit: 'MiB/s' } as Row);
  } finally {
    await a.stop();
    await rm(scratch, { recursive: true, force: true });
  }
}

/**
 * A drain: 10 running sandboxes (each a counting process) moved from one node to the other with
 * their memory (pause there, resume here), timed per moved sandbox, beside raw `criu dump` +
 * `criu restore` (runc checkpoint + restore) of the same workload in a raw container.
 */
async function drainRows(rows: Row[], runc: Runc) {
  const cfg = runtimeConfigFromEnv();
  const raw: number[] = [];
  const id = 'rawdrain';
  const c = await rawContainer(cfg, id, ['/usr/bin/python3', '-c', 'import time\ni=0\nwhile True:\n  i+=1\n  time.sleep(0.05)']);
  try {
    await runc.runDetached(id, c.dir, path.join(c.dir, 'runc.log'));
    for (let i = 0; i < N_DRAIN; i++) {
      const images = path.join(c.dir, `images${i}`);
      await mkdir(images, { mode: 0o700 });
      const [ms] = await timed(async () => {
        await runc.checkpoint(id, images, path.join(c.dir, 'criu'), path.join(c.dir, 'runc.log'));
        await runc.destroy(id);
        await handOverImages(images, cfg.uidShift);
        await runc.restore(id, c.dir, images, path.join(c.dir, 'criu'), path.join(c.dir, 'runc.log'));
      });
      raw.push(ms);
      await rm(images, { recursive: true, force: true });
    }
  } finally {
    await c.cleanup(runc);
  }

  const shared = path.join(TEST_ROOT, `drain-bench-${randomBytes(3).toString('hex')}`);
  const [a, b] = [await startTestAgent({ snapshotDir: shared }), await startTestAgent({ snapshotDir: shared })];
  const dir = path.join(TEST_ROOT, `drain-bench-cp-${randomBytes(3).toString('hex')}`);
  const apiKey = 'e2b_' + randomBytes(20).toString('hex');
  const cp = new ControlPlane({
    dataDir: dir, port: 0, proxyPort: null, bootstrapApiKey: apiKey, adminKeyFile: null,
    nodes: [{ id: 'a', url: a.url, token: a.agent.nodeToken }, { id: 'b', url: b.url, token: b.agent.nodeToken }],
    timings: { drainWatchMs: 100 },
  });
  const started = await cp.start();
  const api = async (method: string, p: string, body?: unknown) => {
    const res = await fetch(started.url + p, {
      method, headers: { 'x-api-key': apiKey, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  };
  try {
    // Everything starts on node a (b is drained meanwhile).
    await setCordoned(cp.db, 'b', true);
    const ids: string[] = [];
    while (ids.length < 10) {
      const s = await api('POST', '/v2/sandboxes', { templateID: 'base', timeout: 600 });
      // Until the drainer has seen b drained, a start may still land there: not one of ours.
      if ((await api('GET', `/sandboxes/${s.sandboxID}`)).nodeId !== 'a') {
        await api('DELETE', `/sandboxes/${s.sandboxID}`);
        continue;
      }
      await exec(a, s.sandboxID, COUNTER);
      ids.push(s.sandboxID);
    }
    await setCordoned(cp.db, 'b', false);
    const [total] = await timed(async () => {
      await setCordoned(cp.db, 'a', true);
      await waitFor(async () => {
        const rows = await Promise.all(ids.map((id) => api('GET', `/sandboxes/${id}`)));
        return rows.every((r) => r.state === 'running' && r.nodeId === 'b');
      }, 300_000, async () => JSON.stringify(await Promise.all(ids.map((id) => api('GET', `/sandboxes/${id}`).then((r) => [r.state, r.nodeId], (e) => String(e))))));
    });
    rows.push(row('drain: 10 running sandboxes moved, per sandbox', [total / ids.length], raw, 'criu dump + restore, same workload'));
    for (const id of ids) await api('DELETE', `/sandboxes/${id}`);
  } finally {
    await cp.stop();
    await a.stop();
    await b.stop();
    await rm(dir, { recursive: true, force: true });
    await rm(shared, { recursive: true, force: true });
  }
}

const WORKLOAD_100M = 'import os,time\nx=bytearray(os.urandom(1<<20)*100)\nopen("/tmp/ready","w").write("1")\nwhile True: time.sleep(1)';

/**
 * Fork time per child: a sandbox running a 100 MiB process forked with
 * `POST /sandboxes/{id}/fork {count: 4}` through the control plane, the wall time of the call
 * (every child running) divided by the count, one sample per round; beside raw `criu restore`
 * (runc restore) of the same workload in a raw container, measured in the same run. The children
 * of one fork are restored side by side, so a child's share can be below one raw restore.
 */
async function forkRows(rows: Row[], runc: Runc) {
  const cfg = runtimeConfigFromEnv();
  const rawRestore: number[] = [];
  const rawId = 'rawfork';
  const c = await rawContainer(cfg, rawId, ['/usr/bin/python3', '-c', WORKLOAD_100M]);
  try {
    await runc.runDetached(rawId, c.dir, path.join(c.dir, 'runc.log'));
    await waitFor(async () => existsSync(path.join(c.dir, 'upper', 'tmp', 'ready')), 60_000);
    for (let i = 0; i < N_FORK; i++) {
      const images = path.join(c.dir, `images${i}`);
      await mkdir(images, { mode: 0o700 });
      await runc.checkpoint(rawId, images, path.join(c.dir, 'criu'), path.join(c.dir, 'runc.log'));
      await runc.destroy(rawId);
      await handOverImages(images, cfg.uidShift);
      rawRestore.push((await timed(() => runc.restore(rawId, c.dir, images, path.join(c.dir, 'criu'), path.join(c.dir, 'runc.log'))))[0]);
      await rm(images, { recursive: true, force: true });
    }
  } finally {
    await c.cleanup(runc);
  }

  const stack = await startStack('e2b_' + randomBytes(20).toString('hex'));
  const api = async (method: string, p: string, body?: unknown) => {
    const res = await fetch(stack.apiUrl + p, {
      method, headers: { 'x-api-key': stack.key, ...(body ? { 'content-type': 'application/json' } : {}) }, body: body ? JSON.stringify(body) : undefined,
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${p}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : undefined;
  };
  try {
    const parent = await Sandbox.create('base', { ...opts, timeoutMs: 600_000 });
    await parent.commands.run(`python3 -c '${WORKLOAD_100M}'`, { background: true });
    await waitFor(() => parent.files.exists('/tmp/ready'), 60_000);
    const perChild: number[] = [];
    for (let i = 0; i < N_FORK; i++) {
      const [ms, results] = await timed(() => api('POST', `/sandboxes/${parent.sandboxId}/fork`, { count: FORK_COUNT, timeout: 600 }) as Promise<{ sandbox?: { sandboxID: string }; error?: unknown }[]>);
      const failed = results.filter((r) => !r.sandbox);
      for (const r of results) if (r.sandbox) await api('DELETE', `/sandboxes/${r.sandbox.sandboxID}`);
      if (failed.length) throw new Error(`fork: ${failed.length} of ${FORK_COUNT} children failed: ${JSON.stringify(failed[0])}`);
      perChild.push(ms / FORK_COUNT);
    }
    await parent.kill();
    rows.push(row(`fork {count: ${FORK_COUNT}}, 100 MiB process, per child`, perChild, rawRestore, 'runc restore (criu restore), same workload'));
  } finally {
    await stack.stop();
  }
}

async function waitFor(ok: () => Promise<boolean>, deadlineMs = 300_000, what = () => Promise.resolve('')) {
  const end = Date.now() + deadlineMs;
  while (!(await ok().catch(() => false))) {
    if (Date.now() > end) throw new Error(`the condition did not hold in time ${await what()}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

async function main() {
  const load = startLoad();
  const rows: Row[] = [];
  const runc = new Runc(path.join(TEST_ROOT, 'raw-runc-sdk'), runtimeConfigFromEnv().criuBinDir);
  await cleanStaleRaw(runc);
  const want = (name: string) => ONLY === null || ONLY.includes(name);
  if (want('first-command')) await firstCommandRows(rows, await rawFirstCommand(runc));
  if (want('code-interpreter')) await codeInterpreterRows(rows);
  if (want('stores')) await storeRows(rows);
  if (want('import')) await importRows(rows);
  if (want('drain')) await drainRows(rows, runc);
  if (want('fork')) await forkRows(rows, runc);
  load.stop();
  console.log(load.description);
  printTable(rows);
  const out = path.join(path.dirname(fileURLToPath(import.meta.url)), 'results-sdk.json');
  await writeFile(out, JSON.stringify(rows.map(({ name, p50_ms, p99_ms, limit_p50_ms }) => ({ name, p50_ms, p99_ms, limit_p50_ms })), null, 2));
  console.log(`\nwrote ${out}`);
}

await main();
