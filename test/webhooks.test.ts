// Webhooks: signatures, delivery from the outbox (order, retries with backoff, giving up, leases
// between concurrent dispatchers) and the /nestbox/v1/webhooks routes, on PGlite and Postgres.
// Receivers are real HTTP servers on 127.0.0.1; the dispatcher's clock is a manual one, so
// backoff is checked on its timestamps, never by waiting.
import { createHmac, randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, afterEach, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type { FastifyInstance } from 'fastify';
import { buildApiServer } from '../src/control-plane/api/server.ts';
import { WebhookDispatcher } from '../src/control-plane/webhooks/dispatcher.ts';
import { signWebhook, verifyWebhookSignature } from '../src/control-plane/webhooks/signature.ts';
import { newSandboxId } from '../src/core/ids.ts';
import type { SandboxState } from '../src/core/states.ts';
import type { Database } from '../src/store/database.ts';
import { lastEventSeq, type OutboxEvent } from '../src/store/events.ts';
import { insertSandbox, writeTransition } from '../src/store/sandboxes.ts';
import { authenticateApiKey, createApiKey, createTeam } from '../src/store/teams.ts';
import {
  claimDueWebhooks, createWebhook, deleteWebhook, getWebhook, listDeliveries, saveProgress,
} from '../src/store/webhooks.ts';
import { forEachDatabase } from './helpers/databases.ts';
import { FakeLifecycle } from './helpers/fake-lifecycle.ts';
import { apiCaller, assertApiError } from './helpers/api-inject.ts';
import { ManualClock } from './helpers/manual-clock.ts';

const T0 = Date.parse('2026-03-01T00:00:00Z');
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


// ---------------------------------------------------------------------------------------------
// A webhook receiver

interface Received {
  path: string;
  headers: IncomingMessage['headers'];
  body: string;
  json: any;
}

type Reply = number | 'hang';

class Receiver {
  readonly requests: Received[] = [];
  /** Decides each response; 200 by default. */
  respond: (r: Received) => Reply | Promise<Reply> = () => 200;
  readonly inFlight = new Map<string, number>();
  readonly maxInFlight = new Map<string, number>();
  /** Per path, the seqs of the events answered with 2xx, in the order answered. */
  readonly accepted = new Map<string, number[]>();

  private constructor(
    private readonly server: Server,
    readonly url: string,
  ) {}

  static async start(): Promise<Receiver> {
    let self: Receiver | undefined;
    const server = createServer((req, res) => void self!.handle(req, res));
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    self = new Receiver(server, `http://127.0.0.1:${(server.address() as AddressInfo).port}`);
    return self;
  }

  private async handle(req: IncomingMessage, res: ServerResponse) {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = Buffer.concat(chunks).toString('utf8');
    const r: Received = { path: req.url ?? '', headers: req.headers, body, json: JSON.parse(body) };
    this.requests.push(r);
    const n = (this.inFlight.get(r.path) ?? 0) + 1;
    this.inFlight.set(r.path, n);
    this.maxInFlight.set(r.path, Math.max(n, this.maxInFlight.get(r.path) ?? 0));
    const reply = await this.respond(r);
    this.inFlight.set(r.path, this.inFlight.get(r.path)! - 1);
    if (reply === 'hang') return; // never answered; closed with the server
    if (reply >= 200 && reply < 300) this.accepted.set(r.path, [...(this.accepted.get(r.path) ?? []), r.json.seq]);
    if (reply >= 300 && reply < 400) res.setHeader('location', `${this.url}/elsewhere`);
    res.writeHead(reply, { 'content-type': 'text/plain' }).end('ok');
  }

  async close() {
    this.server.closeAllConnections();
    await new Promise<void>((r) => this.server.close(() => r()));
  }
}

/** A URL on which nothing listens (connection refused). */
async function deadUrl(): Promise<string> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', r));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((r) => s.close(() => r()));
  return `http://127.0.0.1:${port}/hook`;
}

// ---------------------------------------------------------------------------------------------
// Producing events through the real store functions

const newTeam = async (db: Database) => (await createTeam(db, { name: `t-${randomUUID().slice(0, 8)}` })).id;

const PATH: SandboxState[] = ['starting', 'running', 'pausing', 'paused', 'resuming', 'running', 'killing', 'killed'];

