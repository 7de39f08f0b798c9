// An agent killed with SIGKILL leaves its pool behind: sandbox directories mounted and, in them,
// containers made ahead (created, not started) with their address claims (an agent that starts
// again empties its pool; see src/runtime/root-pool.ts). A test that removes such an agent's
// directory for good removes those first, and only those: any other mount left under it is a
// leak and still makes the removal fail.
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from '../../src/runtime/command.ts';
import { runtimeConfigFromEnv } from '../../src/runtime/config.ts';
import { NetworkManager } from '../../src/runtime/network.ts';
import { Runc } from '../../src/runtime/runc.ts';

export async function unmountPoolLeftovers(base: string): Promise<void> {
  await removePoolContainers(base);
  const table = await readFile('/proc/self/mountinfo', 'utf8');
  const targets = table.split('\n').map((l) => l.split(' ')[4]).filter((t): t is string => !!t)
    .filter((t) => t.startsWith(base + '/') && t.includes('/root-pool/'))
    .sort((a, b) => b.length - a.length); // the overlay (rootfs) before the disk it sits on
  for (const t of targets) await run(['umount', t], { allowFailure: true });
}

/** The containers of every pool runc root under `base` (a node's `runc-pool`), and their address claims. */
async function removePoolContainers(base: string): Promise<void> {
  const found = await run(['find', base, '-maxdepth', '4', '-type', 'd', '-name', 'runc-pool'], { allowFailure: true });
  const ids = new Set<string>();
  // Entries whose container was not made yet may hold an address claim already.
  const entries = await run(['find', base, '-maxdepth', '5', '-path', '*/root-pool/pool-*', '-prune'], { allowFailure: true });
  for (const entry of entries.stdout.split('\n').filter(Boolean)) ids.add(path.basename(entry).replace(/\.partial$/, ''));
  for (const root of found.stdout.split('\n').filter(Boolean)) {
    const runc = new Runc(root, runtimeConfigFromEnv().criuBinDir);
    for (const id of await readdir(root).catch(() => [] as string[])) {
      await runc.destroy(id).catch(() => undefined);
      ids.add(id);
    }
  }
  // What the network of each holds (its address claim; its link went with its namespace).
  const cfg = runtimeConfigFromEnv();
  const network = new NetworkManager({ subnetPrefix: cfg.subnetPrefix, hookBinary: cfg.networkHook });
  for (const id of ids) await network.release(id).catch(() => undefined);
}
