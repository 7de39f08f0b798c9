// Delivers lifecycle events from the outbox to the teams' webhooks: strictly in seq order per
// webhook, at least once, signed, with exponential backoff. Safe on several replicas at once:
// a webhook is delivered only by the dispatcher holding its lease, and every write of progress
// is fenced on that lease.
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { Database } from '../../store/database.ts';
import { HoleGate, readOutboxAfter, type OutboxEvent } from '../../store/events.ts';
import {
  claimDueWebhooks, recordAttempt, saveProgress, type DeliveryOutcome, type WebhookWithSecret,
} from '../../store/webhooks.ts';
import { SIGNATURE_HEADER, signWebhook } from './signature.ts';

export const EVENT_ID_HEADER = 'Nestbox-Event-Id';
export const WEBHOOK_EVENT_TYPE = 'sandbox.lifecycle';

export interface WebhookDispatcherOptions {
  clock?: { now(): Date };
  /** This dispatcher's lease owner id; unique per process by default. */
  owner?: string;
  /** Per POST (default 10 s). */
  requestTimeoutMs?: number;
  /** How long a claim or a renewal holds a webhook (default max(60 s, 3 x the request timeout)). */
  leaseMs?: number;
  /** Backoff after the first failure, doubling after each (default 1 s), up to the cap (default 5 min). */
  backoffBaseMs?: number;
  backoffCapMs?: number;
  /** Attempts of one event before it is given up (default 10). */
  maxAttempts?: number;
  /** POSTs per webhook per tick (default 100). */
  maxEventsPerTick?: number;
  /** How long a hole in the outbox sequence is waited for (default 2 s; see HoleGate). */
  holeGraceMs?: number;
  fetch?: typeof globalThis.fetch;
}

/** The JSON body of a webhook request. */
export function webhookPayload(e: OutboxEvent) {
  return {
    type: WEBHOOK_EVENT_TYPE, id: e.id, seq: e.seq, teamId: e.teamId, sandboxId: e.sandboxId,
    from: e.from, to: e.to, reason: e.reason, generation: e.generation, at: e.at.toISOString(),
  };
}

interface PostResult {
  ok: boolean;
  httpStatus: number | null;
  error: string | null;
  durationMs: number;
}

/** Outbox rows read per webhook per tick, of all teams. */
const SCAN_LIMIT = 500;
/** Webhooks claimed per tick; they are delivered concurrently. */
const MAX_WEBHOOKS_PER_TICK = 50;

export class WebhookDispatcher {
  readonly owner: string;
  private readonly clock: { now(): Date };
  private readonly requestTimeoutMs: number;
  private readonly leaseMs: number;
  private readonly backoffBaseMs: number;
  private readonly backoffCapMs: number;
  private readonly maxAttempts: number;
  private readonly maxEventsPerTick: number;
  private readonly holeGraceMs: number;
  private readonly fetch: typeof globalThis.fetch;
  // Only webhooks waiting at a hole have a gate here: the gate remembers since when.
  private readonly gates = new Map<string, HoleGate>();
  private stopping = false;

