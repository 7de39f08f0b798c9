import { unavailable } from '../core/errors.ts';
import type { NodeClient } from './node-client.ts';

/**
 * Places sandboxes on nodes. Nodes that refused a start (draining) are skipped for that start;
 * among the rest, the one with the fewest placements made by this process goes first.
 */
export class NodePool {
  private readonly nodes = new Map<string, NodeClient>();
  private readonly placed = new Map<string, number>();
  private readonly draining = new Set<string>();

  add(node: NodeClient) {
    this.nodes.set(node.nodeId, node);
    this.placed.set(node.nodeId, this.placed.get(node.nodeId) ?? 0);
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

  pick(exclude: ReadonlySet<string> = new Set()): NodeClient {
    let best: NodeClient | undefined;
    for (const node of this.nodes.values()) {
      if (exclude.has(node.nodeId) || this.draining.has(node.nodeId)) continue;
      if (!best || this.placed.get(node.nodeId)! < this.placed.get(best.nodeId)!) best = node;
    }
    if (!best) throw unavailable('no node can take a sandbox now; retry shortly');
    this.placed.set(best.nodeId, this.placed.get(best.nodeId)! + 1);
    return best;
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
