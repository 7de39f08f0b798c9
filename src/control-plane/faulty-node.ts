import type { NodeCreateRequest } from '../node-api/schemas.ts';
import { NodeCallError, type NodeClient } from './node-client.ts';

/**
 * Chaos testing only: a node client whose state-changing calls time out with probability `p`,
 * half of them before the node saw the call and half after it took effect. The control plane
 * cannot tell which, exactly as with a real network.
 */
export class FaultyNodeClient implements NodeClient {
  injected = 0;

  constructor(private readonly inner: NodeClient, private readonly p: number) {}

  get nodeId() {
    return this.inner.nodeId;
  }

  private async maybe<T>(what: string, call: () => Promise<T>): Promise<T> {
    const r = Math.random();
    if (r >= this.p) return call();
    this.injected++;
    process.stderr.write(`nestbox: injected fault: node_timeout ${what}\n`); // counted by the chaos run
    if (r < this.p / 2) throw new NodeCallError('unavailable', `injected fault: ${what} timed out (not sent)`, { uncertain: true, retryable: true });
    await call();
    throw new NodeCallError('unavailable', `injected fault: ${what} timed out (took effect)`, { uncertain: true, retryable: true });
  }

  create(req: NodeCreateRequest) {
    return this.maybe('create', () => this.inner.create(req));
  }
  kill(id: string, opts?: { deleteSnapshot?: boolean }) {
    return this.maybe('kill', () => this.inner.kill(id, opts));
  }
  pause(id: string, opts: { memory: boolean; quiesceMs?: number }) {
    return this.maybe('pause', () => this.inner.pause(id, opts));
  }
  resume(id: string) {
    return this.maybe('resume', () => this.inner.resume(id));
  }
  lastStop(id: string) {
    return this.inner.lastStop(id);
  }
  snapshotStop(id: string) {
    return this.inner.snapshotStop(id);
  }
  deleteSnapshot(id: string) {
    return this.inner.deleteSnapshot(id);
  }
  snapshot(id: string, snapshotId: string) {
    return this.inner.snapshot(id, snapshotId);
  }
  containerRunning(id: string) {
    return this.inner.containerRunning(id);
  }
  metrics(id: string) {
    return this.inner.metrics(id);
  }
  inventory() {
    return this.inner.inventory();
  }
  status() {
    return this.inner.status();
  }
}
