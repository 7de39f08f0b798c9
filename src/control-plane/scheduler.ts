import { unavailable } from '../core/errors.ts';
import type { NodeCapacity, NodeCondition } from '../store/nodes.ts';
import type { NodeClient } from './node-client.ts';

/** What a start needs of a node. */
export interface Placement {
  template?: string;
  cpuCount?: number;
  memoryMB?: number;
}

/** What the control plane knows of a node beyond its client (from its row and heartbeats). */
export interface NodeInfo {
  condition: NodeCondition;
  capacity: NodeCapacity;
  /** Templates it has; empty: it never said (a node configured at start), so any. */
  templates: string[];
  /** What live sandboxes placed on it take (refreshed from the database each registry tick). */
  load: { sandboxes: number; cpuCount: number; memoryMB: number };
}

/**
 * How many vCPUs a node's sandboxes may ask for per CPU it has. Sandboxes are mostly idle, so
 * the default is generous; memory, which cannot be shared, is never overcommitted.
 */
export const DEFAULT_CPU_OVERCOMMIT = 16;

const UNKNOWN: NodeInfo = {
  condition: 'ready',
  capacity: { cpuCount: 0, memoryMB: 0, diskMB: 0, maxSandboxes: 0 },
  templates: [],
  load: { sandboxes: 0, cpuCount: 0, memoryMB: 0 },
};

/**
 * Places sandboxes on nodes. Eligible: ready (not draining, unhealthy or down), has the
 * template, has room (memory, vCPUs within its CPUs times `cpuOvercommit`, sandbox count),
 * and, while any node has, fewer than `maxStartsPerNode` starts in flight from this process.
 * Among the eligible, the better of two picked at random (more free memory and CPU together):
 * near-even spread without herding when several control-plane replicas place at once. Nodes
 * that refused or failed this start are skipped.
 */
export class NodePool {
  private readonly nodes = new Map<string, NodeClient>();
  private readonly info = new Map<string, NodeInfo>();
  private readonly starting = new Map<string, number>();
  private readonly draining = new Set<string>();

  constructor(
    private readonly maxStartsPerNode = 8,
    private readonly random: () => number = Math.random,
    private readonly cpuOvercommit = DEFAULT_CPU_OVERCOMMIT,
  ) {
    if (!(cpuOvercommit > 0)) throw new Error(`the CPU overcommit must be a positive number, not ${cpuOvercommit}`);
  }

  add(node: NodeClient, info?: NodeInfo) {
    this.nodes.set(node.nodeId, node);
    if (info) this.info.set(node.nodeId, info);
  }

  remove(nodeId: string) {
    this.nodes.delete(nodeId);
    this.info.delete(nodeId);
  }

  update(nodeId: string, info: NodeInfo) {
    if (this.nodes.has(nodeId)) this.info.set(nodeId, info);
  }

  has(nodeId: string): boolean {
    return this.nodes.has(nodeId);
  }

  get(nodeId: string | null): NodeClient {
    const node = nodeId ? this.nodes.get(nodeId) : undefined;
    if (!node) throw unavailable(`node ${nodeId ?? '(none)'} is not available`);
    return node;
  }

  /** Any node will do (e.g. to delete a snapshot in the shared store): the given one if known. */
  any(preferred: string | null): NodeClient {
    const node = (preferred && this.nodes.get(preferred)) || this.nodes.values().next().value;
    if (!node) throw unavailable('no node is available');
    return node;
  }

  /**
   * A node to finish the kill of a sandbox lost on `lost` (deleting its snapshot from the shared
   * store): another node heard from lately, since a node gone down cannot answer; else `lost`
   * itself (a single node that answered without the sandbox).
   */
  forLost(lost: string | null): NodeClient {
    const heard = [...this.nodes.values()].find((n) => n.nodeId !== lost && ['ready', 'draining'].includes((this.info.get(n.nodeId) ?? UNKNOWN).condition));
    return heard ?? this.any(lost);
  }

