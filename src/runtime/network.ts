import { randomInt } from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { run } from './command.ts';

const HOOK_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), 'network-hook.sh');
const CLAIMS_DIR = '/run/nestbox/addresses';

/**
 * Sandbox networking: each sandbox has its own network namespace (made by runc inside the
 * sandbox's user namespace) and a routed veth pair: container eth0 = <prefix>.a.b/32, host
 * side = <prefix>.0.1/32.
 * Routed links rather than a bridge put every sandbox-to-sandbox and sandbox-to-host packet
 * through the host's iptables, where the NESTBOX-* chains drop them.
 */

const HOST_IF_PREFIX = 'nbh';
const CHAIN_INPUT = 'NESTBOX-INPUT';
const CHAIN_FORWARD_OUT = 'NESTBOX-FORWARD';
const CHAIN_FORWARD_IN = 'NESTBOX-FORWARD-IN';

export interface SandboxNetwork {
  hostIf: string;
  address: string;
  allowInternet: boolean;
}

function hostIfFor(sandboxId: string) {
  return `${HOST_IF_PREFIX}${sandboxId.slice(0, 12)}`;
}

async function iptables(args: string[], allowFailure = false) {
  return run(['iptables', '-w', '5', ...args], { allowFailure });
}

async function ensureChain(table: string, chain: string) {
  await iptables(['-t', table, '-N', chain], true);
}

async function ensureRule(table: string, chain: string, rule: string[], position: 'I' | 'A' = 'A') {
  const check = await iptables(['-t', table, '-C', chain, ...rule], true);
  if (check.code !== 0) await iptables(['-t', table, position === 'I' ? '-I' : '-A', chain, ...(position === 'I' ? ['1'] : []), ...rule]);
}

export class NetworkManager {
  constructor(private readonly subnetPrefix: string) {}

  /** Host-wide setup, idempotent: forwarding, NAT for sandboxes with internet, isolation chains. */
  async setupHost(): Promise<void> {
    await writeFile('/proc/sys/net/ipv4/ip_forward', '1');
    const subnet = `${this.subnetPrefix}.0.0/16`;
    const sandboxIfs = `${HOST_IF_PREFIX}+`;
    for (const chain of [CHAIN_INPUT, CHAIN_FORWARD_OUT, CHAIN_FORWARD_IN]) await ensureChain('filter', chain);
    // Sandbox -> host: only answers to connections the host opened (proxying into the sandbox).
    await ensureRule('filter', CHAIN_INPUT, ['-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT']);
    await ensureRule('filter', CHAIN_INPUT, ['-j', 'DROP']);
    await ensureRule('filter', 'INPUT', ['-i', sandboxIfs, '-j', CHAIN_INPUT], 'I');
    // Sandbox -> elsewhere: never another sandbox; the internet only with a per-sandbox ACCEPT
    // inserted at the top of this chain by attach().
    await ensureRule('filter', CHAIN_FORWARD_OUT, ['-o', sandboxIfs, '-j', 'DROP']);
    await ensureRule('filter', CHAIN_FORWARD_OUT, ['-j', 'DROP']);
    await ensureRule('filter', CHAIN_FORWARD_IN, ['-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT']);
    await ensureRule('filter', CHAIN_FORWARD_IN, ['-j', 'DROP']);
    await ensureRule('filter', 'FORWARD', ['-i', sandboxIfs, '-j', CHAIN_FORWARD_OUT], 'I');
    await ensureRule('filter', 'FORWARD', ['-o', sandboxIfs, '-j', CHAIN_FORWARD_IN], 'I');
    await ensureRule('nat', 'POSTROUTING', ['-s', subnet, '!', '-o', sandboxIfs, '-j', 'MASQUERADE']);
  }

  get gateway() {
    return `${this.subnetPrefix}.0.1`;
  }

  /**
   * Claims an address and the firewall rule of one sandbox. The link itself is made by the
   * network hook (network-hook.sh) inside runc, because the namespace must be created by runc in
   * the sandbox's user namespace for CRIU to checkpoint it. `preferredAddress` is kept when still
   * free, so a resumed sandbox keeps its address and restored TCP sockets stay valid.
   */
  async prepare(sandboxId: string, allowInternet: boolean, preferredAddress?: string): Promise<SandboxNetwork> {
    const hostIf = hostIfFor(sandboxId);
    await this.release(sandboxId); // a crashed earlier attempt may have left pieces
    const address = await this.claimAddress(sandboxId, preferredAddress);
    try {
      if (allowInternet) {
        await iptables(['-I', CHAIN_FORWARD_OUT, '1', '-i', hostIf, '!', '-o', `${HOST_IF_PREFIX}+`,
          '-m', 'comment', '--comment', `nestbox:${sandboxId}`, '-j', 'ACCEPT']);
      }
    } catch (e) {
      await this.release(sandboxId);
      throw e;
    }
    return { hostIf, address, allowInternet };
  }

  /** The OCI hook that builds the link when runc creates (or restores) the namespace. */
  hook(sandboxId: string, address: string) {
    return { path: HOOK_PATH, args: ['nestbox-network-hook', hostIfFor(sandboxId), address, this.gateway], timeout: 10 };
  }

  /**
   * Address claims are files in a host-wide directory created with O_EXCL, so two agents on one
   * host never hand out the same address; /run is emptied at boot, like the links themselves.
   */
  private async claimAddress(sandboxId: string, preferred?: string): Promise<string> {
    await mkdir(CLAIMS_DIR, { recursive: true, mode: 0o700 });
    const candidates = preferred ? [preferred] : [];
    for (let i = 0; i < 64; i++) candidates.push(`${this.subnetPrefix}.${randomInt(1, 255)}.${randomInt(2, 255)}`);
    for (const address of candidates) {
      try {
        await writeFile(path.join(CLAIMS_DIR, address), sandboxId, { flag: 'wx' });
        return address;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
      }
    }
    throw new Error('no free sandbox address');
  }

  /** Removes everything prepare() and the hook made; safe for a sandbox that has nothing left. */
  async release(sandboxId: string): Promise<void> {
    await run(['ip', 'link', 'del', hostIfFor(sandboxId)], { allowFailure: true });
    await this.removeRules(sandboxId);
    for (const address of await readdir(CLAIMS_DIR).catch(() => [] as string[])) {
      const owner = await readFile(path.join(CLAIMS_DIR, address), 'utf8').catch(() => '');
      if (owner === sandboxId) await rm(path.join(CLAIMS_DIR, address), { force: true });
    }
  }

  private async removeRules(sandboxId: string) {
    const listing = await iptables(['-S', CHAIN_FORWARD_OUT], true);
    for (const line of listing.stdout.split('\n')) {
      if (!line.includes(`nestbox:${sandboxId}`) || !line.startsWith('-A ')) continue;
      // -S prints the rule as it was added; replay it with -D. Its fields contain no spaces.
      const rule = line.slice(3).split(' ').map((f) => f.replace(/^"|"$/g, ''));
      await iptables(['-D', ...rule], true);
    }
  }

  async rulesFor(sandboxId: string): Promise<string[]> {
    const listing = await iptables(['-S'], true);
    return listing.stdout.split('\n').filter((l) => l.includes(`nestbox:${sandboxId}`));
  }
}
