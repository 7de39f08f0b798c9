#!/usr/bin/env node
// Builds the `nestbox` CLI into dist/cli/ (one ES module per lazily loaded part), so that a CLI
// call loads plain JavaScript instead of compiling the TypeScript sources through tsx.
//
//   node scripts/build-cli.mjs [--if-stale]
//
// The client commands and their packages (commander, the e2b SDK for exec/shell/files, ...) are
// bundled. The server side (`up`, `agent`, `server`) is not: it reads files next to its sources
// (migrations, hooks, package.json), so bin/nestbox runs those commands from the sources.
// --if-stale: do nothing when dist/cli/main.mjs is newer than every source and the lockfile.
import { readdirSync, renameSync, rmSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const outdir = path.join(repo, 'dist', 'cli');
const entry = path.join(repo, 'src', 'cli', 'main.ts');
const output = path.join(outdir, 'main.mjs');

// Modules of the server side, reached only from `up`, `agent` and `server` (see bin/nestbox).
const SERVER_SIDE = [/\/src\/cli\/up\.ts$/, /\/src\/cli\/server\.ts$/, /\/src\/agent\/agent\.ts$/];

function newestMtime(p) {
  const st = statSync(p);
  if (!st.isDirectory()) return st.mtimeMs;
  let newest = st.mtimeMs;
  for (const name of readdirSync(p)) newest = Math.max(newest, newestMtime(path.join(p, name)));
  return newest;
}

function isStale() {
  let built;
  try {
    built = statSync(output).mtimeMs;
  } catch {
    return true;
  }
  return newestMtime(path.join(repo, 'src')) > built || newestMtime(path.join(repo, 'package-lock.json')) > built;
}

if (process.argv.includes('--if-stale') && !isStale()) process.exit(0);

const esbuild = await import('esbuild');
const serverSide = {
  name: 'nestbox-server-side',
  setup(build) {
    build.onResolve({ filter: /\.ts$/ }, (args) => {
      const full = path.resolve(args.resolveDir, args.path);
      if (!SERVER_SIDE.some((re) => re.test(full))) return undefined;
      // Never loaded from the build: bin/nestbox sends these commands to the sources.
      return { path: path.relative(outdir, full), external: true };
    });
  },
};

const started = Date.now();
// Built aside, then swapped in: a CLI call running meanwhile never sees half a build, and no
// chunk of an earlier build is left behind.
const staging = `${outdir}.build-${process.pid}`;
rmSync(staging, { recursive: true, force: true });
await esbuild.build({
  entryPoints: { main: entry },
  outdir: staging,
  bundle: true,
  splitting: true,
  format: 'esm',
  platform: 'node',
  // ES modules where a package has both (the e2b SDK's CommonJS build loses its named exports here).
  mainFields: ['module', 'main'],
  target: 'node20',
  outExtension: { '.js': '.mjs' },
  chunkNames: 'chunks/[name]-[hash]',
  // Some bundled CommonJS packages call require() for Node's built-ins.
  banner: { js: "import { createRequire as __nestboxCreateRequire } from 'node:module'; const require = __nestboxCreateRequire(import.meta.url);" },
  plugins: [serverSide],
  logLevel: 'warning',
  legalComments: 'none',
});
const old = `${outdir}.old-${process.pid}`;
try {
  renameSync(outdir, old);
} catch (e) {
  if (e.code !== 'ENOENT') throw e;
}
renameSync(staging, outdir);
rmSync(old, { recursive: true, force: true });
process.stderr.write(`[nestbox] built the CLI into ${path.relative(repo, outdir)}/ in ${Date.now() - started} ms\n`);