  /** The nodes that could take this start now, apart from `exclude`. */
  eligible(want: Placement = {}, exclude: ReadonlySet<string> = new Set()): NodeClient[] {
    const out: NodeClient[] = [];
    for (const node of this.nodes.values()) {
      if (exclude.has(node.nodeId) || this.draining.has(node.nodeId)) continue;
      const i = this.info.get(node.nodeId) ?? UNKNOWN;
      if (i.condition !== 'ready') continue;
      if (want.template && i.templates.length > 0 && !i.templates.includes(want.template)) continue;
      if (i.capacity.maxSandboxes > 0 && i.load.sandboxes >= i.capacity.maxSandboxes) continue;
      if (i.capacity.memoryMB > 0 && i.load.memoryMB + (want.memoryMB ?? 0) > i.capacity.memoryMB) continue;
      if (i.capacity.cpuCount > 0 && i.load.cpuCount + (want.cpuCount ?? 0) > i.capacity.cpuCount * this.cpuOvercommit) continue;
      out.push(node);
    }
    // Nodes with a full start queue are passed over while others are not: the limit spreads
    // bursts; it never refuses a start that some node could take.
    const open = out.filter((n) => (this.starting.get(n.nodeId) ?? 0) < this.maxStartsPerNode);
    return open.length > 0 ? open : out;
  }

  /**
   * Chooses a node for a start and counts the start as in flight there until `done(nodeId)`.
   * Throws a retryable "unavailable" when no node can take it.
   */
  pick(exclude: ReadonlySet<string> = new Set(), want: Placement = {}): NodeClient {
    const candidates = this.eligible(want, exclude);
    if (candidates.length === 0) {
      throw unavailable(
        this.nodes.size === 0 ? 'no node has joined this control plane yet; retry shortly'
          : `no node can take a sandbox${want.template ? ` of template "${want.template}"` : ''} now; retry shortly`,
      );
    }
    let best = candidates[Math.floor(this.random() * candidates.length)]!;
    if (candidates.length > 1) {
      const others = candidates.filter((c) => c !== best);
      const other = others[Math.floor(this.random() * others.length)]!;
      if (this.score(other) > this.score(best)) best = other;
    }
    this.starting.set(best.nodeId, (this.starting.get(best.nodeId) ?? 0) + 1);
    const i = this.info.get(best.nodeId);
    if (i) i.load = { sandboxes: i.load.sandboxes + 1, cpuCount: i.load.cpuCount + (want.cpuCount ?? 0), memoryMB: i.load.memoryMB + (want.memoryMB ?? 0) };
    return best;
  }

  /** A start placed by pick() has ended (either way). */
  done(nodeId: string) {
    const n = (this.starting.get(nodeId) ?? 0) - 1;
    if (n > 0) this.starting.set(nodeId, n);
    else this.starting.delete(nodeId);
  }

  /**
   * Free memory and free CPU (of the overcommitted vCPUs), each as a share of the node, weighed
   * equally; a resource of unknown size counts as half free. Starts in flight break ties.
   */
  private score(node: NodeClient): number {
    const i = this.info.get(node.nodeId) ?? UNKNOWN;
    const mem = i.capacity.memoryMB > 0 ? 1 - i.load.memoryMB / i.capacity.memoryMB : 0.5;
    const cpu = i.capacity.cpuCount > 0 ? 1 - i.load.cpuCount / (i.capacity.cpuCount * this.cpuOvercommit) : 0.5;
    return (mem + cpu) / 2 - (this.starting.get(node.nodeId) ?? 0) / 1e6;
  }

  /** A draining node gets no new placements (it would refuse them anyway). */
  setDraining(nodeId: string, draining: boolean) {
    if (draining) this.draining.add(nodeId);
    else this.draining.delete(nodeId);
  }

  isDraining(nodeId: string): boolean {
    return this.draining.has(nodeId);
  }

  all(): NodeClient[] {
    return [...this.nodes.values()];
  }

  get size() {
    return this.nodes.size;
  }
}
