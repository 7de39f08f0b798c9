// Host commands started through the spawner (spawner-child.mjs), a small process of the agent's
// own: a fork from a large process blocks it for the whole copy of its page tables (15-20 ms
// with an embedded database beside the agent, 2 ms from the spawner), and a create starts
// about ten commands. One spawner per process, started at the first command, started again if
// it dies (the commands it was running fail). NESTBOX_SPAWNER=0 starts commands directly.
import { fork, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export interface SpawnRequest {
  argv: readonly string[];
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  input?: string;
  timeoutMs?: number;
  /** Capture stdout and stderr (else all three are /dev/null: a detached runc hands them to the container). */
  capture: boolean;
  /** stdout is hashed (sha256) and counted by the spawner instead of sent back. */
  digest?: boolean;
}

/** The sha256 and size of a command's stdout. */
export interface OutputDigest {
  sha256: string;
  size: number;
}

export interface SpawnResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  digest?: OutputDigest;
}

interface Pending {
  resolve: (r: SpawnResult) => void;
  reject: (e: Error) => void;
}

const CHILD = fileURLToPath(new URL('./spawner-child.mjs', import.meta.url));

class Spawner {
  private child: ChildProcess | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  run(req: SpawnRequest): Promise<SpawnResult> {
    const child = this.child ?? this.start();
    const id = this.nextId++;
    return new Promise<SpawnResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      // While anything is pending the channel keeps this process alive; idle, it does not.
      child.channel?.ref();
      child.send({ id, argv: req.argv, cwd: req.cwd, env: req.env, input: req.input, timeoutMs: req.timeoutMs, capture: req.capture, digest: req.digest }, (e) => {
        if (e) this.settle(id, (p) => p.reject(e));
      });
    });
  }

  private start(): ChildProcess {
    // execArgv empty: no TypeScript loader or inspector of the agent's in the spawner.
    const child = fork(CHILD, [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
    child.unref();
    child.on('message', (m: { id: number; error?: { message: string; code?: string }; code?: number | null; signal?: NodeJS.Signals | null; stdout?: string; stderr?: string; digest?: OutputDigest }) => {
      this.settle(m.id, (p) => {
        if (m.error) p.reject(Object.assign(new Error(m.error.message), { code: m.error.code }));
        else p.resolve({ code: m.code ?? null, signal: m.signal ?? null, stdout: m.stdout ?? '', stderr: m.stderr ?? '', ...(m.digest ? { digest: m.digest } : {}) });
      });
    });
    const gone = (why: string) => {
      if (this.child !== child) return;
      this.child = null;
      for (const [id] of this.pending) this.settle(id, (p) => p.reject(new Error(`the node's command spawner ${why}; the command's outcome is unknown`)));
    };
    // (the channel closes first, while a pending command still keeps this process alive)
    child.on('disconnect', () => gone('exited'));
    child.on('exit', (code, signal) => gone(`exited (${signal ?? code})`));
    child.on('error', (e) => gone(`failed: ${e.message}`));
    this.child = child;
    return child;
  }

  private settle(id: number, f: (p: Pending) => void) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (this.pending.size === 0) this.child?.channel?.unref();
    f(p);
  }
}

let spawner: Spawner | null = null;

/** Whether host commands go through the spawner (NESTBOX_SPAWNER=0: started directly). */
export function spawnerEnabled(): boolean {
  return process.env.NESTBOX_SPAWNER !== '0';
}

export function spawnThroughSpawner(req: SpawnRequest): Promise<SpawnResult> {
  spawner ??= new Spawner();
  return spawner.run(req);
}
