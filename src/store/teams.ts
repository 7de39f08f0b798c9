// Teams and their API keys, in E2B's format: `e2b_` + 40 lower-case hex characters. A key is
// shown once, at creation; the database keeps only its sha256 (hex) and a mask for listings.
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { conflict, invalid, notFound } from '../core/errors.ts';
import type { Database, Sql } from './database.ts';
import { QUOTA_STATES } from './sandboxes.ts';

export const API_KEY_PATTERN = /^e2b_[0-9a-f]{40}$/;

export const DEFAULT_MAX_RUNNING = 20;
export const DEFAULT_MAX_TIMEOUT_S = 86_400;
export const MAX_TEAM_NAME_LENGTH = 128;

export interface Team {
  id: string;
  name: string;
  maxRunning: number;
  maxTimeoutS: number;
  createdAt: Date;
}

/** A team with what an operator looks at first. */
export interface TeamSummary extends Team {
  /** Keys not revoked. */
  activeKeys: number;
  /** Sandboxes counting toward maxRunning now. */
  activeSandboxes: number;
}

export interface ApiKeyInfo {
  id: string;
  teamId: string;
  name: string;
  mask: string;
  createdAt: Date;
  lastUsedAt: Date | null;
  revokedAt: Date | null;
}

export interface CreatedApiKey {
  id: string;
  /** The whole key: returned this once, never stored. */
  key: string;
  mask: string;
}

// ---------------------------------------------------------------------------------------------
// Keys, pure

export function generateApiKey(): string {
  return `e2b_${randomBytes(20).toString('hex')}`;
}

export function isApiKey(value: string): boolean {
  return API_KEY_PATTERN.test(value);
}

export function hashApiKey(key: string): string {
  return createHash('sha256').update(key, 'utf8').digest('hex');
}

/** e2b_0123…cdef → "e2b_01…cdef": enough to tell keys apart, useless to an attacker. */
export function maskApiKey(key: string): string {
  return `${key.slice(0, 6)}…${key.slice(-4)}`;
}

// ---------------------------------------------------------------------------------------------
// Teams

interface TeamRow {
  id: string;
  name: string;
  max_running: number;
  max_timeout_s: number;
  created_at: Date;
}

const TEAM_COLUMNS = 'id, name, max_running, max_timeout_s, created_at';

function toTeam(r: TeamRow): Team {
  return { id: r.id, name: r.name, maxRunning: r.max_running, maxTimeoutS: r.max_timeout_s, createdAt: r.created_at };
}

function checkPositiveInt(what: string, v: number | undefined): void {
  if (v !== undefined && (!Number.isSafeInteger(v) || v < 1 || v > 2_147_483_647)) {
    throw invalid(`${what} must be a positive integer, got ${v}`);
  }
}

/** The name as stored (trimmed); invalid when empty, too long or holding control characters. */
function checkTeamName(raw: string): string {
  const name = raw.trim();
  if (!name) throw invalid('a team needs a name');
  if (name.length > MAX_TEAM_NAME_LENGTH) throw invalid(`a team name has at most ${MAX_TEAM_NAME_LENGTH} characters`);
  if (/[\u0000-\u001f\u007f]/.test(name)) throw invalid('a team name must not contain control characters');
  return name;
}

export interface NewTeam {
  name: string;
  maxRunning?: number;
  maxTimeoutS?: number;
}

export async function createTeam(db: Sql, opts: NewTeam): Promise<Team> {
  const name = checkTeamName(opts.name);
  checkPositiveInt('maxRunning', opts.maxRunning);
  checkPositiveInt('maxTimeoutS', opts.maxTimeoutS);
  const rows = await db.query<TeamRow>(
    `INSERT INTO teams (id, name, max_running, max_timeout_s)
     VALUES ($1, $2, $3, $4)
     RETURNING ${TEAM_COLUMNS}`,
    [randomUUID(), name, opts.maxRunning ?? DEFAULT_MAX_RUNNING, opts.maxTimeoutS ?? DEFAULT_MAX_TIMEOUT_S],
  );
  return toTeam(rows[0]!);
}

// Serialises team creations, so that two with one name cannot both pass the name check.
const TEAM_CREATE_LOCK_KEY = '7953947125497100291';

/**
 * What the admin API does: a new team and its first key, together (never a team nobody can use).
 * Names are unique, ignoring case: conflict when one is taken.
 */
