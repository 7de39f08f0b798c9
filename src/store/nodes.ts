// Nodes: the hosts running a node agent, as the control plane knows them.
import { invalid } from '../core/errors.ts';
import type { Sql } from './database.ts';

export const NODE_STATES = ['ready', 'draining', 'down'] as const;
export type NodeState = (typeof NODE_STATES)[number];

export interface NodeRecord {
  id: string;
  url: string;
  /** Bearer token the control plane presents to the agent. */
  token: string;
  state: NodeState;
  lastSeenAt: Date | null;
  createdAt: Date;
}

interface NodeRow {
  id: string;
  url: string;
  token: string;
  state: NodeState;
  last_seen_at: Date | null;
  created_at: Date;
}

const COLUMNS = 'id, url, token, state, last_seen_at, created_at';

function toNode(r: NodeRow): NodeRecord {
  return { id: r.id, url: r.url, token: r.token, state: r.state, lastSeenAt: r.last_seen_at, createdAt: r.created_at };
}

function checkState(state: string): asserts state is NodeState {
  if (!(NODE_STATES as readonly string[]).includes(state)) {
    throw invalid(`node state must be one of ${NODE_STATES.join(', ')}, got ${JSON.stringify(state)}`);
  }
}

/**
 * Registers a node or updates its address and token, and marks it seen. A new node starts
 * `ready` (or `state`); an existing one keeps its state unless `state` is given.
 */
export async function upsertNode(
  db: Sql,
  node: { id: string; url: string; token: string; state?: NodeState },
): Promise<NodeRecord> {
  if (!node.id) throw invalid('a node needs an id');
  if (node.state !== undefined) checkState(node.state);
  const rows = await db.query<NodeRow>(
    `INSERT INTO nodes (id, url, token, state, last_seen_at)
     VALUES ($1, $2, $3, COALESCE($4, 'ready'), now())
     ON CONFLICT (id) DO UPDATE SET
       url = EXCLUDED.url,
       token = EXCLUDED.token,
       state = COALESCE($4, nodes.state),
       last_seen_at = now()
     RETURNING ${COLUMNS}`,
    [node.id, node.url, node.token, node.state ?? null],
  );
  return toNode(rows[0]!);
}

export async function getNode(db: Sql, id: string): Promise<NodeRecord | null> {
  const rows = await db.query<NodeRow>(`SELECT ${COLUMNS} FROM nodes WHERE id = $1`, [id]);
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
    `SELECT ${COLUMNS} FROM nodes WHERE $1::text IS NULL OR state = $1 ORDER BY id`,
    [opts.state ?? null],
  );
  return rows.map(toNode);
}

/** Records that the node was heard from now. False when there is no such node. */
export async function touchNode(db: Sql, id: string): Promise<boolean> {
  const rows = await db.query('UPDATE nodes SET last_seen_at = now() WHERE id = $1 RETURNING id', [id]);
  return rows.length > 0;
}
