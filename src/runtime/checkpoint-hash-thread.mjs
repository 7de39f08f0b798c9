// A checkpoint hashing thread (started by checkpoint-hasher.ts): one request at a time (the
// pool gives it no other until it answered), answered by id. Plain JavaScript: a worker thread
// does not inherit the TypeScript loader the agent runs under, and registering it there costs
// more than the hash it would save.
import { parentPort } from 'node:worker_threads';
import { checkpointFilesDigest, checkpointTarDigest, followDump } from './checkpoint-digest.mjs';

parentPort.on('message', async (req) => {
  let answer;
  try {
    if (req.follow) answer = { id: req.id, followed: await followDump(req.follow, new Int32Array(req.flag)) };
    else if (req.digest === 'files') answer = { id: req.id, entry: checkpointFilesDigest(req.dir) };
    else answer = { id: req.id, entry: checkpointTarDigest(req.dir) };
  } catch (e) {
    answer = { id: req.id, error: e instanceof Error ? e.message : String(e) };
  }
  parentPort.postMessage(answer);
});