  constructor(
    private readonly db: Database,
    o: WebhookDispatcherOptions = {},
  ) {
    this.clock = o.clock ?? { now: () => new Date() };
    this.owner = o.owner ?? `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
    this.requestTimeoutMs = o.requestTimeoutMs ?? 10_000;
    this.leaseMs = o.leaseMs ?? Math.max(60_000, 3 * this.requestTimeoutMs);
    // A lease is renewed before each POST; it must outlast one, or another replica could take the
    // webhook over mid-request and deliver concurrently.
    if (this.leaseMs < 2 * this.requestTimeoutMs) throw new Error('leaseMs must be at least twice requestTimeoutMs');
    this.backoffBaseMs = o.backoffBaseMs ?? 1_000;
    this.backoffCapMs = o.backoffCapMs ?? 300_000;
    this.maxAttempts = Math.max(1, o.maxAttempts ?? 10);
    this.maxEventsPerTick = o.maxEventsPerTick ?? 100;
    this.holeGraceMs = o.holeGraceMs ?? 2_000;
    this.fetch = o.fetch ?? globalThis.fetch;
  }

  /** The delay after the `failures`-th consecutive failure. */
  backoffMs(failures: number): number {
    return Math.min(this.backoffCapMs, this.backoffBaseMs * 2 ** Math.min(failures - 1, 40));
  }

  /**
   * Ends the tick in progress after its current requests (their leases are released), and makes
   * later ticks do nothing: shutdown then waits for at most one request timeout.
   */
  stop(): void {
    this.stopping = true;
  }

  /**
   * One pass: claims the due webhooks and delivers their pending events. Returns the number of
   * POSTs made (0: nothing was due). A failure of one webhook (a database error) does not stop
   * the others; the first one is thrown after all are done.
   */
  async tick(): Promise<number> {
    if (this.stopping) return 0;
    const claimed = await claimDueWebhooks(this.db, {
      owner: this.owner, now: this.clock.now(), leaseMs: this.leaseMs, limit: MAX_WEBHOOKS_PER_TICK,
    });
    const results = await Promise.allSettled(claimed.map((w) => this.serve(w)));
    let posts = 0;
    for (const r of results) {
      if (r.status === 'rejected') throw r.reason;
      posts += r.value;
    }
    return posts;
  }

  /** Delivers one leased webhook's events in order until done, failing, or at the tick limit. */
  private async serve(w: WebhookWithSecret): Promise<number> {
    let lastSeq = w.lastSeq;
    let attempts = w.attempts;
    let nextAttemptAt: Date | null = null;
    let held = true;
    let posts = 0;
    try {
      const gate = this.gates.get(w.id) ?? new HoleGate(this.holeGraceMs, () => this.clock.now().getTime());
      const events = gate.admit(lastSeq, await readOutboxAfter(this.db, lastSeq, SCAN_LIMIT));
      if (gate.waiting) this.gates.set(w.id, gate);
      else this.gates.delete(w.id);

      for (const e of events) {
        if (e.teamId !== w.teamId) {
          lastSeq = e.seq; // not the team's: skipped, but the cursor moves past it
          continue;
        }
        if (posts >= this.maxEventsPerTick || this.stopping) break;
        const attempt = attempts + 1;
        const result = await this.post(w, e);
        posts++;
        const now = this.clock.now();
        let outcome: DeliveryOutcome;
        if (result.ok || attempt >= this.maxAttempts) {
          outcome = result.ok ? 'delivered' : 'gave_up';
          lastSeq = e.seq;
          attempts = 0;
        } else {
          // Keep the cursor just before this event (holes and other teams' events before it are
          // done with), so nothing after it is sent first.
          outcome = 'failed';
          lastSeq = e.seq - 1;
          attempts = attempt;
          nextAttemptAt = new Date(now.getTime() + this.backoffMs(attempt));
        }
        held = await recordAttempt(
          this.db, this.owner,
          { lastSeq, attempts, nextAttemptAt, leaseUntil: new Date(now.getTime() + this.leaseMs) },
          {
            webhookId: w.id, eventId: e.id, eventSeq: e.seq, sandboxId: e.sandboxId, attempt, outcome,
            httpStatus: result.httpStatus, error: result.error, durationMs: result.durationMs, at: now,
          },
        );
        if (!held || outcome === 'failed') break;
      }
    } finally {
      // Release, with the cursor moved past any other teams' events read after the last POST.
      if (held) await saveProgress(this.db, w.id, this.owner, { lastSeq, attempts, nextAttemptAt, leaseUntil: null });
    }
    return posts;
  }

  private async post(w: WebhookWithSecret, e: OutboxEvent): Promise<PostResult> {
    const body = JSON.stringify(webhookPayload(e));
    const started = performance.now();
    const elapsed = () => performance.now() - started;
    try {
      const res = await this.fetch(w.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'Nestbox-Webhooks/1',
          [EVENT_ID_HEADER]: e.id,
          [SIGNATURE_HEADER]: signWebhook(w.secret, body, this.clock.now()),
        },
        body,
        // A redirect is a failure, not followed: the URL is the one the team registered.
        redirect: 'manual',
        signal: AbortSignal.timeout(this.requestTimeoutMs),
      });
      await res.body?.cancel().catch(() => undefined); // the response body is not used
      const ok = res.status >= 200 && res.status < 300;
      return { ok, httpStatus: res.status, error: ok ? null : `HTTP ${res.status}`, durationMs: elapsed() };
    } catch (err) {
      return { ok: false, httpStatus: null, error: this.describe(err), durationMs: elapsed() };
    }
  }

  private describe(err: unknown): string {
    const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } };
    if (e.name === 'TimeoutError') return `timed out after ${this.requestTimeoutMs} ms`;
    const cause = e.cause?.code ?? e.cause?.message;
    return `${e.message ?? String(err)}${cause ? `: ${cause}` : ''}`.slice(0, 500);
  }
}
