import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseCidrList } from './egress-policy.ts';
import type { S3StoreConfig } from './s3-snapshot-store.ts';

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** Where a node keeps things, and how its sandboxes are mapped onto the host. */
export interface RuntimeConfig {
  /** Per-agent state: bundles, upper layers, runc state, sockets. */
  dataDir: string;
  /** Template root filesystems (shared by agents on one host). */
  templatesDir: string;
  /**
   * Snapshot store: checkpoints and disks of paused sandboxes (may be shared by nodes). With
   * `s3` set, snapshots live in the object store and this is only the node's local staging and
   * download directory.
   */
  snapshotDir: string;
  /** Snapshots in an S3-compatible object store instead of `snapshotDir` (NESTBOX_S3_*). */
  s3?: S3StoreConfig;
  /** The static sandbox init binary, bind-mounted read-only into every sandbox. */
  initBinary: string;
  /** The host-side program runc runs to wire each sandbox's network namespace (sandbox-init/). */
  networkHook: string;
  /** The program runc runs to bind the sandbox's boot id over the host's (sandbox-init/). */
  bindHook: string;
  /** Directory holding the `criu` wrapper, put first on PATH when runc checkpoints/restores. */
  criuBinDir: string;
  /** Host uid/gid that container root maps to, and the size of the range. */
  uidShift: number;
  uidRange: number;
  /** Sandbox addresses: a /16 whose .0.1 is the host side of every sandbox link. */
  subnetPrefix: string; // e.g. "10.88"
  /** IPv4 ranges sandboxes with internet access may reach although the egress floor refuses them. */
  egressAllow?: string[];
  /** IPv4 ranges refused to every sandbox beyond the floor. */
  egressDeny?: string[];
  /**
   * Templates with a start command are captured warm (CRIU) once per node and their sandboxes
   * restored from it; false starts every sandbox cold (NESTBOX_WARM_TEMPLATES=0).
   */
  warmTemplates?: boolean;
  /**
   * How many live sandboxes this node takes at most (NESTBOX_MAX_SANDBOXES, `--max-sandboxes`):
   * registered as its capacity, which placement keeps to.
   */
  maxSandboxes: number;
  /** Fault injection for chaos testing: probability that a checkpoint or restore fails. */
  faults?: RuntimeFaults;
}

export interface RuntimeFaults {
  checkpoint?: number;
  restore?: number;
  /** The first dump of a pause fails as when CRIU cannot stop a task (a pause tries it once more). */
  seize?: number;
}

/** NESTBOX_INJECT_FAULTS="checkpoint=0.1,restore=0.1" (chaos testing only). */
export function parseFaults(spec: string | undefined): Record<string, number> {
  const out: Record<string, number> = {};
  for (const part of (spec ?? '').split(',').filter(Boolean)) {
    const [name, value] = part.split('=');
    const p = Number(value);
    if (!name || !Number.isFinite(p) || p < 0 || p > 1) throw new Error(`bad fault "${part}" in NESTBOX_INJECT_FAULTS`);
    out[name.trim()] = p;
  }
  return out;
}

/** A node's sandbox limit unless configured. */
export const DEFAULT_MAX_SANDBOXES = 200;

/** A sandbox limit as given (`source`: where, for the error): a positive integer. */
export function parseMaxSandboxes(raw: string, source: string): number {
  const n = Number(raw);
  if (!/^\s*\d+\s*$/.test(raw) || !Number.isSafeInteger(n) || n < 1 || n > 100_000) {
    throw new Error(`${source} must be a whole number of sandboxes from 1 to 100000 (the most this node runs at once), not "${raw}"`);
  }
  return n;
}

/** The node's configuration from the environment; `flags`, the command line's, win over it. */
export function runtimeConfigFromEnv(env: NodeJS.ProcessEnv = process.env, flags: { maxSandboxes?: string } = {}): RuntimeConfig {
  const home = env.NESTBOX_HOME ?? '/var/lib/nestbox';
  const dataDir = env.NESTBOX_DATA_DIR ?? path.join(home, 'node');
  const s3 = s3ConfigFromEnv(env);
  return {
    dataDir,
    templatesDir: env.NESTBOX_TEMPLATES_DIR ?? path.join(home, 'templates'),
    // With S3, only this node's staging and downloads: in its own data directory by default.
    snapshotDir: env.NESTBOX_SNAPSHOT_DIR ?? (s3 ? path.join(dataDir, 'snapshots') : path.join(home, 'snapshots')),
    initBinary:
      env.NESTBOX_INIT_BINARY ?? path.join(repoRoot, 'sandbox-init/target/release/nestbox-init'),
    networkHook: env.NESTBOX_NETWORK_HOOK ?? path.join(repoRoot, 'sandbox-init/target/release/nestbox-net-hook'),
    bindHook: env.NESTBOX_BIND_HOOK ?? path.join(repoRoot, 'sandbox-init/target/release/nestbox-bind-hook'),
    criuBinDir: env.NESTBOX_CRIU_BIN_DIR ?? path.join(home, 'deps/bin'),
    uidShift: 100000,
    uidRange: 65536,
    subnetPrefix: env.NESTBOX_SUBNET_PREFIX ?? '10.88',
    egressAllow: parseCidrList(env.NESTBOX_EGRESS_ALLOW, 'NESTBOX_EGRESS_ALLOW'),
    egressDeny: parseCidrList(env.NESTBOX_EGRESS_DENY, 'NESTBOX_EGRESS_DENY'),
    faults: parseFaults(env.NESTBOX_INJECT_FAULTS) as RuntimeFaults,
    warmTemplates: env.NESTBOX_WARM_TEMPLATES !== '0',
    maxSandboxes: flags.maxSandboxes !== undefined ? parseMaxSandboxes(flags.maxSandboxes, '--max-sandboxes')
      : env.NESTBOX_MAX_SANDBOXES ? parseMaxSandboxes(env.NESTBOX_MAX_SANDBOXES, 'NESTBOX_MAX_SANDBOXES') : DEFAULT_MAX_SANDBOXES,
    s3,
  };
}

/** NESTBOX_S3_ENDPOINT or NESTBOX_S3_BUCKET set: the S3 snapshot store (the bucket is required). */
export function s3ConfigFromEnv(env: NodeJS.ProcessEnv = process.env): S3StoreConfig | undefined {
  if (!env.NESTBOX_S3_ENDPOINT && !env.NESTBOX_S3_BUCKET) return undefined;
  if (!env.NESTBOX_S3_BUCKET) throw new Error('NESTBOX_S3_ENDPOINT is set but NESTBOX_S3_BUCKET is not');
  let prefix = env.NESTBOX_S3_PREFIX ?? '';
  if (prefix && !prefix.endsWith('/')) prefix += '/';
  return {
    endpoint: env.NESTBOX_S3_ENDPOINT || undefined,
    bucket: env.NESTBOX_S3_BUCKET,
    region: env.NESTBOX_S3_REGION ?? 'us-east-1',
    accessKeyId: env.NESTBOX_S3_ACCESS_KEY_ID,
    secretAccessKey: env.NESTBOX_S3_SECRET_ACCESS_KEY,
    prefix,
    // A custom endpoint is a local or self-hosted server: path-style (no bucket DNS names).
    forcePathStyle: !!env.NESTBOX_S3_ENDPOINT,
  };
}