/** A new sandbox of `teamId` that goes through `count` events; returns them in order. */
async function sandboxEvents(db: Database, teamId: string, count: number, clock: ManualClock): Promise<OutboxEvent[]> {
  const sandboxId = newSandboxId();
  const { row, event } = await db.transaction((tx) =>
    insertSandbox(tx, {
      sandboxId, teamId, templateId: 'base', nodeId: null, cpuCount: 1, memoryMB: 512, diskSizeMB: 1024, metadata: {},
      envVars: {}, envdAccessToken: 'tok', allowInternetAccess: true, secure: true, autoPause: false,
      autoPauseMemory: true, autoResume: false, timeoutMs: 60_000,
    }, clock.now()),
  );
  const events = [event as OutboxEvent];
  let generation = row.generation;
  for (let i = 1; i < count; i++) {
    const w = await writeTransition(db, {
      sandboxId, from: PATH[i - 1]!, to: PATH[i]!, generation, reason: 'requested', at: clock.now(),
    });
    assert.ok(w, 'transition written');
    generation = w.row.generation;
    events.push(w.event as OutboxEvent);
  }
  return events;
}

/** The exact body a webhook request must carry for `e`. */
const expectedBody = (e: OutboxEvent) => ({
  type: 'sandbox.lifecycle', id: e.id, seq: e.seq, teamId: e.teamId, sandboxId: e.sandboxId, from: e.from, to: e.to,
  reason: e.reason, generation: e.generation, at: e.at.toISOString(),
});

// ---------------------------------------------------------------------------------------------

describe('webhook signatures', () => {
  const secret = 'whsec_0123456789abcdef';
  const body = '{"id":"e1","to":"running"}';
  const at = new Date(T0);

  test('the header is t=<unix seconds>,v1=<HMAC-SHA256 of "t.body"> and verifies with the secret', () => {
    const t = T0 / 1000;
    const mac = createHmac('sha256', secret).update(`${t}.${body}`).digest('hex');
    assert.equal(signWebhook(secret, body, at), `t=${t},v1=${mac}`);
    assert.equal(verifyWebhookSignature(secret, signWebhook(secret, body, at), body, { now: at }), true);
    assert.equal(verifyWebhookSignature(secret, signWebhook(secret, body, at), Buffer.from(body), { now: at }), true);
  });

  test('a wrong secret, a tampered body or a tampered timestamp fail', () => {
    const header = signWebhook(secret, body, at);
    assert.equal(verifyWebhookSignature('whsec_somethingelse000', header, body, { now: at }), false);
    assert.equal(verifyWebhookSignature(secret, header, body.replace('running', 'paused'), { now: at }), false);
    assert.equal(verifyWebhookSignature(secret, header, `${body} `, { now: at }), false);
    const shifted = header.replace(`t=${T0 / 1000}`, `t=${T0 / 1000 + 1}`);
    assert.equal(verifyWebhookSignature(secret, shifted, body, { now: at }), false);
  });

  test('stale (or future) timestamps fail, within the tolerance they pass', () => {
    const header = signWebhook(secret, body, at);
    const later = (s: number) => new Date(T0 + s * 1000);
    assert.equal(verifyWebhookSignature(secret, header, body, { now: later(300) }), true);
    assert.equal(verifyWebhookSignature(secret, header, body, { now: later(301) }), false);
    assert.equal(verifyWebhookSignature(secret, header, body, { now: later(-301) }), false);
    assert.equal(verifyWebhookSignature(secret, header, body, { now: later(60), toleranceS: 59 }), false);
    assert.equal(verifyWebhookSignature(secret, header, body, { now: later(60), toleranceS: 60 }), true);
  });

  test('malformed headers fail; any of several v1 values may match', () => {
    const header = signWebhook(secret, body, at);
    const v1 = header.split(',v1=')[1]!;
    for (const bad of ['', 'garbage', `v1=${v1}`, `t=${T0 / 1000}`, `t=abc,v1=${v1}`, `t=${T0 / 1000},v1=${v1.slice(2)}`,
      `t=${T0 / 1000},v1=${'z'.repeat(64)}`, `t=${T0 / 1000},v0=${v1}`]) {
      assert.equal(verifyWebhookSignature(secret, bad, body, { now: at }), false, bad);
    }
    assert.equal(verifyWebhookSignature(secret, undefined, body, { now: at }), false);
    assert.equal(verifyWebhookSignature(secret, `t=${T0 / 1000},v1=${'0'.repeat(64)},v1=${v1}`, body, { now: at }), true);
  });
});

