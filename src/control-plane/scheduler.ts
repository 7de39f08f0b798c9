import { unavailable } from '../core/errors.ts';
import type { NodeClient } from './node-client.ts';

/**
 * Places sandboxes on nodes. Nodes that refused a start (draining) are skipped for that start;
 * among the rest, the one with the fewest placements made by this process goes first.
 */
export class NodePool {
  private readonly nodes = new Map<string, NodeClient>();
  private readonly placed = new Map<string, number>();

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
      if (exclude.has(node.nodeId)) continue;
      if (!best || this.placed.get(node.nodeId)! < this.placed.get(best.nodeId)!) best = node;
    }
    if (!best) throw unavailable('no node can take a sandbox now; retry shortly');
    this.placed.set(best.nodeId, this.placed.get(best.nodeId)! + 1);
    return best;
  }

  get size() {
    return this.nodes.size;
  }
}
