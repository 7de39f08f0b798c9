// The one place that opens a database connection. Two backends, one dialect (Postgres):
// PGlite embedded in-process (the default, data in the data directory) and a Postgres server
// (DATABASE_URL) for production and several control-plane replicas.
//
// Value mapping is the same on both: int8 (bigint, bigserial, count(*)) and numeric come back
// as JS numbers, timestamptz as Date, jsonb as parsed values.
import { AsyncLocalStorage } from 'node:async_hooks';
import { closeSync, mkdirSync, openSync, readFileSync, rmSync, writeSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { PGlite } from '@electric-sql/pglite';
import pg from 'pg';

export interface Sql {
  /** Runs one statement with $1.. parameters and returns its rows. */
  query<T = Record<string, unknown>>(text: string, params?: unknown[]): Promise<T[]>;
  /** Runs a script of several statements without parameters (migrations, fixtures). */
  exec(text: string): Promise<void>;
}

export type Isolation = 'read committed' | 'serializable';

export interface Database extends Sql {
  readonly kind: 'pglite' | 'postgres';
  /**
   * Runs `fn` in one transaction: COMMIT when it resolves, ROLLBACK when it throws. Inside it,
   * use only `tx`: calling the Database itself (query or a nested transaction) throws, since on
   * PGlite it would wait for this very transaction forever. On Postgres the whole function is
   * retried (a few times) on a serialization failure or deadlock, so it must not have side
   * effects outside the database.
   */
  transaction<T>(fn: (tx: Sql) => Promise<T>, opts?: { isolation?: Isolation }): Promise<T>;
  close(): Promise<void>;
}

export interface OpenDatabaseOptions {
  /** postgres://… : use a Postgres server. Otherwise PGlite. */
  url?: string;
  /** PGlite data directory; in memory when absent. Ignored with `url`. */
  dataDir?: string;
  /** Postgres pool size (default 10). */
  poolSize?: number;
}

export async function openDatabase(opts: OpenDatabaseOptions = {}): Promise<Database> {
  if (opts.url) return openPostgres(opts.url, opts.poolSize ?? 10);
  return openPglite(opts.dataDir);
}

// ---------------------------------------------------------------------------------------------
// Shared pieces

const INT8 = 20;
const NUMERIC = 1700;
const INT8_ARRAY = 1016;
const NUMERIC_ARRAY = 1231;

const toNumber = (v: string): number => Number(v);

/** Guards against using the Database (instead of `tx`) inside its own open transaction. */
interface TxScope {
  readonly db: object;
  open: boolean;
}
const txScope = new AsyncLocalStorage<TxScope>();

function assertNotInOwnTransaction(db: object, what: string): void {
  const scope = txScope.getStore();
  if (scope && scope.open && scope.db === db) {
    throw new Error(
      `${what} called on the Database inside its own open transaction: use the transaction's handle (tx) instead`,
    );
  }
}

function closedTx(): never {
  throw new Error('transaction is already finished: its handle can no longer be used');
}

/** postgres://user:secret@host/db → postgres://user:***@host/db, for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(unparseable database URL)';
  }
}

// ---------------------------------------------------------------------------------------------
// Postgres server

const RETRYABLE_CODES = new Set(['40001', '40P01']); // serialization_failure, deadlock_detected
const MAX_TX_ATTEMPTS = 5;

function pgTypes(): pg.CustomTypesConfig {
  const numberArray = (oid: number) => {
    const base = pg.types.getTypeParser(oid) as (v: string) => unknown;
    const mapDeep = (x: unknown): unknown => (Array.isArray(x) ? x.map(mapDeep) : x === null ? null : Number(x));
    return (v: string) => mapDeep(base(v));
  };
  const overrides = new Map<number, (v: string) => unknown>([
    [INT8, toNumber],
    [NUMERIC, toNumber],
    [INT8_ARRAY, numberArray(INT8_ARRAY)],
    [NUMERIC_ARRAY, numberArray(NUMERIC_ARRAY)],
  ]);
  return {
    getTypeParser: ((oid: number, format?: string) =>
      overrides.get(oid) ?? pg.types.getTypeParser(oid, format as 'text')) as pg.CustomTypesConfig['getTypeParser'],
  };
}

async function openPostgres(url: string, poolSize: number): Promise<Database> {
  const where = redactUrl(url);
  const pool = new pg.Pool({ connectionString: url, max: poolSize, types: pgTypes(), connectionTimeoutMillis: 10_000 });
  // Errors of idle pooled connections: the pool drops them and reconnects on demand.
  pool.on('error', () => undefined);
  try {
    const c = await pool.connect();
    c.release();
  } catch (err) {
    await pool.end().catch(() => {});
    throw new Error(`cannot connect to Postgres at ${where}: ${(err as Error).message || String(err)}`, { cause: err });
  }

  let poolClosed = false;
  const db: Database = {
    kind: 'postgres',
    async query<T>(text: string, params?: unknown[]): Promise<T[]> {
      assertNotInOwnTransaction(db, 'query()');
      const res = await pool.query(text, params);
      return res.rows as T[];
    },
    async exec(text: string): Promise<void> {
      assertNotInOwnTransaction(db, 'exec()');
      await pool.query(text);
    },
    async transaction<T>(fn: (tx: Sql) => Promise<T>, opts?: { isolation?: Isolation }): Promise<T> {
      assertNotInOwnTransaction(db, 'transaction()');
      const begin = opts?.isolation === 'serializable' ? 'BEGIN ISOLATION LEVEL SERIALIZABLE' : 'BEGIN';
      for (let attempt = 1; ; attempt++) {
        const client = await pool.connect();
        const scope: TxScope = { db, open: true };
        let broken: Error | undefined;
        // A connection that drops while checked out emits 'error' on its client (the pool only
        // listens on idle ones): without a listener that would crash the process. The query in
        // progress fails on its own; the client is then dropped from the pool.
        const onError = (err: Error) => {
          broken ??= err;
        };
        client.on('error', onError);
        let retry = false;
        const tx: Sql = {
          async query<R>(text: string, params?: unknown[]): Promise<R[]> {
            if (!scope.open) closedTx();
            return (await client.query(text, params)).rows as R[];
          },
          async exec(text: string): Promise<void> {
            if (!scope.open) closedTx();
            await client.query(text);
          },
        };
        try {
          await client.query(begin);
          const result = await txScope.run(scope, () => fn(tx));
          await client.query('COMMIT');
          return result;
        } catch (err) {
          try {
            await client.query('ROLLBACK');
          } catch (rollbackErr) {
            broken = rollbackErr as Error; // the connection is unusable: drop it from the pool
          }
          const code = (err as { code?: unknown }).code;
          retry = typeof code === 'string' && RETRYABLE_CODES.has(code) && attempt < MAX_TX_ATTEMPTS;
          if (!retry) throw err;
        } finally {
          scope.open = false;
          client.off('error', onError);
          client.release(broken);
        }
        if (retry) await sleep(Math.random() * 10 * attempt);
      }
    },
    async close(): Promise<void> {
      if (poolClosed) return;
      poolClosed = true;
      await pool.end();
    },
  };
  return db;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------
// PGlite (embedded)

async function openPglite(dataDir?: string): Promise<Database> {
  const dir = dataDir === undefined ? undefined : resolve(dataDir);
  const releaseLock = dir ? lockDataDir(dir) : () => {};
  let pgl: PGlite;
  try {
    if (dir) mkdirSync(dirname(dir), { recursive: true });
    pgl = await PGlite.create(dir, {
      parsers: { [INT8]: toNumber, [NUMERIC]: toNumber },
    });
  } catch (err) {
    releaseLock();
    const what = dir ? `the embedded database at ${dir}` : 'an in-memory embedded database';
    throw new Error(`cannot open ${what}: ${(err as Error).message || String(err)}`, { cause: err });
  }

  // PGlite is one connection. Its own query()/exec() wait for an open transaction() to finish
  // (a shared mutex), so statements from other async callers never land inside a transaction.
  let closed = false;
  const db: Database = {
    kind: 'pglite',
    async query<T>(text: string, params?: unknown[]): Promise<T[]> {
      assertNotInOwnTransaction(db, 'query()');
      return (await pgl.query<T>(text, params)).rows;
    },
    async exec(text: string): Promise<void> {
      assertNotInOwnTransaction(db, 'exec()');
      await pgl.exec(text);
    },
    async transaction<T>(fn: (tx: Sql) => Promise<T>, opts?: { isolation?: Isolation }): Promise<T> {
      assertNotInOwnTransaction(db, 'transaction()');
      const scope: TxScope = { db, open: true };
      try {
        return await pgl.transaction(async (ptx) => {
          // One connection: every transaction is already serial. Set the level for fidelity.
          if (opts?.isolation === 'serializable') await ptx.query('SET TRANSACTION ISOLATION LEVEL SERIALIZABLE');
          const tx: Sql = {
            async query<R>(text: string, params?: unknown[]): Promise<R[]> {
              if (!scope.open) closedTx();
              return (await ptx.query<R>(text, params)).rows;
            },
            async exec(text: string): Promise<void> {
              if (!scope.open) closedTx();
              await ptx.exec(text);
            },
          };
          return await txScope.run(scope, () => fn(tx));
        });
      } finally {
        scope.open = false;
      }
    },
    async close(): Promise<void> {
      if (closed) return;
      closed = true;
      try {
        await pgl.close();
      } finally {
        releaseLock();
      }
    },
  };
  return db;
}

/**
 * PGlite has no postmaster: two processes opening one data directory would corrupt it. A lock
 * file next to the directory (`<dataDir>.lock`, holding the pid) refuses the second opener; a
 * lock left by a dead process is taken over.
 */
const heldLocks = new Set<string>();

function lockDataDir(dir: string): () => void {
  const lockPath = `${dir}.lock`;
  if (heldLocks.has(lockPath)) {
    throw new Error(`cannot open the embedded database at ${dir}: it is already open in this process`);
  }
  mkdirSync(dirname(lockPath), { recursive: true });
  for (let tries = 0; ; tries++) {
    try {
      const fd = openSync(lockPath, 'wx');
      writeSync(fd, `${process.pid}\n`);
      closeSync(fd);
      break;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || tries > 0) {
        throw new Error(`cannot lock the embedded database at ${dir} (${lockPath}): ${(err as Error).message}`);
      }
      const pid = Number.parseInt(readFileSync(lockPath, 'utf8').trim(), 10);
      if (Number.isInteger(pid) && pid > 0 && pid !== process.pid && processAlive(pid)) {
        throw new Error(
          `cannot open the embedded database at ${dir}: process ${pid} has it open (lock ${lockPath}); ` +
            'stop it, or use a Postgres server (DATABASE_URL) to run several processes',
        );
      }
      rmSync(lockPath, { force: true }); // stale: its owner is gone
    }
  }
  heldLocks.add(lockPath);
  return () => {
    if (!heldLocks.delete(lockPath)) return;
    rmSync(lockPath, { force: true });
  };
}

function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}
