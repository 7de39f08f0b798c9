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
 * Waits until the init holds none of the host's unix sockets (an agent's connection it has not
 * closed yet), or `timeoutMs` passed; true when it holds none.
 */
export function initLetGoOfHostSockets(initPid: number, timeoutMs = LET_GO_WAIT_MS): Promise<boolean> {
  // Checked every 2 ms: the init lets go within a few ms, and a pause waits for it.
  return waitUntil(async () => (await hostSocketsHeld(initPid)) === 0, { timeoutMs, maxDelayMs: 2 });
}

/**
 * How many of the init's open sockets are unix sockets of the agent's (the host's) network
 * namespace. Most checks end at the init's own namespace's unix table, which lists all its
 * sockets once the agent's connections are gone; the host's table is read only for what is
 * left. (Not the TCP and UDP tables: reading one walks the kernel's whole hash table, ~5 ms
 * each, and the init holds no TCP or UDP socket of the host's.)
 */
async function hostSocketsHeld(pid: number): Promise<number> {
  const held: string[] = [];
  for (const fd of await readdir(`/proc/${pid}/fd`).catch(() => [] as string[])) {
    const inode = /^socket:\[(\d+)\]$/.exec(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''))?.[1];
    if (inode) held.push(inode);
  }
  if (held.length === 0) return 0;
  const own = await unixSocketInodes(`/proc/${pid}/net/unix`);
  const unknown = held.filter((inode) => !own.has(inode));
  if (unknown.length === 0) return 0;
  const host = await unixSocketInodes('/proc/self/net/unix');
  return unknown.filter((inode) => host.has(inode)).length;
}

/** The inodes a /proc/<pid>/net/unix table lists (its 7th field). */
async function unixSocketInodes(table: string): Promise<Set<string>> {
  const text = await readFile(table, 'utf8').catch(() => '');
  const out = new Set<string>();
  for (const line of text.split('\n').slice(1)) {
    const inode = line.trim().split(/\s+/)[6];
    if (inode) out.add(inode);
  }
  return out;
}
