// Nodes: the hosts running a node agent, as the control plane knows them.
import { conflict, invalid } from '../core/errors.ts';
import type { Sql } from './database.ts';

/**
 * ready: takes sandboxes; draining: its agent is shutting down or the operator drained it (no
 * placements; its sandboxes move away); down: silent for long (it holds nothing any more).
 * A ready node whose heartbeats stopped is shown `unhealthy` (see effectiveState): no placements.
 */
export const NODE_STATES = ['ready', 'draining', 'down'] as const;
export type NodeState = (typeof NODE_STATES)[number];
export type NodeCondition = NodeState | 'unhealthy';

export interface NodeCapacity {
  cpuCount: number;
  memoryMB: number;
  diskMB: number;
  maxSandboxes: number;
}

export interface NodeRecord extends NodeCapacity {
  id: string;
  url: string;
  /** Bearer token the control plane presents to the agent. */
  token: string;
  state: NodeState;
  lastSeenAt: Date | null;
  createdAt: Date;
  /** Templates the node has; empty for a node that never said (a static node: any). */
  templates: string[];
  version: string;
  /** Drained by the operator (nestbox nodes drain): stays draining until undrained. */
  cordoned: boolean;
  /** Joined with a join token (it heartbeats); static nodes are configured at start. */
  joined: boolean;
  /** How long since it was last heard from, by the database's clock (one clock for every replica). */
  silentMs: number | null;
}

interface NodeRow {
  id: string;
  url: string;
  token: string;
  state: NodeState;
  last_seen_at: Date | null;
  created_at: Date;
  cpu_count: number;
  memory_mb: number;
  disk_mb: number;
  max_sandboxes: number;
  templates: string[];
  version: string;
  cordoned: boolean;
  joined: boolean;
  silent_ms: number | string | null;
}

const COLUMNS = `id, url, token, state, last_seen_at, created_at, cpu_count, memory_mb, disk_mb, max_sandboxes,
  templates, version, cordoned, credential_hash IS NOT NULL AS joined,
  (extract(epoch FROM (now() - last_seen_at)) * 1000)::float8 AS silent_ms`;

function toNode(r: NodeRow): NodeRecord {
  return {
    id: r.id, url: r.url, token: r.token, state: r.state, lastSeenAt: r.last_seen_at, createdAt: r.created_at,
    cpuCount: r.cpu_count, memoryMB: r.memory_mb, diskMB: r.disk_mb, maxSandboxes: r.max_sandboxes,
    templates: Array.isArray(r.templates) ? r.templates : [], version: r.version, cordoned: r.cordoned, joined: r.joined,
    silentMs: r.silent_ms === null ? null : Number(r.silent_ms),
  };
}

/** What a node is now: a ready node not heard from within `unhealthyAfterMs` is unhealthy. */
export function effectiveState(node: NodeRecord, unhealthyAfterMs: number): NodeCondition {
  if (node.state !== 'ready') return node.state;
  if (node.cordoned) return 'draining';
  if (node.silentMs !== null && node.silentMs > unhealthyAfterMs) return 'unhealthy';
  return 'ready';
}

function checkState(state: string): asserts state is NodeState {
  if (!(NODE_STATES as readonly string[]).includes(state)) {
    throw invalid(`node state must be one of ${NODE_STATES.join(', ')}, got ${JSON.stringify(state)}`);
  }
}

/**
 * Registers a node or updates its address and token (and its sandbox limit, when given), and
 * marks it seen. A new node starts `ready` (or `state`); an existing one keeps its state unless
 * `state` is given.
 */
