// A small runnable image for end-to-end tests: bash and a few coreutils with their libraries,
// copied from the `base` template (trusted, made by this host), plus the layered test content.
import { execFileSync } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { runtimeConfigFromEnv } from '../../src/runtime/config.ts';
import { templateRootfs } from '../../src/runtime/layout.ts';
import { gzip, tarOf, type LayerEntry } from './image-archive.ts';

const TOOLS = ['bash', 'id', 'ls', 'cat', 'env', 'stat', 'pwd', 'sleep'];

/** Layer 1: a root file system that runs bash, with users root and app (1000). */
export async function runtimeLayerEntries(): Promise<LayerEntry[]> {
  const base = templateRootfs(runtimeConfigFromEnv(), 'base');
  const entries: LayerEntry[] = [
    { name: 'usr/', type: 'directory' },
    { name: 'usr/bin/', type: 'directory' },
    { name: 'usr/lib/', type: 'directory' },
    { name: 'usr/lib/x86_64-linux-gnu/', type: 'directory' },
    { name: 'usr/lib64/', type: 'directory' },
    { name: 'bin', type: 'symlink', linkname: 'usr/bin' },
    { name: 'lib', type: 'symlink', linkname: 'usr/lib' },
    { name: 'lib64', type: 'symlink', linkname: 'usr/lib64' },
    { name: 'tmp/', type: 'directory', mode: 0o1777 },
    { name: 'root/', type: 'directory', mode: 0o700 },
    { name: 'etc/', type: 'directory' },
    { name: 'etc/passwd', content: 'root:x:0:0:root:/root:/bin/bash\napp:x:1000:1000:app:/home/app:/bin/bash\n' },
    { name: 'etc/group', content: 'root:x:0:\napp:x:1000:\n' },
    { name: 'home/', type: 'directory' },
    { name: 'home/app/', type: 'directory', uid: 1000, gid: 1000, mode: 0o750 },
  ];
  entries.push(...(await binariesWithLibraries(TOOLS)));
  return entries;
}

/** /usr/bin/<tool> for each tool, and the libraries they load, copied from `base`. */
async function binariesWithLibraries(tools: string[]): Promise<LayerEntry[]> {
  const base = templateRootfs(runtimeConfigFromEnv(), 'base');
  const out = execFileSync('chroot', [base, 'ldd', ...tools.map((t) => `/usr/bin/${t}`)], { encoding: 'utf8' });
  const libs = new Set<string>();
  for (const m of out.matchAll(/(\/[^\s:]+\.so[^\s:]*)/g)) libs.add(m[1]!);
  const entries: LayerEntry[] = [];
  for (const t of tools) entries.push({ name: `usr/bin/${t}`, content: await readFile(path.join(base, 'usr/bin', t)), mode: 0o755 });
  for (const lib of libs) {
    // /lib and /lib64 are links into /usr in the base template: store the real paths.
    const real = execFileSync('chroot', [base, 'readlink', '-f', lib], { encoding: 'utf8' }).trim();
    entries.push({ name: real.slice(1), content: await readFile(path.join(base, real)), mode: 0o755 });
    if (lib.startsWith('/lib64/')) entries.push({ name: `usr${lib}`, type: 'symlink', linkname: `../lib/x86_64-linux-gnu/${path.basename(real)}` });
    else if (path.basename(lib) !== path.basename(real)) {
      // libtinfo.so.6 -> libtinfo.so.6.3: the soname is a link beside the file.
      entries.push({ name: path.join(path.dirname(real), path.basename(lib)).slice(1), type: 'symlink', linkname: path.basename(real) });
    }
  }
  return entries;
}

/** Parts of Python's standard library no test here imports. */
const PYTHON_SKIPPED = new Set(['test', 'idlelib', 'tkinter', 'turtledemo', 'ensurepip', 'lib2to3', 'pydoc_data', 'site-packages', 'dist-packages', '__pycache__']);

/**
 * A layer with python3 (from `base`) and most of its standard library (enough for
 * `python3 -m http.server`), to put over runnableLayers().
 */
export async function pythonLayer(): Promise<Buffer> {
  const base = templateRootfs(runtimeConfigFromEnv(), 'base');
  const entries: LayerEntry[] = [...(await binariesWithLibraries(['python3.11'])), { name: 'usr/bin/python3', type: 'symlink', linkname: 'python3.11' }];
  const walk = async (rel: string) => {
    for (const d of await readdir(path.join(base, rel), { withFileTypes: true })) {
      if (PYTHON_SKIPPED.has(d.name) || d.name.startsWith('config-') || d.name.startsWith('_test')) continue;
      const child = `${rel}/${d.name}`;
      if (d.isDirectory()) {
        entries.push({ name: `${child}/`, type: 'directory' });
        await walk(child);
      } else if (d.isFile()) {
        entries.push({ name: child, content: await readFile(path.join(base, child)), mode: 0o644 });
      }
    }
  };
  entries.push({ name: 'usr/lib/python3.11/', type: 'directory' });
  await walk('usr/lib/python3.11');
  return tarOf(entries);
}

/** Three layers: the runtime (with lower files), whiteout + opaque + owned + setuid (gzip), then /srv/data. */
export async function runnableLayers(): Promise<Buffer[]> {
  const l1 = [
    ...(await runtimeLayerEntries()),
    { name: 'old/', type: 'directory' as const },
    { name: 'old/gone.txt', content: 'lower' },
    { name: 'old/kept.txt', content: 'kept' },
    { name: 'opq/', type: 'directory' as const },
    { name: 'opq/lower-a', content: 'a' },
    { name: 'opq/sub/', type: 'directory' as const },
    { name: 'opq/sub/lower-b', content: 'b' },
  ];
  const l2: LayerEntry[] = [
    { name: 'old/', type: 'directory' },
    { name: 'old/.wh.gone.txt' },
    { name: 'opq/', type: 'directory' },
    { name: 'opq/.wh..wh..opq' },
    { name: 'opq/upper', content: 'upper' },
    { name: 'home/', type: 'directory' },
    { name: 'home/app/', type: 'directory', uid: 1000, gid: 1000, mode: 0o750 },
    { name: 'home/app/owned', content: 'mine', uid: 1000, gid: 1000, mode: 0o640 },
    { name: 'usr/', type: 'directory' },
    { name: 'usr/bin/', type: 'directory' },
    { name: 'usr/bin/su-like', content: '#!/bin/sh\n', mode: 0o4755 },
  ];
  const l3: LayerEntry[] = [
    { name: 'srv/', type: 'directory' },
    { name: 'srv/data/', type: 'directory', uid: 1000, gid: 1000 },
    { name: 'srv/data/hello', content: 'hi', uid: 1000, gid: 1000 },
  ];
  return [await tarOf(l1), gzip(await tarOf(l2)), await tarOf(l3)];
}

export const RUNNABLE_CONFIG = {
  env: ['PATH=/usr/bin:/bin', 'GREETING=hello from the image'],
  user: 'app',
  workdir: '/srv/data',
  cmd: ['/bin/bash'],
};
