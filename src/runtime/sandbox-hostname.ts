// The host name a sandbox's processes see (its UTS namespace's): its id.
import { open, stat } from 'node:fs/promises';
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
  checkTarget(initPid, hostname);
  await run(['nsenter', `--uts=/proc/${initPid}/ns/uts`, '--', 'hostname', hostname]);
}

/**
 * Sets the host name of a container made ahead and not yet started (its init is runc's, waiting
 * to run the sandbox's): the namespace is held open first, then the pid is checked to be still
 * that init (`isInit`, its start time against runc's record) and the namespace not the node's
 * own, so a pid reused since can never have its namespace renamed; nsenter joins it through the
 * held descriptor.
 */
export async function setCreatedContainerHostname(initPid: number, hostname: string, isInit: () => Promise<boolean>): Promise<void> {
  checkTarget(initPid, hostname);
  const ns = await open(`/proc/${initPid}/ns/uts`, 'r');
  try {
    const [held, own] = await Promise.all([ns.stat(), stat('/proc/self/ns/uts')]);
    if (held.ino === own.ino && held.dev === own.dev) throw new Error(`process ${initPid} is in the node's own UTS namespace`);
    if (!(await isInit())) throw new Error(`process ${initPid} is no longer the container's init`);
    await run(['nsenter', `--uts=/proc/${process.pid}/fd/${ns.fd}`, '--', 'hostname', hostname]);
  } finally {
    await ns.close();
  }
}

function checkTarget(initPid: number, hostname: string) {
  if (!Number.isSafeInteger(initPid) || initPid <= 1) throw new Error(`no init process to set the host name of (pid ${initPid})`);
  if (!/^[a-z0-9][a-z0-9-]{0,62}$/.test(hostname)) throw new Error(`invalid host name "${hostname}"`);
}
