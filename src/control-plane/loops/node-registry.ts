import type { Database } from '../../store/database.ts';
import { effectiveState, listNodes, nodeLoads, type NodeCondition, type NodeRecord } from '../../store/nodes.ts';
import { HttpNodeClient, type NodeClient } from '../node-client.ts';
import type { NodePool } from '../scheduler.ts';

export interface NodeRegistryTickReport {
  joined: string[];
  left: string[];
}

/**
 * Keeps the placement pool in step with the nodes table, so every control-plane replica sees
 * the fleet: a node that joined (through any replica) gets a client here, a removed one loses
 * it, and each node's condition (ready / draining / unhealthy / down), capacity, templates and
 * load are refreshed. A joined node whose heartbeats stop is unhealthy after
 * `unhealthyAfterMs`: no placements until it is heard again. Nodes configured at start (the
 * embedded node of `nestbox up`, tests) keep the clients they were given.
 */
export class NodeRegistry {
  /** Clients this registry made, by node id, with the address and token they were made for. */
  private readonly made = new Map<string, { url: string; token: string }>();

  constructor(
    private readonly db: Database,
    private readonly pool: NodePool,
    private readonly opts: {
      unhealthyAfterMs: number;
      makeClient?: (n: NodeRecord) => NodeClient;
      nodeCallTimeoutMs?: number;
    },
  ) {}

  async tick(): Promise<NodeRegistryTickReport> {
    const report: NodeRegistryTickReport = { joined: [], left: [] };
    const nodes = await listNodes(this.db);
    const loads = new Map((await nodeLoads(this.db)).map((l) => [l.nodeId, l]));
    const seen = new Set<string>();
    for (const n of nodes) {
      seen.add(n.id);
      if (n.joined) {
        const had = this.made.get(n.id);
        if (!had || had.url !== n.url || had.token !== n.token) {
          const client = this.opts.makeClient?.(n) ?? new HttpNodeClient(n.id, n.url, n.token, this.opts.nodeCallTimeoutMs);
          this.pool.add(client);
          this.made.set(n.id, { url: n.url, token: n.token });
          if (!had) report.joined.push(n.id);
        }
      }
      if (!this.pool.has(n.id)) continue;
      const load = loads.get(n.id);
      this.pool.update(n.id, {
        condition: conditionForPlacement(n, this.opts.unhealthyAfterMs),
        capacity: { cpuCount: n.cpuCount, memoryMB: n.memoryMB, diskMB: n.diskMB, maxSandboxes: n.maxSandboxes },
        templates: n.templates,
        load: { sandboxes: load?.sandboxes ?? 0, cpuCount: load?.cpuCount ?? 0, memoryMB: load?.memoryMB ?? 0 },
      });
    }
    for (const id of [...this.made.keys()]) {
      if (seen.has(id)) continue;
      this.pool.remove(id);
      this.made.delete(id);
      report.left.push(id);
    }
    return report;
  }
}

/**
 * A node's condition as placement sees it. An agent's own drain (SIGTERM) is the drainer's to
 * follow (it asks the agent and flags the pool at once, also when the agent comes back), so
 * the row's `draining` does not hold placements back here; the operator's drain does.
 */
function conditionForPlacement(n: NodeRecord, unhealthyAfterMs: number): NodeCondition {
  return effectiveState({ ...n, state: n.state === 'draining' ? 'ready' : n.state }, n.joined ? unhealthyAfterMs : Number.POSITIVE_INFINITY);
}
