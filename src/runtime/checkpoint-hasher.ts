// Hashing a whole memory image (100 MiB: ~70 ms of sha256 on this kind of host) for the S3
// store's upload, or to check an older snapshot, on the agent's own thread would hold up every
// other request; in threads of their own it runs beside them. A pause's follow (followDump: the
// images synced while CRIU writes them) runs in one too. A few long-lived threads, started as
// needed: a thread runs one request at a time, and a follow lasts as long as its dump.
import { Worker } from 'node:worker_threads';
import { checkpointFilesDigest, type CheckpointEntry, type FollowedImages } from './checkpoint-digest.mjs';

export type { CheckpointEntry, FollowedImages } from './checkpoint-digest.mjs';

type Request =
  | { id: number; dir: string; digest: 'stream' | 'files' }
  | { id: number; follow: string; flag: SharedArrayBuffer };
type Answer =
  | { id: number; entry: CheckpointEntry | null }
  | { id: number; followed: FollowedImages }
  | { id: number; error: string };

const ENTRY = new URL('./checkpoint-hash-thread.mjs', import.meta.url);
/** Pauses at once on a node beyond this wait for a thread. */
const MAX_THREADS = 4;

interface HashingThread {
  worker: Worker;
  /** The request it runs, if any. */
  running: { resolve: (a: Answer | null) => void } | null;
}

const idle: HashingThread[] = [];
let started = 0;
const waiting: Array<(t: HashingThread | null) => void> = [];
/** A thread that failed before it answered once: no more are started (the caller's fallbacks run). */
let unavailable = false;
let nextId = 0;

/**
 * The checkpoint object's manifest entry, hashed in a hashing thread: digest "files" (see
 * checkpoint-digest.mjs) or the tar stream's. Null when no thread is available (one failed to
 * start or died), or, for the tar stream's, when the images are not what it hashes without
 * tar: the caller falls back then. Rejects when the images cannot be read or change while they
 * are hashed.
 */
export async function hashCheckpointOffThread(dir: string, opts: { digest: 'stream' | 'files' }): Promise<CheckpointEntry | null> {
  const answer = await ask({ id: nextId++, dir, digest: opts.digest });
  if (!answer) return null;
  if ('error' in answer) throw new Error(answer.error);
  return 'entry' in answer ? answer.entry : null;
}

/** Digest "files" on the caller's thread (no hashing thread could be had). */
export function hashCheckpointHere(dir: string): CheckpointEntry {
  return checkpointFilesDigest(dir);
}

/** A follow of a running dump (see followDump): `finish` once the dump is over, or `abandon`. */
export interface DumpFollower {
  /** The dump ended: what the follow synced, once all of it is on the disk (null: no thread, or it failed). */
  finish(): Promise<FollowedImages | null>;
  abandon(): void;
}

/** Starts following the dump that writes into `imagesDir` (an existing directory). */
export function followCheckpointDump(imagesDir: string): DumpFollower {
  const flag = new SharedArrayBuffer(4);
  const stop = () => {
    const f = new Int32Array(flag);
    Atomics.store(f, 0, 1);
    Atomics.notify(f, 0);
  };
  const result = ask({ id: nextId++, follow: imagesDir, flag }).then(
    (a) => (a && 'followed' in a ? a.followed : null),
    () => null,
  );
  return {
    finish: () => {
      stop();
      return result;
    },
    abandon: stop,
  };
}

async function ask(req: Request): Promise<Answer | null> {
  const t = await acquire();
  if (!t) return null;
  try {
    return await new Promise<Answer | null>((resolve) => {
      t.running = { resolve };
      t.worker.ref(); // a thread keeps the process alive only while it has work
      t.worker.postMessage(req);
    });
  } finally {
    t.running = null;
    t.worker.unref();
    release(t);
  }
}

function acquire(): Promise<HashingThread | null> {
  if (unavailable) return Promise.resolve(null);
  const t = idle.pop();
  if (t) return Promise.resolve(t);
  if (started < MAX_THREADS) return Promise.resolve(start());
  return new Promise((resolve) => waiting.push(resolve));
}

function release(t: HashingThread) {
  if (t.worker.threadId === -1) return; // it died: gone from the pool
  const next = waiting.shift();
  if (next) next(t);
  else idle.push(t);
}

function start(): HashingThread {
  started++;
  // (without the agent's own node options: its TypeScript loader would cost the thread ~100 ms to start)
  const t: HashingThread = { worker: new Worker(ENTRY, { execArgv: [] }), running: null };
  let answered = false;
  t.worker.unref();
  t.worker.on('message', (answer: Answer) => {
    answered = true;
    t.running?.resolve(answer);
  });
  const lost = () => {
    started--;
    const i = idle.indexOf(t);
    if (i >= 0) idle.splice(i, 1);
    t.running?.resolve(null);
    if (unavailable) for (const w of waiting.splice(0)) w(null);
  };
  t.worker.on('error', (e) => {
    if (!answered) unavailable = true;
    process.stderr.write(`nestbox: a checkpoint hashing thread failed (${e.message}); the images are hashed without it\n`);
  });
  t.worker.on('exit', lost);
  return t;
}
