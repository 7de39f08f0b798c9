// nestbox files ls | cp: list a sandbox directory, copy a file into or out of a sandbox, through
// its envd with the `e2b` SDK (streamed both ways, so a large file is never held in memory).
import { createReadStream, createWriteStream } from 'node:fs';
import { stat, unlink } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { Command } from 'commander';
import type { Sandbox } from 'e2b';
import { CliError } from '../api-client.ts';
import { intArg, printJson, printTable, println } from '../output.ts';
import { connectSandbox, envdAction, withEnvdOptions, type EnvdOptions } from './exec.ts';

interface FilesOptions extends EnvdOptions {
  user?: string;
}

/** `<sandboxId>:<path>` → {id, path}; anything else (a local path) → null. */
export function parseRemote(spec: string): { id: string; path: string } | null {
  const m = /^([A-Za-z0-9_-]+):(.*)$/s.exec(spec);
  return m ? { id: m[1]!, path: m[2]! } : null;
}

const userOpt = (o: FilesOptions) => (o.user ? { user: o.user } : {});

async function isRemoteDir(sbx: Sandbox, p: string, opts: FilesOptions): Promise<boolean> {
  try {
    return (await sbx.files.getInfo(p, userOpt(opts))).type === 'dir';
  } catch {
    return false; // not there (the write creates it), or the write reports the problem
  }
}

async function isLocalDir(p: string): Promise<boolean> {
  try {
    return (await stat(p)).isDirectory();
  } catch {
    return false;
  }
}

async function upload(local: string, remote: { id: string; path: string }, opts: FilesOptions) {
  let size: number;
  try {
    const st = await stat(local);
    if (!st.isFile()) throw new CliError(`${local} is not a regular file`);
    size = st.size;
  } catch (err) {
    if (err instanceof CliError) throw err;
    throw new CliError(`cannot read ${local}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const { ctx, sbx } = await connectSandbox(remote.id, opts);
  let target = remote.path;
  if (target === '' || target.endsWith('/') || (await isRemoteDir(sbx, target, opts))) {
    target = path.posix.join(target, path.basename(local));
  }
  const info = await ctx.progress(`Uploading ${local} to ${remote.id}:${target}`, () => {
    const body = Readable.toWeb(createReadStream(local)) as unknown as ReadableStream;
    return sbx.files.write(target, body, { ...userOpt(opts), requestTimeoutMs: 0 });
  });
  if (ctx.json) return printJson({ sandboxID: remote.id, path: info.path, bytes: size, direction: 'upload' });
  println(`Copied ${size} bytes to ${remote.id}:${info.path}.`);
}

async function download(remote: { id: string; path: string }, local: string, opts: FilesOptions) {
  if (remote.path === '') throw new CliError(`no path in "${remote.id}:": expected <sandboxId>:<path>`);
  const { ctx, sbx } = await connectSandbox(remote.id, opts);
  let target = local;
  if (target.endsWith('/') || (await isLocalDir(target))) target = path.join(target, path.posix.basename(remote.path));
  let bytes = 0;
  await ctx.progress(`Downloading ${remote.id}:${remote.path} to ${target}`, async () => {
    const stream = await sbx.files.read(remote.path, { ...userOpt(opts), format: 'stream' });
    const source = Readable.fromWeb(stream as unknown as WebReadableStream<Uint8Array>);
    source.on('data', (c: Uint8Array) => (bytes += c.byteLength));
    try {
      await pipeline(source, createWriteStream(target));
    } catch (err) {
      await unlink(target).catch(() => undefined); // no half-written file left behind
      throw err;
    }
  });
  if (ctx.json) return printJson({ sandboxID: remote.id, path: remote.path, local: target, bytes, direction: 'download' });
  println(`Copied ${bytes} bytes from ${remote.id}:${remote.path} to ${target}.`);
}

export function registerFilesCommands(program: Command) {
  const files = program.command('files').description('list and copy files in a sandbox');

  withEnvdOptions(
    files
      .command('ls')
      .description("list a directory in a sandbox (default: the user's home)")
      .argument('<id>', 'sandbox id')
      .argument('[path]', 'directory', '.')
      .option('--depth <n>', 'how many levels to list', intArg(1, 100), 1)
      .option('--user <user>', 'user whose view and permissions to use'),
  ).action(
    envdAction(async (id: string, dir: string, opts: FilesOptions & { depth: number }) => {
      const { ctx, sbx } = await connectSandbox(id, opts);
      // Relative paths resolve against the home directory; the answer may keep a "./" in them.
      const entries = (await sbx.files.list(dir, { ...userOpt(opts), depth: opts.depth })).map((e) => ({
        ...e,
        path: path.posix.normalize(e.path),
      }));
      if (ctx.json) return printJson(entries);
      if (entries.length === 0) return println('No entries.');
      printTable(
        ['TYPE', 'SIZE', opts.depth > 1 ? 'PATH' : 'NAME'],
        entries.map((e) => [
          e.type ?? '-',
          e.type === 'dir' ? '-' : e.size,
          (opts.depth > 1 ? e.path : e.name) + (e.symlinkTarget ? ` -> ${e.symlinkTarget}` : ''),
        ]),
      );
    }),
  );

  withEnvdOptions(
    files
      .command('cp')
      .description('copy a file into or out of a sandbox: exactly one of <src> and <dst> is <sandboxId>:<path>')
      .argument('<src>', 'local file, or <sandboxId>:<path>')
      .argument('<dst>', 'local file or directory, or <sandboxId>:<path> (a directory: keep the name)')
      .option('--user <user>', 'user who owns the written file / whose permissions apply'),
  ).action(
    envdAction(async (src: string, dst: string, opts: FilesOptions) => {
      const from = parseRemote(src);
      const to = parseRemote(dst);
      if ((from === null) === (to === null)) {
        throw new CliError('exactly one of <src> and <dst> must be <sandboxId>:<path> (e.g. nestbox files cp ./a.bin abc123:/tmp/a.bin)');
      }
      if (to) await upload(src, to, opts);
      else await download(from!, dst, opts);
    }),
  );
}