export async function upsertNode(
  db: Sql,
  node: { id: string; url: string; token: string; state?: NodeState; maxSandboxes?: number },
): Promise<NodeRecord> {
  if (!node.id) throw invalid('a node needs an id');
  if (node.state !== undefined) checkState(node.state);
  const rows = await db.query<NodeRow>(
    `INSERT INTO nodes (id, url, token, state, last_seen_at, max_sandboxes)
     VALUES ($1, $2, $3, COALESCE($4, 'ready'), now(), COALESCE($5::int, 0))
     ON CONFLICT (id) DO UPDATE SET
       url = EXCLUDED.url,
       token = EXCLUDED.token,
       state = COALESCE($4, nodes.state),
       max_sandboxes = COALESCE($5::int, nodes.max_sandboxes),
       last_seen_at = now()
     RETURNING ${COLUMNS}`,
    [node.id, node.url, node.token, node.state ?? null, node.maxSandboxes ?? null],
  );
  return toNode(rows[0]!);
}

export async function getNode(db: Sql, id: string): Promise<NodeRecord | null> {
  const rows = await db.query<NodeRow>(`SELECT ${COLUMNS} FROM nodes WHERE id = $1 AND removed_at IS NULL`, [id]);
  return rows[0] ? toNode(rows[0]) : null;
}

/** False when there is no such node. */
export async function setNodeState(db: Sql, id: string, state: NodeState): Promise<boolean> {
  checkState(state);
  const rows = await db.query('UPDATE nodes SET state = $2 WHERE id = $1 RETURNING id', [id, state]);
  return rows.length > 0;
}

export async function listNodes(db: Sql, opts: { state?: NodeState } = {}): Promise<NodeRecord[]> {
  if (opts.state !== undefined) checkState(opts.state);
  const rows = await db.query<NodeRow>(
    `SELECT ${COLUMNS} FROM nodes WHERE ($1::text IS NULL OR state = $1) AND removed_at IS NULL ORDER BY id`,
    [opts.state ?? null],
  );
  return rows.map(toNode);
}

/** Records that the node was heard from now. False when there is no such node. */
export async function touchNode(db: Sql, id: string): Promise<boolean> {
  const rows = await db.query('UPDATE nodes SET last_seen_at = now() WHERE id = $1 RETURNING id', [id]);
  return rows.length > 0;
}

// ---------------------------------------------------------------------------------------------
// Joined nodes

export interface NodeReport extends NodeCapacity {
  url: string;
  templates: string[];
  version: string;
}

/**
 * A node that presented a valid join token: registered with a new credential, whose hash is all
 * that is kept. The id must be free: a removed node may join again (it comes back as new), but
 * a member's id is refused, so a join token cannot take over a live node (its agent, restarted,
 * heartbeats with the credential it keeps).
 */
export async function registerJoinedNode(
  db: Sql,
  node: NodeReport & { id: string; token: string; credentialHash: string },
): Promise<NodeRecord> {
  if (!/^[a-z0-9][a-z0-9._-]{0,62}$/.test(node.id)) {
    throw invalid(`node id ${JSON.stringify(node.id)} must be 1-63 lower-case letters, digits, '.', '_' or '-'`);
  }
  // One statement: two joins racing for a free id cannot both win it.
  const rows = await db.query<NodeRow>(
    `INSERT INTO nodes (id, url, token, state, last_seen_at, credential_hash, cpu_count, memory_mb, disk_mb,
                        max_sandboxes, templates, version)
     VALUES ($1, $2, $3, 'ready', now(), $4, $5, $6, $7, $8, $9, $10)
     ON CONFLICT (id) DO UPDATE SET
       url = EXCLUDED.url, token = EXCLUDED.token, credential_hash = EXCLUDED.credential_hash,
       cpu_count = EXCLUDED.cpu_count, memory_mb = EXCLUDED.memory_mb, disk_mb = EXCLUDED.disk_mb,
       max_sandboxes = EXCLUDED.max_sandboxes, templates = EXCLUDED.templates, version = EXCLUDED.version,
       last_seen_at = now(), state = 'ready', cordoned = false, removed_at = NULL
     WHERE nodes.removed_at IS NOT NULL
     RETURNING ${COLUMNS}`,
    [node.id, node.url, node.token, node.credentialHash, node.cpuCount, node.memoryMB, node.diskMB, node.maxSandboxes,
      JSON.stringify(node.templates), node.version],
  );
  if (!rows[0]) {
    throw conflict(`node ${node.id} is already a member; remove it first, or restart the agent with its own credential `
      + `(nestbox nodes remove ${node.id} once drained; another host needs its own node id)`);
  }
  return toNode(rows[0]);
}

