import { NodeCallError, type NodeClient } from '../../src/control-plane/node-client.ts';
import type { NodeCreateRequest } from '../../src/node-api/schemas.ts';
import type { NodeInventory, NodeMetrics, NodeStatus } from '../../src/node-api/wire.ts';

export interface FakeFaults {
  /** Probability that a call fails cleanly (the node says no; nothing happened). */
  failPause?: number;
  failResume?: number;
  failCreate?: number;
  /** Probability that a call times out after it took effect (uncertain outcome). */
  timeoutAfterEffect?: number;
  /** Refuse new starts as a draining node does. */
  draining?: boolean;
  /** Latency of every call, ms. */
  latencyMs?: number;
  /** The inventory call fails (a node that does not answer). */
  unreachable?: boolean;
}

/**
 * An in-memory node for control-plane tests and benchmarks: it keeps containers and snapshots
 * as sets and can inject the faults a real node shows. Several control planes may share one.
 */
export class FakeNode implements NodeClient {
  readonly containers = new Map<string, { startedAt: number; dead?: boolean }>();
  /** Its snapshot store: give several nodes one set to share it, as nodes share a real store. */
  readonly snapshots: Set<string>;
  /** Sandboxes the node reports an operation in progress on. */
  readonly busy = new Set<string>();
  readonly calls: string[] = [];
  /** When each sandbox's container last stopped here (the node's journal). */
  readonly stops = new Map<string, number>();
  faults: FakeFaults = {};
  /** The node's clock (container start times). */
  now: () => number = Date.now;

  /** When each snapshot's sandbox stopped (what its snapshot.json says); shared like `snapshots`. */
  readonly snapshotStops: Map<string, number>;

  constructor(
    readonly nodeId = 'fake-node', private readonly random: () => number = Math.random, snapshots = new Set<string>(),
    snapshotStops = new Map<string, number>(),
  ) {
    this.snapshots = snapshots;
    this.snapshotStops = snapshotStops;
  }

  private async step(name: string, id: string) {
    this.calls.push(`${name} ${id}`);
    if (this.faults.latencyMs) await new Promise((r) => setTimeout(r, this.faults.latencyMs));
    else await Promise.resolve();
  }

  private maybeTimeout(what: string) {
    if ((this.faults.timeoutAfterEffect ?? 0) > this.random()) {
      throw new NodeCallError('unavailable', `fake node: ${what} timed out`, { uncertain: true, retryable: true });
    }
  }

  async create(req: NodeCreateRequest) {
    await this.step('create', req.sandboxId);
    if (this.faults.draining) throw new NodeCallError('unavailable', 'node is draining', { uncertain: false, retryable: true });
    if ((this.faults.failCreate ?? 0) > this.random()) throw new NodeCallError('internal', 'fake node: create failed', { uncertain: false });
    if (this.containers.has(req.sandboxId)) throw new NodeCallError('conflict', 'exists', { uncertain: false });
    if (req.fromSnapshot && !this.snapshots.has(req.fromSnapshot)) throw new NodeCallError('not_found', `snapshot ${req.fromSnapshot} does not exist`, { uncertain: false });
    const startedAt = this.now();
    this.containers.set(req.sandboxId, { startedAt });
    this.maybeTimeout('create');
    return { startedAt: new Date(startedAt).toISOString() };
  }

  async kill(id: string, opts: { deleteSnapshot?: boolean } = {}) {
    await this.step('kill', id);
    const running = this.containers.get(id);
    this.containers.delete(id);
    if (running && !running.dead) this.stops.set(id, this.now());
    if (opts.deleteSnapshot) this.snapshots.delete(id);
    this.maybeTimeout('kill');
    const stop = this.stops.get(id);
    return { stoppedAt: stop === undefined ? null : new Date(stop).toISOString() };
  }

