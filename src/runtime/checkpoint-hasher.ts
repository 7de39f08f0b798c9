// A pause hashes its whole memory image (100 MiB: ~75 ms of sha256 on this kind of host). On the
// agent's own thread that held up every other step of the pause and every other request; in a
// thread of its own it runs beside them. One long-lived thread, started at the first hash.
import { Worker } from 'node:worker_threads';

/** The checkpoint object's manifest entry: the sha256 and size of its canonical tar stream. */
export interface CheckpointEntry {
  name: 'checkpoint';
  sha256: string;
  size: number;
}
type HashRequest = { id: number; dir: string };
type HashAnswer = { id: number; entry: CheckpointEntry | null } | { id: number; error: string };

const ENTRY = new URL('./checkpoint-hash-thread.mjs', import.meta.url);

interface Pending {
  resolve: (entry: CheckpointEntry | null) => void;
  reject: (e: Error) => void;
}

interface HashingThread {
  worker: Worker;
  pending: Map<number, Pending>;
}

let current: HashingThread | null = null;
/** A thread that failed before it answered once is not started again (the agent's thread hashes). */
let unavailable = false;
let nextId = 0;

/**
 * The checkpoint object's manifest entry (see checkpoint-hash-thread.mjs), hashed in the
 * hashing thread. Null when the images are not what it hashes without tar, or when the thread is not
 * available (it failed to start or died): the caller hashes tar's stream then. Rejects when the
 * images cannot be read or change while they are hashed.
 */
export function hashCheckpointOffThread(dir: string): Promise<CheckpointEntry | null> {
  if (unavailable) return Promise.resolve(null);
  const t = current ?? (current = start());
  const id = nextId++;
  return new Promise((resolve, reject) => {
    t.pending.set(id, { resolve, reject });
    t.worker.ref(); // the thread keeps the process alive only while it has work
    t.worker.postMessage({ id, dir } satisfies HashRequest);
  });
}

function start(): HashingThread {
  // (without the agent's own node options: its TypeScript loader would cost the thread ~100 ms to start)
  const t: HashingThread = { worker: new Worker(ENTRY, { execArgv: [] }), pending: new Map() };
  let answered = false;
  t.worker.unref();
  t.worker.on('message', (answer: HashAnswer) => {
    answered = true;
    const p = t.pending.get(answer.id);
    if (!p) return;
    t.pending.delete(answer.id);
    if (t.pending.size === 0) t.worker.unref();
    if ('error' in answer) p.reject(new Error(answer.error));
    else p.resolve(answer.entry);
  });
  const lost = () => {
    if (current === t) current = null;
    for (const p of t.pending.values()) p.resolve(null);
    t.pending.clear();
  };
  t.worker.on('error', (e) => {
    if (!answered) unavailable = true;
    process.stderr.write(`nestbox: the checkpoint hashing thread failed (${e.message}); tar's stream is hashed instead\n`);
    lost();
  });
  t.worker.on('exit', lost);
  return t;
}