/** The node a credential belongs to; null for an unknown credential or a removed node. */
export async function nodeByCredential(db: Sql, credentialHash: string): Promise<NodeRecord | null> {
  const rows = await db.query<NodeRow>(
    `SELECT ${COLUMNS} FROM nodes WHERE credential_hash = $1 AND removed_at IS NULL`, [credentialHash]);
  return rows[0] ? toNode(rows[0]) : null;
}

/** A heartbeat: the node is alive, at this address, with this capacity and these templates. */
export async function recordHeartbeat(db: Sql, id: string, report: NodeReport): Promise<NodeRecord | null> {
  const rows = await db.query<NodeRow>(
    `UPDATE nodes SET last_seen_at = now(), url = $2, cpu_count = $3, memory_mb = $4, disk_mb = $5, max_sandboxes = $6,
       templates = $7, version = $8, state = CASE WHEN state = 'down' THEN 'ready' ELSE state END
     WHERE id = $1 AND removed_at IS NULL RETURNING ${COLUMNS}`,
    [id, report.url, report.cpuCount, report.memoryMB, report.diskMB, report.maxSandboxes, JSON.stringify(report.templates), report.version],
  );
  return rows[0] ? toNode(rows[0]) : null;
}

/** The operator's drain (true) or undrain (false). False when there is no such node. */
export async function setCordoned(db: Sql, id: string, cordoned: boolean): Promise<boolean> {
  const rows = await db.query('UPDATE nodes SET cordoned = $2 WHERE id = $1 AND removed_at IS NULL RETURNING id', [id, cordoned]);
  return rows.length > 0;
}

const LIVE = "('starting', 'running', 'pausing', 'resuming', 'killing')";

/**
 * Removes a node: its credential is void from now on. Refused while sandboxes live on it
 * (drain it first). False when there is no such node.
 */
export async function removeNode(db: Sql, id: string): Promise<boolean> {
  const rows = await db.query(
    `UPDATE nodes SET removed_at = now(), credential_hash = NULL, state = 'down'
     WHERE id = $1 AND removed_at IS NULL
       AND NOT EXISTS (SELECT 1 FROM sandboxes WHERE node_id = $1 AND state IN ${LIVE})
     RETURNING id`,
    [id],
  );
  if (rows.length > 0) return true;
  if (!(await getNode(db, id))) return false;
  const live = await db.query<{ n: string }>(`SELECT count(*) AS n FROM sandboxes WHERE node_id = $1 AND state IN ${LIVE}`, [id]);
  throw conflict(`node ${id} still runs ${live[0]!.n} sandbox(es): drain it first (nestbox nodes drain ${id}), then remove it`);
}

export interface NodeLoad {
  nodeId: string;
  sandboxes: number;
  cpuCount: number;
  memoryMB: number;
}

/** What the live sandboxes placed on each node take of it. */
export async function nodeLoads(db: Sql): Promise<NodeLoad[]> {
  const rows = await db.query<{ node_id: string; n: string; cpu: string | null; mem: string | null }>(
    `SELECT node_id, count(*) AS n, sum(cpu_count) AS cpu, sum(memory_mb) AS mem
     FROM sandboxes WHERE node_id IS NOT NULL AND state IN ${LIVE} GROUP BY node_id`,
  );
  return rows.map((r) => ({ nodeId: r.node_id, sandboxes: Number(r.n), cpuCount: Number(r.cpu ?? 0), memoryMB: Number(r.mem ?? 0) }));
}