  async pause(id: string, _opts: { memory: boolean; quiesceMs?: number }) {
    await this.step('pause', id);
    if (!this.containers.has(id)) throw new NodeCallError('not_found', 'not on this node', { uncertain: false });
    if ((this.faults.failPause ?? 0) > this.random()) throw new NodeCallError('internal', 'fake node: checkpoint failed', { uncertain: false });
    this.containers.delete(id);
    this.snapshots.add(id);
    this.stops.set(id, this.now());
    this.snapshotStops.set(id, this.now());
    this.maybeTimeout('pause');
    return { stoppedAt: new Date(this.now()).toISOString() };
  }

  async resume(id: string) {
    await this.step('resume', id);
    if (!this.snapshots.has(id)) throw new NodeCallError('not_found', 'no snapshot', { uncertain: false });
    if ((this.faults.failResume ?? 0) > this.random()) throw new NodeCallError('internal', 'fake node: restore failed', { uncertain: false });
    this.snapshots.delete(id);
    const startedAt = this.now();
    this.containers.set(id, { startedAt });
    this.maybeTimeout('resume');
    return { startedAt: new Date(startedAt).toISOString() };
  }

  async lastStop(id: string) {
    const stop = this.stops.get(id);
    return { stoppedAt: stop === undefined || this.containers.has(id) ? null : new Date(stop).toISOString() };
  }

  async snapshotStop(id: string) {
    if (this.faults.unreachable) throw new NodeCallError('unavailable', 'fake node: unreachable', { uncertain: true, retryable: true });
    if (!this.snapshots.has(id)) throw new NodeCallError('not_found', `no snapshot of sandbox ${id}`, { uncertain: false });
    const stop = this.snapshotStops.get(id);
    return { stoppedAt: stop === undefined ? null : new Date(stop).toISOString() };
  }

  async deleteSnapshot(id: string) {
    await this.step('deleteSnapshot', id);
    this.snapshots.delete(id);
    this.snapshotStops.delete(id);
  }

  async snapshot(id: string, snapshotId: string) {
    await this.step('snapshot', id);
    const c = this.containers.get(id);
    if (!c || c.dead) throw new NodeCallError('conflict', `sandbox ${id} is not running`, { uncertain: false });
    this.snapshots.add(snapshotId);
  }

  async containerRunning(id: string) {
    const c = this.containers.get(id);
    return !!c && !c.dead;
  }

  async metrics(id: string): Promise<NodeMetrics> {
    if (!this.containers.has(id)) throw new NodeCallError('not_found', 'not running', { uncertain: false });
    return { cpuNs: 1e9, memoryBytes: 64 << 20, memoryLimitBytes: 512 << 20, pids: 3, diskUsedBytes: 0, diskTotalBytes: 0 };
  }

  /** A drain plan to report (with faults.draining). */
  drainPlan: NodeStatus['drain'] = null;

  async status(): Promise<NodeStatus> {
    if (this.faults.unreachable) throw new NodeCallError('unavailable', 'fake node: unreachable', { uncertain: true, retryable: true });
    return { nodeId: this.nodeId, draining: !!this.faults.draining, inFlightStarts: 0, drain: this.faults.draining ? this.drainPlan : null };
  }

  async inventory(): Promise<NodeInventory> {
    if (this.faults.latencyMs) await new Promise((r) => setTimeout(r, this.faults.latencyMs));
    if (this.faults.unreachable) throw new NodeCallError('unavailable', 'fake node: unreachable', { uncertain: true, retryable: true });
    return {
      sandboxes: [...this.containers].map(([sandboxId, c]) => ({
        sandboxId, state: c.dead ? ('stopped' as const) : ('running' as const), busy: this.busy.has(sandboxId),
        startedAt: new Date(c.startedAt).toISOString(), pid: null, address: null, template: null, metadata: {}, createdAt: null,
      })),
      snapshots: [...this.snapshots],
      busy: [...this.busy],
    };
  }
}
