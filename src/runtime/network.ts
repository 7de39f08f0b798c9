import { randomBytes, randomInt } from 'node:crypto';
import { link, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { run } from './command.ts';
import { waitUntil } from './retry.ts';
import { egressPolicy, egressRules, nameServersOf, networkOf, type EgressPolicy } from './egress-policy.ts';

const CLAIMS_DIR = '/run/nestbox/addresses';
/** A claim being written (see claimAddress); its name is never an address. */
const DRAFT_PREFIX = '.claim-';
/** Drafts and empty claims older than this are what a killed agent left (sweepClaimLeftovers). */
const CLAIM_LEFTOVER_AGE_MS = 60_000;

/**
 * Sandbox networking: each sandbox has its own network namespace (made by runc inside the
 * sandbox's user namespace) and a routed veth pair: container eth0 = <prefix>.a.b/32, host
 * side = <prefix>.0.1/32. IPv4 only: the link has no IPv6 on either side.
 *
 * Routed links rather than a bridge put every packet of a sandbox through the host's
 * firewall:
 * - raw PREROUTING drops a packet whose source is not the address routed to the link it came
 *   in on (reverse-path check): no forged sources, neither a neighbour's nor the internet's;
 * - NESTBOX-INPUT: a sandbox opens nothing on the host (answers to the host's own connections,
 *   into the sandbox, pass);
 * - NESTBOX-FORWARD: first the egress floor (NESTBOX-EGRESS: no host networks, LAN, link-local
 *   or special ranges), then no sandbox-to-sandbox, then internet access per sandbox
 *   (NESTBOX-INTERNET: one ACCEPT per sandbox that has it), then drop;
 * - IPv6 from or to a sandbox link is dropped, whatever a sandbox does to its own side.
 */

const HOST_IF_PREFIX = 'nbh';
const SANDBOX_IFS = `${HOST_IF_PREFIX}+`;
const CHAIN_INPUT = 'NESTBOX-INPUT';
const CHAIN_FORWARD_OUT = 'NESTBOX-FORWARD';
const CHAIN_FORWARD_IN = 'NESTBOX-FORWARD-IN';
const CHAIN_EGRESS = 'NESTBOX-EGRESS';
const CHAIN_INTERNET = 'NESTBOX-INTERNET';
const CHAIN_SOURCES = 'NESTBOX-SOURCES';
const CHAIN_INPUT6 = 'NESTBOX-INPUT6';

export interface SandboxNetwork {
  hostIf: string;
  address: string;
  allowInternet: boolean;
}

export interface NetworkOptions {
  subnetPrefix: string; // e.g. "10.88"
  /** The createRuntime hook that builds a sandbox's link (nestbox-net-hook, sandbox-init/). */
  hookBinary: string;
  /** Ranges the operator lets sandboxes with internet access reach although the floor refuses them. */
  egressAllow?: string[];
  /** Ranges refused beyond the floor. */
  egressDeny?: string[];
}

const INTERNET_THIRD_OCTET = 128;
const INTERNET_RANGE_COMMENT = 'nestbox:internet-range';

/** How long release() waits for the kernel to remove a dead sandbox's link before it deletes it. */
const LINK_GONE_WAIT_MS = 500;

/**
 * Whether the links are gone from this process's network namespace (read from /proc/self/net/dev,
 * which is always ours, unlike a /sys mounted elsewhere), waiting up to `ms` for them to go.
 */
function linksGoneWithin(names: string[], ms: number): Promise<boolean> {
  return waitUntil(async () => (await linksPresent(names)).length === 0, { timeoutMs: ms, maxDelayMs: 20 });
}

async function linksPresent(names: string[]): Promise<string[]> {
  const table = (await readFile('/proc/self/net/dev', 'utf8')).split('\n').map((line) => line.trimStart());
  return names.filter((name) => table.some((line) => line.startsWith(`${name}:`)));
}

/** Whether a name in the claims directory is a claim (an address), not a file on its way to being one. */
function isClaimName(name: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(name);
}

/** The addresses claimed for a sandbox (the claim files that name it). */
async function claimsOf(sandboxId: string): Promise<string[]> {
  const out: string[] = [];
  for (const address of await readdir(CLAIMS_DIR).catch(() => [] as string[])) {
    if (!isClaimName(address)) continue; // a draft, or a transfer's file on its way in
    if ((await readFile(path.join(CLAIMS_DIR, address), 'utf8').catch(() => '')) === sandboxId) out.push(address);
  }
  return out;
}

/**
 * The host's end of a sandbox's link is named for its address (one link per claimed address):
 * a container made ahead keeps its link when a sandbox takes it and its claim (transfer()).
 */
export function hostIfFor(address: string) {
  return `${HOST_IF_PREFIX}${address.split('.').map((o) => Number(o).toString(16).padStart(2, '0')).join('')}`;
}

/** The name earlier versions gave a sandbox's link (its id's): a release removes it too. */
function legacyHostIf(sandboxId: string) {
  return `${HOST_IF_PREFIX}${sandboxId.slice(0, 12)}`;
}

async function iptables(args: string[], allowFailure = false) {
  return run(['iptables', '-w', '5', ...args], { allowFailure });
}

async function ensureChain(table: string, chain: string, cmd = 'iptables') {
  await run([cmd, '-w', '5', '-t', table, '-N', chain], { allowFailure: true });
}

async function ensureRule(table: string, chain: string, rule: string[], position: 'I' | 'A' = 'A', cmd = 'iptables') {
  const check = await run([cmd, '-w', '5', '-t', table, '-C', chain, ...rule], { allowFailure: true });
  if (check.code !== 0) await run([cmd, '-w', '5', '-t', table, position === 'I' ? '-I' : '-A', chain, ...(position === 'I' ? ['1'] : []), ...rule]);
}

/**
 * Replaces the contents of whole chains in one transaction (iptables-restore --noflush): a
 * packet sees the old rules or the new ones, never an empty chain.
 */
async function replaceChains(table: string, chains: Record<string, string[][]>, cmd = 'iptables') {
  const lines = [`*${table}`];
  for (const name of Object.keys(chains)) lines.push(`:${name} - [0:0]`);
  for (const [name, rules] of Object.entries(chains)) {
    for (const rule of rules) lines.push(['-A', name, ...rule].join(' '));
  }
  lines.push('COMMIT', '');
  await run([`${cmd}-restore`, '-w', '5', '--noflush'], { input: lines.join('\n') });
}

export class NetworkManager {
  private readonly subnetPrefix: string;
  private policy: EgressPolicy | null = null;
  /** Per-sandbox ACCEPTs made by earlier versions are still in NESTBOX-INTERNET: a release removes its own. */
  private perSandboxRules = true;

  constructor(private readonly opts: NetworkOptions) {
    this.subnetPrefix = opts.subnetPrefix;
  }

  /** Host-wide setup, idempotent: forwarding, NAT, source checks and the isolation chains. */
  async setupHost(): Promise<void> {
    await writeFile('/proc/sys/net/ipv4/ip_forward', '1');
    const subnet = `${this.subnetPrefix}.0.0/16`;
    this.policy = egressPolicy({
      allow: this.opts.egressAllow ?? [],
      deny: this.opts.egressDeny ?? [],
      hostNetworks: await hostNetworks(),
      nameServers: nameServersOf(await readFile('/etc/resolv.conf', 'utf8').catch(() => '')),
    });
    for (const chain of [CHAIN_INPUT, CHAIN_FORWARD_OUT, CHAIN_FORWARD_IN, CHAIN_EGRESS, CHAIN_INTERNET]) await ensureChain('filter', chain);
    await ensureChain('raw', CHAIN_SOURCES);
    await this.moveOldInternetRules();
    // Internet access by address range (the source check below makes the source address the
    // sandbox's own): one rule per subnet, kept beside what other agents of the host added.
    await ensureRule('filter', CHAIN_INTERNET, ['-s', this.internetRange, '-m', 'comment', '--comment', INTERNET_RANGE_COMMENT, '-j', 'ACCEPT']);
    this.perSandboxRules = (await this.rulesIn(CHAIN_INTERNET)).some((r) => !r.includes(INTERNET_RANGE_COMMENT));
    await replaceChains('filter', {
      // Sandbox -> host: only answers to connections the host opened (proxying into the sandbox).
      [CHAIN_INPUT]: [['-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT'], ['-j', 'DROP']],
      [CHAIN_EGRESS]: egressRules(this.policy),
      [CHAIN_FORWARD_OUT]: [['-j', CHAIN_EGRESS], ['-o', SANDBOX_IFS, '-j', 'DROP'], ['-j', CHAIN_INTERNET], ['-j', 'DROP']],
      [CHAIN_FORWARD_IN]: [['-m', 'conntrack', '--ctstate', 'ESTABLISHED,RELATED', '-j', 'ACCEPT'], ['-j', 'DROP']],
    });
    // A packet from a sandbox must come from the address routed to its link (reverse path),
    // checked before connection tracking sees it.
    await replaceChains('raw', { [CHAIN_SOURCES]: [['-m', 'rpfilter', '--invert', '-j', 'DROP']] });
    await ensureRule('raw', 'PREROUTING', ['-i', SANDBOX_IFS, '-j', CHAIN_SOURCES], 'I');
    await ensureRule('filter', 'INPUT', ['-i', SANDBOX_IFS, '-j', CHAIN_INPUT], 'I');
    await ensureRule('filter', 'FORWARD', ['-i', SANDBOX_IFS, '-j', CHAIN_FORWARD_OUT], 'I');
    await ensureRule('filter', 'FORWARD', ['-o', SANDBOX_IFS, '-j', CHAIN_FORWARD_IN], 'I');
    await ensureRule('nat', 'POSTROUTING', ['-s', subnet, '!', '-o', SANDBOX_IFS, '-j', 'MASQUERADE']);
    // IPv6: the links have none; should a sandbox bring it up on its side, nothing passes.
    await ensureChain('filter', CHAIN_INPUT6, 'ip6tables');
    await replaceChains('filter', { [CHAIN_INPUT6]: [['-j', 'DROP']] }, 'ip6tables');
    await ensureRule('filter', 'INPUT', ['-i', SANDBOX_IFS, '-j', CHAIN_INPUT6], 'I', 'ip6tables');
    await ensureRule('filter', 'FORWARD', ['-i', SANDBOX_IFS, '-j', CHAIN_INPUT6], 'I', 'ip6tables');
    await ensureRule('filter', 'FORWARD', ['-o', SANDBOX_IFS, '-j', CHAIN_INPUT6], 'I', 'ip6tables');
  }

  /** The egress floor in force (after setupHost). */
  get egress(): EgressPolicy | null {
    return this.policy;
  }

  /**
   * The addresses of sandboxes with internet access: x.y.128.0/17 (third octet 128-254); those
   * without have x.y.1-127.z. NESTBOX-INTERNET accepts this range, so a create with internet
   * access adds no rule of its own.
   */
  get internetRange() {
    return `${this.subnetPrefix}.${INTERNET_THIRD_OCTET}.0/17`;
  }

  hasInternet(address: string): boolean {
    const third = Number(address.split('.')[2]);
    return address.startsWith(`${this.subnetPrefix}.`) && third >= INTERNET_THIRD_OCTET;
  }

  get gateway() {
    return `${this.subnetPrefix}.0.1`;
  }

  /**
   * Claims an address and the firewall rule of one sandbox. The link itself is made by the
   * network hook (nestbox-net-hook) inside runc, because the namespace must be created by runc in
   * the sandbox's user namespace for CRIU to checkpoint it. `preferredAddress` is kept when still
   * free, so a resumed sandbox keeps its address and restored TCP sockets stay valid.
   * `newSandbox`: the id is new on this node (a create), so nothing of it can be left to remove.
   */
  async prepare(sandboxId: string, opts: { allowInternet: boolean; preferredAddress?: string; newSandbox?: boolean }): Promise<SandboxNetwork> {
    const { allowInternet, preferredAddress } = opts;
    // A resume may follow an attempt that crashed and left pieces; a new sandbox's id has had
    // none on this node (whatever a failed create made, its teardown or the agent's recovery
    // removed), and two process spawns are a good part of a create's time on a busy host.
    if (!opts.newSandbox) await this.release(sandboxId);
    // Internet access is the address itself (no rule of its own to add): see internetRange.
    const address = await this.claimAddress(sandboxId, allowInternet, preferredAddress);
    return { hostIf: hostIfFor(address), address, allowInternet };
  }

  /** The OCI hook that builds the link when runc creates (or restores) the namespace. */
  hook(address: string) {
    return { path: this.opts.hookBinary, args: ['nestbox-net-hook', hostIfFor(address), address, this.gateway], timeout: 10 };
  }

  /**
   * Hands the claim of `address` from `from` (a container made ahead) to `to` (the sandbox that
   * took it): the claim file is replaced whole, by a rename, so it always names one of the two.
   */
  async transfer(address: string, from: string, to: string): Promise<void> {
    const claim = path.join(CLAIMS_DIR, address);
    const holder = await readFile(claim, 'utf8').catch(() => null);
    if (holder !== from) throw new Error(`address ${address} is claimed by ${holder ?? 'nobody'}, not by ${from}`);
    const tmp = path.join(CLAIMS_DIR, `.${address}.${to}`);
    await writeFile(tmp, to, { flag: 'w', mode: 0o600 });
    await rename(tmp, claim);
  }

  /**
   * Address claims are files in a host-wide directory created with O_EXCL, so two agents on one
   * host never hand out the same address; /run is emptied at boot, like the links themselves.
   */
  private async claimAddress(sandboxId: string, allowInternet: boolean, preferred?: string): Promise<string> {
    await mkdir(CLAIMS_DIR, { recursive: true, mode: 0o700 });
    // A preferred address of the other kind (a snapshot older than address ranges) is not kept.
    const candidates = preferred && this.hasInternet(preferred) === allowInternet ? [preferred] : [];
    const [low, high] = allowInternet ? [INTERNET_THIRD_OCTET, 255] : [1, INTERNET_THIRD_OCTET];
    for (let i = 0; i < 64; i++) candidates.push(`${this.subnetPrefix}.${randomInt(low, high)}.${randomInt(2, 255)}`);
    // A claim appears whole, naming its sandbox: a draft is written, then linked under the
    // address (link() fails on one that exists). Created empty and then written, an agent killed
    // in between left a claim naming nobody, which nothing ever released (seen after a chaos run).
    const draft = path.join(CLAIMS_DIR, `${DRAFT_PREFIX}${sandboxId}.${randomBytes(4).toString('hex')}`);
    await writeFile(draft, sandboxId, { flag: 'wx', mode: 0o600 });
    try {
      for (const address of candidates) {
        try {
          await link(draft, path.join(CLAIMS_DIR, address));
          return address;
        } catch (e) {
          if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        }
      }
    } finally {
      await rm(draft, { force: true });
    }
    throw new Error('no free sandbox address');
  }

  /**
   * Removes what agents killed mid-claim left in the host-wide claims directory: drafts and
   * transfers' files on their way in, and claims naming nobody (made by earlier versions, which
   * created a claim empty and then wrote it). Only those older than a minute: another agent of
   * the host may be claiming right now.
   */
  async sweepClaimLeftovers(now = Date.now()): Promise<string[]> {
    const removed: string[] = [];
    for (const name of await readdir(CLAIMS_DIR).catch(() => [] as string[])) {
      const file = path.join(CLAIMS_DIR, name);
      const st = await stat(file).catch(() => null);
      if (!st?.isFile() || now - st.mtimeMs < CLAIM_LEFTOVER_AGE_MS) continue;
      // (dot files: drafts, and transfer()'s claims on their way in)
      const leftover = name.startsWith('.') || (isClaimName(name) && st.size === 0);
      if (!leftover) continue;
      await rm(file, { force: true });
      removed.push(name);
    }
    return removed;
  }

  /** Removes everything prepare() and the hook made; safe for a sandbox that has nothing left. */
  async release(sandboxId: string): Promise<void> {
    // The kernel deletes both ends of the pair once the sandbox's namespace dies with its last
    // process (5-20 ms later, measured): deleting it too only queues behind the kernel for the
    // same lock. So a link whose sandbox is gone is waited for, and deleted only if it stays
    // (a namespace something still holds, say).
    const claims = await claimsOf(sandboxId);
    const links = [legacyHostIf(sandboxId), ...claims.map(hostIfFor)];
    if (!(await linksGoneWithin(links, LINK_GONE_WAIT_MS))) {
      for (const link of await linksPresent(links)) await run(['ip', 'link', 'del', link], { allowFailure: true });
    }
    if (this.perSandboxRules) await this.removeRules(sandboxId, CHAIN_INTERNET);
    for (const address of claims) await rm(path.join(CLAIMS_DIR, address), { force: true });
  }

  private async removeRules(sandboxId: string, chain: string) {
    for (const rule of await this.rulesIn(chain, sandboxId)) await iptables(['-D', ...rule], true);
  }

  /** The rules of one sandbox in a chain, as `-S` prints them minus the leading -A (fields have no spaces). */
  private async rulesIn(chain: string, sandboxId?: string): Promise<string[][]> {
    const listing = await iptables(['-S', chain], true);
    return listing.stdout
      .split('\n')
      .filter((line) => line.startsWith('-A ') && line.includes(sandboxId ? `nestbox:${sandboxId}` : 'nestbox:'))
      .map((line) => line.slice(3).split(' ').map((f) => f.replace(/^"|"$/g, '')));
  }

  /** Earlier versions kept the per-sandbox ACCEPTs in NESTBOX-FORWARD: they move to their own chain. */
  private async moveOldInternetRules() {
    for (const rule of await this.rulesIn(CHAIN_FORWARD_OUT)) {
      const [, ...rest] = rule;
      const iface = rest[rest.indexOf('-i') + 1];
      const comment = rest[rest.indexOf('--comment') + 1];
      if (iface && comment) await iptables(['-A', CHAIN_INTERNET, '-i', iface, '-m', 'comment', '--comment', comment, '-j', 'ACCEPT']);
    }
  }

  /** What of the node's network still names the sandbox: firewall rules and its address claim. */
  async heldBy(sandboxId: string): Promise<string[]> {
    const listing = await iptables(['-S'], true);
    const rules = listing.stdout.split('\n').filter((l) => l.includes(`nestbox:${sandboxId}`));
    return [...rules, ...(await claimsOf(sandboxId)).map((address) => `address claim ${address}`)];
  }
}

/** The IPv4 networks the host's own interfaces are on (sandbox links left out). */
async function hostNetworks(): Promise<string[]> {
  const r = await run(['ip', '-j', '-4', 'addr', 'show'], { allowFailure: true });
  if (r.code !== 0) return [];
  const links = JSON.parse(r.stdout || '[]') as Array<{ ifname: string; addr_info?: Array<{ local: string; prefixlen: number; scope: string }> }>;
  const out: string[] = [];
  for (const link of links) {
    if (link.ifname.startsWith(HOST_IF_PREFIX)) continue;
    for (const a of link.addr_info ?? []) {
      if (a.scope === 'host') continue;
      out.push(`${networkOf(a.local, a.prefixlen)}/${a.prefixlen}`);
    }
  }
  return out;
}
