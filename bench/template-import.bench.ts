// Import throughput of an image of about 100 MB: the importer alone (archive file -> template),
// and the same through the agent's HTTP route (streamed body). Prints MB/s of archive bytes.
//   node --import tsx bench/template-import.bench.ts [sizeMB]
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import Fastify from 'fastify';
import { registerTemplateRoutes } from '../src/agent/templates.ts';
import { runtimeConfigFromEnv } from '../src/runtime/config.ts';
import type { SandboxRuntime } from '../src/runtime/sandbox-runtime.ts';
import { TemplateStore } from '../src/runtime/templates.ts';
import { dockerSaveArchive, gzip, ociLayoutArchive, tarOf, type LayerEntry } from '../test/helpers/image-archive.ts';

const totalMB = Number(process.argv[2] ?? 100);

/** Layers like a real image's: many small files, a gzip layer, a few large files. */
async function layers(): Promise<Buffer[]> {
  const smallCount = Math.round((totalMB * 0.4 * 1e6) / 20_000);
  const small: LayerEntry[] = [{ name: 'usr/', type: 'directory' }, { name: 'usr/lib/', type: 'directory' }];
  for (let d = 0; d < 50; d++) small.push({ name: `usr/lib/d${d}/`, type: 'directory' });
  for (let i = 0; i < smallCount; i++) small.push({ name: `usr/lib/d${i % 50}/f${i}.so`, content: randomBytes(20_000), mode: 0o755 });
  // Half text-like (compressible), half random, gzip-compressed.
  const mid: LayerEntry[] = [{ name: 'opt/', type: 'directory' }];
  const midFiles = Math.round((totalMB * 0.3 * 1e6) / 1e6);
  for (let i = 0; i < midFiles; i++) {
    const body = i % 2 ? randomBytes(1e6) : Buffer.from('lorem ipsum dolor sit amet '.repeat(37_000).slice(0, 1e6));
    mid.push({ name: `opt/blob${i}`, content: body });
  }
  const big: LayerEntry[] = [{ name: 'data/', type: 'directory', uid: 1000, gid: 1000 }];
  const bigFiles = Math.max(1, Math.round((totalMB * 0.3) / 10));
  for (let i = 0; i < bigFiles; i++) big.push({ name: `data/big${i}`, content: randomBytes(10e6), uid: 1000, gid: 1000 });
  return [await tarOf(small), gzip(await tarOf(mid)), await tarOf(big)];
}

async function main() {
  const work = await mkdtemp(path.join(process.env.NESTBOX_BENCH_DIR ?? os.tmpdir(), 'nestbox-import-bench-'));
  try {
    const ls = await layers();
    const docker = path.join(work, 'docker.tar');
    const oci = path.join(work, 'oci.tar');
    await writeFile(docker, await dockerSaveArchive({ layers: ls, env: ['A=1'], user: '1000' }));
    await writeFile(oci, await ociLayoutArchive({ layers: ls }));
    const cfg = { ...runtimeConfigFromEnv(), templatesDir: path.join(work, 'templates') };
    const store = new TemplateStore(cfg);
    const rows: Array<{ case: string; archiveMB: number; medianS: number; medianMBps: number; bestMBps: number }> = [];
    const REPS = Number(process.env.BENCH_REPS ?? 3);
    // Each case runs REPS times (the machine is shared: the median and the best say more than one run).
    const measure = async (name: string, file: string, run: (rep: number) => Promise<unknown>) => {
      const size = (await stat(file)).size;
      const times: number[] = [];
      for (let rep = 0; rep < REPS; rep++) {
        const t0 = process.hrtime.bigint();
        await run(rep);
        times.push(Number(process.hrtime.bigint() - t0) / 1e9);
      }
      times.sort((x, y) => x - y);
      const median = times[Math.floor(times.length / 2)]!;
      rows.push({
        case: name, archiveMB: +(size / 1e6).toFixed(1), medianS: +median.toFixed(2),
        medianMBps: +(size / 1e6 / median).toFixed(1), bestMBps: +(size / 1e6 / times[0]!).toFixed(1),
      });
    };
    // The floor: reading the archive and writing it once as one file (cp), same disk.
    await measure('cp of the archive (disk floor)', docker, async () => {
      const { copyFile } = await import('node:fs/promises');
      await copyFile(docker, path.join(work, 'copy.tar'));
      await rm(path.join(work, 'copy.tar'));
    });
    // The floor of extraction: GNU tar unpacking the same layers (no checks, no spooling).
    const { execFileSync } = await import('node:child_process');
    const { mkdir } = await import('node:fs/promises');
    const layerFiles: string[] = [];
    for (const [i, l] of ls.entries()) {
      layerFiles.push(path.join(work, `layer${i}.tar`));
      await writeFile(layerFiles[i]!, l);
    }
    await measure('GNU tar -x of the layers (floor)', docker, async () => {
      const dest = path.join(work, 'tar-floor');
      await mkdir(dest, { recursive: true });
      for (const f of layerFiles) execFileSync('tar', ['-xf', f, '-C', dest, '--numeric-owner']);
      await rm(dest, { recursive: true, force: true });
    });
    await measure('importer, docker save', docker, (rep) => store.import(`bench-docker${rep}`, createReadStream(docker)));
    await measure('importer, OCI layout', oci, (rep) => store.import(`bench-oci${rep}`, createReadStream(oci)));

    const runtime = { cfg, inventory: async () => [], snapshots: async () => [] } as unknown as SandboxRuntime;
    const app = Fastify();
    app.addContentTypeParser('application/octet-stream', (_r, payload, done) => done(null, payload));
    registerTemplateRoutes(app, { runtime });
    await app.listen({ host: '127.0.0.1', port: 0 });
    const url = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    await measure('agent HTTP route, docker save', docker, async (rep) => {
      const res = await fetch(`${url}/v1/templates?name=bench-http${rep}`, {
        method: 'POST', headers: { 'content-type': 'application/octet-stream' },
        body: Readable.toWeb(createReadStream(docker)) as unknown as BodyInit, duplex: 'half',
      } as RequestInit);
      const text = await res.text();
      if (!text.includes('"type":"done"')) throw new Error(text.slice(-500));
    });
    await app.close();

    console.log(`template import, image of ~${totalMB} MB (${ls.length} layers; layer 2 gzip)`);
    console.table(rows);
    console.log(JSON.stringify({ bench: 'template-import', rows }));
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

await main();
