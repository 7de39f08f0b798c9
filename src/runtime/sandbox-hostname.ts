// The host name a sandbox's processes see (its UTS namespace's): its id.
import { run } from './command.ts';

/**
 * Sets the host name of a running sandbox restored from another's memory (a warm template's
 * capture, a named snapshot, a fork's source): CRIU brings its UTS namespace back with the name
 * it was dumped with, the other sandbox's. The sandbox's root cannot set it (it lacks
 * CAP_SYS_ADMIN), so the node does: nsenter joins only the init's UTS namespace, through the
 * kernel's /proc link of a process the node just started, and runs the host's own `hostname`
 * (the node's mount namespace: nothing of the sandbox's files is read or run).
 */
export async function setSandboxHostname(initPid: number, hostname: string): Promise<void> {
  if (!Number.isSafeInteger(initPid) || initPid <= 1) throw new Error(`no init process to set the host name of (pid ${initPid})`);
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(hostname)) throw new Error(`invalid host name "${hostname}"`);
  await run(['nsenter', `--uts=/proc/${initPid}/ns/uts`, '--', 'hostname', hostname]);
}
