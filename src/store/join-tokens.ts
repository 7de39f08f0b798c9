// Join tokens: what a new node presents to join the fleet (`nestbox nodes join-token`). They
// expire, can be revoked, and are kept as sha256 only: `nbjoin_` + 40 hex characters, shown once.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { invalid } from '../core/errors.ts';
import type { Sql } from './database.ts';

export const JOIN_TOKEN_PATTERN = /^nbjoin_[0-9a-f]{40}$/;
export const NODE_CREDENTIAL_PATTERN = /^nbnode_[0-9a-f]{40}$/;
const MAX_TTL_S = 30 * 24 * 3600;

export const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');

export function generateNodeCredential(): string {
  return `nbnode_${randomBytes(20).toString('hex')}`;
}

export interface JoinTokenInfo {
  id: string;
  createdAt: Date;
  expiresAt: Date;
  revokedAt: Date | null;
  lastUsedAt: Date | null;
}

interface Row {
  id: string;
  created_at: Date;
  expires_at: Date;
  revoked_at: Date | null;
  last_used_at: Date | null;
}

const toInfo = (r: Row): JoinTokenInfo => ({
  id: r.id, createdAt: r.created_at, expiresAt: r.expires_at, revokedAt: r.revoked_at, lastUsedAt: r.last_used_at,
});

export async function createJoinToken(db: Sql, opts: { ttlSeconds?: number } = {}): Promise<JoinTokenInfo & { token: string }> {
  const ttl = opts.ttlSeconds ?? 24 * 3600;
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TTL_S) throw invalid(`a join token lives 1 s to ${MAX_TTL_S} s, not ${ttl}`);
  const token = `nbjoin_${randomBytes(20).toString('hex')}`;
  const rows = await db.query<Row>(
    `INSERT INTO node_join_tokens (id, token_hash, expires_at) VALUES ($1, $2, now() + make_interval(secs => $3))
     RETURNING id, created_at, expires_at, revoked_at, last_used_at`,
    [randomUUID(), sha256(token), ttl],
  );
  return { ...toInfo(rows[0]!), token };
}

export async function listJoinTokens(db: Sql): Promise<JoinTokenInfo[]> {
  const rows = await db.query<Row>('SELECT id, created_at, expires_at, revoked_at, last_used_at FROM node_join_tokens ORDER BY seq');
  return rows.map(toInfo);
}

/** False when there is no such token. */
export async function revokeJoinToken(db: Sql, id: string): Promise<boolean> {
  const rows = await db.query('UPDATE node_join_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 RETURNING id', [id]);
  return rows.length > 0;
}

/** True when the token is known, not revoked and not expired (and records its use). */
export async function useJoinToken(db: Sql, token: string): Promise<boolean> {
  if (!JOIN_TOKEN_PATTERN.test(token)) return false;
  const rows = await db.query(
    `UPDATE node_join_tokens SET last_used_at = now()
     WHERE token_hash = $1 AND revoked_at IS NULL AND expires_at > now() RETURNING id`,
    [sha256(token)],
  );
  return rows.length > 0;
}
