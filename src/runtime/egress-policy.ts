import { isIPv4 } from 'node:net';

/**
 * Where a sandbox with internet access may not go (pure: no I/O). The floor under every
 * network policy: nothing of the node's own networks, its LAN, link-local (cloud metadata at
 * 169.254.169.254) or the other special-purpose ranges, unless the operator allows a range
 * (NESTBOX_EGRESS_ALLOW). The name servers a sandbox is given stay reachable on port 53.
 */

export const SPECIAL_PURPOSE_RANGES = [
  '0.0.0.0/8', // "this network"
  '10.0.0.0/8', // private (also every sandbox's own subnet)
  '100.64.0.0/10', // carrier-grade NAT
  '127.0.0.0/8', // loopback
  '169.254.0.0/16', // link-local: cloud metadata services live here
  '172.16.0.0/12', // private
  '192.0.0.0/24', // IETF protocol assignments
  '192.168.0.0/16', // private
  '198.18.0.0/15', // benchmarking
  '224.0.0.0/4', // multicast
  '240.0.0.0/4', // reserved, and the limited broadcast address
];

export interface EgressPolicy {
  /** Ranges the operator allows, checked first. */
  allow: string[];
  /** Name servers reachable on port 53 (UDP and TCP). */
  nameServers: string[];
  /** Ranges refused: the special-purpose ones, the host's own networks, the operator's. */
  deny: string[];
}

/** "a.b.c.d/n" (or a bare address, taken as /32), normalised to its network; throws on anything else. */
export function parseCidr(text: string): string {
  const [addr, bits, ...rest] = text.trim().split('/');
  const prefix = bits === undefined ? 32 : Number(bits);
  if (!addr || !isIPv4(addr) || rest.length || !Number.isInteger(prefix) || prefix < 0 || prefix > 32 || (bits !== undefined && !/^\d+$/.test(bits))) {
    throw new Error(`"${text}" is not an IPv4 range (a.b.c.d/n)`);
  }
  return `${networkOf(addr, prefix)}/${prefix}`;
}

/** A comma-separated list of ranges (an environment variable's value). */
export function parseCidrList(text: string | undefined, what: string): string[] {
  if (!text?.trim()) return [];
  return text.split(',').filter((s) => s.trim()).map((s) => {
    try {
      return parseCidr(s);
    } catch (e) {
      throw new Error(`${what}: ${(e as Error).message}`);
    }
  });
}

export function networkOf(address: string, prefix: number): string {
  const n = address.split('.').reduce((acc, part) => (acc << 8) | Number(part), 0) >>> 0;
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const net = (n & mask) >>> 0;
  return [net >>> 24, (net >>> 16) & 255, (net >>> 8) & 255, net & 255].join('.');
}

/** IPv4 name servers of a resolv.conf, loopback ones left out (a sandbox cannot reach them). */
export function nameServersOf(resolvConf: string): string[] {
  const out: string[] = [];
  for (const line of resolvConf.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m && isIPv4(m[1]!) && !m[1]!.startsWith('127.')) out.push(m[1]!);
  }
  return [...new Set(out)];
}

export function egressPolicy(opts: { allow: string[]; deny: string[]; hostNetworks: string[]; nameServers: string[] }): EgressPolicy {
  return {
    allow: [...new Set(opts.allow)],
    nameServers: opts.nameServers,
    deny: [...new Set([...SPECIAL_PURPOSE_RANGES, ...opts.hostNetworks, ...opts.deny])],
  };
}

/** The rules of the egress chain, in iptables-restore syntax (each line after `-A CHAIN`). */
export function egressRules(policy: EgressPolicy): string[][] {
  const rules: string[][] = [];
  for (const cidr of policy.allow) rules.push(['-d', cidr, '-j', 'RETURN']);
  for (const ns of policy.nameServers) {
    for (const proto of ['udp', 'tcp']) rules.push(['-d', `${ns}/32`, '-p', proto, '--dport', '53', '-j', 'RETURN']);
  }
  // Refused, not silently dropped: a program gets "no route to host" at once, not a timeout.
  for (const cidr of policy.deny) rules.push(['-d', cidr, '-j', 'REJECT', '--reject-with', 'icmp-admin-prohibited']);
  return rules;
}
