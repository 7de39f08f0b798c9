// CRIU probes the kernel's features (~40 ms: test links, namespaces, nftables, ptrace) at the
// start of every dump and restore unless it finds its cache, /run/criu.kdat. It writes that cache
// only where /run is a tmpfs, so that a reboot (perhaps into another kernel) drops it; on a host
// whose /run is an ordinary directory, every pause and resume paid the probe. And a CRIU stopped
// while saving it leaves /run/criu.kdat.tmp behind, which keeps every later CRIU from saving it
// (it creates that file exclusively) until the next boot, on any host.
//
// So a node makes the cache itself when it is missing or older than this boot (or than CRIU):
// `criu check` in a mount namespace of its own whose /run is a tmpfs, copied out to the host's
// /run. A stale file is never used: made before this boot, it is made again.
import { copyFile, mkdtemp, readFile, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { run } from './command.ts';

const CACHE = '/run/criu.kdat';
const CRIU_TEMP = '/run/criu.kdat.tmp';

export type CriuCacheOutcome = 'kept' | 'made' | 'unavailable';

/** Makes CRIU's kernel cache when it is missing or stale; never throws (CRIU works without it). */
export async function ensureCriuKernelCache(criuBinDir: string, workDir: string): Promise<CriuCacheOutcome> {
  const criu = path.join(criuBinDir, 'criu');
  try {
    const [cache, criuFile, bootedAt] = await Promise.all([
      stat(CACHE).catch(() => null),
      stat(criu),
      bootTime(),
    ]);
    if (cache && cache.size > 0 && cache.mtimeMs > bootedAt && cache.mtimeMs > criuFile.mtimeMs) return 'kept';
    await rm(CRIU_TEMP, { force: true });
    const dir = await mkdtemp(path.join(workDir, '.criu-kdat-'));
    try {
      const made = path.join(dir, 'criu.kdat');
      // (unshare makes the new mount namespace's mounts private: the tmpfs stays in it)
      await run(['unshare', '--mount', '--propagation', 'private', 'sh', '-c',
        'mount -t tmpfs -o size=1m,mode=0755 nestbox-criu-run /run && "$1" check >/dev/null 2>&1; cp /run/criu.kdat "$2"',
        'sh', criu, made]);
      const next = `${CACHE}.nestbox-${process.pid}`;
      await copyFile(made, next);
      await rename(next, CACHE);
      return 'made';
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  } catch (e) {
    process.stderr.write(`nestbox: CRIU's kernel cache could not be made (${e instanceof Error ? e.message : String(e)}); CRIU probes the kernel at every dump and restore\n`);
    return 'unavailable';
  }
}

/** When this boot began (ms since the epoch), from the kernel's uptime. */
async function bootTime(): Promise<number> {
  const uptimeS = Number((await readFile('/proc/uptime', 'utf8')).split(' ')[0]);
  return Date.now() - uptimeS * 1000;
}