forEachDatabase('webhook delivery', (t) => {
  const receivers: Receiver[] = [];
  const receiver = async () => {
    const r = await Receiver.start();
    receivers.push(r);
    return r;
  };
  /** A new team with a webhook to a fresh receiver, and a clock at T0: most tests start here. */
  const hooked = async (db: Database) => {
    const clock = new ManualClock(T0);
    const team = await newTeam(db);
    const rx = await receiver();
    const wh = await createWebhook(db, team, { url: `${rx.url}/hook` });
    return { clock, team, rx, wh };
  };
  afterEach(async () => {
    // Webhooks of one test must not be delivered by the next test's dispatchers.
    await (await t.db()).query('UPDATE webhooks SET deleted_at = now() WHERE deleted_at IS NULL');
    for (const r of receivers.splice(0)) await r.close();
  });

  test('registering starts at the current end of the outbox: only new events are sent', async () => {
    const db = await t.db();
    const clock = new ManualClock(T0);
    const team = await newTeam(db);
    await sandboxEvents(db, team, 3, clock);
    const rx = await receiver();
    const wh = await createWebhook(db, team, { url: `${rx.url}/hook` });
    assert.equal(wh.lastSeq, await lastEventSeq(db));
    assert.ok(wh.lastSeq >= 3);
    const d = new WebhookDispatcher(db, { clock });
    assert.equal(await d.tick(), 0);
    assert.equal(rx.requests.length, 0);
    const [fresh] = await sandboxEvents(db, team, 1, clock);
    assert.equal(await d.tick(), 1);
    assert.deepEqual(rx.requests.map((r) => r.json.id), [fresh!.id]);
  });

  test("the team's events arrive in seq order, signed, with their event id; another team's never", async () => {
    const db = await t.db();
    const clock = new ManualClock(T0);
    const [a, b] = [await newTeam(db), await newTeam(db)];
    const [ra, rb] = [await receiver(), await receiver()];
    const wa = await createWebhook(db, a, { url: `${ra.url}/a` });
    const wb = await createWebhook(db, b, { url: `${rb.url}/b`, secret: 'team-b-secret-0123' });
    assert.equal(wb.secret, 'team-b-secret-0123');
    const a1 = await sandboxEvents(db, a, 3, clock);
    const b1 = await sandboxEvents(db, b, 2, clock);
    const a2 = await sandboxEvents(db, a, 4, clock);
    const d = new WebhookDispatcher(db, { clock });
    assert.equal(await d.tick(), 9);

    const forA = [...a1, ...a2];
    assert.deepEqual(ra.requests.map((r) => r.json), forA.map(expectedBody));
    assert.deepEqual(rb.requests.map((r) => r.json), b1.map(expectedBody));
    assert.deepEqual(ra.requests.map((r) => r.json.seq), [...forA.map((e) => e.seq)].sort((x, y) => x - y));
    for (const r of ra.requests) {
      assert.equal(r.path, '/a');
      assert.equal(r.headers['content-type'], 'application/json');
      assert.equal(r.headers['nestbox-event-id'], r.json.id);
      const sig = r.headers['nestbox-signature'] as string;
      assert.match(sig, /^t=\d+,v1=[0-9a-f]{64}$/);
      assert.equal(verifyWebhookSignature(wa.secret, sig, r.body, { now: clock.now() }), true);
      assert.equal(verifyWebhookSignature(wb.secret, sig, r.body, { now: clock.now() }), false);
    }
    // Both cursors moved past every event, other teams' included.
    const end = await lastEventSeq(db);
    assert.equal((await getWebhook(db, a, wa.id))!.lastSeq, end);
    assert.equal((await getWebhook(db, b, wb.id))!.lastSeq, end);
    assert.equal(await d.tick(), 0, 'nothing is sent twice');
    // An event of team b alone: a's cursor moves past it, a receives nothing.
    await sandboxEvents(db, b, 1, clock);
    assert.equal(await d.tick(), 1);
    assert.equal(ra.requests.length, forA.length);
    assert.equal((await getWebhook(db, a, wa.id))!.lastSeq, await lastEventSeq(db));
  });

  test('a failing receiver gets the same event again with backoff; later events wait for it', async () => {
    const db = await t.db();
    const clock = new ManualClock(T0);
    const team = await newTeam(db);
    const rx = await receiver();
    let calls = 0;
    rx.respond = () => (++calls <= 3 ? 500 : 200);
    const wh = await createWebhook(db, team, { url: `${rx.url}/hook` });
    const s1 = await sandboxEvents(db, team, 3, clock);
    const s2 = await sandboxEvents(db, team, 2, clock);
    const d = new WebhookDispatcher(db, { clock, backoffBaseMs: 1_000, backoffCapMs: 300_000 });

    const delays: number[] = [];
    const failOnce = async () => {
      const before = clock.t;
      assert.equal(await d.tick(), 1);
      const w = (await getWebhook(db, team, wh.id))!;
      delays.push(w.nextAttemptAt!.getTime() - before);
      assert.equal(w.lastSeq, s1[0]!.seq - 1, 'the cursor stays before the failing event');
      clock.t = w.nextAttemptAt!.getTime() - 1;
      assert.equal(await d.tick(), 0, 'not due before its backoff ends');
      clock.t += 1;
    };
    await failOnce();
    await failOnce();
    await failOnce();
    assert.deepEqual(delays, [1_000, 2_000, 4_000]);
    assert.equal((await getWebhook(db, team, wh.id))!.attempts, 3);
    assert.equal(await d.tick(), 5);

    const all = [...s1, ...s2];
    assert.deepEqual(
      rx.requests.map((r) => r.headers['nestbox-event-id']),
      [s1[0]!.id, s1[0]!.id, s1[0]!.id, ...all.map((e) => e.id)],
      'the same event id on every retry, and nothing after it before it succeeded',
    );
    const after = (await getWebhook(db, team, wh.id))!;
    assert.deepEqual([after.lastSeq, after.attempts, after.nextAttemptAt], [s2[1]!.seq, 0, null]);

    const log = await listDeliveries(db, team, wh.id, 100);
    assert.deepEqual(
      log.map((l) => [l.eventId, l.attempt, l.outcome, l.httpStatus, l.error]),
      [
        ...[...all].reverse().map((e) => [e.id, e === s1[0] ? 4 : 1, 'delivered', 200, null]),
        [s1[0]!.id, 3, 'failed', 500, 'HTTP 500'],
        [s1[0]!.id, 2, 'failed', 500, 'HTTP 500'],
        [s1[0]!.id, 1, 'failed', 500, 'HTTP 500'],
      ],
    );
    assert.ok(log.every((l) => l.webhookId === wh.id && Number.isInteger(l.durationMs) && l.durationMs >= 0));
    assert.deepEqual(log.map((l) => l.sandboxId), [s2[1], s2[0], s1[2], s1[1], s1[0], s1[0], s1[0], s1[0]].map((e) => e!.sandboxId));
    assert.deepEqual((await listDeliveries(db, team, wh.id, 2)).map((l) => l.id), log.slice(0, 2).map((l) => l.id));
    assert.deepEqual(await listDeliveries(db, await newTeam(db), wh.id, 10), [], "not another team's log");
  });

  test('the backoff doubles up to its cap', async () => {
    const db = await t.db();
    const clock = new ManualClock(T0);
    const team = await newTeam(db);
    const rx = await receiver();
    rx.respond = () => 503;
    const wh = await createWebhook(db, team, { url: `${rx.url}/hook` });
    await sandboxEvents(db, team, 1, clock);
    const d = new WebhookDispatcher(db, { clock, backoffBaseMs: 1_000, backoffCapMs: 5_000, maxAttempts: 10 });
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      const before = clock.t;
      assert.equal(await d.tick(), 1);
      const next = (await getWebhook(db, team, wh.id))!.nextAttemptAt!.getTime();
      delays.push(next - before);
      clock.t = next;
    }
    assert.deepEqual(delays, [1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
  });

  test('timeouts, refused connections and redirects are failures; the event is retried', async () => {
    const db = await t.db();
    const clock = new ManualClock(T0);
    const team = await newTeam(db);
    const dead = await createWebhook(db, team, { url: await deadUrl() });
    const rx = await receiver();
    let mode: 'hang' | 'redirect' | 'ok' = 'hang';
    rx.respond = () => (mode === 'hang' ? 'hang' : mode === 'redirect' ? 302 : 204);
    const slow = await createWebhook(db, team, { url: `${rx.url}/slow` });
    const [e] = await sandboxEvents(db, team, 1, clock);
    const d = new WebhookDispatcher(db, { clock, requestTimeoutMs: 200, maxAttempts: 10 });
    assert.equal(await d.tick(), 2);

    const [refused] = await listDeliveries(db, team, dead.id, 10);
    assert.equal(refused!.outcome, 'failed');
    assert.equal(refused!.httpStatus, null);
    assert.match(refused!.error!, /ECONNREFUSED/);
    const [timedOut] = await listDeliveries(db, team, slow.id, 10);
    assert.deepEqual([timedOut!.outcome, timedOut!.httpStatus, timedOut!.error], ['failed', null, 'timed out after 200 ms']);

    mode = 'redirect';
    clock.t += 60_000;
    assert.equal(await d.tick(), 2);
    const [redirected] = await listDeliveries(db, team, slow.id, 10);
    assert.deepEqual([redirected!.outcome, redirected!.httpStatus, redirected!.error], ['failed', 302, 'HTTP 302']);
    assert.ok(!rx.requests.some((r) => r.path === '/elsewhere'), 'redirects are not followed');

    mode = 'ok';
    clock.t += 60_000;
    assert.equal(await d.tick(), 2);
    const [delivered] = await listDeliveries(db, team, slow.id, 10);
    assert.deepEqual([delivered!.outcome, delivered!.httpStatus, delivered!.attempt], ['delivered', 204, 3]);
    assert.deepEqual(rx.requests.map((r) => r.headers['nestbox-event-id']), [e!.id, e!.id, e!.id]);
    assert.equal((await getWebhook(db, team, dead.id))!.attempts, 3);
  });

  test('after maxAttempts the event is given up and delivery goes on', async () => {
    const db = await t.db();
    const { clock, team, rx, wh } = await hooked(db);
    const events = await sandboxEvents(db, team, 3, clock);
    const poison = events[0]!.id;
    rx.respond = (r) => (r.json.id === poison ? 500 : 200);
    const d = new WebhookDispatcher(db, { clock, maxAttempts: 3 });

    assert.equal(await d.tick(), 1);
    clock.t = (await getWebhook(db, team, wh.id))!.nextAttemptAt!.getTime();
    assert.equal(await d.tick(), 1);
    clock.t = (await getWebhook(db, team, wh.id))!.nextAttemptAt!.getTime();
    assert.equal(await d.tick(), 3, 'third attempt given up, then the next two delivered in the same pass');

    const w = (await getWebhook(db, team, wh.id))!;
    assert.deepEqual([w.lastSeq, w.attempts, w.nextAttemptAt], [events[2]!.seq, 0, null], 'backoff reset');
    assert.deepEqual(
      (await listDeliveries(db, team, wh.id, 10)).map((l) => [l.eventSeq, l.attempt, l.outcome]),
      [[events[2]!.seq, 1, 'delivered'], [events[1]!.seq, 1, 'delivered'], [events[0]!.seq, 3, 'gave_up'],
        [events[0]!.seq, 2, 'failed'], [events[0]!.seq, 1, 'failed']],
    );
    // A new event is delivered at once, on its first attempt.
    const [later] = await sandboxEvents(db, team, 1, clock);
    assert.equal(await d.tick(), 1);
    assert.equal(rx.requests.at(-1)!.json.id, later!.id);
  });

  test('waits at a hole in the outbox sequence: a late commit is not lost, an old hole is skipped', async () => {
    const db = await t.db();
    const { clock, team, rx, wh } = await hooked(db);
    // A seq taken by a writer that has not committed yet (or rolled back): a hole.
    const takeSeq = async () =>
      (await db.query<{ s: number }>(`SELECT nextval(pg_get_serial_sequence('lifecycle_events', 'seq')) AS s`))[0]!.s;
    const hole = await takeSeq();
    const [after1] = await sandboxEvents(db, team, 1, clock);
    const d = new WebhookDispatcher(db, { clock, holeGraceMs: 1_000, backoffBaseMs: 1_000 });
    assert.equal(await d.tick(), 0, 'waits at the hole');
    assert.equal((await getWebhook(db, team, wh.id))!.lastSeq, hole - 1);
    // The late writer commits: its event comes first.
    const lateId = randomUUID();
    await db.query(
      `INSERT INTO lifecycle_events (seq, id, sandbox_id, team_id, from_state, to_state, reason, generation, at)
       VALUES ($1, $2, 'late-sandbox', $3, NULL, 'starting', 'requested', 1, $4)`,
      [hole, lateId, team, clock.now()],
    );
    assert.equal(await d.tick(), 2);
    assert.deepEqual(rx.requests.map((r) => r.json.id), [lateId, after1!.id]);

    // A hole nobody fills is skipped once it is older than the grace, and stays skipped even
    // when the event after it fails.
    const never = await takeSeq();
    const [after2] = await sandboxEvents(db, team, 1, clock);
    rx.respond = () => 500;
    assert.equal(await d.tick(), 0);
    clock.t += 999;
    assert.equal(await d.tick(), 0);
    clock.t += 1;
    assert.equal(await d.tick(), 1, 'skipped the hole, tried the next event');
    assert.equal((await getWebhook(db, team, wh.id))!.lastSeq, never, 'the skip is kept while the event is retried');
    rx.respond = () => 200;
    clock.t += 1_000;
    assert.equal(await d.tick(), 1);
    assert.deepEqual(rx.requests.slice(2).map((r) => r.json.id), [after2!.id, after2!.id]);
  });

  test('a leased webhook is left alone until the lease ends; the old owner is fenced out', async () => {
    const db = await t.db();
    const { clock, team, rx, wh } = await hooked(db);
    const [e] = await sandboxEvents(db, team, 1, clock);
    const other = await claimDueWebhooks(db, { owner: 'crashed-replica', now: clock.now(), leaseMs: 30_000, limit: 100 });
    assert.deepEqual(other.map((w) => w.id), [wh.id]);

    const d = new WebhookDispatcher(db, { clock, leaseMs: 30_000, requestTimeoutMs: 1_000 });
    assert.equal(await d.tick(), 0);
    assert.equal(await saveProgress(db, wh.id, d.owner, { lastSeq: e!.seq, attempts: 0, nextAttemptAt: null, leaseUntil: null }), false);
    clock.t += 29_999;
    assert.equal(await d.tick(), 0);
    assert.equal(rx.requests.length, 0);
    clock.t += 1;
    assert.equal(await d.tick(), 1, 'taken over once the lease ran out');
    assert.equal(rx.requests[0]!.json.id, e!.id);
    assert.equal(
      await saveProgress(db, wh.id, 'crashed-replica', { lastSeq: 0, attempts: 5, nextAttemptAt: null, leaseUntil: null }),
      false,
    );
    const w = (await getWebhook(db, team, wh.id))!;
    assert.deepEqual([w.lastSeq, w.attempts], [e!.seq, 0]);
  });

  test('stop() ends a tick after the request in flight and releases the lease', async () => {
    const db = await t.db();
    const { clock, team, rx, wh } = await hooked(db);
    const events = await sandboxEvents(db, team, 3, clock);
    const d = new WebhookDispatcher(db, { clock });
    rx.respond = () => {
      d.stop(); // shutdown begins while the first request is in flight
      return 200;
    };
    assert.equal(await d.tick(), 1);
    assert.equal((await getWebhook(db, team, wh.id))!.lastSeq, events[0]!.seq);
    assert.equal(await d.tick(), 0, 'a stopped dispatcher does nothing');
    rx.respond = () => 200;
    assert.equal(await new WebhookDispatcher(db, { clock }).tick(), 2, 'another replica takes over at once');
    assert.deepEqual(rx.requests.map((r) => r.json.id), events.map((e) => e.id));
  });

  test('a deleted webhook receives nothing more', async () => {
    const db = await t.db();
    const { clock, team, rx, wh } = await hooked(db);
    assert.equal(await deleteWebhook(db, await newTeam(db), wh.id), false, "not by another team");
    assert.equal(await deleteWebhook(db, team, wh.id), true);
    assert.equal(await deleteWebhook(db, team, wh.id), false);
    await sandboxEvents(db, team, 2, clock);
    assert.equal(await new WebhookDispatcher(db, { clock }).tick(), 0);
    assert.equal(rx.requests.length, 0);
    assert.equal(await getWebhook(db, team, wh.id), null);
  });

  test('two dispatchers ticking at once: one request at a time per webhook, in order, none lost or repeated', async () => {
    const db1 = await t.db();
    // Postgres: a second pool, so the two really race; PGlite has one connection per database.
    const db2 = t.concurrentHandles ? await t.open() : db1;
    const clock = new ManualClock(T0);
    const team = await newTeam(db1);
    const rx = await receiver();
    let n = 0;
    rx.respond = async (r) => {
      await sleep(2); // widen the window in which a second dispatcher could interfere
      return r.path === '/b' && ++n % 3 === 0 ? 503 : 200;
    };
    const wa = await createWebhook(db1, team, { url: `${rx.url}/a` });
    const wb = await createWebhook(db1, team, { url: `${rx.url}/b` });
    const d1 = new WebhookDispatcher(db1, { clock, owner: 'replica-1', maxEventsPerTick: 4 });
    const d2 = new WebhookDispatcher(db2, { clock, owner: 'replica-2', maxEventsPerTick: 4 });
    const expected: number[] = [];
    for (let round = 0; round < 6; round++) {
      for (const e of await sandboxEvents(db1, team, 3, clock)) expected.push(e.seq);
      await Promise.all([d1.tick(), d2.tick(), d1.tick(), d2.tick()]);
      clock.t += 600_000; // any backoff is over
    }
    const last = expected.at(-1)!;
    for (let i = 0; i < 100; i++) {
      const [a, b] = [await getWebhook(db1, team, wa.id), await getWebhook(db1, team, wb.id)];
      if (a!.lastSeq === last && b!.lastSeq === last) break;
      await Promise.all([d1.tick(), d2.tick()]);
      clock.t += 600_000;
    }

    for (const p of ['/a', '/b']) {
      const seqs = rx.requests.filter((r) => r.path === p).map((r) => r.json.seq as number);
      assert.equal(rx.maxInFlight.get(p), 1, `${p}: never two requests at once`);
      assert.ok(seqs.every((s, i) => i === 0 || s >= seqs[i - 1]!), `${p}: never out of order: ${seqs}`);
      assert.deepEqual(rx.accepted.get(p), expected, `${p}: each event accepted exactly once, in order`);
    }
    assert.deepEqual(rx.requests.filter((r) => r.path === '/a').map((r) => r.json.seq), expected, '/a never failed');
    assert.ok(rx.requests.filter((r) => r.path === '/b').length > expected.length, '/b had retries');
    const log = await listDeliveries(db1, team, wb.id, 1000);
    assert.equal(log.filter((l) => l.outcome === 'delivered').length, expected.length);
    assert.equal(log.length, rx.requests.filter((r) => r.path === '/b').length, 'every attempt is logged');
  });
});

forEachDatabase('webhook routes', (t) => {
  let db: Database;
  let app: FastifyInstance;
  let team: string;
  let key: string;
  let otherKey: string;

  const call = apiCaller(() => app, () => key);
  const assertError = assertApiError;

  before(async () => {
    db = await t.db();
    team = await newTeam(db);
    key = (await createApiKey(db, team, { name: 'k' })).key;
    otherKey = (await createApiKey(db, await newTeam(db), { name: 'o' })).key;
    app = buildApiServer({
      lifecycle: new FakeLifecycle(), authenticate: (k) => authenticateApiKey(db, k), envdVersion: '0.6.4', db,
    });
    await app.ready();
  });
  after(async () => {
    await app?.close();
  });

  test('create, list, get, deliveries, delete; another team sees none of it', async () => {
    const rx = await Receiver.start();
    try {
      const hooks = '/nestbox/v1/webhooks';
      // validation
      assertError(await call({ method: 'POST', url: hooks, key: null, body: { url: `${rx.url}/x` } }), 401);
      assertError(await call({ method: 'POST', url: hooks, body: {} }), 400);
      assertError(await call({ method: 'POST', url: hooks, body: { url: 'ftp://example.com/x' } }), 400, /only http and https/);
      assertError(await call({ method: 'POST', url: hooks, body: { url: 'not a url' } }), 400, /not an absolute URL/);
      assertError(await call({ method: 'POST', url: hooks, body: { url: 'http://u:p@example.com/' } }), 400, /credentials/);
      assertError(await call({ method: 'POST', url: hooks, body: { url: 42 } }), 400);
      assertError(await call({ method: 'POST', url: hooks, body: { url: `${rx.url}/x`, secret: 'short' } }), 400);
      assertError(await call({ method: 'POST', url: hooks, body: { url: `${rx.url}/x`, events: ['*'] } }), 400);
      assert.deepEqual((await call({ url: hooks })).json, [], 'nothing was registered by the refused requests');

      // create: the secret is in the 201 only
      const end = await lastEventSeq(db);
      const gen = await call({ method: 'POST', url: hooks, body: { url: `${rx.url}/gen` } });
      assert.equal(gen.status, 201, JSON.stringify(gen.json));
      assert.deepEqual(Object.keys(gen.json).sort(), ['createdAt', 'id', 'secret', 'url']);
      assert.match(gen.json.secret, /^whsec_[0-9a-f]{48}$/);
      assert.equal(gen.json.url, `${rx.url}/gen`);
      assert.equal(gen.headers['cache-control'], 'no-store');
      const own = await call({ method: 'POST', url: hooks, body: { url: `${rx.url}/own`, secret: 'my-own-secret-123' } });
      assert.equal(own.status, 201);
      assert.equal(own.json.secret, 'my-own-secret-123');

      const list = await call({ url: hooks });
      assert.equal(list.status, 200);
      assert.deepEqual(list.json.map((w: any) => w.id), [gen.json.id, own.json.id]);
      assert.deepEqual(Object.keys(list.json[0]).sort(), ['attempts', 'createdAt', 'id', 'lastSeq', 'nextAttemptAt', 'url']);
      assert.deepEqual(list.json[0], {
        id: gen.json.id, url: `${rx.url}/gen`, createdAt: gen.json.createdAt, lastSeq: end, attempts: 0, nextAttemptAt: null,
      });
      const text = JSON.stringify(list.json);
      assert.ok(!text.includes(gen.json.secret) && !text.includes('my-own-secret-123'), 'no secrets in listings');
      const one = await call({ url: `${hooks}/${own.json.id}` });
      assert.deepEqual(one.json, list.json[1]);

      // another team: not found, and an empty list
      assertError(await call({ url: `${hooks}/${own.json.id}`, key: otherKey }), 404, /not found/);
      assertError(await call({ url: `${hooks}/${own.json.id}/deliveries`, key: otherKey }), 404);
      assertError(await call({ method: 'DELETE', url: `${hooks}/${own.json.id}`, key: otherKey }), 404);
      assert.deepEqual((await call({ url: hooks, key: otherKey })).json, []);

      // the delivery log
      const clock = new ManualClock(T0);
      const events = await sandboxEvents(db, team, 2, clock);
      assert.equal(await new WebhookDispatcher(db, { clock }).tick(), 4);
      const deliveries = await call({ url: `${hooks}/${own.json.id}/deliveries` });
      assert.equal(deliveries.status, 200);
      assert.equal(deliveries.json.length, 2);
      assert.deepEqual({ ...deliveries.json[0], durationMs: 0 }, {
        id: deliveries.json[0].id, eventId: events[1]!.id, eventSeq: events[1]!.seq, sandboxId: events[1]!.sandboxId,
        attempt: 1, outcome: 'delivered', httpStatus: 200, error: null, durationMs: 0, at: clock.now().toISOString(),
      });
      assert.equal(deliveries.json[1].eventId, events[0]!.id);
      const limited = await call({ url: `${hooks}/${own.json.id}/deliveries?limit=1` });
      assert.deepEqual(limited.json, deliveries.json.slice(0, 1));
      assertError(await call({ url: `${hooks}/${own.json.id}/deliveries?limit=0` }), 400);
      assertError(await call({ url: `${hooks}/wh_nope/deliveries` }), 404);
      const signed = rx.requests.find((r) => r.path === '/own')!;
      assert.equal(verifyWebhookSignature('my-own-secret-123', signed.headers['nestbox-signature'] as string, signed.body, { now: clock.now() }), true);

      // delete
      assert.equal((await call({ method: 'DELETE', url: `${hooks}/${gen.json.id}` })).status, 204);
      assertError(await call({ url: `${hooks}/${gen.json.id}` }), 404);
      assertError(await call({ method: 'DELETE', url: `${hooks}/${gen.json.id}` }), 404);
      assertError(await call({ method: 'DELETE', url: `${hooks}/${randomUUID()}` }), 404);
      assert.deepEqual((await call({ url: hooks })).json.map((w: any) => w.id), [own.json.id]);
      await call({ method: 'DELETE', url: `${hooks}/${own.json.id}` });
    } finally {
      await rx.close();
    }
  });

  test('the OpenAPI document lists the webhook routes', async () => {
    const doc = (await call({ url: '/openapi.json', key: null })).json;
    assert.ok(doc.paths['/nestbox/v1/webhooks']?.get && doc.paths['/nestbox/v1/webhooks']?.post);
    assert.ok(doc.paths['/nestbox/v1/webhooks/{id}']?.get && doc.paths['/nestbox/v1/webhooks/{id}']?.delete);
    assert.ok(doc.paths['/nestbox/v1/webhooks/{id}/deliveries']?.get);
  });
});
