// "Hosts" for fleet tests on one machine: each a network namespace with its own address,
// linked to the host by a veth pair (a /30 of its own, routed), loopback up inside. Services
// every host must reach (control plane, object store) listen on one service address, on a link
// of the host's own (a veth pair with both ends on the host: kernels without the dummy module
// have veth, which the sandboxes need anyway), routed to from every namespace. An agent run in a namespace sets up its own
// forwarding and NESTBOX-* chains there (the namespace starts with forwarding off and no rules),
// as it would on a host of its own. Nothing is added to the host's firewall.
//
// Everything made here is removed by cleanup(), which also runs for what a crashed earlier run
// left (namespaces and links are named with NETNS_PREFIX).
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { promisify } from 'node:util';

const exec = promisify(execFile);
export const NETNS_PREFIX = 'nbfh';
/** 10.251.0.0/16: hosts 10.251.<n>.2 (host side .1), services on 10.251.0.1. */
const NET = '10.251';

export interface NetnsHost {
  /** The namespace's name under /run/netns. */
  netns: string;
  /** Its address, where the control plane reaches its agent. */
  address: string;
}

async function ip(...args: string[]): Promise<string> {
  return (await exec('ip', args)).stdout;
}

async function quietly(fn: () => Promise<unknown>) {
  await fn().catch(() => undefined);
}

export class NetnsHosts {
  readonly hosts: NetnsHost[] = [];
  /** Where the services the hosts share listen (a link of the host). */
  readonly serviceAddress = `${NET}.0.1`;
  private readonly tag = randomBytes(2).toString('hex');
  private readonly serviceLink = `${NETNS_PREFIX}${this.tag}s`;

  /** Makes `count` hosts and the service address. */
  async setup(count: number): Promise<NetnsHost[]> {
    await removeLeftovers();
    await ip('link', 'add', this.serviceLink, 'type', 'veth', 'peer', 'name', `${this.serviceLink}p`);
    await ip('addr', 'add', `${this.serviceAddress}/32`, 'dev', this.serviceLink);
    await ip('link', 'set', `${this.serviceLink}p`, 'up');
    await ip('link', 'set', this.serviceLink, 'up');
    for (let n = 1; n <= count; n++) {
      const netns = `${NETNS_PREFIX}${this.tag}-${n}`;
      const hostIf = `${NETNS_PREFIX}${this.tag}h${n}`;
      await ip('netns', 'add', netns);
      this.hosts.push({ netns, address: `${NET}.${n}.2` });
      await ip('link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns);
      await ip('addr', 'add', `${NET}.${n}.1/30`, 'dev', hostIf);
      await ip('link', 'set', hostIf, 'up');
      await ip('-n', netns, 'link', 'set', 'lo', 'up');
      await ip('-n', netns, 'addr', 'add', `${NET}.${n}.2/30`, 'dev', 'eth0');
      await ip('-n', netns, 'link', 'set', 'eth0', 'up');
      await ip('-n', netns, 'route', 'add', 'default', 'via', `${NET}.${n}.1`);
    }
    return this.hosts;
  }

  /** Removes the namespaces (killing what still runs in them), their links and the service link. */
  async cleanup(): Promise<void> {
    for (const h of this.hosts) await removeNamespace(h.netns);
    await quietly(() => ip('link', 'del', this.serviceLink));
  }
}

/**
 * Processes still in a namespace keep it (and its veth) alive after `ip netns del`: they are
 * this test's (agents, containers), killed first.
 */
async function removeNamespace(netns: string) {
  const pids = (await ip('netns', 'pids', netns).catch(() => '')).split('\n').map(Number).filter((p) => p > 0);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      /* gone */
    }
  }
  await quietly(() => ip('netns', 'del', netns));
}

/** What a run that crashed left: namespaces and links named with NETNS_PREFIX. */
async function removeLeftovers() {
  for (const name of await readdir('/run/netns').catch(() => [] as string[])) {
    if (name.startsWith(NETNS_PREFIX)) await removeNamespace(name);
  }
  const links = JSON.parse(await ip('-j', 'link', 'show')) as Array<{ ifname: string }>;
  for (const l of links) if (l.ifname.startsWith(NETNS_PREFIX)) await quietly(() => ip('link', 'del', l.ifname));
}
