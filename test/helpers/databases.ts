// Run a test suite against both store backends: PGlite (in a temp dir) and a fresh database on
// the local Postgres server.
//
//   forEachDatabase('lifecycle', (t) => {
//     test('...', async () => {
//       const db = await t.db();            // migrated, shared by the suite, closed after it
//       ...
//     });
//   });
//
// Postgres: NESTBOX_TEST_POSTGRES_URL is the maintenance connection (default
// postgres://postgres@127.0.0.1:5432/postgres); each suite creates nestbox_test_<time>_<random>
// and drops it afterwards. When the server cannot be reached the Postgres suites are skipped,
// except with CI=true, where they fail with the reason.
import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe } from 'node:test';
import pg from 'pg';
import { openDatabase, redactUrl, type Database } from '../../src/store/database.ts';
import { migrate } from '../../src/store/migrate.ts';

export const MAINTENANCE_URL = process.env.NESTBOX_TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres';
const IN_CI = process.env.CI === 'true';
const TEST_DB_PREFIX = 'nestbox_test_';
// Databases left behind by a crashed run are dropped by a later run once they are this old.
const STALE_AFTER_S = 6 * 3600;

export interface TestDatabase {
  readonly kind: 'pglite' | 'postgres';
  /** The suite's shared handle on its database, migrated. Opened on first use, closed after the suite. */
  db(): Promise<Database>;
  /**
   * A new handle on the suite's database, migrated unless `migrate: false`.
   * Postgres: a separate pool on the same database, so handles can race each other.
   * PGlite: one handle at a time, so this first closes the one open (the shared one included;
   * db() then returns the new one): use it to check what survives close and reopen.
   */
  open(opts?: { migrate?: boolean }): Promise<Database>;
  /** Whether several handles can be open at once (Postgres). */
  readonly concurrentHandles: boolean;
  /** A handle on a brand-new, empty database of the same kind; not migrated unless asked. */
  fresh(opts?: { migrate?: boolean }): Promise<Database>;
}

// ---------------------------------------------------------------------------------------------

