// BENCH_LOAD=N: N busy processes beside a benchmark, at normal priority, for as long as it runs:
// each row and its raw limit are then measured on a busy host alike (the targets must hold
// there, not only on a quiet one). Started by main() and stopped when it ends, whatever way.
import { spawn, type ChildProcess } from 'node:child_process';

export function startLoad(env = process.env): { description: string; stop(): void } {
  const n = Number(env.BENCH_LOAD ?? 0);
  if (!Number.isInteger(n) || n < 0 || n > 64) throw new Error(`BENCH_LOAD must be a whole number of busy processes (0-64), not "${env.BENCH_LOAD}"`);
  const hogs: ChildProcess[] = [];
  for (let i = 0; i < n; i++) hogs.push(spawn('sh', ['-c', 'while :; do :; done'], { stdio: 'ignore' }));
  const stop = () => {
    for (const h of hogs) h.kill('SIGKILL');
  };
  process.once('exit', stop);
  return { description: n === 0 ? 'quiet host (BENCH_LOAD=0)' : `host busy with ${n} spinning process${n > 1 ? 'es' : ''} (BENCH_LOAD=${n})`, stop };
}
