// Host commands started through a spawner, a small process of the agent's own: a fork from a
// large process blocks it for the whole copy of its page tables (15-20 ms with an embedded
// database beside the agent), and a create starts several commands. The spawner is
// nestbox-spawner (sandbox-init/), which starts each command with posix_spawn from a thread of
// its own (about 0.4 ms; a start from a small Node process took 6-8 ms on 2 CPUs, one start after
// another). A command whose stdout is hashed goes to spawner-child.mjs, a Node spawner (its
// sha256 is OpenSSL's), which also stands in when nestbox-spawner is not built. One spawner of
// each kind per process, started at its first command, started again if it dies (the commands
// it was running fail). NESTBOX_SPAWNER=0 starts commands directly.
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { createInterface } from 'node:readline';
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

/** An answer of either spawner, for request `id`. */
interface Answer {
  id: number;
  error?: { message: string; code?: string };
  code?: number | null;
  signal?: NodeJS.Signals | null;
  stdout?: string;
  stderr?: string;
  digest?: OutputDigest;
}

/** The requests in flight to one spawner process, which is started at the first and again after it died. */
abstract class Spawner {
  private child: ChildProcess | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;

  /** Starts the process; answers are handed to answered(). */
  protected abstract launch(): ChildProcess;
  protected abstract send(child: ChildProcess, msg: object, failed: (e: Error) => void): void;
  /** Whether the process keeps this one alive: only while a command is pending. */
  protected abstract hold(child: ChildProcess, on: boolean): void;

  run(req: SpawnRequest): Promise<SpawnResult> {
    const child = this.child ?? this.start();
    const id = this.nextId++;
    return new Promise<SpawnResult>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      this.hold(child, true);
      this.send(child, { id, argv: req.argv, cwd: req.cwd, env: req.env, input: req.input, timeoutMs: req.timeoutMs, capture: req.capture, digest: req.digest }, (e) =>
        this.settle(id, (p) => p.reject(e)),
      );
    });
  }

  protected answered(m: Answer) {
    this.settle(m.id, (p) => {
      if (m.error) p.reject(Object.assign(new Error(m.error.message), { code: m.error.code }));
      else p.resolve({ code: m.code ?? null, signal: m.signal ?? null, stdout: m.stdout ?? '', stderr: m.stderr ?? '', ...(m.digest ? { digest: m.digest } : {}) });
    });
  }

  private start(): ChildProcess {
    const child = this.launch();
    child.unref();
    const gone = (why: string) => {
      if (this.child !== child) return;
      this.child = null;
      for (const [id] of this.pending) this.settle(id, (p) => p.reject(new Error(`the node's command spawner ${why}; the command's outcome is unknown`)));
    };
    child.on('exit', (code, signal) => gone(`exited (${signal ?? code})`));
    child.on('error', (e) => gone(`failed: ${e.message}`));
    this.onGone(child, gone);
    this.child = child;
    return child;
  }

  /** Other signs that the process is gone than its exit (the channel or pipe closing first). */
  protected abstract onGone(child: ChildProcess, gone: (why: string) => void): void;

  private settle(id: number, f: (p: Pending) => void) {
    const p = this.pending.get(id);
    if (!p) return;
    this.pending.delete(id);
    if (this.pending.size === 0 && this.child) this.hold(this.child, false);
    f(p);
  }
}

/** nestbox-spawner: one JSON line per request on its stdin, one per answer on its stdout. */
class NativeSpawner extends Spawner {
  constructor(private readonly binary: string) {
    super();
  }

  protected launch(): ChildProcess {
    const child = spawn(this.binary, [], { stdio: ['pipe', 'pipe', 'inherit'] });
    createInterface({ input: child.stdout!, crlfDelay: Infinity }).on('line', (line) => {
      let m: Answer;
      try {
        m = JSON.parse(line) as Answer;
      } catch {
        process.stderr.write(`nestbox: the command spawner answered what is not JSON: ${line.slice(0, 200)}\n`);
        return;
      }
      this.answered(m);
    });
    child.stdin!.on('error', () => undefined); // it died: its exit fails what was pending
    return child;
  }

  protected send(child: ChildProcess, msg: object, failed: (e: Error) => void) {
    child.stdin!.write(`${JSON.stringify(msg)}\n`, (e) => e && failed(e));
  }

  protected hold(child: ChildProcess, on: boolean) {
    for (const s of [child.stdin, child.stdout] as Array<{ ref?(): void; unref?(): void } | null>) {
      if (on) s?.ref?.();
      else s?.unref?.();
    }
  }

  protected onGone(child: ChildProcess, gone: (why: string) => void) {
    child.stdout!.on('close', () => gone('exited'));
  }
}

/** spawner-child.mjs, over Node's IPC channel. */
class NodeSpawner extends Spawner {
  protected launch(): ChildProcess {
    // execArgv empty: no TypeScript loader or inspector of the agent's in the spawner.
    const child = fork(CHILD, [], { execArgv: [], stdio: ['ignore', 'inherit', 'inherit', 'ipc'], serialization: 'advanced' });
    child.on('message', (m: Answer) => this.answered(m));
    return child;
  }

  protected send(child: ChildProcess, msg: object, failed: (e: Error) => void) {
    child.send(msg, (e) => e && failed(e));
  }

  protected hold(child: ChildProcess, on: boolean) {
    if (on) child.channel?.ref();
    else child.channel?.unref();
  }

  protected onGone(child: ChildProcess, gone: (why: string) => void) {
    // (the channel closes first, while a pending command still keeps this process alive)
    child.on('disconnect', () => gone('exited'));
  }
}

const CHILD = fileURLToPath(new URL('./spawner-child.mjs', import.meta.url));
const NATIVE = process.env.NESTBOX_SPAWNER_BINARY
  ?? path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../sandbox-init/target/release/nestbox-spawner');

/** undefined: not looked for yet; null: nestbox-spawner is not built (looked for once, not at every command). */
let native: Spawner | null | undefined;
let node: Spawner | null = null;

/** Whether host commands go through a spawner (NESTBOX_SPAWNER=0: started directly). */
export function spawnerEnabled(): boolean {
  return process.env.NESTBOX_SPAWNER !== '0';
}

export function spawnThroughSpawner(req: SpawnRequest): Promise<SpawnResult> {
  if (native === undefined) native = existsSync(NATIVE) ? new NativeSpawner(NATIVE) : null;
  if (!req.digest && native) return native.run(req);
  node ??= new NodeSpawner();
  return node.run(req);
}