export async function createTeamWithKey(
  db: Database,
  opts: NewTeam & { keyName?: string },
): Promise<{ team: Team; apiKey: CreatedApiKey }> {
  const name = checkTeamName(opts.name);
  return db.transaction(async (tx) => {
    await tx.query(`SELECT pg_advisory_xact_lock(${TEAM_CREATE_LOCK_KEY})`);
    const taken = await tx.query<{ id: string }>('SELECT id FROM teams WHERE lower(name) = lower($1) LIMIT 1', [name]);
    if (taken[0]) throw conflict(`a team named "${name}" exists already (${taken[0].id}): choose another name`);
    const team = await createTeam(tx, { ...opts, name });
    const apiKey = await createApiKey(tx, team.id, { name: opts.keyName ?? 'default' });
    return { team, apiKey };
  });
}

export async function getTeam(db: Sql, id: string): Promise<Team | null> {
  const rows = await db.query<TeamRow>(`SELECT ${TEAM_COLUMNS} FROM teams WHERE id = $1`, [id]);
  return rows[0] ? toTeam(rows[0]) : null;
}

export async function listTeams(db: Sql): Promise<Team[]> {
  const rows = await db.query<TeamRow>(`SELECT ${TEAM_COLUMNS} FROM teams ORDER BY seq`);
  return rows.map(toTeam);
}

const SUMMARY_SELECT = `
  SELECT t.id, t.name, t.max_running, t.max_timeout_s, t.created_at,
    (SELECT count(*) FROM api_keys k WHERE k.team_id = t.id AND k.revoked_at IS NULL) AS active_keys,
    (SELECT count(*) FROM sandboxes s WHERE s.team_id = t.id AND s.state = ANY($1::text[])) AS active_sandboxes
  FROM teams t`;

type SummaryRow = TeamRow & { active_keys: number; active_sandboxes: number };

const toSummary = (r: SummaryRow): TeamSummary => ({
  ...toTeam(r), activeKeys: Number(r.active_keys), activeSandboxes: Number(r.active_sandboxes),
});

/** Every team in creation order, with its active keys and sandboxes counted. */
export async function listTeamSummaries(db: Sql): Promise<TeamSummary[]> {
  const rows = await db.query<SummaryRow>(`${SUMMARY_SELECT} ORDER BY t.seq`, [QUOTA_STATES]);
  return rows.map(toSummary);
}

export async function getTeamSummary(db: Sql, id: string): Promise<TeamSummary | null> {
  const rows = await db.query<SummaryRow>(`${SUMMARY_SELECT} WHERE t.id = $2`, [QUOTA_STATES, id]);
  return rows[0] ? toSummary(rows[0]) : null;
}

// ---------------------------------------------------------------------------------------------
// API keys

interface KeyRow {
  id: string;
  team_id: string;
  name: string;
  key_mask: string;
  created_at: Date;
  last_used_at: Date | null;
  revoked_at: Date | null;
}

function toKeyInfo(r: KeyRow): ApiKeyInfo {
  return {
    id: r.id,
    teamId: r.team_id,
    name: r.name,
    mask: r.key_mask,
    createdAt: r.created_at,
    lastUsedAt: r.last_used_at,
    revokedAt: r.revoked_at,
  };
}

/**
 * Creates a key for a team. `key` registers a key chosen by the operator (NESTBOX_API_KEY); it
 * must have E2B's format. Throws not_found for an unknown team, conflict for a key that is
 * already registered (to any team, revoked or not).
 */
export async function createApiKey(
  db: Sql,
  teamId: string,
  opts: { name?: string; key?: string } = {},
): Promise<CreatedApiKey> {
  if (opts.key !== undefined && !isApiKey(opts.key)) {
    throw invalid('an API key must be "e2b_" followed by 40 lower-case hexadecimal characters (e2b_[0-9a-f]{40})');
  }
  const key = opts.key ?? generateApiKey();
  const id = randomUUID();
  const mask = maskApiKey(key);
  try {
    await db.query(`INSERT INTO api_keys (id, team_id, key_hash, key_mask, name) VALUES ($1, $2, $3, $4, $5)`, [
      id,
      teamId,
      hashApiKey(key),
      mask,
      opts.name ?? '',
    ]);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (code === '23503') throw notFound(`team ${teamId} not found`);
    if (code === '23505') throw conflict('this API key is already registered');
    throw err;
  }
  return { id, key, mask };
}

/**
 * The team a key belongs to, or null for a malformed, unknown or revoked key. Records use in
 * last_used_at, at most once a minute per key (so a busy key does not write on every request).
 */
export async function authenticateApiKey(db: Sql, key: string): Promise<{ kind: 'team'; teamId: string; keyId: string } | null> {
  if (!isApiKey(key)) return null;
  const rows = await db.query<{ id: string; team_id: string }>(
    `WITH k AS (
       SELECT id, team_id, last_used_at FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL
     ), touched AS (
       UPDATE api_keys SET last_used_at = now()
       WHERE id IN (SELECT id FROM k WHERE last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
     )
     SELECT id, team_id FROM k`,
    [hashApiKey(key)],
  );
  const r = rows[0];
  return r ? { kind: 'team', teamId: r.team_id, keyId: r.id } : null;
}