async function maintenance<T>(fn: (c: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: MAINTENANCE_URL, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** null when the Postgres server answers, else why not. Also drops stale test databases. */
const postgresProblem: string | null = await maintenance(async (c) => {
  const stale = await c.query<{ datname: string }>(`SELECT datname FROM pg_database WHERE datname LIKE $1`, [
    `${TEST_DB_PREFIX}%`,
  ]);
  const now = Math.floor(Date.now() / 1000);
  for (const { datname } of stale.rows) {
    const born = Number(/^nestbox_test_(\d+)_/.exec(datname)?.[1]);
    if (Number.isFinite(born) && now - born > STALE_AFTER_S) {
      await c.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`).catch(() => {});
    }
  }
  return null;
}).catch((err: Error) => `cannot connect to Postgres at ${redactUrl(MAINTENANCE_URL)}: ${err.message || String(err)}`);

function urlFor(database: string): string {
  const u = new URL(MAINTENANCE_URL);
  u.pathname = `/${database}`;
  return u.toString();
}

async function createPostgresDatabase(): Promise<{ url: string; drop: () => Promise<void> }> {
  if (postgresProblem) {
    throw new Error(
      `${postgresProblem}${IN_CI ? ' (CI=true: the Postgres tests must run; set NESTBOX_TEST_POSTGRES_URL)' : ''}`,
    );
  }
  const name = `${TEST_DB_PREFIX}${Math.floor(Date.now() / 1000)}_${randomBytes(4).toString('hex')}`;
  await maintenance((c) => c.query(`CREATE DATABASE "${name}"`));
  return {
    url: urlFor(name),
    drop: () => maintenance(async (c) => void (await c.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`))),
  };
}

// ---------------------------------------------------------------------------------------------

async function openMaybeMigrated(opened: Promise<Database>, doMigrate: boolean | undefined): Promise<Database> {
  const db = await opened;
  if (doMigrate !== false) {
    try {
      await migrate(db);
    } catch (err) {
      await db.close();
      throw err;
    }
  }
  return db;
}

/** Closes the handle after the suite; `isOpen` tells whether the test has closed it already. */
function tracked(db: Database, cleanups: Array<() => Promise<void>>): { db: Database; isOpen: () => boolean } {
  let open = true;
  const close = db.close.bind(db);
  db.close = async () => {
    open = false;
    await close();
  };
  cleanups.unshift(() => db.close());
  return { db, isOpen: () => open };
}

/**
 * PGlite runs initdb (seconds) for every new data dir; tests copy a pristine one made once per
 * process instead (reopening an existing data dir takes a fraction of that).
 */
let pgliteTemplate: Promise<string> | undefined;
after(async () => {
  const template = await pgliteTemplate?.catch(() => undefined);
  if (template) await rm(path.dirname(template), { recursive: true, force: true });
});
/** A new PGlite data dir (initialised, empty, not migrated) in a temp dir, and how to remove it. */
export async function tempPgliteDataDir(): Promise<{ dataDir: string; remove: () => Promise<void> }> {
  const cleanups: Array<() => Promise<void>> = [];
  const dataDir = await newPgliteDataDir(cleanups);
  return { dataDir, remove: async () => void (await Promise.all(cleanups.map((c) => c()))) };
}

async function newPgliteDataDir(cleanups: Array<() => Promise<void>>): Promise<string> {
  pgliteTemplate ??= (async () => {
    const d = await mkdtemp(path.join(tmpdir(), 'nestbox-pglite-template-'));
    const db = await openDatabase({ dataDir: path.join(d, 'data') });
    await db.close();
    return path.join(d, 'data');
  })();
  const template = await pgliteTemplate;
  const d = await mkdtemp(path.join(tmpdir(), 'nestbox-store-'));
  cleanups.push(() => rm(d, { recursive: true, force: true }));
  await cp(template, path.join(d, 'data'), { recursive: true });
  return path.join(d, 'data');
}

function pgliteTarget(cleanups: Array<() => Promise<void>>): TestDatabase {
  let dir: Promise<string> | undefined;
  let current: { db: Database; isOpen: () => boolean } | undefined;
  const open = async (opts?: { migrate?: boolean }) => {
    if (current?.isOpen()) await current.db.close();
    current = undefined;
    dir ??= newPgliteDataDir(cleanups);
    const db = await openMaybeMigrated(openDatabase({ dataDir: await dir }), opts?.migrate);
    current = tracked(db, cleanups);
    return db;
  };
  return {
    kind: 'pglite',
    concurrentHandles: false,
    async db() {
      return current?.isOpen() ? current.db : open();
    },
    open,
    async fresh(opts) {
      const d = await newPgliteDataDir(cleanups);
      const db = await openMaybeMigrated(openDatabase({ dataDir: d }), opts?.migrate ?? false);
      return tracked(db, cleanups).db;
    },
  };
}

function postgresTarget(cleanups: Array<() => Promise<void>>): TestDatabase {
  let main: Promise<string> | undefined;
  let shared: Promise<{ db: Database; isOpen: () => boolean }> | undefined;
  const newDatabase = async () => {
    const created = await createPostgresDatabase();
    cleanups.push(created.drop);
    return created.url;
  };
  const openTracked = async (opts?: { migrate?: boolean }) => {
    main ??= newDatabase();
    return tracked(await openMaybeMigrated(openDatabase({ url: await main, poolSize: 5 }), opts?.migrate), cleanups);
  };
  return {
    kind: 'postgres',
    concurrentHandles: true,
    async db() {
      const current = await shared;
      if (current?.isOpen()) return current.db;
      shared = openTracked();
      return (await shared).db;
    },
    open: async (opts) => (await openTracked(opts)).db,
    async fresh(opts) {
      const url = await newDatabase();
      const db = await openMaybeMigrated(openDatabase({ url, poolSize: 5 }), opts?.migrate ?? false);
      return tracked(db, cleanups).db;
    },
  };
}

/**
 * Declares `describe(\`${name} [pglite]\`)` and `describe(\`${name} [postgres]\`)`, each with
 * its own database, and calls `fn` inside each to declare the tests.
 */
export function forEachDatabase(name: string, fn: (t: TestDatabase) => void): void {
  for (const kind of ['pglite', 'postgres'] as const) {
    const skip = kind === 'postgres' && postgresProblem !== null && !IN_CI ? `${postgresProblem} (skipped)` : false;
    describe(`${name} [${kind}]`, { skip }, () => {
      const cleanups: Array<() => Promise<void>> = [];
      after(async () => {
        const errors: unknown[] = [];
        for (const c of cleanups.splice(0)) await c().catch((e: unknown) => errors.push(e));
        if (errors.length) throw new AggregateError(errors, `cleaning up the ${kind} test database failed`);
      });
      fn(kind === 'pglite' ? pgliteTarget(cleanups) : postgresTarget(cleanups));
    });
  }
}
