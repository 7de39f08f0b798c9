// Per-team webhooks and their delivery log. Each webhook carries its own outbox cursor and
// backoff; a lease (owner, until) lets one dispatcher at a time deliver it, without holding a
// transaction or a row lock across HTTP calls (PGlite is one connection).
import { randomBytes } from 'node:crypto';
import { conflict, invalid } from '../core/errors.ts';
import type { Database, Sql } from './database.ts';

/** A team may register this many webhooks: each one multiplies the delivery work. */
export const MAX_WEBHOOKS_PER_TEAM = 20;
export const MAX_WEBHOOK_URL_LENGTH = 2048;
export const MIN_SECRET_LENGTH = 16;

export interface WebhookInfo {
  id: string;
  teamId: string;
  url: string;
  createdAt: Date;
  /** The outbox cursor: every event up to this seq was delivered, given up, or not the team's. */
  lastSeq: number;
  /** Failed attempts so far of the event after lastSeq. */
  attempts: number;
  /** When the next attempt is due (backoff); null: now. */
  nextAttemptAt: Date | null;
}

export interface WebhookWithSecret extends WebhookInfo {
  secret: string;
}

export type DeliveryOutcome = 'delivered' | 'failed' | 'gave_up';

export interface DeliveryRecord {
  webhookId: string;
  eventId: string;
  eventSeq: number;
  sandboxId: string;
  attempt: number;
  outcome: DeliveryOutcome;
  httpStatus: number | null;
  error: string | null;
  durationMs: number;
  at: Date;
}

export interface Delivery extends DeliveryRecord {
  id: number;
}

/** A dispatcher's state of one webhook after some work, written fenced on its lease. */
export interface Progress {
  lastSeq: number;
  attempts: number;
  nextAttemptAt: Date | null;
  /** Renew the lease until then; null releases it. */
  leaseUntil: Date | null;
}

interface WebhookRow {
  id: string; team_id: string; url: string; secret: string; created_at: Date; last_seq: number;
  attempts: number; next_attempt_at: Date | null;
}

interface DeliveryRow {
  id: number; webhook_id: string; event_id: string; event_seq: number; sandbox_id: string; attempt: number;
  outcome: DeliveryOutcome; http_status: number | null; error: string | null; duration_ms: number; at: Date;
}

const COLUMNS = 'id, team_id, url, secret, created_at, last_seq, attempts, next_attempt_at';

const toInfo = (r: WebhookRow): WebhookInfo => ({
  id: r.id, teamId: r.team_id, url: r.url, createdAt: r.created_at, lastSeq: Number(r.last_seq),
  attempts: r.attempts, nextAttemptAt: r.next_attempt_at,
});
const withSecret = (r: WebhookRow): WebhookWithSecret => ({ ...toInfo(r), secret: r.secret });

const toDelivery = (r: DeliveryRow): Delivery => ({
  id: Number(r.id), webhookId: r.webhook_id, eventId: r.event_id, eventSeq: Number(r.event_seq),
  sandboxId: r.sandbox_id, attempt: r.attempt, outcome: r.outcome, httpStatus: r.http_status, error: r.error,
  durationMs: r.duration_ms, at: r.at,
});

/** Throws `invalid` unless `url` is an absolute http(s) URL that fetch() can call. */
export function checkWebhookUrl(url: string): void {
  if (url.length > MAX_WEBHOOK_URL_LENGTH) throw invalid(`url: longer than ${MAX_WEBHOOK_URL_LENGTH} characters`);
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw invalid('url: not an absolute URL');
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') throw invalid('url: only http and https URLs are supported');
  if (!u.hostname) throw invalid('url: has no host');
  // fetch() refuses URLs with credentials: refuse them here rather than fail every delivery.
  if (u.username || u.password) throw invalid('url: must not contain credentials');
}

/** A random signing secret, for webhooks registered without one. */
export function generateWebhookSecret(): string {
  return `whsec_${randomBytes(24).toString('hex')}`;
}

/**
 * Registers a webhook. Its cursor starts at the current end of the outbox, so it receives only
 * events that happen from now on.
 */
export async function createWebhook(
  db: Sql,
  teamId: string,
  opts: { url: string; secret?: string },
): Promise<WebhookWithSecret> {
  checkWebhookUrl(opts.url);
  if (opts.secret !== undefined && opts.secret.length < MIN_SECRET_LENGTH) {
    throw invalid(`secret: must be at least ${MIN_SECRET_LENGTH} characters`);
  }
  const id = `wh_${randomBytes(10).toString('hex')}`;
  const rows = await db.query<WebhookRow>(
    `INSERT INTO webhooks (id, team_id, url, secret, last_seq)
     SELECT $1, $2, $3, $4, COALESCE((SELECT max(seq) FROM lifecycle_events), 0)
     WHERE (SELECT count(*) FROM webhooks WHERE team_id = $2 AND deleted_at IS NULL) < $5
     RETURNING ${COLUMNS}`,
    [id, teamId, opts.url, opts.secret ?? generateWebhookSecret(), MAX_WEBHOOKS_PER_TEAM],
  );
  if (!rows[0]) throw conflict(`a team may have at most ${MAX_WEBHOOKS_PER_TEAM} webhooks`);
  return withSecret(rows[0]);
}