export async function listApiKeys(
  db: Sql,
  teamId: string,
  opts: { includeRevoked?: boolean } = {},
): Promise<ApiKeyInfo[]> {
  const rows = await db.query<KeyRow>(
    `SELECT id, team_id, name, key_mask, created_at, last_used_at, revoked_at FROM api_keys
     WHERE team_id = $1 AND ($2 OR revoked_at IS NULL)
     ORDER BY seq`,
    [teamId, opts.includeRevoked ?? false],
  );
  return rows.map(toKeyInfo);
}

/** Revokes a team's key. Idempotent; false when the team has no such key. */
export async function revokeApiKey(db: Sql, teamId: string, keyId: string): Promise<boolean> {
  const rows = await db.query(
    `UPDATE api_keys SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 AND team_id = $2 RETURNING id`,
    [keyId, teamId],
  );
  return rows.length > 0;
}

/**
 * Revokes a team's key, but never the team's last active one (that would lock the team out):
 * conflict then. Idempotent for a key already revoked; not_found when the team has no such key.
 * Runs in one transaction that locks the team's active keys, so two concurrent revocations of
 * its last two keys cannot both succeed.
 */
export async function revokeApiKeyKeepingOne(db: Database, teamId: string, keyId: string): Promise<void> {
  await db.transaction(async (tx) => {
    const active = await tx.query<{ id: string }>(
      `SELECT id FROM api_keys WHERE team_id = $1 AND revoked_at IS NULL ORDER BY id FOR UPDATE`,
      [teamId],
    );
    if (!active.some((k) => k.id === keyId)) {
      const known = await tx.query('SELECT 1 FROM api_keys WHERE id = $1 AND team_id = $2', [keyId, teamId]);
      if (known.length === 0) throw notFound(`API key ${keyId} not found`);
      return; // revoked already
    }
    if (active.length === 1) {
      throw conflict('this is the team\'s last active API key: create another one before revoking it');
    }
    await revokeApiKey(tx, teamId, keyId);
  });
}

// ---------------------------------------------------------------------------------------------
// Bootstrap

const BOOTSTRAP_LOCK_KEY = '7953947125497100289';

export interface BootstrapResult {
  teamId: string;
  /**
   * The key this call created or registered, to show the operator once; null when nothing was
   * added (the database already had its team, and the given key, if any, was already known).
   */
  apiKey: string | null;
}

/**
 * Makes sure a first team exists. On an empty database: creates team "default" and a key (the
 * given one, else a generated one). On a database with teams: returns the first team; a given
 * key that the database has never seen is registered to that team (so setting NESTBOX_API_KEY
 * after the first start works), while a known key, even revoked, is left as it is.
 *
 * Safe when several replicas start together: pass the Database (it runs in a transaction under
 * an advisory lock), or a transaction's handle.
 */
export async function ensureBootstrapTeam(db: Database | Sql, opts: { apiKey?: string } = {}): Promise<BootstrapResult> {
  if (opts.apiKey !== undefined && !isApiKey(opts.apiKey)) {
    throw invalid('NESTBOX_API_KEY must be "e2b_" followed by 40 lower-case hexadecimal characters (e2b_[0-9a-f]{40})');
  }
  if ('transaction' in db) return db.transaction((tx) => bootstrap(tx, opts.apiKey));
  return bootstrap(db, opts.apiKey);
}

async function bootstrap(tx: Sql, apiKey: string | undefined): Promise<BootstrapResult> {
  await tx.query(`SELECT pg_advisory_xact_lock(${BOOTSTRAP_LOCK_KEY})`);
  const first = (await tx.query<{ id: string }>('SELECT id FROM teams ORDER BY seq LIMIT 1'))[0];
  if (!first) {
    const team = await createTeam(tx, { name: 'default' });
    const created = await createApiKey(tx, team.id, { name: 'default', key: apiKey });
    return { teamId: team.id, apiKey: created.key };
  }
  if (apiKey !== undefined) {
    const known = await tx.query('SELECT 1 FROM api_keys WHERE key_hash = $1', [hashApiKey(apiKey)]);
    if (known.length === 0) {
      const created = await createApiKey(tx, first.id, { name: 'NESTBOX_API_KEY', key: apiKey });
      return { teamId: first.id, apiKey: created.key };
    }
  }
  return { teamId: first.id, apiKey: null };
}
