// Admin keys: the operator's credential for managing teams. `nestbox_admin_` + 40 lower-case hex
// characters, a prefix no team key (E2B's `e2b_`) can be mistaken for. Shown once; the database
// keeps only its sha256 (hex) and a mask for listings, as for team keys.
import { randomBytes, randomUUID } from 'node:crypto';
import { conflict, invalid, notFound } from '../core/errors.ts';
import type { Database, Sql } from './database.ts';
import { hashApiKey, type ApiKeyInfo, type CreatedApiKey } from './teams.ts';

export const ADMIN_KEY_PREFIX = 'nestbox_admin_';
export const ADMIN_KEY_PATTERN = /^nestbox_admin_[0-9a-f]{40}$/;
const FORMAT = `"${ADMIN_KEY_PREFIX}" followed by 40 lower-case hexadecimal characters (${ADMIN_KEY_PREFIX}[0-9a-f]{40})`;

export type AdminKeyInfo = Omit<ApiKeyInfo, 'teamId'>;

export function generateAdminKey(): string {
  return `${ADMIN_KEY_PREFIX}${randomBytes(20).toString('hex')}`;
}

export function isAdminKey(value: string): boolean {
  return ADMIN_KEY_PATTERN.test(value);
}

/** nestbox_admin_0123…cdef → "nestbox_admin_01…cdef". */
export function maskAdminKey(key: string): string {
  return `${key.slice(0, ADMIN_KEY_PREFIX.length + 2)}…${key.slice(-4)}`;
}

interface Row {
  id: string;
  name: string;
  key_mask: string;
  created_at: Date;
  last_used_at: Date | null;
  revoked_at: Date | null;
}

const toInfo = (r: Row): AdminKeyInfo => ({
  id: r.id, name: r.name, mask: r.key_mask, createdAt: r.created_at, lastUsedAt: r.last_used_at, revokedAt: r.revoked_at,
});

/** Creates an admin key; `key` registers one chosen by the operator (NESTBOX_ADMIN_KEY). */
export async function createAdminKey(db: Sql, opts: { name?: string; key?: string } = {}): Promise<CreatedApiKey> {
  if (opts.key !== undefined && !isAdminKey(opts.key)) throw invalid(`an admin key must be ${FORMAT}`);
  const key = opts.key ?? generateAdminKey();
  const id = randomUUID();
  const mask = maskAdminKey(key);
  try {
    await db.query('INSERT INTO admin_keys (id, key_hash, key_mask, name) VALUES ($1, $2, $3, $4)', [
      id, hashApiKey(key), mask, opts.name ?? '',
    ]);
  } catch (err) {
    if ((err as { code?: unknown }).code === '23505') throw conflict('this admin key is already registered');
    throw err;
  }
  return { id, key, mask };
}

/**
 * The admin key's id, or null for a malformed, unknown or revoked key. Records use in
 * last_used_at at most once a minute.
 */
export async function authenticateAdminKey(db: Sql, key: string): Promise<{ kind: 'admin'; adminKeyId: string } | null> {
  if (!isAdminKey(key)) return null;
  const rows = await db.query<{ id: string }>(
    `WITH k AS (
       SELECT id, last_used_at FROM admin_keys WHERE key_hash = $1 AND revoked_at IS NULL
     ), touched AS (
       UPDATE admin_keys SET last_used_at = now()
       WHERE id IN (SELECT id FROM k WHERE last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
     )
     SELECT id FROM k`,
    [hashApiKey(key)],
  );
  return rows[0] ? { kind: 'admin', adminKeyId: rows[0].id } : null;
}

export async function listAdminKeys(db: Sql, opts: { includeRevoked?: boolean } = {}): Promise<AdminKeyInfo[]> {
  const rows = await db.query<Row>(
    `SELECT id, name, key_mask, created_at, last_used_at, revoked_at FROM admin_keys
     WHERE $1 OR revoked_at IS NULL ORDER BY seq`,
    [opts.includeRevoked ?? false],
  );
  return rows.map(toInfo);
}

/**
 * Revokes an admin key, never the last active one (that would leave nobody able to manage
 * teams): conflict then. Idempotent; not_found for an unknown id. One transaction locking the
 * active keys, so two concurrent revocations of the last two cannot both succeed.
 */
export async function revokeAdminKeyKeepingOne(db: Database, id: string): Promise<void> {
  await db.transaction(async (tx) => {
    const active = await tx.query<{ id: string }>('SELECT id FROM admin_keys WHERE revoked_at IS NULL ORDER BY id FOR UPDATE');
    if (!active.some((k) => k.id === id)) {
      if ((await tx.query('SELECT 1 FROM admin_keys WHERE id = $1', [id])).length === 0) throw notFound(`admin key ${id} not found`);
      return; // revoked already
    }
    if (active.length === 1) throw conflict('this is the last active admin key: create another one before revoking it');
    await tx.query('UPDATE admin_keys SET revoked_at = now() WHERE id = $1', [id]);
  });
}

// ---------------------------------------------------------------------------------------------
// Bootstrap

const BOOTSTRAP_LOCK_KEY = '7953947125497100290';

/**
 * Makes sure the operator has an admin key. When the database has none (a new database, or one
 * from before admin keys existed): registers the given key, else generates one. When it has some:
 * a given key it has never seen is registered (setting NESTBOX_ADMIN_KEY later works); a known one,
 * even revoked, is left alone. Returns the key this call added, to show once, or null.
 * Safe when several replicas start together (advisory lock).
 */
export async function ensureBootstrapAdminKey(db: Database, opts: { adminKey?: string } = {}): Promise<{ adminKey: string | null }> {
  const given = opts.adminKey;
  if (given !== undefined && !isAdminKey(given)) throw invalid(`NESTBOX_ADMIN_KEY must be ${FORMAT}`);
  return db.transaction(async (tx) => {
    await tx.query(`SELECT pg_advisory_xact_lock(${BOOTSTRAP_LOCK_KEY})`);
    const any = await tx.query('SELECT 1 FROM admin_keys LIMIT 1');
    if (any.length === 0) return { adminKey: (await createAdminKey(tx, { name: 'bootstrap', key: given })).key };
    if (given !== undefined && (await tx.query('SELECT 1 FROM admin_keys WHERE key_hash = $1', [hashApiKey(given)])).length === 0) {
      return { adminKey: (await createAdminKey(tx, { name: 'NESTBOX_ADMIN_KEY', key: given })).key };
    }
    return { adminKey: null };
  });
}
