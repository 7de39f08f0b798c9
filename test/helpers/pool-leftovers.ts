// An agent killed with SIGKILL leaves its pooled sandbox directories mounted (an agent that
// starts again empties its pool; see src/runtime/root-pool.ts). A test that removes such an
// agent's directory for good unmounts those first, and only those: any other mount left under
// it is a leak and still makes the removal fail.
import { readFile } from 'node:fs/promises';
import { run } from '../../src/runtime/command.ts';

export async function unmountPoolLeftovers(base: string): Promise<void> {
  const table = await readFile('/proc/self/mountinfo', 'utf8');
  const targets = table.split('\n').map((l) => l.split(' ')[4]).filter((t): t is string => !!t)
    .filter((t) => t.startsWith(base + '/') && t.includes('/root-pool/'))
    .sort((a, b) => b.length - a.length); // the overlay (rootfs) before the disk it sits on
  for (const t of targets) await run(['umount', t], { allowFailure: true });
}
