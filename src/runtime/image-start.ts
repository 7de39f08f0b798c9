// An imported image's entrypoint and cmd as a template's start command (`--start`): joined as
// docker joins them (the entrypoint, then the cmd as its arguments) and written as one bash
// command line, each word quoted, so the start command runs exactly the image's argv.
import { lstat, readlink } from 'node:fs/promises';
import path from 'node:path';

/** A word bash takes as it is (no "=", so a first word is never an assignment). */
const PLAIN_WORD = /^[A-Za-z0-9_\/.,:@%+-]+$/;

/** One argument quoted for bash: plain words stay, anything else goes in single quotes. */
export function shellQuote(arg: string): string {
  if (PLAIN_WORD.test(arg)) return arg;
  return `'${arg.replace(/'/g, `'\\''`)}'`;
}

/**
 * The bash command line that runs an image's entrypoint followed by its cmd (docker's rule; a
 * shell-form instruction is already ["/bin/sh", "-c", "..."] in the image's config), or null when
 * the image has neither.
 */
export function imageStartCommand(config: { entrypoint: string[] | null; cmd: string[] | null }): string | null {
  const argv = [...(config.entrypoint ?? []), ...(config.cmd ?? [])];
  if (argv.length === 0) return null;
  return argv.map(shellQuote).join(' ');
}

/**
 * Whether `file` (absolute, as the sandbox sees it) is a regular file in the image at `root`,
 * its links followed the way the sandbox would: absolute targets from the image's root, ".."
 * never above it. Nothing outside `root` is ever looked at.
 */
export async function hasFileInRoot(root: string, file: string): Promise<boolean> {
  let pending = file.split('/').filter((p) => p !== '' && p !== '.');
  const resolved: string[] = [];
  for (let hops = 0; pending.length > 0; ) {
    const part = pending.shift()!;
    if (part === '..') {
      resolved.pop();
      continue;
    }
    const st = await lstat(path.join(root, ...resolved, part)).catch(() => null);
    if (!st) return false;
    if (st.isSymbolicLink()) {
      if (++hops > 40) return false;
      const target = await readlink(path.join(root, ...resolved, part));
      if (target.startsWith('/')) resolved.length = 0;
      pending = [...target.split('/').filter((p) => p !== '' && p !== '.'), ...pending];
      continue;
    }
    resolved.push(part);
    if (pending.length > 0 && !st.isDirectory()) return false;
    if (pending.length === 0) return st.isFile();
  }
  return false;
}
