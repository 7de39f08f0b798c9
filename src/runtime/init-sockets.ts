// Before a dump, the init must have let go of the agent's connections: CRIU can dump only
// sockets of the sandbox's own network namespace, and a connection the agent opened to the
// init's socket belongs to the host's. The agent closes its ends; the init closes its own
// once it reads the end of each, which it may not have done yet when the dump begins (seen:
// "unix: Unix socket … not found", the dump failed).
import { readdir, readFile, readlink } from 'node:fs/promises';
import { waitUntil } from './retry.ts';

/** How long a dump waits for the init to close the agent's connections before it goes on. */
const LET_GO_WAIT_MS = 500;

/**
 * Waits until none of the init's sockets is foreign to its network namespace (an agent's
 * connection it has not closed yet), or `timeoutMs` passed; true when none is.
 */
export function initLetGoOfHostSockets(initPid: number, timeoutMs = LET_GO_WAIT_MS): Promise<boolean> {
  // Checked every 2 ms: the init lets go within a few ms, and a pause waits for it.
  return waitUntil(async () => (await foreignSockets(initPid)) === 0, { timeoutMs, maxDelayMs: 2 });
}

/** The init's open sockets that its network namespace's socket tables do not list. */
async function foreignSockets(pid: number): Promise<number> {
  const own = new Set<string>();
  // unix: inode is the 7th field; tcp/udp: the 10th.
  for (const [table, field] of [['unix', 6], ['tcp', 9], ['tcp6', 9], ['udp', 9], ['udp6', 9]] as const) {
    const text = await readFile(`/proc/${pid}/net/${table}`, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const inode = line.trim().split(/\s+/)[field];
      if (inode) own.add(inode);
    }
  }
  let foreign = 0;
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    const target = await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '');
    const inode = /^socket:\[(\d+)\]$/.exec(target)?.[1];
    if (inode && !own.has(inode)) foreign++;
  }
  return foreign;
}