export async function listWebhooks(db: Sql, teamId: string): Promise<WebhookInfo[]> {
  const rows = await db.query<WebhookRow>(
    `SELECT ${COLUMNS} FROM webhooks WHERE team_id = $1 AND deleted_at IS NULL ORDER BY seq`, [teamId]);
  return rows.map(toInfo);
}

/** The team's webhook; null when unknown, deleted or another team's. */
export async function getWebhook(db: Sql, teamId: string, id: string): Promise<WebhookInfo | null> {
  const rows = await db.query<WebhookRow>(
    `SELECT ${COLUMNS} FROM webhooks WHERE id = $1 AND team_id = $2 AND deleted_at IS NULL`, [id, teamId]);
  return rows[0] ? toInfo(rows[0]) : null;
}

/** Soft delete (the log keeps its rows); false when unknown, already deleted or another team's. */
export async function deleteWebhook(db: Sql, teamId: string, id: string, at: Date = new Date()): Promise<boolean> {
  const rows = await db.query(
    `UPDATE webhooks SET deleted_at = $3, lease_owner = NULL, lease_until = NULL
     WHERE id = $1 AND team_id = $2 AND deleted_at IS NULL RETURNING id`,
    [id, teamId, at],
  );
  return rows.length === 1;
}

/**
 * Leases up to `limit` webhooks that are due, not leased by anyone (or whose lease ran out), and
 * have outbox events after their cursor. SKIP LOCKED plus the re-checked condition on the
 * updated row make concurrent claimers on Postgres take disjoint sets.
 */
export async function claimDueWebhooks(
  db: Sql,
  o: { owner: string; now: Date; leaseMs: number; limit: number },
): Promise<WebhookWithSecret[]> {
  const rows = await db.query<WebhookRow>(
    `UPDATE webhooks SET lease_owner = $1, lease_until = $3
     WHERE id IN (
         SELECT id FROM webhooks w
         WHERE deleted_at IS NULL
           AND (next_attempt_at IS NULL OR next_attempt_at <= $2)
           AND (lease_until IS NULL OR lease_until <= $2)
           AND EXISTS (SELECT 1 FROM lifecycle_events e WHERE e.seq > w.last_seq)
         ORDER BY next_attempt_at NULLS FIRST, seq
         LIMIT $4
         FOR UPDATE SKIP LOCKED)
       AND deleted_at IS NULL AND (lease_until IS NULL OR lease_until <= $2)
     RETURNING ${COLUMNS}`,
    [o.owner, o.now, new Date(o.now.getTime() + o.leaseMs), o.limit],
  );
  return rows.map(withSecret);
}

/**
 * Writes a dispatcher's progress, fenced on its lease: false (nothing written) when another
 * owner has the webhook now, or it was deleted. The cursor never moves back.
 */
export async function saveProgress(db: Sql, id: string, owner: string, p: Progress): Promise<boolean> {
  const rows = await db.query(
    `UPDATE webhooks SET last_seq = GREATEST(last_seq, $3), attempts = $4, next_attempt_at = $5,
       lease_owner = CASE WHEN $6::timestamptz IS NULL THEN NULL ELSE lease_owner END, lease_until = $6
     WHERE id = $1 AND lease_owner = $2 AND deleted_at IS NULL RETURNING id`,
    [id, owner, p.lastSeq, p.attempts, p.nextAttemptAt, p.leaseUntil],
  );
  return rows.length === 1;
}

export async function recordDelivery(db: Sql, d: DeliveryRecord): Promise<void> {
  await db.query(
    `INSERT INTO webhook_deliveries (webhook_id, event_id, event_seq, sandbox_id, attempt, outcome, http_status, error, duration_ms, at)
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)`,
    [d.webhookId, d.eventId, d.eventSeq, d.sandboxId, d.attempt, d.outcome, d.httpStatus, d.error,
      Math.round(d.durationMs), d.at],
  );
}

/**
 * Logs an attempt and saves the progress it made, together. The attempt is logged even when the
 * lease was lost meanwhile (it did happen); returns whether the progress was saved.
 */
export async function recordAttempt(db: Database, owner: string, p: Progress, d: DeliveryRecord): Promise<boolean> {
  return db.transaction(async (tx) => {
    const held = await saveProgress(tx, d.webhookId, owner, p);
    await recordDelivery(tx, d);
    return held;
  });
}

/** The team's webhook's delivery attempts, newest first. */
export async function listDeliveries(db: Sql, teamId: string, webhookId: string, limit: number): Promise<Delivery[]> {
  const rows = await db.query<DeliveryRow>(
    `SELECT d.* FROM webhook_deliveries d JOIN webhooks w ON w.id = d.webhook_id
     WHERE d.webhook_id = $1 AND w.team_id = $2 ORDER BY d.id DESC LIMIT $3`,
    [webhookId, teamId, limit],
  );
  return rows.map(toDelivery);
}
