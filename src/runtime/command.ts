import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { spawnerEnabled, spawnThroughSpawner, type OutputDigest } from './spawner.ts';

export interface CommandResult {
  stdout: string;
  stderr: string;
  code: number;
  /** With `digestStdout`: the sha256 and size of what the command wrote to stdout. */
  stdoutDigest?: OutputDigest;
}

export class CommandError extends Error {
  constructor(
    readonly argv: readonly string[],
    readonly result: CommandResult,
  ) {
    const detail = (result.stderr || result.stdout).trim().split('\n').slice(-5).join(' | ');
    super(`${argv.join(' ')} exited ${result.code}: ${detail}`);
    this.name = 'CommandError';
  }
}

export interface RunOptions {
  env?: NodeJS.ProcessEnv;
  timeoutMs?: number;
  input?: string;
  /** Resolve with the result instead of rejecting on a non-zero exit. */
  allowFailure?: boolean;
  cwd?: string;
  /** false: stdin, stdout and stderr are /dev/null (a detached runc hands them to the container); nothing is captured. */
  capture?: boolean;
  /**
   * stdout is hashed and counted where the command runs (the spawner), not captured: for a
   * stream too large to hold, kept off the agent's own thread.
   */
  digestStdout?: boolean;
}

/**
 * Runs a host command with its stdio captured; no shell is involved. Through the spawner (a
 * small process of the node's: see spawner.ts), unless NESTBOX_SPAWNER=0.
 */
export async function run(argv: readonly string[], opts: RunOptions = {}): Promise<CommandResult> {
  if (!argv[0]) throw new Error('empty command');
  if (!spawnerEnabled()) return runHere(argv, opts);
  const r = await spawnThroughSpawner({
    argv, cwd: opts.cwd, env: opts.env, input: opts.input, timeoutMs: opts.timeoutMs, capture: opts.capture ?? true,
    digest: opts.digestStdout,
  });
  return finish(argv, opts, r.code, r.signal, r.stdout, r.stderr, r.digest);
}

function finish(
  argv: readonly string[], opts: RunOptions, code: number | null, signal: NodeJS.Signals | null, stdout: string, stderr: string,
  stdoutDigest?: OutputDigest,
): CommandResult {
  const result = { stdout, stderr: stderr + (signal ? `\nkilled by ${signal}` : ''), code: code ?? 128, ...(stdoutDigest ? { stdoutDigest } : {}) };
  if (result.code !== 0 && !opts.allowFailure) throw new CommandError(argv, result);
  return result;
}

/** Starts the command from this process. */
function runHere(argv: readonly string[], opts: RunOptions): Promise<CommandResult> {
  const [cmd, ...args] = argv;
  return new Promise((resolve, reject) => {
    const child = spawn(cmd!, args, {
      env: opts.env ?? process.env,
      cwd: opts.cwd,
      stdio: opts.capture === false ? 'ignore' : [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    const digest = opts.digestStdout ? { hash: createHash('sha256'), size: 0 } : null;
    child.stdout?.on('data', (b: Buffer) => {
      if (!digest) return void out.push(b);
      digest.hash.update(b);
      digest.size += b.length;
    });
    child.stderr?.on('data', (b: Buffer) => err.push(b));
    let timer: NodeJS.Timeout | undefined;
    if (opts.timeoutMs) {
      timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs);
    }
    child.on('error', (e) => {
      if (timer) clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      if (timer) clearTimeout(timer);
      try {
        const stdoutDigest = digest ? { sha256: digest.hash.digest('hex'), size: digest.size } : undefined;
        resolve(finish(argv, opts, code, signal, Buffer.concat(out).toString('utf8'), Buffer.concat(err).toString('utf8'), stdoutDigest));
      } catch (e) {
        reject(e);
      }
    });
    if (opts.input !== undefined) child.stdin?.end(opts.input);
  });
}
